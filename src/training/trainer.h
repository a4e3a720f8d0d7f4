#pragma once
// The training loop: micro-batches with gradient accumulation, global-norm clipping, AdamW on
// a warmup-then-decay schedule, periodic evaluation and checkpoints, and exact resumption from
// the newest checkpoint (model, optimizer moments, data position; the only other randomness,
// router jitter, is drawn from (seed, step), so it needs no state of its own).
//
// The loop knows nothing of runs, stores or trackers: it reports to TrainingObservers.
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/llm/dbrx_config.h"
#include "training/dbrx_training_model.h"
#include "training/optimizer.h"

namespace tessera::training {

// Where batches come from. Rows are sequences of seq_len() tokens; targets are the inputs
// shifted by one (negative: not counted).
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual int64_t seq_len() const = 0;
  virtual void next_train(int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) = 0;
  virtual nlohmann::json state() const = 0;
  virtual void restore(const nlohmann::json& state) = 0;
  // Held-out batches (sequences of eval_seq_len() tokens): how many of `rows` rows there are,
  // and batch i.
  virtual int64_t eval_seq_len() const = 0;
  virtual int64_t eval_batches(int64_t rows) const = 0;
  virtual void eval_batch(int64_t index, int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const = 0;
  // For the batch the last next_train or eval_batch returned: where each token's example starts
  // in its row, when rows pack several examples (empty: each row is one sequence).
  virtual void segment_starts(std::vector<int32_t>& starts) const { starts.clear(); }
};

struct TrainerSettings {
  std::string run_id;
  DbrxConfig model;
  std::filesystem::path init_from;   // a Hugging Face DBRX folder to start from (empty: random init)
  // Where checkpoints copy their tokenizer files from (the folder the run's tokenizer was read
  // from); empty, or a folder without them: the DBRX (cl100k) files.
  std::filesystem::path tokenizer_from;
  float init_std = 0.02f;
  std::filesystem::path save_folder;
  int64_t total_steps = 0;
  int64_t global_batch = 8, micro_batch = 8;
  double lr = 6e-4, min_lr_ratio = 0.1;
  LrSchedule schedule = LrSchedule::Cosine;
  int64_t warmup_steps = 0;
  AdamWOptions adam;
  double grad_clip = 1.0;
  uint64_t seed = 17;
  int64_t eval_interval = 0;  // steps; 0: only at the end
  int64_t eval_batches = 0;   // 0: the whole eval split
  int64_t save_interval = 0;  // steps; 0: only at the end
  int64_t keep_last = 2;
  int64_t log_interval = 1;
};

struct StepReport {
  int64_t step = 0, total_steps = 0, tokens = 0;
  double loss = 0, ce_loss = 0, aux_loss = 0, lr = 0, grad_norm = 0, tokens_per_second = 0, seconds = 0;
};

struct EvalReport {
  int64_t step = 0;
  double loss = 0, perplexity = 0;
  int64_t tokens = 0;
};

struct StartReport {
  int64_t parameters = 0, active_parameters = 0, start_step = 0, total_steps = 0, tokens_per_step = 0;
  std::filesystem::path resumed_from;  // empty on a fresh start
};

class TrainingObserver {
 public:
  virtual ~TrainingObserver() = default;
  virtual void on_start(const StartReport&) {}
  virtual void on_step(const StepReport&) {}
  virtual void on_eval(const EvalReport&) {}
  virtual void on_checkpoint(int64_t step, const std::filesystem::path& dir) {}
  // `stopped`: ended early on request (a checkpoint of the last step was saved first).
  virtual void on_finish(int64_t step, const std::filesystem::path& final_checkpoint, bool stopped) {}
};

// What the optimizer trains. By default every weight of the model; a LoRA adapter instead
// trains its own small matrices around frozen weights. The trainer calls before_step() before
// each step's forwards (an adapter writes W + s·B·A into the model there), after_backward() once
// the step's gradients are in the model (an adapter projects them onto its matrices), and
// optimizes values() with grads().
class TrainableWeights {
 public:
  virtual ~TrainableWeights() = default;
  virtual void attach(DbrxTrainingModel& model) = 0;
  virtual std::span<float> values() = 0;
  virtual std::span<float> grads() = 0;
  virtual const std::vector<Parameter>& parameters() const = 0;
  virtual void before_step(DbrxTrainingModel& model) = 0;
  virtual void after_backward(DbrxTrainingModel& model) = 0;
  // Extra files in a checkpoint folder (the model itself is saved as model.safetensors, with
  // whatever before_step() last wrote into it), and reading them back on resume.
  virtual void save(const std::filesystem::path& checkpoint) const = 0;
  virtual void load(const std::filesystem::path& checkpoint) = 0;
  // Whether a resumed run rebuilds the model from init_from and this object's files (true for
  // an adapter) or loads the checkpoint's model.safetensors (false: full training).
  virtual bool resumes_from_base() const = 0;
};

class Trainer {
 public:
  Trainer(TrainerSettings settings, BatchSource& data);

  // Trains to total_steps, from the newest checkpoint in save_folder when `resume` is set and
  // one exists. Returns the last checkpoint written. `stop` is polled between steps.
  // `trainable` (null: every weight, full training) is what the optimizer updates.
  std::filesystem::path run(bool resume, const std::vector<TrainingObserver*>& observers,
                            const std::atomic<bool>* stop = nullptr, TrainableWeights* trainable = nullptr);

 private:
  EvalReport evaluate(class DbrxTrainingModel& model, int64_t step);

  TrainerSettings s_;
  BatchSource& data_;
};

}  // namespace tessera::training
