#pragma once
// Training data: text and JSONL files tokenized into one stream (EOS after every document),
// split into train and eval, packed into fixed-length windows and served as shuffled
// micro-batches whose read position can be saved in a checkpoint and restored exactly.
//
// Files: a named file must be .txt or .jsonl; a folder is searched recursively (paths sorted,
// hidden entries skipped) for *.txt and *.jsonl. A .txt file is one document; a .jsonl file
// holds one JSON object per non-blank line whose string field "text" is a document. Empty
// documents are skipped. A leading UTF-8 byte-order mark is dropped.
//
// Packing: a stream of n tokens gives (n - 1) / seq_len windows; window i is the tokens
// [i*seq_len, i*seq_len + seq_len] (seq_len + 1 of them, so neighbours share one token):
// inputs are its first seq_len tokens, targets its last seq_len. The tail that does not fill
// a window is not used.
//
// Shuffling: every epoch visits every window exactly once, in an order drawn by Fisher-Yates
// from a xoshiro256** generator seeded from (seed, epoch), so the order is the same on every
// machine and compiler.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizers/bpe_tokenizer.h"

namespace tessera::training {

struct TrainConfig;

// The .txt/.jsonl files that `inputs` name, in order (each folder's files sorted by path),
// without repeats. `what` names the inputs in errors ("train_data"). Errors: a missing path, a
// named file of another type, no data file at all.
std::vector<std::filesystem::path> list_data_files(const std::vector<std::filesystem::path>& inputs,
                                                   const std::string& what);

// Tokenized documents, one after another, each followed by the EOS token.
struct Corpus {
  std::vector<int32_t> tokens;
  std::vector<int64_t> document_ends;  // end (exclusive) of each document in tokens, EOS included
  std::vector<std::filesystem::path> files;
  int64_t bytes = 0;                   // text bytes read

  int64_t documents() const { return static_cast<int64_t>(document_ends.size()); }
};

struct CorpusOptions {
  std::string what = "train_data";  // names the inputs in errors
  int64_t vocab_size = 0;           // > 0: every token id must be below it (tokenizer vs model)
  bool progress = false;            // a progress bar on stderr while tokenizing
};

// Reads and tokenizes the files `inputs` name (documents in parallel on the global thread
// pool). Errors name the file and line: not valid UTF-8, not valid JSON, no string "text"; and
// an empty corpus (no tokens at all).
Corpus read_corpus(const std::vector<std::filesystem::path>& inputs, const Tokenizer& tokenizer,
                   const CorpusOptions& options = {});

// The held-out split of a corpus with no eval files: round(fraction * documents) documents
// (at least one when fraction > 0 and there are two or more; never all) chosen with the seed,
// both parts kept in corpus order. A single document gives the last fraction of its tokens to
// eval instead. fraction 0: no eval.
struct Split {
  std::vector<int32_t> train, eval;
  int64_t train_documents = 0, eval_documents = 0;
};
Split split_corpus(const Corpus& corpus, double eval_fraction, uint64_t seed);

// A token stream cut into windows of seq_len + 1 tokens (see the packing note above).
class PackedTokens {
 public:
  PackedTokens(std::vector<int32_t> tokens, int64_t seq_len);

  int64_t seq_len() const { return seq_len_; }
  int64_t windows() const { return windows_; }
  int64_t token_count() const { return static_cast<int64_t>(tokens_.size()); }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  // FNV-1a over the 32-bit token ids: tells a checkpoint whether the data changed.
  uint64_t fingerprint() const { return fingerprint_; }

  // Copies window i: seq_len inputs and seq_len targets (the inputs shifted by one).
  void copy_window(int64_t window, int32_t* inputs, int32_t* targets) const;

 private:
  std::vector<int32_t> tokens_;
  int64_t seq_len_ = 0, windows_ = 0;
  uint64_t fingerprint_ = 0;
};

// Shuffled micro-batches of train windows, epoch after epoch without a seam.
class TrainLoader {
 public:
  TrainLoader(std::shared_ptr<const PackedTokens> data, uint64_t seed);

