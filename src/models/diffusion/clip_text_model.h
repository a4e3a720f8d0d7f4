#pragma once
// The CLIP text transformer of Stable Diffusion pipelines (transformers' CLIPTextModel and
// CLIPTextModelWithProjection): token and position embeddings, pre-LayerNorm blocks with
// causal self-attention and a quick_gelu or gelu MLP, a final LayerNorm, the pooled output at
// the end-of-text token and, with a projection, the text embeddings SDXL adds to the UNet.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/diffusion/component_weights.h"

namespace tessera::diffusion {

struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  int64_t max_positions = 77;
  std::string hidden_act = "quick_gelu";  // or "gelu"
  float layer_norm_eps = 1e-5f;
  int64_t eos_token_id = 2;
  int64_t projection_dim = 0;  // 0: no text projection (CLIPTextModel)

  static ClipTextConfig load(const std::filesystem::path& config_json);
};

struct ClipTextOutput {
  Tensor last_hidden;  // [tokens, hidden], after the final LayerNorm
  Tensor penultimate;  // [tokens, hidden], output of the second-to-last layer (no final norm)
  Tensor pooled;       // [hidden] final-norm state at the end-of-text token, or [projection_dim]
                       // text embeddings when the model has a projection
};

class ClipTextModel {
 public:
  ClipTextModel(ClipTextConfig config, const ComponentWeights& weights);
  static ClipTextModel load(const std::filesystem::path& dir);  // config.json + weights

  const ClipTextConfig& config() const { return config_; }
  ClipTextOutput encode(const std::vector<int32_t>& ids) const;

 private:
  struct Layer {
    Tensor ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  ClipTextConfig config_;
  Tensor token_embedding_, position_embedding_, final_ln_w_, final_ln_b_, projection_;
  std::vector<Layer> layers_;
};

}  // namespace tessera::diffusion
