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
#include "models/llm/kv_cache.h"
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

// The inputs of one sequence in a batched forward pass.
struct BatchSequence {
  std::span<const int32_t> tokens;  // new tokens to run after the cache's positions (>= 1)
  KvCache* cache = nullptr;
  bool all_logits = false;  // logits for every token, else only for the last
};

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  virtual const LanguageModelInfo& info() const = 0;

  // A cache with its own unlimited block pool.
  KvCache new_cache() const {
    const auto& i = info();
    return KvCache(i.n_layers, i.kv_heads, i.head_dim, i.max_seq_len, i.kv_dtype);
  }
  // A pool of KV blocks for many sequences of this model (max_blocks 0: unlimited).
  std::shared_ptr<KvBlockPool> new_block_pool(int64_t max_blocks, int64_t block_tokens = 16) const;
  // A cache drawing its blocks from `pool`, which must have been made for this model.
  KvCache new_cache(std::shared_ptr<KvBlockPool> pool) const;

  // Runs `tokens` after the positions already in `cache`, appending their keys and values.
  // Returns logits [tokens.size(), vocab] when all_logits, else [1, vocab] for the last token.
  // Throws tessera::Error for out-of-range token ids or when max_seq_len would be exceeded.
  // The same as forward_batch with one sequence.
  virtual Tensor forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits);

  // Runs several sequences in one pass: every matrix product covers the tokens of all
  // sequences (one read of the weights per step for all of them); attention uses each
  // sequence's own cache and positions. Returns logits [rows, vocab], rows concatenated in
  // batch order (tokens.size() rows for an all_logits sequence, else 1). Results equal
  // forward() of each sequence alone, up to float rounding of the batched products.
  // Everything is checked before any cache changes: token ids, max_seq_len, a cache given
  // twice, and room in the caches' pools (an Error when any is short, no cache changed).
  virtual Tensor forward_batch(std::span<const BatchSequence> batch) = 0;

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
