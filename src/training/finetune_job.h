#pragma once
// Fine-tuning runs: a base model (a registered model, a model folder, or a preset for a random
// start), a JSONL dataset for a task (instruction fine-tuning, chat completion) or text for
// continued pre-training, full or LoRA training on the pre-training engine, and the result
// registered under `register_to`. The request is stored with the run (kind "ft", ids
// ft-<model>-<6 chars>) and the same `tessera runs ...` commands follow it.
#include <atomic>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/llm/dbrx_config.h"
#include "store/database.h"
#include "store/run_store.h"
#include "tokenizers/bpe_tokenizer.h"
#include "training/finetune_data.h"
#include "training/pretrain_job.h"

namespace tessera::training {

struct FinetuneRequest {
  std::string model;                        // registry name[/version], model folder, or preset
  FinetuneTask task = FinetuneTask::InstructionFinetune;
  std::vector<std::string> train_data;      // files or folders (absolute once parsed)
  std::optional<std::string> register_to;   // "catalog.schema" or "catalog.schema.model"
  std::string training_duration = "3ep";    // "<n>ep", "<n>tok" or "<n>ba"
  std::optional<double> learning_rate;      // default: 1e-4 full, 1e-3 with LoRA
  int64_t context_length = 512;             // at most the model's max_seq_len
  int64_t batch_size = 8;                   // sequences per optimizer step
  int64_t lora_rank = 0;                    // 0: full fine-tuning
  double lora_alpha = 16;
  std::vector<std::string> lora_targets;    // empty: all (Wqkv, out_proj, w1, v1, w2)
  uint64_t seed = 17;
  double eval_fraction = 0.0;
  std::optional<std::string> experiment_path;  // MLflow experiment (tracking URI from MLFLOW_TRACKING_URI)

  double effective_learning_rate() const { return learning_rate.value_or(lora_rank > 0 ? 1e-3 : 1e-4); }
  nlohmann::json to_json() const;
  // Checks every field; errors name the field ("learning_rate: must be positive").
  static FinetuneRequest from_json(const nlohmann::json& json);
};

// The base model, found: its folder (empty for a preset's random start) and config.
struct BaseModel {
  std::string reference;       // as requested
  std::filesystem::path dir;   // model folder; empty: random init of the preset
  std::string short_name;      // for run ids and registered names
  DbrxConfig config;
  std::string source;          // "registry main.x.y/3", "folder /...", "preset dbrx-tiny (random init)"
};
BaseModel resolve_base_model(const std::string& model, const std::shared_ptr<Database>& db);

// Reads and checks the dataset as the run would (nothing is trained).
FinetuneData prepare_finetune_data(const FinetuneRequest& request, const BaseModel& base, const Tokenizer& tokenizer);
Tokenizer base_model_tokenizer(const BaseModel& base);

// The registered name of a run's model: register_to itself when it has three parts, else
// register_to + "." + the base model's short name with "-ft" (dots and odd characters as '_').
std::string registered_name(const FinetuneRequest& request, const BaseModel& base);

// A request checked as its run will read it: the base model found, the data read, tokenized and
// validated. Problems with the data are listed in data.report (a run may start only when
// data.report.ok()); errors are thrown only for a base model or options that cannot work.
struct CheckedFinetune {
  FinetuneRequest request;
  BaseModel base;
  FinetuneData data;
};
CheckedFinetune check_finetune(const FinetuneRequest& request, const std::shared_ptr<Database>& db);

// What a checked request will train: optimizer steps, whole epochs, and tokens.
struct FinetunePlan {
  int64_t steps = 0;
  int64_t epochs = 0;
  TokenEstimate tokens;
};
FinetunePlan plan_finetune(const CheckedFinetune& checked);

// Stores a queued fine-tuning run for a checked request whose data has no errors, with its log
// and checkpoints under run_folder(home, id). source says where it came from ("(finetune
// create)", "(REST API)"); owner_token_id is the API token that asked for it, if any.
RunRecord create_finetune_run(RunStore& store, const CheckedFinetune& checked, const std::filesystem::path& home,
                              const std::string& source, std::optional<int64_t> owner_token_id = std::nullopt);

// Runs fine-tuning run `run_id` to its end (same contract as run_pretrain_job).
int run_finetune_job(const std::shared_ptr<Database>& db, const std::string& run_id, const PretrainJobOptions& options,
                     const std::atomic<bool>& stop);

}  // namespace tessera::training
