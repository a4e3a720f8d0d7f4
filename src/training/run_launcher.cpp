#include "training/run_launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "store/database.h"

extern char** environ;

namespace tessera::training {

namespace fs = std::filesystem;

fs::path run_folder(const fs::path& home, const std::string& id) { return home / "runs" / id; }

void start_worker(const RunRecord& run, const std::string& command, bool resume, const fs::path& home) {
  fs::create_directories(fs::path(run.log_file).parent_path());
  // Everything the child needs is built before fork: a server forks from a process with many
  // threads, and its child may only make async-signal-safe calls until exec.
  constexpr int kReadyFd = 3;
  const std::string ready_fd = std::to_string(kReadyFd);
  std::vector<const char*> argv = {"tessera", command.c_str(), "--worker", run.id.c_str(), "--ready-fd", ready_fd.c_str()};
  if (resume) argv.push_back("--resume");
  argv.push_back(nullptr);
  const std::string home_var = "TESSERA_HOME=" + fs::absolute(home).string();
  std::vector<const char*> envp;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "TESSERA_HOME=", 13) != 0) envp.push_back(*e);
  envp.push_back(home_var.c_str());
  envp.push_back(nullptr);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) fail("cannot create a pipe: {}", std::strerror(errno));
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    fail("cannot start the training process: {}", std::strerror(errno));
  }
  if (pid == 0) {
    // The child starts a session and forks the trainer, which init adopts once the child exits.
    setsid();
    if (fork() != 0) _exit(0);
    const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    const int log_fd = open(run.log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (null_fd < 0 || log_fd < 0) _exit(127);
    if (dup2(null_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0 || dup2(fds[1], kReadyFd) < 0) _exit(127);
    // Nor its signal handling: a server blocks SIGTERM in its threads to wait for it, and a
    // blocked or ignored signal stays so across exec, which would make the trainer unstoppable.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGQUIT, SIGUSR1, SIGUSR2}) sigaction(sig, &dfl, nullptr);
    // Nothing else of the starter's crosses over: a server's listening socket kept open by a
    // trainer would outlive the server.
    close_range(kReadyFd + 1, ~0U, 0);
    execve("/proc/self/exe", const_cast<char* const*>(argv.data()), const_cast<char* const*>(envp.data()));
    _exit(127);
  }
  close(fds[1]);
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  // Wait for the first report. A closed pipe without one means the trainer died early.
  std::string message;
  char buf[4096];
  pollfd p{fds[0], POLLIN, 0};
  bool got = false;
  while (true) {
    const int r = poll(&p, 1, 120000);
    if (r == 0) break;  // still preparing: the run counts as submitted anyway
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    const ssize_t n = read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
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
    RunStore store(std::make_shared<Database>(home / "tessera.db"));
    const auto now = store.get(run.id);
    fail("the training process exited at once: {} (see {})",
         now && !now->error.empty() ? now->error : std::string("no reason given"), run.log_file);
  }
  if (!message.empty() && message.substr(0, 2) != "ok") {
    while (!message.empty() && message.back() == '\n') message.pop_back();
    throw Error(message);
  }
}

RunRecord request_stop(RunStore& store, const std::string& id) {
  RunRecord run = store.resolve(id);
  if (is_finished(run.status))
    fail("run '{}' is not running (it is {}); nothing to stop", run.id, to_string(run.status));
  store.request_stop(run.id);
  if (!run.pid) {
    // Queued and not started yet: it never will.
    store.finish(run.id, RunStatus::stopped);
  } else {
    const std::string host = this_host();
    if (!run.host.empty() && run.host != host)
      fail("run '{}' runs on host '{}', not here ('{}'); stop it there", run.id, run.host, host);
    if (process_alive(*run.pid, run.pid_start) && kill(static_cast<pid_t>(*run.pid), SIGTERM) != 0 && errno != ESRCH)
      fail("run '{}': cannot signal process {}: {}", run.id, *run.pid, std::strerror(errno));
  }
  return store.get(run.id).value_or(run);
}

}  // namespace tessera::training
