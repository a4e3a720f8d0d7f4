#pragma once
// Fine-tuning data: the three task formats, read and checked line by line before any training,
// turned into rows of context_length tokens whose targets carry the loss mask.
//
// Tasks and their files:
//   instruction-finetune  JSONL lines {"prompt": str, "response": str}. An example is the tokens
//                         of the prompt, then of the response, then EOS; the loss counts the
//                         response tokens and the EOS.
//   chat-completion       JSONL lines {"messages": [{"role", "content"}, ...]}: an optional
//                         leading "system" message, then "user" and "assistant" in turn, starting
//                         with "user" and ending with "assistant". Rendered with the model's chat
//                         format (ChatML, as the server renders prompts); the loss counts the
//                         content of every assistant turn and its <|im_end|>.
//   continued-pretrain    .txt/.jsonl files or folders read exactly as pre-training reads them
//                         (training/data.h); the loss counts every token.
//
// Validation never stops at the first problem: every bad line is reported with its file, line
// number and reason in a DatasetReport, errors (the run must not start) apart from warnings
// (an example longer than context_length, which is cut, keeping its start). An example whose
// loss tokens would all be cut off is an error. Blank lines are skipped.
//
// Packing (instruction and chat): examples are placed in rows of context_length tokens greedily
// in dataset order: an example goes into the current row when it fits in what is left, else it
// starts a new row; the rest of a row is padding (EOS as input, target -100). An example is never
// split across rows (one longer than a row was cut to context_length when read). Each token
// carries the position where its example starts in the row, and the trainer's attention stops
// there: a packed example sees only itself, exactly as it will at inference, while a row trains
// as many examples as one-per-row would with far less padding. The rows are made once; each epoch
// visits them in a new order drawn by Fisher-Yates from a xoshiro256** generator seeded from
// (seed, epoch), so the order is the same on every machine.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "serving/chat_format.h"
#include "tokenizers/bpe_tokenizer.h"
#include "training/data.h"
#include "training/trainer.h"

namespace tessera::training {

enum class FinetuneTask { InstructionFinetune, ChatCompletion, ContinuedPretrain };

// "instruction-finetune", "chat-completion", "continued-pretrain"; anything else is an error
// naming the accepted values.
FinetuneTask parse_finetune_task(std::string_view name);
std::string_view finetune_task_name(FinetuneTask task);

// The target of a token the loss does not count.
inline constexpr int32_t kIgnoreTarget = -100;

enum class Severity { Error, Warning };

struct DataProblem {
  std::string file;   // empty for a problem of the whole dataset
  int64_t line = 0;   // 1-based; 0: the whole file
  std::string message;
  Severity severity = Severity::Error;

  // "train.jsonl:7: messages[2].role: ..." (warnings: "train.jsonl:9: warning: ...").
  std::string format() const;
};

struct LengthSummary {
  int64_t min = 0, max = 0;
  double mean = 0;
};

struct DatasetReport {
  FinetuneTask task = FinetuneTask::InstructionFinetune;
  int64_t context_length = 0;
  int64_t files = 0;
  int64_t examples = 0;      // usable examples (documents for continued-pretrain)
  int64_t truncated = 0;     // examples cut to context_length
  int64_t total_tokens = 0;  // tokens of the usable examples, after truncation
  int64_t loss_tokens = 0;   // of those, the ones the loss counts
  LengthSummary lengths;     // tokens per example, after truncation
  std::vector<DataProblem> problems;  // in file and line order

  bool ok() const { return errors() == 0; }
  int64_t errors() const;
  int64_t warnings() const;
  // One line per problem (at most max_problems, then "... and N more"; 0: all) and a summary.
  std::string format(size_t max_problems = 0) const;
  std::string summary() const;  // one line: counts, tokens, lengths
};

// One tokenized example: tokens[i] is counted by the loss when loss[i] is set (as the target of
// the token before it). The first token is never counted.
struct FinetuneExample {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> loss;
};

// Fixed rows of examples packed as described above.
class PackedExamples {
 public:
  PackedExamples() = default;
  PackedExamples(const std::vector<FinetuneExample>& examples, int64_t seq_len, int32_t pad_id);

