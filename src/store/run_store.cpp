#include "store/run_store.h"

#include <openssl/rand.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace tessera {

namespace {

constexpr std::string_view kAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
constexpr size_t kIdSuffixLength = 6;

// Every column of `runs`, in the order read_run expects.
constexpr const char* kRunColumns =
    "id, kind, model, status, config_file, config_text, save_folder, log_file, pid, pid_start, host, created_ms,"
    " started_ms, finished_ms, updated_ms, stop_requested_ms, step, total_steps, tokens, total_tokens, loss,"
    " eval_step, eval_loss, best_eval_loss, tokens_per_second, error, mlflow_run_id, mlflow_experiment_id,"
    " tracking_uri, registered_model, registered_version, details, owner_token_id";

// SQLite turns a bound NaN into NULL; a NaN loss is worth keeping (it says the run diverged), so
// it goes in as text, which a REAL column keeps as it is.
void bind_number(Statement& s, int index, double value) {
  if (std::isnan(value))
    s.bind_text(index, "NaN");
  else
    s.bind_real(index, value);
}

std::optional<double> read_number(const Statement& s, int column) {
  if (s.column_is_null(column)) return std::nullopt;
  if (s.column_text(column) == "NaN") return std::nan("");
  return s.column_real(column);
}

RunRecord read_run(const Statement& s) {
  RunRecord r;
  int c = 0;
  r.id = s.column_text(c++);
  r.kind = s.column_text(c++);
  r.model = s.column_text(c++);
  const std::string status = s.column_text(c++);
  try {
    r.status = parse_run_status(status);
  } catch (const Error&) {
    // A status written by a newer tessera: shown as failed rather than refusing the whole list.
    r.status = RunStatus::failed;
  }
  r.config_file = s.column_text(c++);
  r.config_text = s.column_text(c++);
  r.save_folder = s.column_text(c++);
  r.log_file = s.column_text(c++);
  r.pid = s.column_opt_int(c++);
  r.pid_start = s.column_opt_int(c++);
  r.host = s.column_text(c++);
  r.created_ms = s.column_int(c++);
  r.started_ms = s.column_opt_int(c++);
  r.finished_ms = s.column_opt_int(c++);
  r.updated_ms = s.column_opt_int(c++);
  r.stop_requested_ms = s.column_opt_int(c++);
  r.step = s.column_int(c++);
  r.total_steps = s.column_int(c++);
  r.tokens = s.column_int(c++);
  r.total_tokens = s.column_int(c++);
  r.loss = read_number(s, c++);
  r.eval_step = s.column_opt_int(c++);
  r.eval_loss = read_number(s, c++);
  r.best_eval_loss = read_number(s, c++);
  r.tokens_per_second = read_number(s, c++);
  r.error = s.column_text(c++);
  r.mlflow_run_id = s.column_text(c++);
  r.mlflow_experiment_id = s.column_text(c++);
  r.tracking_uri = s.column_text(c++);
  r.registered_model = s.column_text(c++);
  r.registered_version = s.column_opt_int(c++);
  r.details = s.column_text(c++);
  r.owner_token_id = s.column_opt_int(c++);
  return r;
}

std::string sanitize_id_part(std::string_view text, std::string_view what) {
  std::string out;
  for (char ch : text) {
    const char c = (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : ch;
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    out += ok ? c : '-';
  }
  if (out.empty()) fail("run id: the {} must not be empty", what);
  return out;
}

// Uniform over the 36 characters: bytes from 252 up are drawn again rather than folded, so that
// no character is likelier than another.
std::string random_suffix() {
  std::string out;
  while (out.size() < kIdSuffixLength) {
    unsigned char bytes[16];
    if (RAND_bytes(bytes, sizeof bytes) != 1) fail("run id: the system random generator failed (RAND_bytes)");
    for (unsigned char b : bytes) {
      if (b >= 252 || out.size() == kIdSuffixLength) continue;
      out += kAlphabet[b % kAlphabet.size()];
    }
  }
  return out;
}

void check_details(const std::string& details) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(details);
  } catch (const nlohmann::json::exception& e) {
    fail("run details: not valid JSON: {}", e.what());
  }
  if (!j.is_object()) fail("run details: must be a JSON object, got {}", j.type_name());
}

