#pragma once
// One pre-training run from start to end, as `tessera train` runs it in its background process
// (or in the foreground with --follow): reads the run's config from the store, prepares the
// data, trains, and reports everywhere it should: the log, the run store (progress, metrics,
// evaluations), MLflow when configured (params, metrics, the final model as an artifact, the
// registered model), and tessera's model registry at the end.
#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "store/database.h"
#include "tokenizers/bpe_tokenizer.h"
#include "training/train_config.h"

namespace tessera::training {

struct PretrainJobOptions {
  bool resume = false;       // continue from the newest checkpoint in save_folder
  std::FILE* log = stdout;     // where the log lines go
  std::FILE* echo = nullptr;   // the terminal of a foreground run: log lines go there too
  bool progress_bar = false;   // and a live progress line (when echo is a terminal)
  // Called once: with "" when the data is ready and training starts, or with the error that
  // ended the run before that.
  std::function<void(const std::string& error)> on_ready;
};

// Runs run `run_id` of the store to its end. Returns 0 when it completed, 3 when it was stopped
// on request; throws tessera::Error after recording the run as failed.
int run_pretrain_job(const std::shared_ptr<Database>& db, const std::string& run_id, const PretrainJobOptions& options,
                     const std::atomic<bool>& stop);

// DBRX's tokenizer (the installed cl100k_base with DBRX's special tokens), exactly as every
// checkpoint tessera writes carries it.
Tokenizer default_dbrx_tokenizer();

// The tokenizer a training config uses: the model folder's own files when its config.json
// comes with them, else the installed cl100k_base with DBRX's special tokens.
Tokenizer training_tokenizer(const TrainConfig& config);

}  // namespace tessera::training
