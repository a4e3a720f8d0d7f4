#include "training/pretrain_job.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <chrono>
#include <cmath>
#include <optional>

#include <fmt/format.h>

#include "core/error.h"
#include "core/paths.h"
#include "core/thread_pool.h"
#include "models/llm/dbrx_init.h"
#include "store/data_hash.h"
#include "store/model_registry.h"
#include "store/run_store.h"
#include "training/data.h"
#include "training/dbrx_training_model.h"
#include "training/mlflow_client.h"
#include "training/run_reporting.h"
#include "training/trainer.h"

namespace tessera::training {

namespace fs = std::filesystem;

namespace {

// The batches the trainer asks for, from the packed train and eval data.
class PackedBatchSource final : public BatchSource {
 public:
  explicit PackedBatchSource(const TrainingData& data) : data_(data), loader_(data.loader()) {}
  int64_t seq_len() const override { return loader_.seq_len(); }
  void next_train(int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) override {
    loader_.next(rows, inputs, targets);
  }
  nlohmann::json state() const override { return loader_.state(); }
  void restore(const nlohmann::json& state) override { loader_.restore(state); }
  int64_t eval_seq_len() const override { return data_.eval.seq_len(); }
  int64_t eval_batches(int64_t rows) const override { return data_.eval.batches(rows); }
  void eval_batch(int64_t index, int64_t rows, std::vector<int32_t>& inputs,
                  std::vector<int32_t>& targets) const override {
    data_.eval.batch(index, rows, inputs, targets);
  }

