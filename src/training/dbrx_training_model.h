#pragma once
// A DBRX model that can be trained: f32 master weights in one flat buffer (so the optimizer,
// clipping and checkpoints see one array), a gradient buffer of the same layout, and a forward
// pass that records its backward on a tape. Weight names, shapes and layout are those of
// transformers' DbrxForCausalLM, so a saved model loads in transformers, `tessera generate` and
// `tessera serve` unchanged.
//
// What one micro-batch step computes (matching DbrxForCausalLM with output_router_logits):
//   loss = ce_scale * sum(cross-entropy over counted targets)
//        + aux_scale * moe_loss_weight * load_balancing_loss
// with the load-balancing loss of transformers' load_balancing_loss_func over all layers'
// router logits: E * sum_e (share of top-k picks of e) * (mean router probability of e).
// Experts run dropless: every token goes to its top-k experts, and each expert multiplies only
// the tokens routed to it. Router jitter (moe_jitter_eps) multiplies the router's input, not the
// experts', by noise uniform in [1 - eps, 1 + eps], during training only.
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "core/tensor.h"
#include "models/llm/dbrx_config.h"

namespace tessera::training {

struct Parameter {
  std::string name;  // Hugging Face name, e.g. "transformer.blocks.0.ffn.experts.mlp.w1"
  Shape shape;
  size_t offset = 0;  // into values() / grads()
  size_t size = 0;
  bool decay = true;  // weight decay applies (matrices), or not (norm weights)
};

// Writes a model folder as transformers and diffusers save one: every parameter's values (from a
// flat buffer laid out by their offsets) as f32 under its name in dir/weights_file, and config as
// dir/config.json, replaced atomically. Creates dir.
void save_model_folder(const std::filesystem::path& dir, const std::string& weights_file,
                       const std::vector<Parameter>& params, std::span<const float> values,
                       const nlohmann::json& config);

// Token ids of one micro-batch, each [rows, seq] row-major. A negative target is not counted.
// With segment_starts, rows hold several packed examples: each token attends only to the tokens
// of its own example, from segment_starts[i] (its first position in the row) on.
struct TokenBatch {
  const int32_t* inputs = nullptr;
  const int32_t* targets = nullptr;
  int64_t rows = 0, seq = 0;
  const int32_t* segment_starts = nullptr;
};

struct StepLoss {
  double ce_sum = 0;      // summed cross-entropy over counted targets
  int64_t counted = 0;    // targets that were counted
  double aux_loss = 0;    // the load-balancing loss (before moe_loss_weight)
  double ce_mean() const { return counted ? ce_sum / static_cast<double>(counted) : 0.0; }
};

// Keeps freed activation buffers in the heap for reuse instead of returning them to the system:
// a training step frees and reallocates the same large buffers every time, and fresh pages from
// the kernel cost a fault and a zeroing each. Called once by training programs.
void keep_freed_memory_for_reuse();

class DbrxTrainingModel {
 public:
  // Weights initialised from a normal(0, init_std) (norm weights 1), seeded.
  DbrxTrainingModel(const DbrxConfig& config, uint64_t seed, float init_std = 0.02f);
  // A Hugging Face DBRX folder (config.json and safetensors in f32, bf16 or f16).
  static DbrxTrainingModel load(const std::filesystem::path& dir);
  // config.json, model.safetensors (f32) and the tokenizer files; written atomically per file.
  void save(const std::filesystem::path& dir) const;
  // save() copies the tokenizer files of this folder (tokenizer.json, tokenizer_config.json,
  // special_tokens_map.json, *.tiktoken); with none there, or no folder, it writes DBRX's.
  void set_tokenizer_source(std::filesystem::path dir) { tokenizer_source_ = std::move(dir); }

  const DbrxConfig& config() const { return config_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  const Parameter& parameter(const std::string& name) const;
  std::span<float> values() { return values_; }
  std::span<const float> values() const { return values_; }
  std::span<float> grads() { return grads_; }
  std::span<const float> grads() const { return grads_; }
  void zero_grad();

  // Forward and backward of one micro-batch; gradients are added into grads(). `jitter` draws
  // router jitter when the config has moe_jitter_eps (null: no jitter).
  StepLoss forward_backward(const TokenBatch& batch, float ce_scale, float aux_scale, Rng* jitter);
  // Forward only, for evaluation: the summed cross-entropy and counts.
  StepLoss evaluate(const TokenBatch& batch);

 private:
  DbrxTrainingModel(const DbrxConfig& config, bool);
  StepLoss run(const TokenBatch& batch, bool backward, float ce_scale, float aux_scale, Rng* jitter);
  void layout();

  DbrxConfig config_;
  std::vector<Parameter> params_;
  std::vector<float> values_, grads_;
  std::vector<float> inv_freq_;
  std::filesystem::path tokenizer_source_;
};

}  // namespace tessera::training
