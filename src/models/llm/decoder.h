#pragma once
// One decoder engine for the architectures tessera runs: DBRX (LayerNorm without bias, fused
// and clipped QKV, rotate-half RoPE, fine-grained MoE) and llama (RMSNorm, separate Q/K/V,
// dense SwiGLU MLP). Checkpoint readers (Hugging Face safetensors, GGUF) map their tensors into
// DecoderWeights; weights may be f32/bf16/f16 or block-quantized, used in place.
//
// Only routed experts run: a token's top-k experts are chosen by a softmax router; the tokens of
// a step (a prefill, or many sequences batched) are grouped by expert so each expert does one
// matrix product.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/llm/language_model.h"

namespace tessera {

enum class NormKind : uint8_t { LayerNorm, RmsNorm };
// RotateHalf pairs dimension i with i + head_dim/2 (transformers, GGUF "neox");
// Interleaved pairs 2i with 2i+1 (GGUF llama files, whose Q/K rows are permuted to match).
enum class RopeStyle : uint8_t { RotateHalf, Interleaved };

struct DecoderConfig {
  std::string architecture = "dbrx";
  int64_t d_model = 0, n_heads = 0, kv_heads = 0, head_dim = 0, n_layers = 0;
  int64_t vocab_size = 0, max_seq_len = 0;
  int64_t ffn_hidden = 0;
  int64_t n_experts = 0;  // 0: dense MLP
  int64_t top_k = 0;
  std::optional<double> expert_weight_norm_p = 1.0;  // renormalise the top-k router weights
  NormKind norm = NormKind::LayerNorm;
  float norm_eps = 1e-5f;
  RopeStyle rope = RopeStyle::RotateHalf;
  double rope_theta = 10000.0;
  std::optional<float> clip_qkv;
  int64_t parameters = 0, active_parameters = 0;
};

struct DecoderLayer {
  Tensor attn_norm;           // [d]
  Tensor wqkv;                // fused [(H + 2 KV) * hd, d], or empty when wq/wk/wv are given
  Tensor wq, wk, wv;          // [H*hd, d], [KV*hd, d], [KV*hd, d]
  Tensor wo;                  // [d, H*hd]
  Tensor ffn_norm;            // [d]
  // Dense MLP: gate/up [F, d], down [d, F].
  // MoE: router [E, d]; gate/up [E*F, d]; down either [E*d, F] (down_is_nn false, each expert
  // a [d, F] matrix) or, as transformers stores DBRX, [E*F, d] used as x . W (down_is_nn true).
  Tensor router;
  Tensor gate, up, down;
  bool down_is_nn = false;
};

struct DecoderWeights {
  Tensor embedding;  // [vocab, d]
  std::vector<DecoderLayer> layers;
  Tensor final_norm;  // [d]
  Tensor lm_head;     // [vocab, d]
};

class DecoderModel final : public LanguageModel {
 public:
  // `keep_alive` holds whatever owns the weight memory (mapped files).
  DecoderModel(DecoderConfig config, DecoderWeights weights, std::string name, std::shared_ptr<void> keep_alive);

  const DecoderConfig& config() const { return config_; }
  const DecoderWeights& weights() const { return weights_; }
  const LanguageModelInfo& info() const override { return info_; }
  Tensor forward_batch(std::span<const BatchSequence> batch) override;
  size_t weight_bytes() const override { return weight_bytes_; }
  const std::shared_ptr<void>& keep_alive() const { return keep_alive_; }

 private:
  // Where each row of a batched pass belongs: its sequence's cache and its position there.
  struct RowPlaces {
    std::vector<KvCache*> cache;
    std::vector<int64_t> pos;
  };
  void validate_and_reserve(std::span<const BatchSequence> batch);
  void attention(int64_t layer, const float* x, const RowPlaces& rows, float* out);
  void dense_mlp(int64_t layer, const float* x, int64_t n, float* out);
  void experts(int64_t layer, const float* x, int64_t n, float* out);
  void norm(const Tensor& weight, const float* x, int64_t rows, float* y) const;
  void rope(float* x, int64_t heads, int64_t pos) const;

  DecoderConfig config_;
  DecoderWeights weights_;
  LanguageModelInfo info_;
  size_t weight_bytes_ = 0;
  std::shared_ptr<void> keep_alive_;
  std::vector<float> inv_freq_;
};

}  // namespace tessera
