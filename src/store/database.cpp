#include "store/database.h"

#include <sqlite3.h>

#include <chrono>
#include <system_error>
#include <thread>

#include "core/error.h"
#include "core/paths.h"

namespace tessera {

namespace {

// Each entry takes the schema from version i to i + 1 and is applied at most once, in order, in
// the same transaction as the user_version bump at its end. Never edit an entry that has
// shipped: add a new one.
constexpr const char* kMigrations[] = {
    // 1: API tokens and usage metering.
    R"sql(
CREATE TABLE api_tokens (
  id            INTEGER PRIMARY KEY,
  name          TEXT    NOT NULL,
  prefix        TEXT    NOT NULL,
  secret_sha256 BLOB    NOT NULL UNIQUE,
  created_at    INTEGER NOT NULL,
  revoked_at    INTEGER,
  last_used_at  INTEGER,
  comment       TEXT    NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens(name) WHERE revoked_at IS NULL;
CREATE INDEX api_tokens_prefix ON api_tokens(prefix);

-- token_id has no foreign key on purpose: a usage row is never refused, even for a token that
-- another process has not committed yet. Tokens are revoked, never deleted, so ids stay valid.
CREATE TABLE usage (
  id                INTEGER PRIMARY KEY,
  timestamp_ms      INTEGER NOT NULL,
  token_id          INTEGER,
  endpoint          TEXT    NOT NULL,
  kind              TEXT    NOT NULL,
  prompt_tokens     INTEGER NOT NULL DEFAULT 0,
  completion_tokens INTEGER NOT NULL DEFAULT 0,
  images            INTEGER NOT NULL DEFAULT 0,
  latency_ms        REAL    NOT NULL DEFAULT 0,
  cost_usd          REAL    NOT NULL DEFAULT 0,
  status            INTEGER NOT NULL DEFAULT 200,
  request_id        TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX usage_time ON usage(timestamp_ms);
CREATE INDEX usage_token_time ON usage(token_id, timestamp_ms);

PRAGMA user_version = 1;
)sql",
    // 2: training runs, their metrics, and the model registry. Losses are REAL except that a
    // NaN is stored as the text 'NaN' (SQLite would turn it into NULL, which means "none yet").
    R"sql(
CREATE TABLE runs (
  id                   TEXT    PRIMARY KEY,
  kind                 TEXT    NOT NULL,
  model                TEXT    NOT NULL,
  status               TEXT    NOT NULL,
  config_file          TEXT    NOT NULL DEFAULT '',
  config_text          TEXT    NOT NULL DEFAULT '',
  save_folder          TEXT    NOT NULL DEFAULT '',
  log_file             TEXT    NOT NULL DEFAULT '',
  pid                  INTEGER,
  pid_start            INTEGER,
  host                 TEXT    NOT NULL DEFAULT '',
  created_ms           INTEGER NOT NULL,
  started_ms           INTEGER,
  finished_ms          INTEGER,
  updated_ms           INTEGER,
  stop_requested_ms    INTEGER,
  step                 INTEGER NOT NULL DEFAULT 0,
  total_steps          INTEGER NOT NULL DEFAULT 0,
  tokens               INTEGER NOT NULL DEFAULT 0,
  total_tokens         INTEGER NOT NULL DEFAULT 0,
  loss                 REAL,
  eval_step            INTEGER,
  eval_loss            REAL,
  best_eval_loss       REAL,
  tokens_per_second    REAL,
  error                TEXT    NOT NULL DEFAULT '',
  mlflow_run_id        TEXT    NOT NULL DEFAULT '',
  mlflow_experiment_id TEXT    NOT NULL DEFAULT '',
  tracking_uri         TEXT    NOT NULL DEFAULT '',
  registered_model     TEXT    NOT NULL DEFAULT '',
  registered_version   INTEGER,
  details              TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_created ON runs(created_ms);

-- One value per run, metric and step: a resumed run that repeats steps replaces them.
CREATE TABLE run_metrics (
  run_id  TEXT    NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  name    TEXT    NOT NULL,
  step    INTEGER NOT NULL,
  value   REAL,
  time_ms INTEGER NOT NULL,
  PRIMARY KEY (run_id, name, step)
) WITHOUT ROWID;

CREATE TABLE registered_models (
  name          TEXT    NOT NULL,
  version       INTEGER NOT NULL,
  path          TEXT    NOT NULL,
  source_run_id TEXT    NOT NULL DEFAULT '',
  description   TEXT    NOT NULL DEFAULT '',
  created_ms    INTEGER NOT NULL,
  PRIMARY KEY (name, version)
);

PRAGMA user_version = 2;
)sql",
    // 3: the registry stores each version's files itself and keeps its lineage. Rows made
    // before this point at folders elsewhere and get an empty lineage and file list.
    R"sql(
ALTER TABLE registered_models ADD COLUMN lineage TEXT NOT NULL DEFAULT '{}';
ALTER TABLE registered_models ADD COLUMN files   TEXT NOT NULL DEFAULT '[]';

PRAGMA user_version = 3;
)sql",
    // 4: admin tokens, and which token started a run (NULL: the command line). A run is visible
    // through the API to the token that started it and to admin tokens.
    R"sql(
ALTER TABLE api_tokens ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN owner_token_id INTEGER;

PRAGMA user_version = 4;
)sql",
};

constexpr int kLatestVersion = static_cast<int>(std::size(kMigrations));

// A writer waits this long for another process's transaction before giving up.
constexpr int kBusyTimeoutMs = 10'000;

}  // namespace

