#pragma once
// The DBRX decoder (transformers' DbrxForCausalLM) on the CPU: LayerNorm without bias, fused
// QKV with optional clipping, rotary embeddings, grouped-query attention, and a fine-grained
// mixture of experts whose router picks top_k experts per token. Only the chosen experts run;
// during prefill the tokens are grouped by expert so each expert does one matrix product.
#include <filesystem>
#include <memory>
#include <vector>

#include "formats/safetensors.h"
#include "kernels/cpu/matmul.h"
#include "models/llm/dbrx_config.h"
#include "models/llm/language_model.h"

namespace tessera {

struct DbrxLayerWeights {
  Tensor norm_1, wqkv, out_proj, norm_2, router, w1, v1, w2;
};

struct DbrxWeights {
  Tensor wte, norm_f, lm_head;
  std::vector<DbrxLayerWeights> layers;
};

class DbrxModel final : public LanguageModel {
 public:
  DbrxModel(DbrxConfig config, DbrxWeights weights, std::string name, size_t weight_bytes,
            std::shared_ptr<SafetensorsCheckpoint> checkpoint = nullptr);

  // Reads config.json and the safetensors weights (mapped, not copied), checking every
  // tensor's presence and shape.
  static std::unique_ptr<DbrxModel> load(const std::filesystem::path& dir);

  // The Hugging Face name and expected shape of every weight.
  static std::vector<std::pair<std::string, Shape>> weight_shapes(const DbrxConfig& config);

  const DbrxConfig& config() const { return config_; }
  const LanguageModelInfo& info() const override { return info_; }
  Tensor forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) override;
  size_t weight_bytes() const override { return weight_bytes_; }

 private:
  void attention(int64_t layer, const float* x, int64_t n, KvCache& cache, float* out);
  void experts(int64_t layer, const float* x, int64_t n, float* out);

  DbrxConfig config_;
  DbrxWeights weights_;
  LanguageModelInfo info_;
  size_t weight_bytes_ = 0;
  std::shared_ptr<SafetensorsCheckpoint> checkpoint_;  // keeps the mappings alive
  std::vector<float> inv_freq_;
};

}  // namespace tessera
