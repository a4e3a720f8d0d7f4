#pragma once
// Trains a byte-level BPE vocabulary from text, the way Hugging Face `tokenizers`' BpeTrainer
// does with a Split(regex, Isolated) + ByteLevel(use_regex=false) pre-tokenizer and the full
// byte alphabet, so that the same corpus and settings give the same merges (checked against it
// in tests/test_bpe_trainer.cpp).
//
// Input. A document is pre-tokenized by the regex into pieces ("words"); words are counted.
// Each maximal run of valid UTF-8 is split on its own and every byte that is not part of a
// valid sequence is a one-byte piece, exactly as Tokenizer::encode splits text, so the words
// seen here are the pieces the encoder will see. One-byte pieces cannot merge, so invalid bytes
// only show up in the stats. Special tokens written in the text are plain text here, as they
// are when tessera's data loaders encode documents (allow_special=false).
//   add_text: one document.
//   add_file: a .jsonl file holds one JSON object per non-blank line whose string "text" is a
//     document (anything else on a line is an error naming file:line); any other file is one
//     document of plain text (a leading UTF-8 byte-order mark is dropped). Plain text is read
//     in blocks of a few MiB cut only after a '\n' that is followed by a printable ASCII
//     character: the cl100k and GPT-2 patterns never match across such a point, so the words
//     are those of the whole file; a custom pattern that does match across it may see one
//     word split at each cut. A file with no such point in 64 MiB is cut between UTF-8
//     characters.
//
// Vocabulary. Ids 0..S-1 are the special tokens in the order given, then the 256 byte tokens
// ordered by their byte-level character (GPT-2's printable stand-ins: '!' first, U+0143 last),
// then one token per merge in the order learned. vocab_size counts all of them.
//
// Merging. Each step merges the pair of adjacent tokens with the highest count over all words
// (weighted by the word's count); ties go to the smallest (left id, right id). A pair merges in
// a word left to right without overlap ("a a a" -> "aa a"). Counts are kept up to date with
// the changes each merge makes around it, and a priority queue holds (count, pair, the words
// to look at); an entry whose count went stale is put back with the current count when it
// comes up. Training stops when the vocabulary is full, when the best pair occurs fewer than
// min_frequency times, or when no pair is left.
//
// Where two merges make the same string ("ab"+"c" and "a"+"bc"), the second one gets the
// existing token's id and adds no token. Its queue entries then only cover the words of their
// own merge, and the pair keeps the rank of its last merge; this is what the reference does,
// and mirroring it keeps the merges equal. Two queue entries with the same count and pair go
// oldest first (the reference leaves that order to its heap).
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tessera {

class Tokenizer;

// <|endoftext|> ends documents and generation; <|im_start|>/<|im_end|> make ChatML prompts
// (tokenizers/chat_template.h); <|pad|> pads batches.
std::vector<std::string> default_special_tokens();

struct BpeTrainerOptions {
  int64_t vocab_size = 8192;  // special and byte tokens included
  int64_t min_frequency = 2;  // a pair seen fewer times is never merged
  std::vector<std::string> special_tokens = default_special_tokens();
  std::string pattern;        // pre-tokenizer regex; empty: kCl100kPattern
  bool progress = false;      // progress bars on stderr (drawn only on a terminal)
};

struct BpeCorpusStats {
  int64_t files = 0;
  int64_t documents = 0;        // non-empty ones
  int64_t bytes_read = 0;       // file bytes, JSON syntax included
  int64_t text_bytes = 0;       // document bytes
  int64_t words = 0;            // pieces, invalid bytes included
  int64_t distinct_words = 0;
  int64_t invalid_bytes = 0;    // bytes outside valid UTF-8
};

struct TrainedBpe {
  std::vector<std::string> tokens;  // id -> raw bytes (a special token: its text)
  int32_t special_count = 0;        // ids below this are the special tokens
  // Merges in rank order, each pair once: (left id, right id) -> merged id.
  struct Merge {
    int32_t left, right, merged;
  };
  std::vector<Merge> merges;
  int64_t merge_steps = 0;          // merges made, counting a pair merged twice twice
  std::string pattern;
  std::string stop_reason;          // why training stopped, for the summary
};

class BpeTrainer {
 public:
  // Checks the options: a vocab size that holds the specials and the 256 bytes, distinct
  // non-empty UTF-8 special tokens, a pattern that compiles. Errors name the option.
  explicit BpeTrainer(BpeTrainerOptions options);
  ~BpeTrainer();
  BpeTrainer(BpeTrainer&&) noexcept;
  BpeTrainer& operator=(BpeTrainer&&) noexcept;

  void add_text(std::string_view document);
  void add_file(const std::filesystem::path& file);
  // The same for many files, under one progress bar.
  void add_files(const std::vector<std::filesystem::path>& files);

  const BpeCorpusStats& stats() const;
  const BpeTrainerOptions& options() const;

  // Learns the merges from everything added so far (fails on an empty corpus). May be called
  // again; the words are not consumed.
  TrainedBpe train() const;

  // How many tokens `tokenizer` gives the text added so far: every distinct word encoded once
  // (allow_special=false), times its count, plus one per invalid byte.
  int64_t count_tokens(const Tokenizer& tokenizer) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Hugging Face tokenizer.json for a trained vocabulary: model BPE with the byte-level vocab
// and merges, pre_tokenizer Sequence[Split(pattern, Isolated), ByteLevel(use_regex=false)],
// ByteLevel decoder, the special tokens as added tokens. Loads in Tokenizer and in `tokenizers`.
std::string trained_tokenizer_json(const TrainedBpe& trained);

// tokenizer_config.json: the special tokens (added_tokens_decoder), bos/eos = <|endoftext|>
// (else the first special token), pad = <|pad|> when present, and the ChatML chat_template
// tessera's own models carry when <|im_start|> and <|im_end|> are special tokens.
std::string trained_tokenizer_config_json(const TrainedBpe& trained);

// Writes both files into `dir` (created if needed), each replaced atomically.
void write_trained_tokenizer(const TrainedBpe& trained, const std::filesystem::path& dir);

}  // namespace tessera
