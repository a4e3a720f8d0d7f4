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
#include "training/trainer.h"

namespace tessera::training {

namespace fs = std::filesystem;

namespace {

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string human_count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f}G", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.1f}k", n / 1e3);
  return fmt::format("{:.0f}", n);
}

std::string human_seconds(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

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

// Log lines (every log_interval steps, every evaluation and checkpoint) into the log file, also
// echoed to a terminal in the foreground, where a live progress line may be drawn too.
class LogObserver final : public TrainingObserver {
 public:
  LogObserver(std::FILE* out, int64_t log_interval, std::FILE* echo, bool bar)
      : out_(out), interval_(log_interval), echo_(echo), bar_(bar && echo) {}
  void on_start(const StartReport& s) override {
    first_ = s.start_step;
    start_ = std::chrono::steady_clock::now();
    if (!s.resumed_from.empty())
      line(fmt::format("resumed from {} at step {}", s.resumed_from.string(), s.start_step));
    line(fmt::format("model: {} parameters ({} active per token); {} steps of {} tokens", human_count(s.parameters),
                     human_count(s.active_parameters), s.total_steps, s.tokens_per_step));
  }
  void on_step(const StepReport& r) override {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = static_cast<double>(r.step - first_) / std::max(elapsed, 1e-9);
    const double eta = static_cast<double>(r.total_steps - r.step) / std::max(rate, 1e-9);
    const std::string text =
        fmt::format("step {}/{} | loss {:.4f} | lb {:.4f} | lr {:.2e} | grad {:.3f} | {} tok/s | tokens {} | ETA {}",
                    r.step, r.total_steps, r.loss, r.aux_loss, r.lr, r.grad_norm, human_count(r.tokens_per_second),
                    human_count(static_cast<double>(r.tokens)), human_seconds(eta));
    if (bar_) {
      const int width = 24;
      const int filled = static_cast<int>(width * r.step / std::max<int64_t>(1, r.total_steps));
      fmt::print(echo_, "\r\033[K[{}{}] {}", std::string(filled, '#'), std::string(width - filled, '.'), text);
      std::fflush(echo_);
    }
    if (r.step % interval_ == 0 || r.step == r.total_steps) {
      write(out_, text);
      if (echo_ && !bar_) write(echo_, text);
    }
  }
  void on_eval(const EvalReport& e) override {
    line(fmt::format("eval at step {}: loss {:.4f}, perplexity {:.2f} ({} tokens)", e.step, e.loss, e.perplexity,
                     e.tokens));
  }
  void on_checkpoint(int64_t step, const fs::path& dir) override {
    line(fmt::format("checkpoint at step {}: {}", step, dir.string()));
  }
  void on_finish(int64_t step, const fs::path& dir, bool stopped) override {
    line(stopped ? fmt::format("stopped at step {}; resume with `tessera runs resume`", step)
                 : fmt::format("finished at step {}: {}", step, dir.string()));
  }
  // A line for the log and, in the foreground, the terminal (above the progress line).
  void line(const std::string& text) {
    write(out_, text);
    if (echo_) {
      if (bar_) fmt::print(echo_, "\r\033[K");
      write(echo_, text);
    }
  }

 private:
  static void write(std::FILE* f, const std::string& text) {
    fmt::print(f, "{}\n", text);
    std::fflush(f);
  }
  std::FILE* out_;
  int64_t interval_;
  std::FILE* echo_;
  bool bar_;
  int64_t first_ = 0;
  std::chrono::steady_clock::time_point start_;
};

// Progress and metrics into the run store, which `tessera runs` reads.
class StoreObserver final : public TrainingObserver {
 public:
  StoreObserver(RunStore& store, std::string id) : store_(store), id_(std::move(id)) {}
  void on_start(const StartReport& s) override { store_.set_totals(id_, s.total_steps, 0); }
  void on_step(const StepReport& r) override {
    store_.update_progress(id_, r.step, r.tokens, r.loss, r.tokens_per_second);
    store_.add_metrics(id_, r.step,
                       {{"loss", r.loss},
                        {"ce_loss", r.ce_loss},
                        {"load_balancing_loss", r.aux_loss},
                        {"lr", r.lr},
                        {"grad_norm", r.grad_norm},
                        {"tokens_per_second", r.tokens_per_second}});
  }
  void on_eval(const EvalReport& e) override {
    store_.set_eval(id_, e.step, e.loss);
    store_.add_metrics(id_, e.step, {{"eval_loss", e.loss}, {"eval_perplexity", e.perplexity}});
  }

 private:
  RunStore& store_;
  std::string id_;
};

// MLflow tracking. A tracking server that fails does not stop training: the failure is logged
// once and tracking goes on without MLflow.
class MlflowObserver final : public TrainingObserver {
 public:
  MlflowObserver(RunStore& store, const RunRecord& run, const MlflowOptions& options, std::string uri,
                 std::vector<std::pair<std::string, std::string>> params, LogObserver& log)
      : store_(store), run_(run), options_(options), uri_(std::move(uri)), params_(std::move(params)), log_(log) {}

  void on_start(const StartReport& s) override {
    guard("start", [&] {
      client_ = std::make_unique<MlflowClient>(uri_);
      const std::string experiment = client_->get_or_create_experiment(options_.experiment_path);
      if (!run_.mlflow_run_id.empty() && run_.tracking_uri == uri_) {
        mlflow_run_ = run_.mlflow_run_id;  // a resumed run continues its MLflow run
        client_->set_tag(mlflow_run_, "tessera.resumed_at_step", std::to_string(s.start_step));
      } else {
        mlflow_run_ = client_->create_run(experiment, run_.id, unix_ms(), {{"tessera.run_id", run_.id}}).run_id;
        client_->log_params(mlflow_run_, params_);
      }
      store_.set_mlflow(run_.id, uri_, experiment, mlflow_run_);
      log_.line(fmt::format("mlflow: run {} in experiment '{}' at {}", mlflow_run_, options_.experiment_path, uri_));
    });
  }
  void on_step(const StepReport& r) override {
    const int64_t t = unix_ms();
    for (auto [key, value] : {std::pair<const char*, double>{"loss", r.loss},
                              {"load_balancing_loss", r.aux_loss},
                              {"lr", r.lr},
                              {"grad_norm", r.grad_norm},
                              {"tokens_per_second", r.tokens_per_second}})
      pending_.push_back({key, value, t, r.step});
    if (pending_.size() >= 500 || t - last_flush_ > 5000) flush();
  }
  void on_eval(const EvalReport& e) override {
    const int64_t t = unix_ms();
    pending_.push_back({"eval_loss", e.loss, t, e.step});
    pending_.push_back({"eval_perplexity", e.perplexity, t, e.step});
    flush();
  }
  void on_finish(int64_t step, const fs::path& dir, bool stopped) override {
    flush();
    if (!stopped && !dir.empty())
      guard("model upload", [&] {
        const std::string uri = client_->log_artifacts(mlflow_run_, dir, "model");
        log_.line(fmt::format("mlflow: model uploaded to {}", uri));
        if (options_.model_registry_path) {
          const auto version = client_->register_model(*options_.model_registry_path, uri, mlflow_run_,
                                                       "pre-trained by tessera run " + run_.id);
          log_.line(fmt::format("mlflow: registered {} version {}", version.name, version.version));
        }
      });
    guard("end", [&] { client_->set_terminated(mlflow_run_, stopped ? "KILLED" : "FINISHED", unix_ms()); });
  }
  void fail_run() {
    flush();
    guard("end", [&] { client_->set_terminated(mlflow_run_, "FAILED", unix_ms()); });
  }

 private:
  void flush() {
    last_flush_ = unix_ms();
    if (pending_.empty()) return;
    guard("metrics", [&] { client_->log_metrics(mlflow_run_, pending_); });
    pending_.clear();
  }
  template <typename Fn>
  void guard(const char* what, Fn&& fn) {
    if (disabled_ || (!client_ && std::string(what) != "start")) return;
    try {
      fn();
    } catch (const std::exception& e) {
      disabled_ = true;
      log_.line(fmt::format("warning: mlflow {} failed, training goes on without MLflow: {}", what, e.what()));
    }
  }
  RunStore& store_;
  RunRecord run_;
  MlflowOptions options_;
  std::string uri_;
  std::vector<std::pair<std::string, std::string>> params_;
  LogObserver& log_;
  std::unique_ptr<MlflowClient> client_;
  std::string mlflow_run_;
  std::vector<MlflowMetric> pending_;
  int64_t last_flush_ = 0;
  bool disabled_ = false;
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

Tokenizer training_tokenizer(const TrainConfig& config) {
  if (config.model_config_path) {
    const fs::path dir = config.model_config_path->parent_path();
    std::error_code ec;
    if (fs::exists(dir / "tokenizer.json", ec) || fs::exists(dir / "tokenizer_config.json", ec))
      return Tokenizer::load_for_model(dir);
  }
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
  const auto found = store.get(run_id);
  if (!found) fail("no run '{}' (see `tessera runs list`)", run_id);
  const RunRecord run = *found;
  if (!options.resume && run.status != RunStatus::queued)
    fail("run {} is {}; only a new run can start (resume continues an old one)", run_id, to_string(run.status));
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
