#pragma once
// tessera's own state (API tokens, usage, later runs and the model registry) lives in one SQLite
// file that several processes open at once: the server writes usage while `tessera tokens`
// creates and revokes tokens. WAL lets readers and one writer overlap, busy_timeout makes a
// writer wait its turn instead of failing, and BEGIN IMMEDIATE takes the write lock up front so
// that a read-then-write transaction can never deadlock against another process.
//
// SQL is only ever fixed text with bound parameters. Statements are prepared once per
// connection and reused.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace tessera {

// One prepared statement. Parameters and columns are numbered as in SQLite: parameters from 1,
// columns from 0.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql, const std::filesystem::path& file);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind_int(int index, int64_t value);
  Statement& bind_real(int index, double value);
  Statement& bind_text(int index, std::string_view value);
  Statement& bind_blob(int index, std::string_view bytes);
  Statement& bind_null(int index);
  Statement& bind_int(int index, std::optional<int64_t> value);
  Statement& bind_opt_text(int index, const std::optional<std::string>& value);

  // True when a row is ready to read, false when the statement has finished.
  bool step();
  // Runs a statement that returns no rows (or ignores them).
  void run();

  int64_t column_int(int column) const;
  double column_real(int column) const;
  std::string column_text(int column) const;
  std::string column_blob(int column) const;
  bool column_is_null(int column) const;
  std::optional<int64_t> column_opt_int(int column) const;

  // Ends any read in progress (an unfinished SELECT pins a WAL snapshot) and clears bindings.
  void reset();

 private:
  void check_bind(int rc, int index);
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  const std::filesystem::path& file_;
};

// data_dir()/tessera.db: the file the server and the CLI share unless told otherwise.
std::filesystem::path default_database_file();

class Database {
 public:
  // Opens (creating the file and its folder if needed) and brings the schema up to date.
  explicit Database(const std::filesystem::path& file);
  ~Database();
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  const std::filesystem::path& file() const { return file_; }
  // The schema version of the file (PRAGMA user_version) after the migrations at open.
  int schema_version() const { return schema_version_; }
  // The version this build migrates to; a file with a higher one is refused.
  static int latest_schema_version();

  // Access to the connection while the database's mutex is held. Statements taken from a
  // session are reset when it ends.
  class Session {
   public:
    Statement& prepare(const std::string& sql);
    int64_t last_insert_id() const;
    int changes() const;
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

   private:
    friend class Database;
    explicit Session(Database& db) : db_(db), lock_(db.mutex_) {}
    Database& db_;
    std::unique_lock<std::mutex> lock_;
    std::vector<Statement*> used_;
  };

  // Runs fn(Session&) with the connection to itself, outside any explicit transaction.
  template <typename Fn>
  decltype(auto) read(Fn&& fn) {
    Session session(*this);
    return fn(session);
  }

  // Runs fn(Session&) inside BEGIN IMMEDIATE ... COMMIT; an exception rolls back and propagates.
  template <typename Fn>
  decltype(auto) write(Fn&& fn) {
    Session session(*this);
    begin(session);
    try {
      if constexpr (std::is_void_v<decltype(fn(session))>) {
        fn(session);
        commit(session);
      } else {
        decltype(auto) result = fn(session);
        commit(session);
        return result;
      }
    } catch (...) {
      rollback(session);
      throw;
    }
  }

 private:
  void exec(const char* sql);
  void migrate();
  void begin(Session& session);
  void commit(Session& session);
  void rollback(Session& session) noexcept;
  [[noreturn]] void fail_sqlite(std::string_view what, int rc) const;

  std::filesystem::path file_;
  sqlite3* db_ = nullptr;
  int schema_version_ = 0;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<Statement>, std::less<>> statements_;
};

}  // namespace tessera
