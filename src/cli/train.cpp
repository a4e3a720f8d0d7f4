// tessera train -f config.yaml [--follow]: pre-training runs. Without --follow the run goes to a
// background process (its own session, its output in the run's log file) and the command returns
// once that process has read the data and started training, or reports why it could not.
// `tessera runs resume ID` continues a run from its newest checkpoint the same way.
#include <cstdlib>
#include <memory>

#include <fmt/format.h>

#include "cli/background_run.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/paths.h"
#include "store/run_store.h"
#include "training/finetune_job.h"
#include "training/pretrain_job.h"
#include "training/train_config.h"

namespace tessera::cli {

namespace fs = std::filesystem;

namespace {

// The command whose worker runs a run of this kind, and the job itself.
std::pair<std::string, RunJob> job_for_kind(const std::string& kind) {
  if (kind == "pretrain") return {"train", training::run_pretrain_job};
  if (kind == "ft") return {"finetune", training::run_finetune_job};
  fail("runs of kind '{}' cannot be resumed by this build", kind);
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
      run_worker(opts->worker, opts->ready_fd, opts->resume, training::run_pretrain_job);
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
    if (opts->follow) std::exit(run_in_foreground(db, run, false, training::run_pretrain_job));
    start_worker(run, "train", false);
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
    const auto [command, job] = job_for_kind(run.kind);
    if (ropts->follow) std::exit(run_in_foreground(db, run, true, job));
    start_worker(run, command, true);
    fmt::print("Run {} resumed.\nTo see the training run's progress, use:\ntessera runs describe {}\n", run.id, run.id);
  });
}

}  // namespace tessera::cli
