#include <chrono>
#include <memory>

#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizers/bpe_tokenizer.h"
#include "tokenizers/bpe_trainer.h"
#include "training/data.h"

namespace tessera::cli {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string human_bytes(int64_t bytes) {
  if (bytes < 1000) return fmt::format("{} bytes", bytes);
  if (bytes < 1000 * 1000) return fmt::format("{:.1f} KB", static_cast<double>(bytes) / 1e3);
  return fmt::format("{:.1f} MB", static_cast<double>(bytes) / 1e6);
}

}  // namespace

void register_tokenizer(CLI::App& app) {
  struct Options {
    std::vector<std::string> inputs, specials;
    int64_t vocab_size = 0;
    int64_t min_frequency = 2;
    std::string pattern, output;
  };
  auto opts = std::make_shared<Options>();
  auto* tokenizer = app.add_subcommand("tokenizer", "Make tokenizers");
  tokenizer->require_subcommand(1);
  auto* train = tokenizer->add_subcommand(
      "train", "Train a byte-level BPE vocabulary (cl100k pre-tokenizer) and write tokenizer.json and tokenizer_config.json");
  train->add_option("--input", opts->inputs,
                    ".txt files (one document each), .jsonl files (one {\"text\": ...} per line) or folders of them")
      ->required();
  train->add_option("--vocab-size", opts->vocab_size, "Tokens in all: special tokens, the 256 bytes and the merges")
      ->required();
  train->add_option("--min-frequency", opts->min_frequency, "Never merge a pair seen fewer times")->capture_default_str();
  auto* special = train->add_option("--special", opts->specials,
                                    "Special tokens, in id order (default: <|endoftext|> <|im_start|> <|im_end|> <|pad|>)");
  train->add_option("--pattern", opts->pattern, "Pre-tokenizer regex (PCRE2; default: cl100k's)");
  train->add_option("-o,--output", opts->output, "Folder for tokenizer.json and tokenizer_config.json")->required();
  train->callback([opts, special] {
    const auto start = std::chrono::steady_clock::now();
    BpeTrainerOptions options;
    options.vocab_size = opts->vocab_size;
    options.min_frequency = opts->min_frequency;
    if (special->count() > 0) options.special_tokens = opts->specials;
    options.pattern = opts->pattern;
    options.progress = true;
    BpeTrainer trainer(options);  // checks the options before any reading

    std::vector<std::filesystem::path> inputs(opts->inputs.begin(), opts->inputs.end());
    trainer.add_files(training::list_data_files(inputs, "--input"));
    const double read_seconds = seconds_since(start);
    const auto train_start = std::chrono::steady_clock::now();
    const TrainedBpe trained = trainer.train();
    const double train_seconds = seconds_since(train_start);
    write_trained_tokenizer(trained, opts->output);
    const double seconds = seconds_since(start);

    // Read back the way a model folder's tokenizer is loaded, and measure it on the input.
    const Tokenizer loaded = Tokenizer::load_for_model(opts->output);
    const int64_t tokens = trainer.count_tokens(loaded);
    const BpeCorpusStats& stats = trainer.stats();
    const auto vocab = static_cast<int64_t>(trained.tokens.size());
    fmt::print("wrote {}/tokenizer.json and tokenizer_config.json\n", opts->output);
    fmt::print("vocab:   {} tokens ({} special, 256 bytes, {} merged); {} merges; stopped: {}\n", vocab,
               trained.special_count, vocab - trained.special_count - 256, trained.merges.size(), trained.stop_reason);
    fmt::print("corpus:  {} read from {} file{}, {} documents, {} words ({} distinct){}\n", human_bytes(stats.bytes_read),
               stats.files, stats.files == 1 ? "" : "s", stats.documents, stats.words, stats.distinct_words,
               stats.invalid_bytes ? fmt::format(", {} bytes of invalid UTF-8 kept as bytes", stats.invalid_bytes) : "");
    fmt::print("time:    {:.2f} s (reading {:.2f} s, merges {:.2f} s), {:.1f} MB/s\n", seconds, read_seconds, train_seconds,
               seconds > 0 ? static_cast<double>(stats.bytes_read) / seconds / 1e6 : 0.0);
    fmt::print("tokens:  {} on the input, {:.2f} bytes per token\n", tokens,
               tokens > 0 ? static_cast<double>(stats.text_bytes) / static_cast<double>(tokens) : 0.0);
  });
}

}  // namespace tessera::cli
