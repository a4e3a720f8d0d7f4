#pragma once
// The DBRX hyperparameters, read from a Hugging Face config.json (model_type "dbrx") with the
// same defaults transformers applies, and the parameter counts they imply.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace tessera {

struct DbrxConfig {
  int64_t d_model = 2048;
  int64_t n_heads = 16;
  int64_t n_layers = 24;
  int64_t max_seq_len = 2048;
  int64_t vocab_size = 32000;
  // attn_config
  int64_t kv_n_heads = 1;
  std::optional<float> clip_qkv;
  double rope_theta = 10000.0;
  // ffn_config
  int64_t moe_num_experts = 4;
  int64_t moe_top_k = 1;
  int64_t ffn_hidden_size = 3584;
  std::optional<double> moe_normalize_expert_weights = 1.0;
  std::optional<double> moe_jitter_eps;
  double moe_loss_weight = 0.01;
  bool tie_word_embeddings = false;
  float layer_norm_eps = 1e-5f;

  int64_t head_dim() const { return d_model / n_heads; }
  int64_t qkv_dim() const { return (n_heads + 2 * kv_n_heads) * head_dim(); }

  // Total parameters, and those used for one token (only top_k of the experts).
  int64_t parameter_count() const;
  int64_t active_parameter_count() const;

  // Parses and checks a config object; `origin` names the file in errors.
  static DbrxConfig from_json(const nlohmann::json& json, const std::string& origin);
  static DbrxConfig load(const std::filesystem::path& config_json);
  nlohmann::json to_json() const;  // the Hugging Face layout
  void validate(const std::string& origin) const;
};

}  // namespace tessera
