#include "training/finetune_job.h"

#include <unistd.h>

#include <cmath>

#include <fmt/format.h>

#include "core/error.h"
#include "core/thread_pool.h"
#include "models/llm/dbrx_presets.h"
#include "models/llm/language_model.h"
#include "serving/chat_format.h"
#include "store/data_hash.h"
#include "store/model_registry.h"
#include "store/run_store.h"
#include "training/dbrx_training_model.h"
#include "training/lora.h"
#include "training/run_launcher.h"
#include "training/run_reporting.h"
#include "training/trainer.h"

namespace tessera::training {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// LoRA as the trainer's TrainableWeights: the adapter's matrices are what AdamW updates.
class LoraWeights final : public TrainableWeights {
 public:
  explicit LoraWeights(LoraAdapter adapter) : adapter_(std::move(adapter)) {}
  void attach(DbrxTrainingModel& model) override { adapter_.attach(model); }
  std::span<float> values() override { return adapter_.values(); }
  std::span<float> grads() override { return adapter_.grads(); }
  const std::vector<Parameter>& parameters() const override { return adapter_.parameters(); }
  void before_step(DbrxTrainingModel& model) override { adapter_.apply(model); }
  void after_backward(DbrxTrainingModel& model) override { adapter_.gather_grads(model); }
  void save(const fs::path& checkpoint) const override { adapter_.save_adapter(checkpoint / "adapter"); }
  void load(const fs::path& checkpoint) override {
    LoraAdapter loaded = LoraAdapter::load_adapter(checkpoint / "adapter", adapter_.model_config());
    if (loaded.values().size() != adapter_.values().size())
      fail("{}: the adapter does not match this run's LoRA settings", (checkpoint / "adapter").string());
    std::copy(loaded.values().begin(), loaded.values().end(), adapter_.values().begin());
  }
  bool resumes_from_base() const override { return true; }

 private:
  LoraAdapter adapter_;
};

std::string sanitize(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '_';
  return s;
}

template <typename T>
T field(const json& j, const char* key, T fallback) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    fail("{}: wrong type ({})", key, j.at(key).dump());
  }
}

}  // namespace

json FinetuneRequest::to_json() const {
  json j = {{"model", model},
            {"task", std::string(finetune_task_name(task))},
            {"train_data", train_data},
            {"training_duration", training_duration},
            {"context_length", context_length},
            {"batch_size", batch_size},
            {"lora_rank", lora_rank},
            {"lora_alpha", lora_alpha},
            {"lora_targets", lora_targets},
            {"seed", seed},
            {"eval_fraction", eval_fraction}};
  j["register_to"] = register_to ? json(*register_to) : json(nullptr);
  j["learning_rate"] = learning_rate ? json(*learning_rate) : json(nullptr);
  j["experiment_path"] = experiment_path ? json(*experiment_path) : json(nullptr);
  return j;
}