  int64_t seq_len() const { return seq_len_; }
  int64_t rows() const { return rows_; }
  // Which examples (indices into the vector given) each row holds, in order.
  const std::vector<std::vector<int64_t>>& row_examples() const { return row_examples_; }
  // FNV-1a over the inputs and targets: tells a checkpoint whether the data changed.
  uint64_t fingerprint() const { return fingerprint_; }

  // starts (optional): each token's example start within the row (padding: its own position).
  void copy_row(int64_t row, int32_t* inputs, int32_t* targets, int32_t* starts = nullptr) const;

 private:
  int64_t seq_len_ = 0, rows_ = 0;
  std::vector<int32_t> inputs_, targets_, starts_;  // [rows, seq_len]
  std::vector<std::vector<int64_t>> row_examples_;
  uint64_t fingerprint_ = 0;
};

// Shuffled micro-batches of packed rows, epoch after epoch without a seam (as TrainLoader).
class ExampleLoader {
 public:
  ExampleLoader(std::shared_ptr<const PackedExamples> data, uint64_t seed);

  // starts (optional): each token's example start within its row.
  void next(int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets,
            std::vector<int32_t>* starts = nullptr);

  int64_t epoch() const { return epoch_; }
  int64_t position() const { return position_; }
  int64_t seq_len() const { return data_->seq_len(); }
  int64_t rows_per_epoch() const { return data_->rows(); }

  // {"version", "kind", "epoch", "position", "rows", "seq_len", "fingerprint", "seed"}.
  nlohmann::json state() const;
  // Throws tessera::Error when the state is malformed or was made for other data or settings.
  void restore(const nlohmann::json& state);

 private:
  void shuffle();

  std::shared_ptr<const PackedExamples> data_;
  uint64_t seed_;
  int64_t epoch_ = 0, position_ = 0;
  std::vector<int64_t> order_;
};

struct FinetuneDataOptions {
  FinetuneTask task = FinetuneTask::InstructionFinetune;
  std::vector<std::filesystem::path> train_data;
  int64_t context_length = 512;
  double eval_fraction = 0.0;  // of the examples (documents for continued-pretrain), chosen by seed
  uint64_t seed = 17;
  int64_t vocab_size = 0;      // > 0: every token id must be below it
  ChatFormat chat_format;      // the model's (chat-completion)
  std::string what = "train_data";  // names the inputs in whole-dataset problems
};

struct FinetuneData {
  DatasetReport report;
  int32_t pad_id = 0;  // EOS
  uint64_t seed = 0;
  // Instruction and chat: the examples of each split and their rows.
  std::vector<FinetuneExample> train_examples, eval_examples;
  std::shared_ptr<const PackedExamples> train_rows, eval_rows;
  // Continued-pretrain: the pre-training windows.
  TrainingData pretrain;

  FinetuneTask task() const { return report.task; }
  int64_t train_rows_per_epoch() const;
  // Tokens the loss counts in one epoch of the train split.
  int64_t train_loss_tokens() const;
  // Tokens of the train split trained in one epoch (padding not counted).
  int64_t train_tokens() const;
};

// Reads, checks and tokenizes. Problems with the data go into the report (see ok()), they do not
// throw; when the report has errors the batches are left empty. Throws only for bad options
// (context_length, eval_fraction) and a tokenizer that cannot serve the task: no EOS, no
// <|im_end|> for chat-completion, ids at or above vocab_size.
FinetuneData load_finetune_data(const FinetuneDataOptions& options, const Tokenizer& tokenizer);

// The trainer's view of fine-tuning data. Throws when the data has errors or nothing to train on.
std::unique_ptr<BatchSource> make_batch_source(const FinetuneData& data);

// For --validate-only.
struct TokenEstimate {
  int64_t epochs = 0;
  int64_t tokens_per_epoch = 0, loss_tokens_per_epoch = 0;
  int64_t total_tokens = 0, total_loss_tokens = 0;
  std::string summary() const;  // one line
};
TokenEstimate estimate_tokens(const FinetuneData& data, int64_t epochs);
// tokens / 1e6 * price_per_million (the price must be finite and not negative).
double estimate_cost(int64_t tokens, double price_per_million);

}  // namespace tessera::training
