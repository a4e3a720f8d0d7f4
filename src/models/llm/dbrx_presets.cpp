#include "models/llm/dbrx_presets.h"

namespace tessera {

namespace {

// All full-size members share DBRX's tokenizer (cl100k + specials, padded to 100352), 16 experts
// with 4 active, GQA with 8 KV heads of 128 dims, clip_qkv 8 and rope_theta 500000.
DbrxConfig family(int64_t d_model, int64_t n_layers, int64_t ffn_hidden, int64_t kv_heads = 8) {
  DbrxConfig c;
  c.d_model = d_model;
  c.n_heads = d_model / 128;
  c.n_layers = n_layers;
  c.max_seq_len = 32768;
  c.vocab_size = 100352;
  c.kv_n_heads = kv_heads;
  c.clip_qkv = 8.0f;
  c.rope_theta = 500000.0;
  c.moe_num_experts = 16;
  c.moe_top_k = 4;
  c.ffn_hidden_size = ffn_hidden;
  c.moe_normalize_expert_weights = 1.0;
  c.moe_loss_weight = 0.05;
  return c;
}

DbrxConfig small(int64_t d_model, int64_t n_heads, int64_t kv_heads, int64_t n_layers, int64_t ffn_hidden,
                 int64_t max_seq_len) {
  DbrxConfig c = family(d_model, n_layers, ffn_hidden, kv_heads);
  c.n_heads = n_heads;
  c.max_seq_len = max_seq_len;
  return c;
}

}  // namespace

const std::vector<DbrxPreset>& dbrx_presets() {
  static const std::vector<DbrxPreset> presets = {
      {"dbrx-132b", "the dbrx-instruct configuration", family(6144, 40, 10752)},
      {"dbrx-73b", "family size, 20B active", family(4096, 36, 9984)},
      {"dbrx-36b", "family size, 10B active", family(3072, 28, 8448)},
      {"dbrx-19b", "family size, 5.2B active", family(2048, 20, 9216)},
      {"dbrx-9b", "family size, 2.6B active", family(1536, 30, 3840, 4)},
      {"dbrx-mini", "small model for benchmarks (d_model 512, 8 layers)", small(512, 8, 4, 8, 1024, 4096)},
      {"dbrx-tiny", "tiny model for tests and demos (d_model 32, 2 layers)", small(32, 4, 2, 2, 64, 2048)},
  };
  return presets;
}

std::optional<DbrxPreset> find_dbrx_preset(const std::string& name) {
  for (const auto& preset : dbrx_presets())
    if (preset.name == name) return preset;
  return std::nullopt;
}

}  // namespace tessera