  // The next `rows` windows as row-major [rows, seq_len] inputs and targets (resized here).
  // A batch that crosses the end of an epoch continues with the next epoch's order.
  void next(int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

  int64_t epoch() const { return epoch_; }          // epochs completed
  int64_t position() const { return position_; }    // windows served in the current epoch
  int64_t windows_per_epoch() const { return data_->windows(); }
  int64_t seq_len() const { return data_->seq_len(); }
  int64_t windows_served() const { return epoch_ * data_->windows() + position_; }

  // {"version", "epoch", "position", "windows", "seq_len", "tokens", "fingerprint", "seed"}.
  nlohmann::json state() const;
  // Continues from a saved state. Throws tessera::Error when the state is malformed or was made
  // for other data, sequence length or seed.
  void restore(const nlohmann::json& state);

 private:
  void shuffle();  // order_ for epoch_

  std::shared_ptr<const PackedTokens> data_;
  uint64_t seed_;
  int64_t epoch_ = 0, position_ = 0;
  std::vector<int64_t> order_;
};

// The eval windows, in stream order (no shuffle). When the eval stream is shorter than one
// window of seq_len + 1 tokens but has at least two tokens, it is one shorter window
// (seq_len() < the train seq_len); with fewer than two tokens there are no windows and the
// trainer skips evaluation.
class EvalWindows {
 public:
  EvalWindows() = default;
  EvalWindows(std::vector<int32_t> tokens, int64_t seq_len);

  int64_t windows() const { return data_ ? data_->windows() : 0; }
  int64_t seq_len() const { return data_ ? data_->seq_len() : 0; }
  int64_t token_count() const { return data_ ? data_->token_count() : 0; }
  // Micro-batches of `rows` windows; the last one may be shorter.
  int64_t batches(int64_t rows) const;
  // Batch `index`: windows [index*rows, min((index+1)*rows, windows())); returns how many rows
  // it filled into inputs/targets ([filled, seq_len()], resized here).
  int64_t batch(int64_t index, int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const;

 private:
  std::shared_ptr<const PackedTokens> data_;
};

struct DataOptions {
  std::vector<std::filesystem::path> train_data;
  std::vector<std::filesystem::path> eval_data;  // empty: hold out eval_fraction of train_data
  int64_t seq_len = 512;
  double eval_fraction = 0.05;
  uint64_t seed = 17;
  int64_t vocab_size = 0;  // > 0: check token ids against the model
  bool progress = false;
};
// The data settings of a training config (vocab_size: the model's).
DataOptions data_options(const TrainConfig& config, int64_t vocab_size);

// Counts for the log.
struct DataStats {
  int64_t files = 0, eval_files = 0;
  int64_t documents = 0;  // train_data documents
  int64_t train_documents = 0, eval_documents = 0;
  int64_t train_tokens = 0, eval_tokens = 0;
  int64_t seq_len = 0, windows_per_epoch = 0;
  int64_t eval_seq_len = 0, eval_windows = 0;
  bool eval_held_out = false;  // eval documents came from train_data

  std::string summary() const;  // one line
};

struct TrainingData {
  std::shared_ptr<const PackedTokens> train;
  EvalWindows eval;
  DataStats stats;
  uint64_t seed = 0;

  TrainLoader loader() const { return TrainLoader(train, seed); }
};

// Reads, tokenizes, splits and packs. Errors: everything read_corpus reports, a train stream
// shorter than seq_len + 1 tokens (saying how many there are), an empty train split.
TrainingData load_training_data(const DataOptions& options, const Tokenizer& tokenizer);

// Reads the fields of a data loader's saved position (trainer_state.json's "data"), each error
// naming the field: shared by the pre-training and the fine-tuning loaders.
class LoaderStateReader {
 public:
  explicit LoaderStateReader(const nlohmann::json& state);
  int64_t integer(const char* key) const;
  std::string text(const char* key) const;
  static constexpr const char* kWhere = "data position in the checkpoint";

 private:
  const nlohmann::json& state_;
};

}  // namespace tessera::training