bool id_exists(Database::Session& session, const std::string& id) {
  auto& s = session.prepare("SELECT 1 FROM runs WHERE id = ?1");
  s.bind_text(1, id);
  const bool found = s.step();
  s.reset();
  return found;
}

[[noreturn]] void fail_no_run(const std::string& id) { fail("no run '{}' (see `tessera runs list`)", id); }

// /proc/<pid>/stat: "pid (comm) state ppid ...". comm may hold spaces and parentheses, so the
// fields are counted from the last ')'.
std::optional<std::vector<std::string>> proc_stat_fields(int64_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  if (!in) return std::nullopt;
  std::string line;
  std::getline(in, line);
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  std::vector<std::string> fields;  // fields[0] is field 3 (state)
  for (std::string f; rest >> f;) fields.push_back(f);
  return fields;
}

}  // namespace

// ---- status ----------------------------------------------------------------------------------

std::string_view to_string(RunStatus status) {
  switch (status) {
    case RunStatus::queued: return "queued";
    case RunStatus::running: return "running";
    case RunStatus::completed: return "completed";
    case RunStatus::failed: return "failed";
    case RunStatus::stopped: return "stopped";
  }
  return "failed";
}

RunStatus parse_run_status(std::string_view text) {
  for (RunStatus s : {RunStatus::queued, RunStatus::running, RunStatus::completed, RunStatus::failed,
                      RunStatus::stopped})
    if (text == to_string(s)) return s;
  fail("run status '{}': expected queued, running, completed, failed or stopped", text);
}

bool is_finished(RunStatus status) {
  return status == RunStatus::completed || status == RunStatus::failed || status == RunStatus::stopped;
}

// ---- processes -------------------------------------------------------------------------------

std::string this_host() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "";
  return name;
}

