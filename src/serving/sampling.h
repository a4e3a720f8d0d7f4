#pragma once
// Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, then a draw
// from a seeded generator (or argmax when temperature is 0).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/rng.h"

namespace tessera {

struct SamplingParams {
  float temperature = 1.0f;      // 0: greedy
  int64_t top_k = 0;             // 0: off
  float top_p = 1.0f;            // 1: off
  float min_p = 0.0f;            // 0: off
  float repetition_penalty = 1.0f;  // >1 discourages tokens already in the context (prompt + output)
  float frequency_penalty = 0.0f;   // subtracted per earlier occurrence in the output
  float presence_penalty = 0.0f;    // subtracted once if the token occurred in the output
  std::optional<uint64_t> seed;     // unset: a random seed
  int64_t max_tokens = 256;
  std::vector<std::string> stop;    // stop strings (not included in the output)
  bool ignore_eos = false;

  void validate() const;  // throws tessera::Error naming the bad field
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks a token from `logits` (modified in place). `context` is the prompt followed by the
  // generated tokens; `generated` counts how many of those are output.
  int32_t sample(std::span<float> logits, std::span<const int32_t> context, size_t generated);

  uint64_t seed() const { return seed_; }

 private:
  SamplingParams params_;
  uint64_t seed_;
  Rng rng_;
  std::vector<int32_t> order_;
  std::vector<double> probs_;
};

}  // namespace tessera
