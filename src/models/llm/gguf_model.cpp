#include "models/llm/gguf_model.h"

#include <fmt/format.h>

#include "core/error.h"
#include "formats/gguf.h"

namespace tessera {

namespace {

std::string blk(int64_t layer, const char* name) { return fmt::format("blk.{}.{}", layer, name); }

}  // namespace

std::unique_ptr<DecoderModel> load_gguf_model(const std::filesystem::path& path) {
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(path, ec);
  // Decoding streams all the weights per token: held in huge pages when that fits (storage.h).
  auto file = std::make_shared<GgufFile>(path, ec ? FileResidency::Mapped : weights_residency(bytes));
  const std::string origin = path.string();
  const std::string arch = file->architecture();
  if (arch != "llama" && arch != "dbrx")
    fail("{}: architecture '{}' is not supported (supported: llama, dbrx)", origin, arch);
  const std::string p = arch + ".";

  DecoderConfig c;
  c.architecture = arch;
  c.d_model = static_cast<int64_t>(file->get_u64(p + "embedding_length"));
  c.n_layers = static_cast<int64_t>(file->get_u64(p + "block_count"));
  c.n_heads = static_cast<int64_t>(file->get_u64(p + "attention.head_count"));
  c.kv_heads = file->get_i64(p + "attention.head_count_kv", c.n_heads);
  c.max_seq_len = static_cast<int64_t>(file->get_u64(p + "context_length"));
  c.ffn_hidden = static_cast<int64_t>(file->get_u64(p + "feed_forward_length"));
  c.rope_theta = file->get_f32(p + "rope.freq_base", 10000.0f);
  if (c.d_model <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.kv_heads <= 0 || c.max_seq_len <= 0 ||
      c.ffn_hidden <= 0 || c.d_model % c.n_heads != 0 || c.n_heads % c.kv_heads != 0)
    fail("{}: inconsistent hyperparameters (embedding {}, heads {}/{}, layers {}, ffn {}, context {})", origin,
         c.d_model, c.n_heads, c.kv_heads, c.n_layers, c.ffn_hidden, c.max_seq_len);
  c.head_dim = c.d_model / c.n_heads;
  if (file->get_i64(p + "rope.dimension_count", c.head_dim) != c.head_dim)
    fail("{}: partial rotary embeddings ({}.rope.dimension_count {} of head size {}) are not supported", origin, arch,
         file->get_i64(p + "rope.dimension_count", c.head_dim), c.head_dim);
  if (arch == "llama") {
    c.norm = NormKind::RmsNorm;
    c.norm_eps = file->get_f32(p + "attention.layer_norm_rms_epsilon", 1e-5f);
    c.rope = RopeStyle::Interleaved;  // llama.cpp's converter permutes Q/K rows for this
    c.n_experts = static_cast<int64_t>(file->get_i64(p + "expert_count", 0));
    if (c.n_experts > 0) fail("{}: llama mixture-of-experts files are not supported", origin);
  } else {
    c.norm = NormKind::LayerNorm;
    c.norm_eps = file->get_f32(p + "attention.layer_norm_epsilon", 1e-5f);
    c.rope = RopeStyle::RotateHalf;
    const float clamp = file->get_f32(p + "attention.clamp_kqv", 0.0f);
    if (clamp > 0) c.clip_qkv = clamp;
    c.n_experts = static_cast<int64_t>(file->get_u64(p + "expert_count"));
    c.top_k = static_cast<int64_t>(file->get_u64(p + "expert_used_count"));
    if (c.n_experts <= 0 || c.top_k <= 0 || c.top_k > c.n_experts)
      fail("{}: bad expert counts ({} experts, {} used)", origin, c.n_experts, c.top_k);
    c.expert_weight_norm_p = 1.0;  // llama.cpp renormalises the chosen weights to sum to one
  }

  int64_t parameters = 0;
  auto fetch = [&](const std::string& name, const Shape& shape) {
    if (!file->contains_tensor(name)) fail("{}: tensor '{}' is missing", origin, name);
    Tensor t = file->tensor(name);
    if (t.shape() != shape)
      fail("{}: tensor '{}' has shape {}, expected {}", origin, name, shape_str(t.shape()), shape_str(shape));
    parameters += t.numel();
    return t;
  };
  const int64_t d = c.d_model, hd = c.head_dim, f = c.ffn_hidden;
  DecoderWeights w;
  if (!file->contains_tensor("token_embd.weight")) fail("{}: tensor 'token_embd.weight' is missing", origin);
  c.vocab_size = file->tensor_info("token_embd.weight").shape.at(0);
  w.embedding = fetch("token_embd.weight", {c.vocab_size, d});
  for (int64_t i = 0; i < c.n_layers; ++i) {
    DecoderLayer l;
    l.attn_norm = fetch(blk(i, "attn_norm.weight"), {d});
    if (arch == "dbrx") {
      l.wqkv = fetch(blk(i, "attn_qkv.weight"), {(c.n_heads + 2 * c.kv_heads) * hd, d});
      l.ffn_norm = fetch(blk(i, "attn_output_norm.weight"), {d});
      l.router = fetch(blk(i, "ffn_gate_inp.weight"), {c.n_experts, d});
      l.gate = fetch(blk(i, "ffn_gate_exps.weight"), {c.n_experts, f, d}).view({c.n_experts * f, d});
      l.up = fetch(blk(i, "ffn_up_exps.weight"), {c.n_experts, f, d}).view({c.n_experts * f, d});
      l.down = fetch(blk(i, "ffn_down_exps.weight"), {c.n_experts, d, f}).view({c.n_experts * d, f});
    } else {
      l.wq = fetch(blk(i, "attn_q.weight"), {c.n_heads * hd, d});
      l.wk = fetch(blk(i, "attn_k.weight"), {c.kv_heads * hd, d});
      l.wv = fetch(blk(i, "attn_v.weight"), {c.kv_heads * hd, d});
      l.ffn_norm = fetch(blk(i, "ffn_norm.weight"), {d});
      l.gate = fetch(blk(i, "ffn_gate.weight"), {f, d});
      l.up = fetch(blk(i, "ffn_up.weight"), {f, d});
      l.down = fetch(blk(i, "ffn_down.weight"), {d, f});
    }
    l.wo = fetch(blk(i, "attn_output.weight"), {d, c.n_heads * hd});
    w.layers.push_back(std::move(l));
  }
  w.final_norm = fetch("output_norm.weight", {d});
  w.lm_head = file->contains_tensor("output.weight") ? fetch("output.weight", {c.vocab_size, d}) : w.embedding;

  c.parameters = parameters;
  c.active_parameters = parameters - (c.n_experts > 0 ? c.n_layers * (c.n_experts - c.top_k) * 3 * f * d : 0);
  std::string name = file->get_string("general.name", path.stem().string());
  return std::make_unique<DecoderModel>(c, std::move(w), name, file);
}

}  // namespace tessera
