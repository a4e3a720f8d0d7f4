#pragma once
// LoRA for the DBRX training engine: a frozen weight W [out, in] is trained through a low-rank
// update, W_eff = W + s * B . A with A [r, in], B [out, r] and s = alpha / r.
//
// Targets, selectable by name: "Wqkv" and "out_proj" (one matrix per layer) and the experts'
// "w1", "v1" and "w2". The expert tensors are stacked [E * F, d]; each expert's [F, d] slice is
// its own matrix with its own A_e [r, d] and B_e [F, r]. w2 is used by DBRX as x . w2_e (its
// [F, d] slice maps F to d), but the update is still added to the stored [F, d] slice, so one
// rule, W_e + s * B_e . A_e, covers every target and the merged tensors keep the stored layout.
//
// The engine is not changed: it already computes the full gradient dW_eff of every weight, and
//   dA = s * B^T . dW_eff,   dB = s * dW_eff . A^T
// follow from it. A step is: apply(model) (writes W_eff into the model's values), the model's
// forward_backward, gather_grads(model), then an optimizer step over the adapter's own flat
// values()/grads()/parameters(). Nothing else is trained: the base copies of the targets are
// kept by the adapter and the other weights (norms, embeddings, router, lm_head) are never
// written.
//
// On disk (save_adapter / load_adapter), a folder with
//   adapter_config.json         {"peft_type": "LORA", "r", "lora_alpha", "target_modules",
//                                "base_model", "init_lora_weights", "expert_layout": "stacked"}
//   adapter_model.safetensors   f32 tensors named after the weight they adapt:
//     "transformer.blocks.L.norm_attn_norm.attn.Wqkv.lora_A.weight"  [r, in]
//     "transformer.blocks.L.norm_attn_norm.attn.Wqkv.lora_B.weight"  [out, r]
//     "transformer.blocks.L.ffn.experts.mlp.w1.lora_A.weight"        [E, r, d]  (stacked experts)
//     "transformer.blocks.L.ffn.experts.mlp.w1.lora_B.weight"        [E, F, r]
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/llm/dbrx_config.h"
#include "models/llm/decoder.h"
#include "training/dbrx_training_model.h"

namespace tessera::training {

// How A starts (B always starts at zero, so a fresh adapter leaves the model unchanged).
enum class LoraInit {
  Kaiming,   // uniform in [-1/sqrt(in), 1/sqrt(in)], what peft's kaiming_uniform(a=sqrt(5)) gives
  Gaussian,  // normal with standard deviation 1/r, peft's "gaussian"
};

struct LoraConfig {
  int64_t rank = 8;
  double alpha = 16.0;
  std::vector<std::string> targets = {"Wqkv", "out_proj", "w1", "v1", "w2"};
  LoraInit init = LoraInit::Kaiming;
  uint64_t seed = 0;
  std::string base_model;  // recorded in adapter_config.json, for the reader's information

  double scale() const { return alpha / static_cast<double>(rank); }
  bool targets_module(const std::string& module) const;
  // Rank at least 1, alpha positive and finite, targets known and not repeated.
  void validate(const std::string& origin) const;

  // adapter_config.json; `origin` names the file in errors.
  static LoraConfig from_json(const nlohmann::json& json, const std::string& origin);
  nlohmann::json to_json() const;
};

// The module names that can be targeted, in the order the adapter lays them out per layer.
const std::vector<std::string>& lora_target_modules();

class LoraAdapter {
 public:
  // A fresh adapter for a model of this config: A drawn from config.init with config.seed, B zero.
  LoraAdapter(const DbrxConfig& model_config, LoraConfig config);

  // An adapter folder (adapter_config.json and adapter_model.safetensors) for a model of this
  // config; every tensor's presence, shape and dtype is checked, and unknown tensors refused.
  static LoraAdapter load_adapter(const std::filesystem::path& dir, const DbrxConfig& model_config);
  // Writes the folder, each file atomically.
  void save_adapter(const std::filesystem::path& dir) const;

  const LoraConfig& config() const { return config_; }
  const DbrxConfig& model_config() const { return model_config_; }

  // The adapter's trainable tensors (names as in adapter_model.safetensors), in one flat buffer,
  // for AdamW and clip_grad_norm. All have decay = true.
  const std::vector<Parameter>& parameters() const { return params_; }
  const Parameter& parameter(const std::string& name) const;
  std::span<float> values() { return values_; }
  std::span<const float> values() const { return values_; }
  std::span<float> grads() { return grads_; }
  std::span<const float> grads() const { return grads_; }
  void zero_grad();

  // Keeps a copy of the model's current values of the targeted weights as the frozen base.
  void attach(const DbrxTrainingModel& model);
  bool attached() const { return !base_.empty(); }
  // The frozen base copy of one targeted weight (attach first).
  std::span<const float> base(const std::string& weight_name) const;

  // Writes W_eff = W_base + s * B . A into the model's values for every targeted weight.
  void apply(DbrxTrainingModel& model) const;
  // Sets the adapter's grads from the model's gradients of the targeted weights, which must be
  // those of a forward_backward run with the values apply() wrote.
  void gather_grads(const DbrxTrainingModel& model);
  // Writes the base weights back into the model (undoes apply).
  void restore(DbrxTrainingModel& model) const;
  // Makes the model's values W_eff for good and forgets the base copy; the model then saves as
  // a normal checkpoint.
  void merge(DbrxTrainingModel& model);

 private:
  // One targeted weight of the model: `matrices` matrices of [out, in] (1, or E experts).
  struct Target {
    std::string weight;  // the model's parameter name
    std::string module;  // "Wqkv", "out_proj", "w1", "v1" or "w2"
    int64_t matrices = 1, out = 0, in = 0;
    size_t a = 0, b = 0;     // indices into params_ of lora_A and lora_B
    size_t base_offset = 0;  // into base_
  };

  LoraAdapter(const DbrxConfig& model_config, LoraConfig config, bool);
  void layout();
  void check_model(const DbrxTrainingModel& model, const char* what) const;
  void write_effective(const Target& t, const float* base, float* out) const;

  DbrxConfig model_config_;
  LoraConfig config_;
  std::vector<Target> targets_;
  std::vector<Parameter> params_;
  std::vector<float> values_, grads_;
  std::vector<float> base_;
};

// A base DBRX folder with an adapter folder merged on load, for training-side use (evaluation,
// further full fine-tuning, saving the merged model).
DbrxTrainingModel load_merged_training_model(const std::filesystem::path& base_dir,
                                             const std::filesystem::path& adapter_dir);

// The same for inference: the inference engine over base + adapter, merged in memory on load.
std::unique_ptr<DecoderModel> load_dbrx_with_adapter(const std::filesystem::path& base_dir,
                                                     const std::filesystem::path& adapter_dir);

}  // namespace tessera::training