// ---- Statement ----------------------------------------------------------------------------

Statement::Statement(sqlite3* db, const std::string& sql, const std::filesystem::path& file) : db_(db), file_(file) {
  const int rc = sqlite3_prepare_v3(db, sql.c_str(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &stmt_,
                                    nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt_);
    fail("{}: cannot prepare a query: {}", file.string(), sqlite3_errmsg(db));
  }
}

Statement::~Statement() { sqlite3_finalize(stmt_); }

void Statement::check_bind(int rc, int index) {
  if (rc != SQLITE_OK) fail("{}: cannot bind parameter {}: {}", file_.string(), index, sqlite3_errmsg(db_));
}

Statement& Statement::bind_int(int index, int64_t value) {
  check_bind(sqlite3_bind_int64(stmt_, index, value), index);
  return *this;
}

Statement& Statement::bind_real(int index, double value) {
  check_bind(sqlite3_bind_double(stmt_, index, value), index);
  return *this;
}

Statement& Statement::bind_text(int index, std::string_view value) {
  check_bind(sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8), index);
  return *this;
}

Statement& Statement::bind_blob(int index, std::string_view bytes) {
  check_bind(sqlite3_bind_blob64(stmt_, index, bytes.data(), bytes.size(), SQLITE_TRANSIENT), index);
  return *this;
}

Statement& Statement::bind_null(int index) {
  check_bind(sqlite3_bind_null(stmt_, index), index);
  return *this;
}

Statement& Statement::bind_int(int index, std::optional<int64_t> value) {
  return value ? bind_int(index, *value) : bind_null(index);
}

Statement& Statement::bind_opt_text(int index, const std::optional<std::string>& value) {
  return value ? bind_text(index, std::string_view(*value)) : bind_null(index);
}

bool Statement::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  const std::string message = sqlite3_errmsg(db_);
  sqlite3_reset(stmt_);
  fail("{}: {}", file_.string(), message);
}

void Statement::run() {
  while (step()) {
  }
}

int64_t Statement::column_int(int column) const { return sqlite3_column_int64(stmt_, column); }

double Statement::column_real(int column) const { return sqlite3_column_double(stmt_, column); }

std::string Statement::column_text(int column) const {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
  return text ? std::string(text, static_cast<size_t>(sqlite3_column_bytes(stmt_, column))) : std::string();
}

std::string Statement::column_blob(int column) const {
  const auto* data = static_cast<const char*>(sqlite3_column_blob(stmt_, column));
  return data ? std::string(data, static_cast<size_t>(sqlite3_column_bytes(stmt_, column))) : std::string();
}

bool Statement::column_is_null(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }

std::optional<int64_t> Statement::column_opt_int(int column) const {
  if (column_is_null(column)) return std::nullopt;
  return column_int(column);
}

void Statement::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

// ---- Database -----------------------------------------------------------------------------

std::filesystem::path default_database_file() { return data_dir() / "tessera.db"; }

int Database::latest_schema_version() { return kLatestVersion; }

