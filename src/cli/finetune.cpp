// tessera finetune create: specializes a model on a dataset. The data is checked here, before any
// run exists: every bad line is listed and nothing starts. --validate-only stops after that with
// the token counts and a cost estimate.
#include <cstdlib>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include "cli/background_run.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/paths.h"
#include "training/finetune_job.h"

namespace tessera::cli {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, ',');)
    if (!part.empty()) out.push_back(part);
  return out;
}

}  // namespace

void register_finetune(CLI::App& app) {
  struct Options {
    std::string model, task = "instruction-finetune", register_to, duration = "3ep", targets, experiment;
    std::vector<std::string> train_data;
    std::optional<double> lr;
    int64_t context_length = 512, batch_size = 8, lora_rank = 0;
    double lora_alpha = 16, eval_fraction = 0, price = 3.0;
    uint64_t seed = 17;
    bool validate_only = false, follow = false, resume = false;
    std::string worker;
    int ready_fd = -1;
  };
  auto o = std::make_shared<Options>();
  auto* ft = app.add_subcommand("finetune", "Fine-tune a model on your data (see docs/training.md)");
  ft->add_option("--worker", o->worker)->group("");
  ft->add_option("--ready-fd", o->ready_fd)->group("");
  ft->add_flag("--resume", o->resume)->group("");
  ft->callback([o] {
    if (!o->worker.empty()) run_worker(o->worker, o->ready_fd, o->resume, training::run_finetune_job);
  });

  auto* create = ft->add_subcommand("create", "Start a fine-tuning run");
  create->add_option("--model", o->model, "Base model: a registered name[/version], a model folder, or a preset")
      ->required();
  create->add_option("--train-data", o->train_data, "JSONL file (or text files/folders for continued-pretrain)")
      ->required();
  create->add_option("--task", o->task, "instruction-finetune | chat-completion | continued-pretrain")
      ->capture_default_str();
  create->add_option("--register-to", o->register_to, "catalog.schema (or catalog.schema.model) to register the result");
  create->add_option("--training-duration", o->duration, "<n>ep epochs, <n>tok tokens or <n>ba steps")
      ->capture_default_str();
  create->add_option("--learning-rate", o->lr, "Peak learning rate (default 1e-4, or 1e-3 with LoRA)");
  create->add_option("--context-length", o->context_length, "Tokens per sequence")->capture_default_str();
  create->add_option("--batch-size", o->batch_size, "Sequences per optimizer step")->capture_default_str();
  create->add_option("--lora-rank", o->lora_rank, "LoRA rank; 0 trains every weight")->capture_default_str();
  create->add_option("--lora-alpha", o->lora_alpha, "LoRA alpha (scale alpha / rank)")->capture_default_str();
  create->add_option("--lora-targets", o->targets, "Comma-separated: Wqkv,out_proj,w1,v1,w2 (default all)");
  create->add_option("--eval-fraction", o->eval_fraction, "Share of examples held out for evaluation");
  create->add_option("--seed", o->seed, "Seed of the data order and the adapter's init")->capture_default_str();
  create->add_option("--experiment-path", o->experiment, "MLflow experiment (tracking server: MLFLOW_TRACKING_URI)");
  create->add_option("--price-per-million", o->price, "Training price per million tokens, for the estimate")
      ->capture_default_str();
  create->add_flag("--validate-only", o->validate_only, "Check the data and print token counts and cost; train nothing");
  create->add_flag("--follow", o->follow, "Train in the foreground with a progress line");
  create->callback([o] {
    nlohmann::json j = {{"model", o->model},
                        {"task", o->task},
                        {"training_duration", o->duration},
                        {"context_length", o->context_length},
                        {"batch_size", o->batch_size},
                        {"lora_rank", o->lora_rank},
                        {"lora_alpha", o->lora_alpha},
                        {"lora_targets", split_commas(o->targets)},
                        {"seed", o->seed},
                        {"eval_fraction", o->eval_fraction}};
    std::vector<std::string> data;
    for (const auto& p : o->train_data) data.push_back(fs::absolute(p).lexically_normal().string());
    j["train_data"] = data;
    if (!o->register_to.empty()) j["register_to"] = o->register_to;
    if (o->lr) j["learning_rate"] = *o->lr;
    if (!o->experiment.empty()) j["experiment_path"] = o->experiment;
    const training::FinetuneRequest request = training::FinetuneRequest::from_json(j);

    auto db = open_store();
    const training::CheckedFinetune checked = training::check_finetune(request, db);
    const auto& report = checked.data.report;
    if (!report.problems.empty()) fmt::print(stderr, "{}\n", report.format(50));
    if (!report.ok())
      fail("the training data has {} problem{}; nothing was started", report.errors(), report.errors() == 1 ? "" : "s");
    if (o->validate_only) {
      const training::FinetunePlan plan = training::plan_finetune(checked);
      fmt::print("{}\n", report.summary());
      fmt::print("{}\n", plan.tokens.summary());
      fmt::print("{} optimizer steps of {} sequences of {} tokens\n", plan.steps, request.batch_size, request.context_length);
      fmt::print("estimated cost: ${:.4f} ({} tokens at ${:.2f} per million)\n",
                 training::estimate_cost(plan.tokens.total_tokens, o->price), plan.tokens.total_tokens, o->price);
      return;
    }

    RunStore store(db);
    const RunRecord run = training::create_finetune_run(store, checked, data_dir(), "(finetune create)");
    if (o->follow) std::exit(run_in_foreground(db, run, false, training::run_finetune_job));
    start_worker(run, "finetune", false);
    print_submitted(run.id);
  });
}

}  // namespace tessera::cli