FinetuneRequest FinetuneRequest::from_json(const json& j) {
  if (!j.is_object()) fail("a fine-tuning request must be a JSON object");
  static const std::vector<std::string> known = {"model", "task", "train_data", "register_to", "training_duration",
                                                 "learning_rate", "context_length", "batch_size", "lora_rank",
                                                 "lora_alpha", "lora_targets", "seed", "eval_fraction",
                                                 "experiment_path"};
  for (const auto& [key, _] : j.items())
    if (std::find(known.begin(), known.end(), key) == known.end()) fail("unknown field '{}'", key);
  FinetuneRequest r;
  r.model = field<std::string>(j, "model", "");
  if (r.model.empty()) fail("model: required (a registered model, a model folder or a preset)");
  r.task = parse_finetune_task(field<std::string>(j, "task", "instruction-finetune"));
  if (j.contains("train_data") && j.at("train_data").is_string())
    r.train_data = {j.at("train_data").get<std::string>()};
  else
    r.train_data = field<std::vector<std::string>>(j, "train_data", {});
  if (r.train_data.empty()) fail("train_data: required (a .jsonl file, or text for continued-pretrain)");
  if (auto v = field<std::string>(j, "register_to", ""); !v.empty()) {
    const auto dots = std::count(v.begin(), v.end(), '.');
    if (dots < 1 || dots > 2) fail("register_to: '{}' must be catalog.schema or catalog.schema.model", v);
    check_model_name(dots == 2 ? v : v + ".x");
    r.register_to = v;
  }
  r.training_duration = field<std::string>(j, "training_duration", r.training_duration);
  try {
    Duration::parse(r.training_duration);
  } catch (const Error& e) {
    fail("training_duration: {}", e.what());
  }
  if (j.contains("learning_rate") && !j.at("learning_rate").is_null()) {
    r.learning_rate = field<double>(j, "learning_rate", 0.0);
    if (!(*r.learning_rate > 0) || !std::isfinite(*r.learning_rate)) fail("learning_rate: must be positive");
  }
  r.context_length = field<int64_t>(j, "context_length", r.context_length);
  if (r.context_length < 2) fail("context_length: must be at least 2");
  r.batch_size = field<int64_t>(j, "batch_size", r.batch_size);
  if (r.batch_size < 1) fail("batch_size: must be at least 1");
  r.lora_rank = field<int64_t>(j, "lora_rank", 0);
  if (r.lora_rank < 0) fail("lora_rank: must be 0 (full fine-tuning) or positive");
  r.lora_alpha = field<double>(j, "lora_alpha", r.lora_alpha);
  if (!(r.lora_alpha > 0)) fail("lora_alpha: must be positive");
  r.lora_targets = field<std::vector<std::string>>(j, "lora_targets", {});
  for (const auto& t : r.lora_targets) {
    const auto& all = lora_target_modules();
    if (std::find(all.begin(), all.end(), t) == all.end())
      fail("lora_targets: unknown module '{}' (Wqkv, out_proj, w1, v1, w2)", t);
  }
  r.seed = field<uint64_t>(j, "seed", r.seed);
  r.eval_fraction = field<double>(j, "eval_fraction", 0.0);
  if (!(r.eval_fraction >= 0 && r.eval_fraction < 1)) fail("eval_fraction: must be in [0, 1)");
  if (auto v = field<std::string>(j, "experiment_path", ""); !v.empty()) r.experiment_path = v;
  return r;
}

BaseModel resolve_base_model(const std::string& model, const std::shared_ptr<Database>& db) {
  BaseModel base;
  base.reference = model;
  std::error_code ec;
  if (auto preset = find_dbrx_preset(model)) {
    base.config = preset->config;
    base.short_name = preset->name;
    base.source = "preset " + preset->name + " (random init)";
    return base;
  }
  if (fs::is_directory(model, ec) && fs::exists(fs::path(model) / "config.json", ec)) {
    base.dir = fs::absolute(model).lexically_normal();
    base.short_name = base.dir.filename().string();
    base.source = "folder " + base.dir.string();
  } else {
    ModelRegistry registry(db);
    std::optional<RegisteredModel> entry;
    try {
      entry = registry.resolve(model);
    } catch (const Error&) {
    }
    if (!entry) fail("model '{}': not a registered model, a model folder with config.json, or a preset", model);
    base.dir = entry->path;
    base.short_name = entry->name.substr(entry->name.rfind('.') + 1);
    base.source = "registry " + entry->reference();
  }
  base.config = DbrxConfig::load(base.dir / "config.json");
  std::string name;
  for (char c : base.short_name) name += std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(c)) : '-';
  base.short_name = name.empty() ? "model" : name;
  return base;
}

Tokenizer base_model_tokenizer(const BaseModel& base) {
  return base.dir.empty() ? default_dbrx_tokenizer() : Tokenizer::load_for_model(base.dir);
}

FinetuneData prepare_finetune_data(const FinetuneRequest& request, const BaseModel& base, const Tokenizer& tokenizer) {
  if (request.context_length > base.config.max_seq_len)
    fail("context_length: {} is over the model's max_seq_len {}", request.context_length, base.config.max_seq_len);
  FinetuneDataOptions options;
  options.task = request.task;
  for (const auto& p : request.train_data) options.train_data.push_back(p);
  options.context_length = request.context_length;
  options.eval_fraction = request.eval_fraction;
  options.seed = request.seed;
  options.vocab_size = base.config.vocab_size;
  options.chat_format = ChatFormat::from_template(base.dir.empty() ? std::nullopt : load_chat_template(base.dir));
  return load_finetune_data(options, tokenizer);
}