Database::Database(const std::filesystem::path& file) : file_(file) {
  if (file.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(file.parent_path(), ec);
    if (ec) fail("{}: cannot create the folder: {}", file.parent_path().string(), ec.message());
  }
  // The connection is only used under mutex_, so SQLite's own per-connection mutex is redundant.
  const int rc = sqlite3_open_v2(file.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) {
    const std::string message = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close_v2(db_);
    db_ = nullptr;
    fail("{}: cannot open the database: {}", file.string(), message);
  }
  try {
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, kBusyTimeoutMs);
    migrate();
  } catch (...) {
    statements_.clear();
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw;
  }
}

Database::~Database() {
  statements_.clear();
  sqlite3_close_v2(db_);
}

void Database::fail_sqlite(std::string_view what, int rc) const {
  if ((rc & 0xff) == SQLITE_NOTADB) fail("{}: not a SQLite database (or it is encrypted or corrupt)", file_.string());
  if ((rc & 0xff) == SQLITE_CORRUPT) fail("{}: the database is corrupt: {}", file_.string(), sqlite3_errmsg(db_));
  fail("{}: {}: {}", file_.string(), what, sqlite3_errmsg(db_));
}

void Database::exec(const char* sql) {
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) fail_sqlite("cannot run a query", rc);
}

namespace {
int read_user_version(sqlite3* db, int* version) {
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &stmt, nullptr);
  if (rc == SQLITE_OK) {
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
      *version = sqlite3_column_int(stmt, 0);
      rc = SQLITE_OK;
    }
  }
  sqlite3_finalize(stmt);
  return rc;
}
}  // namespace

void Database::migrate() {
  // Reading the header is the first access to the file: a file that is not SQLite fails here.
  int version = 0;
  if (int rc = read_user_version(db_, &version); rc != SQLITE_OK) fail_sqlite("cannot read the schema version", rc);
  if (version > kLatestVersion)
    fail("{}: schema version {} is newer than this tessera understands ({}); upgrade tessera", file_.string(), version,
         kLatestVersion);
  if (version < 0) fail("{}: invalid schema version {}", file_.string(), version);
  exec("PRAGMA foreign_keys = ON");
  // The journal mode is stored in the file, so this only does work the first time. Switching it
  // needs the file to itself, and SQLite answers SQLITE_BUSY at once (without the busy handler)
  // while another connection opens the same new file, so wait our turn here by hand.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
  for (;;) {
    const int rc = sqlite3_exec(db_, "PRAGMA journal_mode = WAL", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) break;
    if ((rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED) fail_sqlite("cannot switch to WAL mode", rc);
    if (std::chrono::steady_clock::now() >= deadline) fail_sqlite("cannot switch to WAL mode", rc);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // NORMAL is durable against process crashes in WAL mode; only a power loss can drop the last
  // commits, never corrupt the file.
  exec("PRAGMA synchronous = NORMAL");
  if (version < kLatestVersion) {
    exec("BEGIN IMMEDIATE");
    try {
      // Another process may have migrated between the first read and taking the write lock.
      if (int rc = read_user_version(db_, &version); rc != SQLITE_OK) fail_sqlite("cannot read the schema version", rc);
      if (version > kLatestVersion)
        fail("{}: schema version {} is newer than this tessera understands ({}); upgrade tessera", file_.string(),
             version, kLatestVersion);
      for (int v = version; v < kLatestVersion; ++v) exec(kMigrations[v]);
      exec("COMMIT");
    } catch (...) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
    version = kLatestVersion;
  }
  schema_version_ = version;
}

void Database::begin(Session&) { exec("BEGIN IMMEDIATE"); }

void Database::commit(Session& session) {
  // Statements must be done before COMMIT, or a pending read would keep the transaction open.
  for (Statement* s : session.used_) s->reset();
  session.used_.clear();
  exec("COMMIT");
}

void Database::rollback(Session& session) noexcept {
  for (Statement* s : session.used_) s->reset();
  session.used_.clear();
  if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

// ---- Session ------------------------------------------------------------------------------

Statement& Database::Session::prepare(const std::string& sql) {
  auto it = db_.statements_.find(sql);
  if (it == db_.statements_.end())
    it = db_.statements_.emplace(sql, std::make_unique<Statement>(db_.db_, sql, db_.file_)).first;
  Statement& statement = *it->second;
  statement.reset();
  used_.push_back(&statement);
  return statement;
}

int64_t Database::Session::last_insert_id() const { return sqlite3_last_insert_rowid(db_.db_); }

int Database::Session::changes() const { return sqlite3_changes(db_.db_); }

Database::Session::~Session() {
  for (Statement* s : used_) s->reset();
}

}  // namespace tessera
