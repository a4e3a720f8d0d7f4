#include "cli/background_run.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "core/paths.h"

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

fs::path run_log_file(const std::string& id) { return data_dir() / "runs" / id / "train.log"; }

// The background trainer: `tessera train --worker ID [--resume]` in a new session, output to
// the log file. It reports readiness (or the error that stopped it) on the pipe it inherited.
void start_worker(const RunRecord& run, const std::string& command, bool resume) {
  int fds[2];
  if (pipe(fds) != 0) fail("cannot create a pipe: {}", std::strerror(errno));
  fs::create_directories(fs::path(run.log_file).parent_path());
  const pid_t pid = fork();
  if (pid < 0) fail("cannot start the training process: {}", std::strerror(errno));
  if (pid == 0) {
    close(fds[0]);
    setsid();
    const int null_fd = open("/dev/null", O_RDONLY);
    const int log_fd = open(run.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (null_fd < 0 || log_fd < 0) _exit(127);
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    const std::string ready_fd = std::to_string(fds[1]);
    std::vector<const char*> argv = {"tessera", command.c_str(), "--worker", run.id.c_str(), "--ready-fd",
                                      ready_fd.c_str()};
    if (resume) argv.push_back("--resume");
    argv.push_back(nullptr);
    execv("/proc/self/exe", const_cast<char* const*>(argv.data()));
    _exit(127);
  }
  close(fds[1]);
  // Wait for the first report. A closed pipe without one means the process died early.
  std::string message;
  char buf[4096];
  pollfd p{fds[0], POLLIN, 0};
  const int waited_ms = 120000;
  bool got = false;
  while (true) {
    const int r = poll(&p, 1, waited_ms);
    if (r == 0) break;  // still preparing: report the run as submitted anyway
    if (r < 0 && errno == EINTR) continue;
    const ssize_t n = read(fds[0], buf, sizeof buf);
    if (n <= 0) {
      got = true;
      break;
    }
    message.append(buf, static_cast<size_t>(n));
    if (message.find('\n') != std::string::npos) {
      got = true;
      break;
    }
  }
  close(fds[0]);
  if (got && message.empty()) {
    // No word at all: it exited before reporting; the store (or its log) knows why.
    waitpid(pid, nullptr, WNOHANG);
    RunStore store(open_store());
    const auto now = store.get(run.id);
    fail("the training process exited at once: {} (see {})",
         now && !now->error.empty() ? now->error : std::string("no reason given"), run.log_file);
  }
  if (!message.empty() && message.substr(0, 2) != "ok") {
    while (!message.empty() && message.back() == '\n') message.pop_back();
    throw Error(message);
  }
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
