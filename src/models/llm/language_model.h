#pragma once
// What generation needs from a causal language model, whatever its architecture.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "tokenizers/bpe_tokenizer.h"

namespace tessera {

struct LanguageModelInfo {
  std::string architecture;  // "dbrx", "llama"
  std::string name;          // folder or file name
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  int64_t n_layers = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t parameters = 0;
  int64_t active_parameters = 0;
  // The KV cache's element type: f32 for float models (exact against their references), f16
  // for quantized ones (half the memory; llama.cpp's default too).
  DType kv_dtype = DType::F32;
};

// Keys and values of every layer for one sequence, f32 or f16, [position][kv_head][head_dim].
// Grows on demand (reserve() up front avoids reallocation), so memory follows the sequence
// length rather than max_seq_len.
class KvCache {
 public:
  KvCache() = default;
  KvCache(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t max_len, DType dtype = DType::F32);

  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  int64_t max_length() const { return max_len_; }
  int64_t row_size() const { return kv_heads_ * head_dim_; }
  void reserve(int64_t tokens);
  void clear() { length_ = 0; }
  void truncate(int64_t tokens);  // drop positions >= tokens (for rewinding)
  size_t bytes() const;

  DType dtype() const { return dtype_; }
  // Stores one position's keys and values (row_size() floats each), converting to dtype().
  void store(int64_t layer, int64_t pos, const float* keys, const float* values);
  // Raw rows: f32 or f16 (uint16_t) according to dtype().
  const void* keys(int64_t layer, int64_t pos) const { return keys_[layer].data() + pos * row_bytes(); }
  const void* values(int64_t layer, int64_t pos) const { return values_[layer].data() + pos * row_bytes(); }
  // Called by the model after it has written positions [length, length + n).
  void advance(int64_t n) { length_ += n; }

 private:
  int64_t row_bytes() const { return row_size() * static_cast<int64_t>(dtype_size(dtype_)); }
  int64_t kv_heads_ = 0, head_dim_ = 0, max_len_ = 0;
  int64_t length_ = 0, capacity_ = 0;
  DType dtype_ = DType::F32;
  std::vector<std::vector<std::byte>> keys_, values_;
};

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  virtual const LanguageModelInfo& info() const = 0;

  KvCache new_cache() const {
    const auto& i = info();
    return KvCache(i.n_layers, i.kv_heads, i.head_dim, i.max_seq_len, i.kv_dtype);
  }

  // Runs `tokens` after the positions already in `cache`, appending their keys and values.
  // Returns logits [tokens.size(), vocab] when all_logits, else [1, vocab] for the last token.
  // Throws tessera::Error for out-of-range token ids or when max_seq_len would be exceeded.
  virtual Tensor forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) = 0;

  // Bytes of weight data the model reads (mapped or owned).
  virtual size_t weight_bytes() const = 0;
};

// Where a --model argument points: an existing file or folder as given, else a folder of that
// name under models_dir() (so `--model smollm2-135m-instruct` finds the installed model).
std::filesystem::path resolve_model_path(const std::string& name_or_path);

// Loads a model: a Hugging Face folder with config.json (model_type picks the architecture), a
// .gguf file, or a folder holding one .gguf file (with or without tokenizer files beside it).
std::unique_ptr<LanguageModel> load_language_model(const std::filesystem::path& path);

// The tokenizer that goes with load_language_model(path): tokenizer files in the folder when
// present, else the one stored in the GGUF file, else the installed cl100k_base.
Tokenizer load_model_tokenizer(const std::filesystem::path& path);

// The model's chat template text, if its files carry one (GGUF tokenizer.chat_template or
// tokenizer_config.json chat_template).
std::optional<std::string> load_chat_template(const std::filesystem::path& path);

}  // namespace tessera