CheckedFinetune check_finetune(const FinetuneRequest& request, const std::shared_ptr<Database>& db) {
  CheckedFinetune checked{request, resolve_base_model(request.model, db), {}};
  checked.data = prepare_finetune_data(request, checked.base, base_model_tokenizer(checked.base));
  return checked;
}

FinetunePlan plan_finetune(const CheckedFinetune& checked) {
  const FinetuneRequest& request = checked.request;
  FinetunePlan plan;
  const int64_t steps_per_epoch = std::max<int64_t>(1, checked.data.train_rows_per_epoch() / request.batch_size);
  plan.steps = Duration::parse(request.training_duration)
                   .to_steps(request.batch_size * request.context_length, steps_per_epoch);
  plan.epochs = std::max<int64_t>(1, (plan.steps + steps_per_epoch - 1) / steps_per_epoch);
  plan.tokens = estimate_tokens(checked.data, plan.epochs);
  return plan;
}

RunRecord create_finetune_run(RunStore& store, const CheckedFinetune& checked, const std::filesystem::path& home,
                              const std::string& source, std::optional<int64_t> owner_token_id) {
  if (!checked.data.report.ok())
    fail("the training data has {} problem{}; nothing was started", checked.data.report.errors(),
         checked.data.report.errors() == 1 ? "" : "s");
  RunRecord run;
  run.kind = "ft";
  run.model = checked.base.short_name;
  run.id = store.new_run_id(run.kind, run.model);
  run.config_text = checked.request.to_json().dump(2);
  run.config_file = source;
  run.save_folder = (run_folder(home, run.id) / "checkpoints").string();
  run.log_file = (run_folder(home, run.id) / "train.log").string();
  run.owner_token_id = owner_token_id;
  return store.create(run);
}

std::string registered_name(const FinetuneRequest& request, const BaseModel& base) {
  const std::string& to = *request.register_to;
  if (std::count(to.begin(), to.end(), '.') == 2) return to;
  return to + "." + sanitize(base.short_name + "-ft");
}