std::optional<int64_t> process_start_time(int64_t pid) {
  const auto fields = proc_stat_fields(pid);
  // starttime is field 22, i.e. fields[19].
  if (!fields || fields->size() < 20) return std::nullopt;
  try {
    return std::stoll((*fields)[19]);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

bool process_alive(int64_t pid, std::optional<int64_t> start) {
  if (pid <= 0 || pid > INT32_MAX) return false;
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
  // kill() succeeds for a zombie: a process that has exited but was not waited for yet.
  if (const auto fields = proc_stat_fields(pid)) {
    if (!fields->empty() && ((*fields)[0] == "Z" || (*fields)[0] == "X")) return false;
    if (start) {
      const auto now_start = process_start_time(pid);
      if (now_start && *now_start != *start) return false;
    }
  }
  return true;
}

bool trainer_alive(const RunRecord& run) {
  if (!run.pid) return true;
  if (!run.host.empty() && run.host != this_host()) return true;
  return process_alive(*run.pid, run.pid_start);
}

// ---- RunStore --------------------------------------------------------------------------------

RunStore::RunStore(std::shared_ptr<Database> db, std::function<int64_t()> now_ms)
    : db_(std::move(db)), now_ms_(std::move(now_ms)), probe_(trainer_alive) {
  if (!db_) fail("runs: no database");
}

int64_t RunStore::now() const {
  if (now_ms_) return now_ms_();
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void RunStore::set_process_probe(std::function<bool(const RunRecord&)> probe) {
  probe_ = probe ? std::move(probe) : std::function<bool(const RunRecord&)>(trainer_alive);
}

std::string RunStore::new_run_id(std::string_view kind, std::string_view model) const {
  const std::string stem = sanitize_id_part(kind, "kind") + "-" + sanitize_id_part(model, "model") + "-";
  // 36^6 ids: a clash is rare, and ten in a row means the random source is broken.
  for (int attempt = 0; attempt < 10; ++attempt) {
    std::string id = stem + random_suffix();
    if (!db_->read([&](Database::Session& session) { return id_exists(session, id); })) return id;
  }
  fail("run id: ten random ids for '{}' were all taken", stem);
}

RunRecord RunStore::create(RunRecord run) {
  if (run.kind.empty()) fail("run: the kind must not be empty");
  if (run.model.empty()) fail("run: the model must not be empty");
  if (run.details.empty()) run.details = "{}";
  check_details(run.details);
  if (run.created_ms == 0) run.created_ms = now();
  run.updated_ms = run.created_ms;
  for (int attempt = 0;; ++attempt) {
    const bool generated = run.id.empty();
    if (generated) run.id = new_run_id(run.kind, run.model);
    const bool stored = db_->write([&](Database::Session& session) {
      // Checked in the same transaction as the insert: another process may have taken the id
      // since new_run_id looked.
      if (id_exists(session, run.id)) return false;
      auto& s = session.prepare(fmt::format("INSERT INTO runs ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,"
                                            " ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24,"
                                            " ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33)",
                                            kRunColumns));
      int i = 0;
      const auto text = [&](const std::string& v) { s.bind_text(++i, v); };
      const auto integer = [&](std::optional<int64_t> v) { s.bind_int(++i, v); };
      const auto number = [&](const std::optional<double>& v) {
        if (v)
          bind_number(s, ++i, *v);
        else
          s.bind_null(++i);
      };
      text(run.id), text(run.kind), text(run.model), text(std::string(to_string(run.status)));
      text(run.config_file), text(run.config_text), text(run.save_folder), text(run.log_file);
      integer(run.pid), integer(run.pid_start), text(run.host), integer(run.created_ms);
      integer(run.started_ms), integer(run.finished_ms), integer(run.updated_ms), integer(run.stop_requested_ms);
      integer(run.step), integer(run.total_steps), integer(run.tokens), integer(run.total_tokens);
      number(run.loss), integer(run.eval_step), number(run.eval_loss), number(run.best_eval_loss);
      number(run.tokens_per_second), text(run.error), text(run.mlflow_run_id), text(run.mlflow_experiment_id);
      text(run.tracking_uri), text(run.registered_model), integer(run.registered_version), text(run.details);
      integer(run.owner_token_id);
      s.run();
      return true;
    });
    if (stored) return run;
    if (!generated || attempt >= 10) fail("run '{}' already exists", run.id);
    run.id.clear();
  }
}

std::optional<RunRecord> RunStore::get(const std::string& id) {
  auto run = db_->read([&](Database::Session& session) -> std::optional<RunRecord> {
    auto& s = session.prepare(fmt::format("SELECT {} FROM runs WHERE id = ?1", kRunColumns));
    s.bind_text(1, id);
    if (!s.step()) return std::nullopt;
    return read_run(s);
  });
  if (!run) return std::nullopt;
  return refresh_liveness(std::move(*run));
}

RunRecord RunStore::resolve(const std::string& key) {
  if (key.empty()) fail("give a run id (see `tessera runs list`)");
  if (auto run = get(key)) return std::move(*run);
  const auto ids = db_->read([&](Database::Session& session) {
    // substr rather than LIKE, so that '_' and '%' in a key are plain characters.
    auto& s = session.prepare("SELECT id FROM runs WHERE substr(id, 1, length(?1)) = ?1 ORDER BY created_ms DESC");
    s.bind_text(1, key);
    std::vector<std::string> out;
    while (s.step()) out.push_back(s.column_text(0));
    return out;
  });
  if (ids.empty()) fail_no_run(key);
  if (ids.size() > 1) {
    std::vector<std::string> shown(ids.begin(), ids.begin() + std::min<size_t>(ids.size(), 5));
    fail("run '{}' is ambiguous: it starts {} runs' ids ({}{}); give more of the id", key, ids.size(),
         fmt::join(shown, ", "), ids.size() > shown.size() ? ", ..." : "");
  }
  auto run = get(ids.front());
  if (!run) fail_no_run(key);
  return std::move(*run);
}

std::vector<RunRecord> RunStore::list(size_t limit) {
  auto runs = db_->read([&](Database::Session& session) {
    auto& s = session.prepare(
        fmt::format("SELECT {} FROM runs ORDER BY created_ms DESC, rowid DESC LIMIT ?1", kRunColumns));
    s.bind_int(1, limit == 0 ? int64_t{-1} : static_cast<int64_t>(limit));
    std::vector<RunRecord> out;
    while (s.step()) out.push_back(read_run(s));
    return out;
  });
  for (auto& run : runs) run = refresh_liveness(std::move(run));
  return runs;
}

RunRecord RunStore::refresh_liveness(RunRecord run) {
  if (run.status != RunStatus::running || probe_(run)) return run;
  const bool stopping = run.stop_requested_ms.has_value();
  const RunStatus verdict = stopping ? RunStatus::stopped : RunStatus::failed;
  const std::string error = stopping ? "" : std::string(kRunVanishedError);
  const int64_t t = now();
  // Only the state that was judged changes: a resume that gave the run a new process in the
  // meantime is left alone.
  bool changed = false, persisted = true;
  try {
    changed = db_->write([&](Database::Session& session) {
      auto& s = session.prepare(
          "UPDATE runs SET status = ?1, error = ?2, finished_ms = ?3, updated_ms = ?3"
          " WHERE id = ?4 AND status = 'running' AND pid IS ?5 AND pid_start IS ?6");
      s.bind_text(1, to_string(verdict)).bind_text(2, error).bind_int(3, t).bind_text(4, run.id);
      s.bind_int(5, run.pid).bind_int(6, run.pid_start).run();
      return session.changes() == 1;
    });
  } catch (const Error&) {
    // A file this user may only read (or a lock held too long): the verdict is still shown, and
    // the next reader that can write records it.
    persisted = false;
  }
  if (changed || !persisted) {
    run.status = verdict;
    run.error = error;
    run.finished_ms = t;
    run.updated_ms = t;
    return run;
  }
  auto again = db_->read([&](Database::Session& session) -> std::optional<RunRecord> {
    auto& s = session.prepare(fmt::format("SELECT {} FROM runs WHERE id = ?1", kRunColumns));
    s.bind_text(1, run.id);
    if (!s.step()) return std::nullopt;
    return read_run(s);
  });
  return again ? std::move(*again) : run;
}

void RunStore::update_one(const std::string& id, const std::string& sql, const std::function<void(Statement&)>& bind) {
  db_->write([&](Database::Session& session) {
    auto& s = session.prepare(sql);
    bind(s);
    s.run();
    if (session.changes() != 1) fail_no_run(id);
  });
}

void RunStore::mark_running(const std::string& id, int64_t pid) {
  if (pid <= 0) fail("run '{}': invalid process id {}", id, pid);
  const auto start = process_start_time(pid);
  const std::string host = this_host();
  const int64_t t = now();
  update_one(id,
             "UPDATE runs SET status = 'running', pid = ?2, pid_start = ?3, host = ?4, started_ms = COALESCE(started_ms, ?5),"
             " finished_ms = NULL, stop_requested_ms = NULL, error = '', updated_ms = ?5 WHERE id = ?1",
             [&](Statement& s) {
               s.bind_text(1, id).bind_int(2, pid).bind_int(3, start).bind_text(4, host).bind_int(5, t);
             });
}

void RunStore::update_progress(const std::string& id, int64_t step, int64_t tokens, double loss,
                               double tokens_per_second) {
  const int64_t t = now();
  update_one(id,
             "UPDATE runs SET step = ?2, tokens = ?3, loss = ?4, tokens_per_second = ?5, updated_ms = ?6 WHERE id = ?1",
             [&](Statement& s) {
               s.bind_text(1, id).bind_int(2, step).bind_int(3, tokens);
               bind_number(s, 4, loss);
               bind_number(s, 5, tokens_per_second);
               s.bind_int(6, t);
             });
}

void RunStore::set_totals(const std::string& id, int64_t total_steps, int64_t total_tokens) {
  if (total_steps < 0 || total_tokens < 0) fail("run '{}': totals must not be negative", id);
  update_one(id, "UPDATE runs SET total_steps = ?2, total_tokens = ?3, updated_ms = ?4 WHERE id = ?1",
             [&](Statement& s) { s.bind_text(1, id).bind_int(2, total_steps).bind_int(3, total_tokens).bind_int(4, now()); });
}

void RunStore::set_eval(const std::string& id, int64_t step, double loss) {
  const int64_t t = now();
  // The best is the smallest finite loss; a NaN never replaces a number.
  update_one(id,
             "UPDATE runs SET eval_step = ?2, eval_loss = ?3, updated_ms = ?4,"
             " best_eval_loss = CASE WHEN typeof(?3) <> 'real' THEN best_eval_loss"
             " WHEN best_eval_loss IS NULL OR typeof(best_eval_loss) <> 'real' OR ?3 < best_eval_loss THEN ?3"
             " ELSE best_eval_loss END WHERE id = ?1",
             [&](Statement& s) {
               s.bind_text(1, id).bind_int(2, step);
               bind_number(s, 3, loss);
               s.bind_int(4, t);
             });
}

bool RunStore::finish(const std::string& id, RunStatus status, const std::string& error) {
  if (!is_finished(status)) fail("run '{}': cannot finish with status {}", id, to_string(status));
  std::string line = error;
  std::replace(line.begin(), line.end(), '\n', ' ');
  const int64_t t = now();
  return db_->write([&](Database::Session& session) {
    if (!id_exists(session, id)) fail_no_run(id);
    auto& s = session.prepare(
        "UPDATE runs SET status = ?2, error = ?3, finished_ms = ?4, updated_ms = ?4"
        " WHERE id = ?1 AND status IN ('queued', 'running')");
    s.bind_text(1, id).bind_text(2, to_string(status)).bind_text(3, line).bind_int(4, t).run();
    return session.changes() == 1;
  });
}

void RunStore::request_stop(const std::string& id) {
  const int64_t t = now();
  update_one(id, "UPDATE runs SET stop_requested_ms = ?2, updated_ms = ?2 WHERE id = ?1",
             [&](Statement& s) { s.bind_text(1, id).bind_int(2, t); });
}

void RunStore::set_mlflow(const std::string& id, const std::string& tracking_uri, const std::string& experiment_id,
                          const std::string& run_id) {
  update_one(id,
             "UPDATE runs SET tracking_uri = ?2, mlflow_experiment_id = ?3, mlflow_run_id = ?4, updated_ms = ?5"
             " WHERE id = ?1",
             [&](Statement& s) {
               s.bind_text(1, id).bind_text(2, tracking_uri).bind_text(3, experiment_id).bind_text(4, run_id);
               s.bind_int(5, now());
             });
}

void RunStore::set_registered(const std::string& id, const std::string& model_name, int64_t version) {
  update_one(id, "UPDATE runs SET registered_model = ?2, registered_version = ?3, updated_ms = ?4 WHERE id = ?1",
             [&](Statement& s) { s.bind_text(1, id).bind_text(2, model_name).bind_int(3, version).bind_int(4, now()); });
}

void RunStore::set_details(const std::string& id, const std::string& json_object) {
  check_details(json_object);
  update_one(id, "UPDATE runs SET details = ?2, updated_ms = ?3 WHERE id = ?1",
             [&](Statement& s) { s.bind_text(1, id).bind_text(2, json_object).bind_int(3, now()); });
}

void RunStore::add_metrics(const std::string& run_id, int64_t step, const std::vector<MetricValue>& values,
                           int64_t time_ms) {
  for (const auto& v : values)
    if (v.name.empty()) fail("run '{}': a metric at step {} has an empty name", run_id, step);
  const int64_t t = time_ms ? time_ms : now();
  db_->write([&](Database::Session& session) {
    // Checked here for a clear message; the foreign key would only say "constraint failed".
    if (!id_exists(session, run_id)) fail_no_run(run_id);
    for (const auto& v : values) {
      auto& s = session.prepare(
          "INSERT OR REPLACE INTO run_metrics (run_id, name, step, value, time_ms) VALUES (?1, ?2, ?3, ?4, ?5)");
      s.bind_text(1, run_id).bind_text(2, v.name).bind_int(3, step);
      bind_number(s, 4, v.value);
      s.bind_int(5, t).run();
    }
  });
}

std::vector<MetricPoint> RunStore::metrics(const std::string& run_id, const std::string& name) const {
  return db_->read([&](Database::Session& session) {
    auto& s = session.prepare("SELECT step, value, time_ms FROM run_metrics WHERE run_id = ?1 AND name = ?2 ORDER BY step");
    s.bind_text(1, run_id).bind_text(2, name);
    std::vector<MetricPoint> out;
    while (s.step()) out.push_back({s.column_int(0), read_number(s, 1).value_or(std::nan("")), s.column_int(2)});
    return out;
  });
}

std::vector<std::string> RunStore::metric_names(const std::string& run_id) const {
  return db_->read([&](Database::Session& session) {
    auto& s = session.prepare("SELECT DISTINCT name FROM run_metrics WHERE run_id = ?1 ORDER BY name");
    s.bind_text(1, run_id);
    std::vector<std::string> out;
    while (s.step()) out.push_back(s.column_text(0));
    return out;
  });
}

}  // namespace tessera
