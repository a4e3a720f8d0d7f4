#include "serving/sampling.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <unordered_map>

#include "core/error.h"

namespace tessera {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || temperature > 100.0f) fail("temperature must be between 0 and 100, got {}", temperature);
  if (top_k < 0) fail("top_k must be >= 0, got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p must be in (0, 1], got {}", top_p);
  if (!(min_p >= 0.0f && min_p < 1.0f)) fail("min_p must be in [0, 1), got {}", min_p);
  if (!(repetition_penalty > 0.0f)) fail("repetition_penalty must be positive, got {}", repetition_penalty);
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    fail("frequency_penalty must be between -2 and 2, got {}", frequency_penalty);
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    fail("presence_penalty must be between -2 and 2, got {}", presence_penalty);
  if (max_tokens < 0) fail("max_tokens must be >= 0, got {}", max_tokens);
  for (const auto& s : stop)
    if (s.empty()) fail("stop strings must not be empty");
}

Sampler::Sampler(const SamplingParams& params)
    : params_(params),
      seed_(params.seed ? *params.seed
                        : (std::random_device{}() ^
                           static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()))),
      rng_(seed_) {}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> context, size_t generated) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (vocab == 0) fail("sample: empty logits");

  if (params_.repetition_penalty != 1.0f) {
    std::vector<bool> seen(static_cast<size_t>(vocab), false);
    for (int32_t id : context) {
      if (id < 0 || id >= vocab || seen[id]) continue;
      seen[id] = true;
      float& l = logits[id];
      l = l > 0 ? l / params_.repetition_penalty : l * params_.repetition_penalty;
    }
  }
  if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) {
    std::unordered_map<int32_t, int64_t> counts;
    const size_t first = context.size() >= generated ? context.size() - generated : 0;
    for (size_t i = first; i < context.size(); ++i) ++counts[context[i]];
    for (const auto& [id, count] : counts) {
      if (id < 0 || id >= vocab) continue;
      logits[id] -= static_cast<float>(count) * params_.frequency_penalty + params_.presence_penalty;
    }
  }

  if (params_.temperature == 0.0f)
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());

  // Candidates: everything, or the top_k best (sorted). Sorting all 100k logits per token would
  // cost more than the forward pass of a small model, so order is only established when a
  // filter needs it, and then only as far as it needs.
  order_.resize(static_cast<size_t>(vocab));
  std::iota(order_.begin(), order_.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b]; };
  size_t keep = order_.size();
  size_t sorted = 0;  // order_[0, sorted) is in descending order
  if (params_.top_k > 0 && params_.top_k < vocab) {
    keep = static_cast<size_t>(params_.top_k);
    std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(keep), order_.end(), by_logit);
    sorted = keep;
  }

  const float inv_t = 1.0f / params_.temperature;
  float top = -INFINITY;
  for (size_t i = 0; i < keep; ++i) top = std::max(top, logits[order_[i]]);
  probs_.resize(static_cast<size_t>(vocab));  // indexed by token id
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    const int32_t id = order_[i];
    probs_[id] = std::exp(static_cast<double>((logits[id] - top) * inv_t));
    total += probs_[id];
  }
  for (size_t i = 0; i < keep; ++i) probs_[order_[i]] /= total;

  if (params_.min_p > 0.0f) {
    // The best candidate has probability exp(0)/total; keep those within min_p of it.
    const double floor = (1.0 / total) * params_.min_p;
    auto end = std::partition(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(keep),
                              [&](int32_t id) { return probs_[id] >= floor; });
    const size_t kept = static_cast<size_t>(end - order_.begin());
    if (kept < keep) sorted = 0;  // partition may have reordered the sorted prefix
    if (sorted) std::sort(order_.begin(), end, [&](int32_t a, int32_t b) { return probs_[a] > probs_[b]; });
    keep = kept;
  }
  if (params_.top_p < 1.0f) {
    // Sort a growing prefix until it holds top_p of the mass.
    size_t window = std::min<size_t>(keep, 64);
    for (;;) {
      if (sorted < window) {
        std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(window),
                          order_.begin() + static_cast<std::ptrdiff_t>(keep),
                          [&](int32_t a, int32_t b) { return probs_[a] > probs_[b]; });
        sorted = window;
      }
      double cumulative = 0;
      size_t cut = 0;
      while (cut < window && cumulative < params_.top_p) cumulative += probs_[order_[cut++]];
      if (cumulative >= params_.top_p || window == keep) {
        keep = cut;
        break;
      }
      window = std::min(keep, window * 4);
    }
  }

  double mass = 0;
  for (size_t i = 0; i < keep; ++i) mass += probs_[order_[i]];
  double r = rng_.uniform() * mass;
  for (size_t i = 0; i < keep; ++i) {
    r -= probs_[order_[i]];
    if (r < 0) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace tessera
