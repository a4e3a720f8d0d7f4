#pragma once
// Byte-level BPE tokenizer: tiktoken rank files (cl100k_base, DBRX), Hugging Face
// tokenizer.json files of model type "BPE" with a ByteLevel alphabet (GPT-2, Llama 3 style),
// and the "gpt2" tokenizer stored in GGUF metadata (gguf_tokenizer.cpp).
//
// Encoding: special/added tokens are cut out of the text first (leftmost, longest first), the
// rest is split by the pre-tokenizer regex (PCRE2, UTF + UCP, JIT when available), and each
// piece is merged pair by pair, lowest merge rank first, ties to the leftmost pair.
//
// Invalid UTF-8 in the input never reaches the regex: each maximal run of valid UTF-8 is
// pre-tokenized on its own and every byte that is not part of a valid sequence becomes its
// own piece, which encodes to that byte's single-byte token. decode(encode(s)) == s for any
// byte string when all 256 byte tokens exist (always true for tiktoken files).
//
// A Tokenizer is immutable after loading; copies share the tables and encode/decode may be
// called from many threads at once.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tessera {

class GgufFile;

// The cl100k_base pre-tokenizer (GPT-4, DBRX).
inline constexpr std::string_view kCl100kPattern =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)";

// The GPT-2 pre-tokenizer, used by a plain ByteLevel pre_tokenizer with use_regex=true.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// cl100k_base's own special tokens, used when a model folder does not list its own.
std::vector<std::pair<std::string, int32_t>> cl100k_special_tokens();

class Tokenizer {
 public:
  // A tiktoken rank file: lines "<base64 token> <rank>", the rank being the token id.
  static Tokenizer from_tiktoken(const std::filesystem::path& ranks_file,
                                 const std::string& pattern,
                                 std::vector<std::pair<std::string, int32_t>> special_tokens);

  // A Hugging Face tokenizer.json (model.type "BPE", byte-level vocab and merges).
  static Tokenizer from_tokenizer_json(const std::filesystem::path& tokenizer_json);
  // The same from text in memory; name_for_errors stands for the file in error messages.
  static Tokenizer from_tokenizer_json_text(std::string_view json, std::string_view name_for_errors);

  // The tokenizer stored in a GGUF file's metadata (tokenizer.ggml.model "gpt2": byte-level
  // BPE). tokenizer.ggml.pre picks the pre-tokenizer regexes as llama.cpp does; control,
  // unknown and user-defined tokens are matched in text as special/added tokens.
  static Tokenizer from_gguf(const GgufFile& file);

  // The tokenizer of a model folder: tokenizer.json, else a *.tiktoken file (cl100k pattern),
  // else the installed cl100k_base. bos/eos/pad come from tokenizer_config.json when present.
  static Tokenizer load_for_model(const std::filesystem::path& model_dir);

  // allow_special=false encodes special tokens' text as ordinary text; non-special added
  // tokens (tokenizer.json "special": false) are always matched, as Hugging Face does.
  std::vector<int32_t> encode(std::string_view text, bool allow_special = true) const;
  std::string decode(std::span<const int32_t> ids) const;

  // The exact bytes of one token (throws tessera::Error for an id with no token).
  const std::string& token_bytes(int32_t id) const;
  // Largest id + 1, special tokens included (ids may have gaps).
  int32_t vocab_size() const;
  // The id of a special/added token by its text, else of a regular token by its raw bytes.
  std::optional<int32_t> token_id(std::string_view special_or_token) const;
  bool is_special(int32_t id) const;

  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  std::optional<int32_t> pad_id() const;
  std::optional<int32_t> unk_id() const;
  std::optional<int32_t> eot_id() const;  // end of turn (GGUF tokenizer.ggml.eot_token_id)

  // Where this tokenizer came from, for messages.
  const std::string& source() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Turns a stream of generated ids into text without ever splitting a UTF-8 character:
// push() returns the complete characters so far and holds back an unfinished trailing
// sequence until a later token completes it. Bytes that can never become valid UTF-8 are
// passed through as they are (they cannot be completed by waiting). The concatenation of all
// push() results and flush() equals tokenizer.decode(all ids).
class StreamingDecoder {
 public:
  // Keeps its own (shared, cheap) copy of the tokenizer.
  explicit StreamingDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int32_t id);
  // Everything still held back, raw (possibly an incomplete UTF-8 sequence); resets.
  std::string flush();

 private:
  Tokenizer tokenizer_;
  std::string pending_;
};

}  // namespace tessera
