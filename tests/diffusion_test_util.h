#pragma once
// Helpers shared by the diffusion tests: comparing against reference tensors and turning
// golden tensors into the engine's inputs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "formats/safetensors.h"
#include "models/diffusion/blocks.h"
#include "models/diffusion/pipeline.h"

namespace tessera::diffusion::testing {

// Largest absolute difference, relative to the reference's scale when that exceeds 1.
inline double max_diff(const float* got, const Tensor& want) {
  const std::vector<float> w = want.to_vector();
  double scale = 1.0, diff = 0.0;
  for (float v : w) scale = std::max(scale, static_cast<double>(std::abs(v)));
  for (size_t i = 0; i < w.size(); ++i) diff = std::max(diff, std::abs(static_cast<double>(got[i]) - w[i]));
  return diff / scale;
}

// [C, H, W] or [1, C, H, W] -> one image.
inline FeatureMap feature_map(const Tensor& t) {
  const Shape& s = t.shape();
  FeatureMap m(s[s.size() - 3], s[s.size() - 2], s[s.size() - 1]);
  const std::vector<float> v = t.to_vector();
  std::copy(v.begin(), v.end(), m.data.begin());
  return m;
}

// int64 token ids as the tokenizer's int32.
inline std::vector<int32_t> ids_of(const Tensor& t) {
  std::vector<int32_t> ids;
  const auto* p = t.data<int64_t>();
  for (int64_t i = 0; i < t.numel(); ++i) ids.push_back(static_cast<int32_t>(p[i]));
  return ids;
}

// A golden.json case (prompt, negative prompt, size, steps, guidance) as a request starting from
// the golden's recorded latents (`key` + "latents").
inline ImageRequest golden_request(const nlohmann::json& c, const SafetensorsFile& golden, const std::string& key) {
  ImageRequest r;
  r.prompt = c["prompt"].get<std::string>();
  if (!c["negative_prompt"].is_null()) r.negative_prompt = c["negative_prompt"].get<std::string>();
  r.width = c["width"].get<int64_t>();
  r.height = c["height"].get<int64_t>();
  r.steps = c["steps"].get<int64_t>();
  r.guidance = c["guidance"].get<float>();
  r.init_latents = feature_map(golden.get(key + "latents"));
  return r;
}

}  // namespace tessera::diffusion::testing