 private:
  const TrainingData& data_;
  TrainLoader loader_;
};

std::vector<std::pair<std::string, std::string>> run_params(const TrainConfig& config, const DbrxConfig& model,
                                                            const StepPlan& plan, const DataStats& stats) {
  const auto& t = config.training;
  auto num = [](double v) { return fmt::format("{}", v); };
  std::vector<std::pair<std::string, std::string>> p = {
      {"model", config.model},
      {"d_model", std::to_string(model.d_model)},
      {"n_layers", std::to_string(model.n_layers)},
      {"n_heads", std::to_string(model.n_heads)},
      {"kv_n_heads", std::to_string(model.kv_n_heads)},
      {"moe_num_experts", std::to_string(model.moe_num_experts)},
      {"moe_top_k", std::to_string(model.moe_top_k)},
      {"ffn_hidden_size", std::to_string(model.ffn_hidden_size)},
      {"vocab_size", std::to_string(model.vocab_size)},
      {"moe_loss_weight", num(model.moe_loss_weight)},
      {"moe_jitter_eps", model.moe_jitter_eps ? num(*model.moe_jitter_eps) : "none"},
      {"parameters", std::to_string(model.parameter_count())},
      {"active_parameters", std::to_string(model.active_parameter_count())},
      {"max_duration", t.max_duration.str()},
      {"total_steps", std::to_string(plan.total_steps)},
      {"warmup_steps", std::to_string(plan.warmup_steps)},
      {"global_batch_size", std::to_string(t.global_batch_size)},
      {"micro_batch_size", std::to_string(t.micro_batch_size)},
      {"seq_len", std::to_string(t.seq_len)},
      {"lr", num(t.lr)},
      {"schedule", schedule_name(t.schedule)},
      {"min_lr_ratio", num(t.min_lr_ratio)},
      {"weight_decay", num(t.weight_decay)},
      {"betas", fmt::format("{},{}", t.beta1, t.beta2)},
      {"eps", num(t.eps)},
      {"grad_clip", num(t.grad_clip)},
      {"seed", std::to_string(t.seed)},
      {"train_tokens", std::to_string(stats.train_tokens)},
      {"eval_tokens", std::to_string(stats.eval_tokens)},
  };
  return p;
}

}  // namespace

namespace {

// The folder beside the model's config.json when it holds a tokenizer; else none (cl100k).
fs::path tokenizer_folder(const TrainConfig& config) {
  if (!config.model_config_path) return {};
  const fs::path dir = config.model_config_path->parent_path();
  std::error_code ec;
  if (fs::exists(dir / "tokenizer.json", ec) || fs::exists(dir / "tokenizer_config.json", ec)) return dir;
  return {};
}

}  // namespace

Tokenizer training_tokenizer(const TrainConfig& config) {
  const fs::path dir = tokenizer_folder(config);
  return dir.empty() ? default_dbrx_tokenizer() : Tokenizer::load_for_model(dir);
}

Tokenizer default_dbrx_tokenizer() {
  const fs::path ranks = models_dir() / "tokenizers" / "cl100k_base.tiktoken";
  std::error_code ec;
  if (!fs::exists(ranks, ec))
    fail("the cl100k_base tokenizer is not installed ({} is missing): run scripts/setup", ranks.string());
  // Exactly the tokenizer files every checkpoint of the run will carry, read back.
  std::string pattern = (fs::temp_directory_path() / "tessera-tokenizer-XXXXXX").string();
  if (!mkdtemp(pattern.data())) fail("cannot create a temporary folder: {}", std::strerror(errno));
  const fs::path dir(pattern);
  try {
    write_dbrx_tokenizer_files(dir);
    Tokenizer tokenizer = Tokenizer::load_for_model(dir);
    fs::remove_all(dir, ec);
    return tokenizer;
  } catch (...) {
    fs::remove_all(dir, ec);
    throw;
  }
}

int run_pretrain_job(const std::shared_ptr<Database>& db, const std::string& run_id, const PretrainJobOptions& options,
                     const std::atomic<bool>& stop) {
  RunStore store(db);
  const RunRecord run = run_to_start(store, run_id, options.resume);
  LogObserver log(options.log, 1, options.echo, options.progress_bar);
  std::optional<MlflowObserver> mlflow;
  try {
    store.mark_running(run_id, static_cast<int64_t>(getpid()));
    const TrainConfig config = parse_train_config(run.config_text, run.config_file);
    if (config.compute.threads > 0) ThreadPool::set_global_threads(static_cast<size_t>(config.compute.threads));
    keep_freed_memory_for_reuse();
    const DbrxConfig model = resolve_model_config(config);
    log.line(fmt::format("run {}: pre-training {} from {}", run_id, config.model, run.config_file));

    const Tokenizer tokenizer = training_tokenizer(config);
    DataOptions data_opts = data_options(config, model.vocab_size);
    data_opts.progress = options.progress_bar;
    const TrainingData data = load_training_data(data_opts, tokenizer);
    log.line(data.stats.summary());
    const StepPlan plan = plan_steps(config.training, data.stats.windows_per_epoch);

    LogObserver paced(options.log, std::max<int64_t>(1, config.training.log_interval), options.echo,
                      options.progress_bar);
    TrainerSettings s;
    s.run_id = run_id;
    s.model = model;
    s.tokenizer_from = tokenizer_folder(config);
    s.save_folder = config.save_folder;
    s.total_steps = plan.total_steps;
    s.global_batch = config.training.global_batch_size;
    s.micro_batch = config.training.micro_batch_size;
    s.lr = config.training.lr;
    s.min_lr_ratio = config.training.min_lr_ratio;
    s.schedule = config.training.schedule;
    s.warmup_steps = plan.warmup_steps;
    s.adam = {config.training.beta1, config.training.beta2, config.training.eps, config.training.weight_decay};
    s.grad_clip = config.training.grad_clip;
    s.seed = config.training.seed;
    s.eval_interval = plan.eval_interval;
    s.eval_batches = config.training.eval_batches;
    s.save_interval = plan.save_interval;
    s.keep_last = config.training.keep_last;

    PackedBatchSource source(data);
    Trainer trainer(s, source);
    StoreObserver store_observer(store, run_id);
    std::vector<TrainingObserver*> observers = {&paced, &store_observer};
    if (config.mlflow) {
      if (auto uri = config.mlflow->effective_tracking_uri()) {
        mlflow.emplace(store, run, *config.mlflow, *uri, run_params(config, model, plan, data.stats), paced);
        observers.push_back(&*mlflow);
      } else {
        paced.line("warning: experiment_tracker.mlflow has no tracking_uri and MLFLOW_TRACKING_URI is not set; "
                   "tracking in tessera's run store only");
      }
    }

    fs::path last;
    bool stopped = false;
    struct Edges final : TrainingObserver {
      fs::path* last;
      bool* stopped;
      const PretrainJobOptions* options;
      void on_start(const StartReport&) override {
        if (options->on_ready) options->on_ready("");
      }
      void on_finish(int64_t, const fs::path& dir, bool s) override {
        *last = dir;
        *stopped = s;
      }
    } edges;
    edges.last = &last;
    edges.stopped = &stopped;
    edges.options = &options;
    observers.insert(observers.begin(), &edges);
    trainer.run(options.resume, observers, &stop);

    if (stopped) {
      store.finish(run_id, RunStatus::stopped);
      return 3;
    }
    if (const auto& name = config.model_registry_path ? config.model_registry_path
                                                        : (config.mlflow ? config.mlflow->model_registry_path
                                                                         : std::nullopt)) {
      // Lineage: where the weights came from and what they were trained on, with the data's
      // content hash so that a later change to the files shows.
      ModelLineage lineage;
      lineage.base_model = "random init of " + (config.model_config_path ? config.model_config_path->string() : config.model);
      lineage.task = "pretrain";
      std::vector<fs::path> data_paths = config.train_data;
      data_paths.insert(data_paths.end(), config.eval_data.begin(), config.eval_data.end());
      for (const auto& p : data_paths) lineage.data_paths.push_back(p.string());
      lineage.data_sha256 = hash_data_files(data_paths);
      for (const auto& [key, value] : run_params(config, model, plan, data.stats)) {
        const auto number = nlohmann::json::parse(value, nullptr, false);
        lineage.hyperparameters[key] = number.is_number() ? number : nlohmann::json(value);
      }
      if (const auto done = store.get(run_id)) {
        lineage.metrics["steps"] = done->step;
        lineage.metrics["tokens"] = done->tokens;
        if (done->loss) lineage.metrics["train_loss"] = *done->loss;
        if (done->eval_loss) lineage.metrics["eval_loss"] = *done->eval_loss;
        if (done->best_eval_loss) lineage.metrics["best_eval_loss"] = *done->best_eval_loss;
      }
      ModelRegistry registry(db);
      const auto entry =
          registry.register_model(*name, last, run_id, "pre-trained by run " + run_id, std::move(lineage));
      store.set_registered(run_id, entry.name, entry.version);
      paced.line(fmt::format("registered {} version {} ({}, from {})", entry.name, entry.version, entry.path, last.string()));
    }
    store.finish(run_id, RunStatus::completed);
    return 0;
  } catch (const std::exception& e) {
    if (options.on_ready) options.on_ready(e.what());
    if (mlflow) mlflow->fail_run();
    log.line(fmt::format("error: {}", e.what()));
    store.finish(run_id, RunStatus::failed, e.what());
    throw;
  }
}

}  // namespace tessera::training
