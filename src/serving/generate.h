#pragma once
// The generation loop: prefill the prompt, then decode one token at a time, streaming text that
// never splits a UTF-8 character and never shows the beginning of a stop string that might
// still complete.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "models/llm/language_model.h"
#include "serving/sampling.h"
#include "tokenizers/bpe_tokenizer.h"

namespace tessera {

// A sequence's state across calls: its cache and the tokens the cache holds. A new prompt that
// starts with those tokens only runs its new suffix (multi-turn chat).
struct Session {
  KvCache cache;
  std::vector<int32_t> tokens;
};

struct GenerationStats {
  int64_t prompt_tokens = 0;       // tokens in the prompt
  int64_t prefilled_tokens = 0;    // prompt tokens actually run (the rest came from the cache)
  int64_t generated_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? prefilled_tokens / prefill_seconds : 0; }
  double decode_tokens_per_second() const {
    return decode_seconds > 0 && generated_tokens > 1 ? (generated_tokens - 1) / decode_seconds : 0;
  }
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (without a final stop token)
  std::string text;             // generated text, cut before any stop string
  std::string finish_reason;    // "stop", "length" or "cancelled"
  uint64_t seed = 0;
  GenerationStats stats;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  std::vector<int32_t> stop_token_ids;  // e.g. <|endoftext|>, <|im_end|>
};

// Called with each new piece of text; return false to cancel.
using TextCallback = std::function<bool(std::string_view)>;

GenerationResult generate(LanguageModel& model, const Tokenizer& tokenizer, Session& session,
                          const GenerationRequest& request, const TextCallback& on_text = nullptr);

// The ids generation should stop at for this tokenizer: its eos token and <|im_end|> if known.
std::vector<int32_t> default_stop_tokens(const Tokenizer& tokenizer);

// Ids a model of `vocab_size` can emit that the tokenizer has no token for (padding rows of the
// embedding, gaps in the id space). Generation never samples them: they have no text.
std::vector<int32_t> undecodable_ids(const Tokenizer& tokenizer, int64_t vocab_size);

}  // namespace tessera
