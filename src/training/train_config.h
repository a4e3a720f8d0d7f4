#pragma once
// The YAML file `tessera train -f config.yaml` reads: which model to pre-train, on which data,
// where checkpoints go, where runs are tracked, and the optimizer/schedule settings.
//
// Every key, with its default ("required" keys have none):
//
//   model: dbrx-tiny          required. A preset name (`tessera models presets`), or a path to a
//                             DBRX config.json, or to a folder holding one (a preset name wins
//                             over a folder of the same name).
//   train_data: ./corpus      required. A file or folder, or a list of them. Folders are searched
//                             recursively for *.txt (one document per file) and *.jsonl (one
//                             {"text": ...} document per line).
//   eval_data: ./eval         optional, same form. When absent, training.eval_fraction of the
//                             train documents are held out for evaluation.
//   save_folder: ./ckpt       required. Checkpoints are written here (created when missing).
//   run_name: my-run          optional, a label for the run.
//   model_registry_path: catalog.schema.name
//                             optional. Register the final model in tessera's own registry under
//                             this three-part name, with or without MLflow.
//   experiment_tracker:       optional.
//     mlflow:
//       experiment_path: /Users/me/exp      required inside mlflow: the MLflow experiment name.
//       model_registry_path: cat.schema.m   optional: also register the model in MLflow's registry.
//       tracking_uri: http://127.0.0.1:5000 optional; else $MLFLOW_TRACKING_URI, else none.
//   compute:                  optional.
//     gpus: 0                 GPUs to train on; this build trains on the CPU only, so > 0 is an error.
//     threads: 0              compute threads, 0 = all hardware threads.
//   training:                 optional; every key optional.
//     max_duration: 1ep       how long to train: "<n>ba" optimizer steps, "<n>tok" tokens,
//                             "<n>ep" epochs over the train windows; a plain integer is steps.
//     global_batch_size: 8    sequences per optimizer step.
//     micro_batch_size: 8     sequences per forward/backward (default: global_batch_size); must
//                             divide global_batch_size (the rest is gradient accumulation).
//     seq_len: 512            tokens per sequence; default min(model max_seq_len, 512); at most
//                             the model's max_seq_len.
//     lr: 6.0e-4              peak learning rate (> 0).
//     schedule: cosine        decay after warmup: cosine | linear | constant.
//     warmup: 0.05            linear warmup from 0: "<n>ba", "<n>tok", a plain integer (steps), or
//                             a fraction of max_duration written with a decimal point (0.05).
//     min_lr_ratio: 0.1       the decay ends at lr * min_lr_ratio (0..1).
//     weight_decay: 0.1       AdamW decoupled weight decay (>= 0).
//     betas: [0.9, 0.95]      AdamW betas, each in [0, 1).
//     eps: 1.0e-8             AdamW epsilon (> 0).
//     grad_clip: 1.0          clip the global gradient norm to this; 0 disables.
//     seed: 17                weights init, data shuffle, eval split and router jitter.
//     eval_interval: 100ba    evaluate every so often ("ba"/"tok"/"ep" or steps) and at the end;
//                             0 = only at the end.
//     eval_batches: 8         micro-batches per evaluation; 0 = the whole eval split.
//     eval_fraction: 0.05     documents held out when there is no eval_data (0 = no eval; < 1).
//     save_interval: 100ba    checkpoint every so often and at the end; 0 = only at the end.
//     keep_last: 2            checkpoints kept in save_folder; 0 = keep all.
//     log_interval: 1         steps between log lines/metrics (>= 1).
//     moe_loss_weight: 0.01   optional: overrides the model's load-balancing loss weight (>= 0).
//     moe_jitter_eps: 0.01    optional: overrides the model's router jitter (0..1; 0 = off).
//
// Relative paths resolve against the folder of the config file; a leading "~/" is $HOME.
// Every mistake is one tessera::Error naming the file, the line and the key:
//   config.yaml:7: training.lr: expected a number, got 'fast'
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "models/llm/dbrx_config.h"
#include "training/optimizer.h"

namespace tessera::training {

// A length of training or an interval: optimizer steps, tokens or epochs.
struct Duration {
  enum class Unit { Batches, Tokens, Epochs };
  int64_t value = 0;
  Unit unit = Unit::Batches;

