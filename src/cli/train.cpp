// tessera train -f config.yaml [--follow]: pre-training runs. Without --follow the run goes to a
// background process (its own session, its output in the run's log file) and the command returns
// once that process has read the data and started training, or reports why it could not.
// `tessera runs resume ID` continues a run from its newest checkpoint the same way.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/paths.h"
#include "store/run_store.h"
#include "training/pretrain_job.h"
#include "training/train_config.h"

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

std::shared_ptr<Database> open_store() { return std::make_shared<Database>(default_database_file()); }

fs::path run_log_file(const std::string& id) { return data_dir() / "runs" / id / "train.log"; }

// The background trainer: `tessera train --worker ID [--resume]` in a new session, output to
// the log file. It reports readiness (or the error that stopped it) on the pipe it inherited.
int start_worker(const RunRecord& run, bool resume) {
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
    std::vector<const char*> argv = {"tessera", "train", "--worker", run.id.c_str(), "--ready-fd", ready_fd.c_str()};
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
  return static_cast<int>(pid);
}

void print_submitted(const std::string& id) {
  fmt::print("Run {} submitted.\nTo see the training run's progress, use:\ntessera runs describe {}\n", id, id);
}

int run_in_foreground(const std::shared_ptr<Database>& db, const RunRecord& run, bool resume) {
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
  const int code = training::run_pretrain_job(db, run.id, options, g_stop);
  fmt::print(stderr, "\n");
  return code;
}

}  // namespace

void register_train(CLI::App& app) {
  struct Options {
    std::string file, worker;
    bool follow = false, resume = false;
    int ready_fd = -1;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("train", "Pre-train a DBRX model from a YAML config (see docs/training.md)");
  cmd->add_option("-f,--file", opts->file, "The run's config (YAML)");
  cmd->add_flag("--follow", opts->follow, "Train in the foreground with a progress bar (Ctrl-C stops and checkpoints)");
  // The background process that `train` and `runs resume` start.
  cmd->add_option("--worker", opts->worker)->group("");
  cmd->add_option("--ready-fd", opts->ready_fd)->group("");
  cmd->add_flag("--resume", opts->resume)->group("");
  cmd->callback([opts] {
    if (!opts->worker.empty()) {
      install_stop_handlers();
      training::PretrainJobOptions options;
      options.resume = opts->resume;
      const int fd = opts->ready_fd;
      options.on_ready = [fd, sent = std::make_shared<bool>(false)](const std::string& error) {
        if (fd < 0 || *sent) return;
        *sent = true;
        const std::string line = (error.empty() ? std::string("ok") : error) + "\n";
        if (write(fd, line.data(), line.size()) < 0) {
        }
        close(fd);
      };
      int code = 1;
      try {
        code = training::run_pretrain_job(open_store(), opts->worker, options, g_stop);
      } catch (const std::exception&) {
        std::exit(1);  // already logged and recorded as failed
      }
      std::exit(code);
    }
    if (opts->file.empty()) fail("train: give the run's config with -f config.yaml");
    const training::TrainConfig config = training::load_train_config(opts->file);
    training::resolve_model_config(config);  // a bad model is reported before a run exists
    auto db = open_store();
    RunStore store(db);
    RunRecord run;
    run.kind = "pretrain";
    run.model = training::model_short_name(config);
    run.id = store.new_run_id(run.kind, run.model);
    run.config_file = fs::absolute(opts->file).lexically_normal().string();
    run.config_text = config.yaml_text;
    run.save_folder = config.save_folder.string();
    run.log_file = run_log_file(run.id).string();
    run = store.create(run);
    if (opts->follow) std::exit(run_in_foreground(db, run, false));
    start_worker(run, false);
    print_submitted(run.id);
  });

  // `tessera runs resume ID`, next to the other run commands.
  CLI::App* runs = nullptr;
  for (auto* sub : app.get_subcommands([](CLI::App* a) { return a->get_name() == "runs"; })) runs = sub;
  if (!runs) return;
  struct ResumeOptions {
    std::string id;
    bool follow = false;
  };
  auto ropts = std::make_shared<ResumeOptions>();
  auto* resume = runs->add_subcommand("resume", "Continue a stopped or failed run from its newest checkpoint");
  resume->add_option("ID", ropts->id, "Run id (or a unique prefix)")->required();
  resume->add_flag("--follow", ropts->follow, "Train in the foreground with a progress bar");
  resume->callback([ropts] {
    auto db = open_store();
    RunStore store(db);
    const RunRecord run = store.resolve(ropts->id);
    if (run.running()) fail("run {} is still running (pid {})", run.id, run.pid.value_or(0));
    if (run.status == RunStatus::completed) fail("run {} has already completed", run.id);
    if (ropts->follow) std::exit(run_in_foreground(db, run, true));
    start_worker(run, true);
    fmt::print("Run {} resumed.\nTo see the training run's progress, use:\ntessera runs describe {}\n", run.id, run.id);
  });
}

}  // namespace tessera::cli
