#include "cli/background_run.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "core/error.h"
#include "core/paths.h"
#include "training/run_launcher.h"

namespace tessera::cli {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop{false};

void request_stop(int) { g_stop.store(true); }

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = request_stop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
}

}  // namespace

std::shared_ptr<Database> open_store() { return std::make_shared<Database>(default_database_file()); }

fs::path run_log_file(const std::string& id) { return training::run_folder(data_dir(), id) / "train.log"; }

void start_worker(const RunRecord& run, const std::string& command, bool resume) {
  training::start_worker(run, command, resume, data_dir());
}

void print_submitted(const std::string& id) {
  fmt::print("Run {} submitted.\nTo see the training run's progress, use:\ntessera runs describe {}\n", id, id);
}

int run_in_foreground(const std::shared_ptr<Database>& db, const RunRecord& run, bool resume, const RunJob& job) {
  install_stop_handlers();
  fs::create_directories(fs::path(run.log_file).parent_path());
  std::FILE* log = std::fopen(run.log_file.c_str(), "a");
  if (!log) fail("{}: cannot write the log: {}", run.log_file, std::strerror(errno));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(log, std::fclose);
  training::PretrainJobOptions options;
  options.resume = resume;
  options.log = log;
  options.echo = stderr;
  options.progress_bar = isatty(STDERR_FILENO) != 0;
  fmt::print(stderr, "Run {} (log: {})\n", run.id, run.log_file);
  const int code = job(db, run.id, options, g_stop);
  fmt::print(stderr, "\n");
  return code;
}


void run_worker(const std::string& id, int ready_fd, bool resume, const RunJob& job) {
  install_stop_handlers();
  training::PretrainJobOptions options;
  options.resume = resume;
  options.on_ready = [ready_fd, sent = std::make_shared<bool>(false)](const std::string& error) {
    if (ready_fd < 0 || *sent) return;
    *sent = true;
    const std::string line = (error.empty() ? std::string("ok") : error) + "\n";
    if (write(ready_fd, line.data(), line.size()) < 0) {
    }
    close(ready_fd);
  };
  int code = 1;
  try {
    code = job(open_store(), id, options, g_stop);
  } catch (const std::exception&) {
    std::exit(1);  // already logged and recorded as failed
  }
  std::exit(code);
}

}  // namespace tessera::cli