  // In optimizer steps: tokens round up to whole steps, epochs are value * steps_per_epoch.
  // tokens_per_step = global_batch_size * seq_len; steps_per_epoch from the data loader
  // (windows per epoch / global_batch_size, at least 1).
  int64_t to_steps(int64_t tokens_per_step, int64_t steps_per_epoch) const;
  std::string str() const;  // "2000ba", "1000000tok", "3ep"

  // "<n>ba" | "<n>tok" | "<n>ep" | "<n>" (steps); digits may be grouped with '_'. Throws
  // tessera::Error("...") with the reason (without the key: callers add where).
  static Duration parse(std::string_view text);
  bool operator==(const Duration&) const = default;
};

std::string schedule_name(LrSchedule schedule);

// Warmup is a duration, or a fraction of max_duration.
struct Warmup {
  std::optional<Duration> duration;  // set: "<n>ba" / "<n>tok" / "<n>"
  double fraction = 0.05;            // used when duration is unset

  // Warmup steps for a run of total_steps steps (never more than total_steps).
  int64_t to_steps(int64_t total_steps, int64_t tokens_per_step, int64_t steps_per_epoch) const;
  std::string str() const;
};

struct TrainingOptions {
  Duration max_duration{1, Duration::Unit::Epochs};
  int64_t global_batch_size = 8;
  int64_t micro_batch_size = 8;  // = global_batch_size unless set
  int64_t seq_len = 512;         // resolved against the model: min(max_seq_len, 512) unless set
  double lr = 6.0e-4;
  LrSchedule schedule = LrSchedule::Cosine;
  Warmup warmup;
  double min_lr_ratio = 0.1;
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1.0e-8;
  double grad_clip = 1.0;
  uint64_t seed = 17;
  Duration eval_interval{100, Duration::Unit::Batches};  // value 0: only at the end
  int64_t eval_batches = 8;
  double eval_fraction = 0.05;
  Duration save_interval{100, Duration::Unit::Batches};  // value 0: only at the end
  int64_t keep_last = 2;
  int64_t log_interval = 1;
  std::optional<double> moe_loss_weight;
  std::optional<double> moe_jitter_eps;

  int64_t accumulation_steps() const { return global_batch_size / micro_batch_size; }
  int64_t tokens_per_step() const { return global_batch_size * seq_len; }
};

// Everything the schedule needs in steps, once the number of train windows is known.
struct StepPlan {
  int64_t total_steps = 0;
  int64_t warmup_steps = 0;
  int64_t eval_interval = 0;  // 0: only at the end
  int64_t save_interval = 0;  // 0: only at the end
  int64_t steps_per_epoch = 0;
};
// windows_per_epoch: packed train sequences in one pass over the data.
StepPlan plan_steps(const TrainingOptions& options, int64_t windows_per_epoch);

struct MlflowOptions {
  std::string experiment_path;
  std::optional<std::string> model_registry_path;
  std::optional<std::string> tracking_uri;  // as written in the file

  // tracking_uri, else $MLFLOW_TRACKING_URI (when set and not empty), else none.
  std::optional<std::string> effective_tracking_uri() const;
};

struct ComputeOptions {
  int64_t gpus = 0;
  int64_t threads = 0;  // 0: all hardware threads
};

struct TrainConfig {
  std::string model;                         // as written: a preset name or a path
  std::optional<std::filesystem::path> model_config_path;  // resolved config.json when not a preset
  std::vector<std::filesystem::path> train_data;            // resolved, each exists
  std::vector<std::filesystem::path> eval_data;             // empty: hold out eval_fraction
  std::filesystem::path save_folder;                        // resolved
  std::optional<std::string> run_name;
  std::optional<std::string> model_registry_path;           // tessera's own registry
  std::optional<MlflowOptions> mlflow;
  ComputeOptions compute;
  TrainingOptions training;

  std::filesystem::path origin;  // the config file (for messages)
  std::string yaml_text;         // the file as the user wrote it (saved with the run)
};

// Reads and checks a config file. Throws tessera::Error with file:line: key: problem.
TrainConfig load_train_config(const std::filesystem::path& file);
// The same from text; `origin` names the file in messages and its folder anchors relative paths.
TrainConfig parse_train_config(std::string_view yaml, const std::filesystem::path& origin);

// The model's configuration: the preset or config.json, with the training block's MoE overrides.
DbrxConfig resolve_model_config(const TrainConfig& config);

// A short name for run ids: the preset name, else the config file's folder (or file) stem,
// lowercased, with anything outside [a-z0-9-] turned into '-' (never empty: "model").
std::string model_short_name(const TrainConfig& config);

}  // namespace tessera::training