int run_finetune_job(const std::shared_ptr<Database>& db, const std::string& run_id, const PretrainJobOptions& options,
                     const std::atomic<bool>& stop) {
  RunStore store(db);
  const RunRecord run = run_to_start(store, run_id, options.resume);
  LogObserver log(options.log, 1, options.echo, options.progress_bar);
  std::optional<MlflowObserver> mlflow;
  try {
    store.mark_running(run_id, static_cast<int64_t>(getpid()));
    json request_json;
    try {
      request_json = json::parse(run.config_text);
    } catch (const json::exception& e) {
      fail("run {}: its stored request is not valid JSON: {}", run_id, e.what());
    }
    const FinetuneRequest request = FinetuneRequest::from_json(request_json);
    keep_freed_memory_for_reuse();
    const BaseModel base = resolve_base_model(request.model, db);
    log.line(fmt::format("run {}: {} of {} ({}){}", run_id, finetune_task_name(request.task), request.model,
                         base.source, request.lora_rank ? fmt::format(", LoRA rank {}", request.lora_rank) : ""));
    const Tokenizer tokenizer = base_model_tokenizer(base);
    const FinetuneData data = prepare_finetune_data(request, base, tokenizer);
    for (const auto& p : data.report.problems)
      if (p.severity == Severity::Warning) log.line(p.format());
    if (!data.report.ok())
      fail("{} (and {} more problems; `tessera finetune create --validate-only` lists them)",
           data.report.problems.front().format(), data.report.errors() - 1);
    log.line(data.report.summary());

    std::unique_ptr<BatchSource> source = make_batch_source(data);
    const int64_t tokens_per_step = request.batch_size * source->seq_len();
    const int64_t steps_per_epoch = std::max<int64_t>(1, data.train_rows_per_epoch() / request.batch_size);
    const int64_t total = Duration::parse(request.training_duration).to_steps(tokens_per_step, steps_per_epoch);

    TrainerSettings s;
    s.run_id = run_id;
    s.model = base.config;
    s.init_from = base.dir;
    s.tokenizer_from = base.dir;
    s.save_folder = run.save_folder;
    s.total_steps = total;
    s.global_batch = s.micro_batch = request.batch_size;
    s.lr = request.effective_learning_rate();
    s.min_lr_ratio = 0.1;
    s.schedule = LrSchedule::Cosine;
    s.warmup_steps = std::min<int64_t>(total / 10, 100);
    s.adam.weight_decay = request.lora_rank > 0 ? 0.0 : 0.01;
    s.seed = request.seed;
    s.eval_interval = steps_per_epoch;
    s.save_interval = std::max<int64_t>(1, total / 4);
    s.keep_last = 1;

    std::optional<LoraWeights> lora;
    if (request.lora_rank > 0) {
      LoraConfig lc;
      lc.rank = request.lora_rank;
      lc.alpha = request.lora_alpha;
      if (!request.lora_targets.empty()) lc.targets = request.lora_targets;
      lc.seed = request.seed;
      lc.base_model = base.source;
      lora.emplace(LoraAdapter(base.config, lc));
    }

    Trainer trainer(s, *source);
    StoreObserver store_observer(store, run_id);
    std::vector<TrainingObserver*> observers = {&log, &store_observer};
    if (request.experiment_path) {
      MlflowOptions mo;
      mo.experiment_path = *request.experiment_path;
      if (auto uri = mo.effective_tracking_uri()) {
        std::vector<std::pair<std::string, std::string>> params = {
            {"base_model", base.source},
            {"task", std::string(finetune_task_name(request.task))},
            {"training_duration", request.training_duration},
            {"total_steps", std::to_string(total)},
            {"learning_rate", fmt::format("{}", s.lr)},
            {"context_length", std::to_string(request.context_length)},
            {"batch_size", std::to_string(request.batch_size)},
            {"lora_rank", std::to_string(request.lora_rank)}};
        mlflow.emplace(store, run, mo, *uri, params, log);
        observers.push_back(&*mlflow);
      } else {
        log.line("warning: experiment_path is set but MLFLOW_TRACKING_URI is not; tracking in tessera's run store only");
      }
    }
    struct Edges final : TrainingObserver {
      fs::path last;
      bool stopped = false;
      const PretrainJobOptions* options = nullptr;
      void on_start(const StartReport&) override {
        if (options->on_ready) options->on_ready("");
      }
      void on_finish(int64_t, const fs::path& dir, bool s) override {
        last = dir;
        stopped = s;
      }
    } edges;
    edges.options = &options;
    observers.insert(observers.begin(), &edges);
    trainer.run(options.resume, observers, &stop, lora ? &*lora : nullptr);

    if (edges.stopped) {
      store.finish(run_id, RunStatus::stopped);
      return 3;
    }
    if (request.register_to) {
      ModelRegistry registry(db);
      ModelLineage lineage;
      lineage.base_model = base.source;
      lineage.task = std::string(finetune_task_name(request.task));
      std::vector<fs::path> data_paths;
      for (const auto& p : request.train_data) {
        data_paths.emplace_back(p);
        lineage.data_paths.push_back(p);
      }
      lineage.data_sha256 = hash_data_files(data_paths);
      lineage.hyperparameters = request.to_json();
      lineage.hyperparameters.erase("train_data");
      lineage.hyperparameters.erase("model");
      lineage.hyperparameters["total_steps"] = total;
      lineage.hyperparameters["learning_rate"] = s.lr;
      lineage.run_id = run_id;
      if (const auto done = store.get(run_id)) {
        lineage.metrics["steps"] = done->step;
        lineage.metrics["tokens"] = done->tokens;
        if (done->loss) lineage.metrics["train_loss"] = *done->loss;
        if (done->eval_loss) lineage.metrics["eval_loss"] = *done->eval_loss;
      }
      const auto entry = registry.register_model(registered_name(request, base), edges.last, run_id,
                                                 fmt::format("{} of {} by run {}", finetune_task_name(request.task),
                                                             base.source, run_id),
                                                 lineage);
      store.set_registered(run_id, entry.name, entry.version);
      log.line(fmt::format("registered {} version {}", entry.name, entry.version));
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
