#include "models/llm/dbrx_model.h"

#include <fmt/format.h>

#include "core/error.h"
#include "formats/safetensors.h"

namespace tessera {

namespace {
std::string block_name(int64_t layer, const char* rest) { return fmt::format("transformer.blocks.{}.{}", layer, rest); }
}  // namespace

std::vector<std::pair<std::string, Shape>> DbrxModel::weight_shapes(const DbrxConfig& c) {
  std::vector<std::pair<std::string, Shape>> out;
  out.push_back({"transformer.wte.weight", {c.vocab_size, c.d_model}});
  const int64_t expert_rows = c.moe_num_experts * c.ffn_hidden_size;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    out.push_back({block_name(i, "norm_attn_norm.norm_1.weight"), {c.d_model}});
    out.push_back({block_name(i, "norm_attn_norm.attn.Wqkv.weight"), {c.qkv_dim(), c.d_model}});
    out.push_back({block_name(i, "norm_attn_norm.attn.out_proj.weight"), {c.d_model, c.d_model}});
    out.push_back({block_name(i, "norm_attn_norm.norm_2.weight"), {c.d_model}});
    out.push_back({block_name(i, "ffn.router.layer.weight"), {c.moe_num_experts, c.d_model}});
    out.push_back({block_name(i, "ffn.experts.mlp.w1"), {expert_rows, c.d_model}});
    out.push_back({block_name(i, "ffn.experts.mlp.v1"), {expert_rows, c.d_model}});
    out.push_back({block_name(i, "ffn.experts.mlp.w2"), {expert_rows, c.d_model}});
  }
  out.push_back({"transformer.norm_f.weight", {c.d_model}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.d_model}});
  return out;
}

DecoderConfig DbrxModel::decoder_config(const DbrxConfig& c) {
  DecoderConfig d;
  d.architecture = "dbrx";
  d.d_model = c.d_model;
  d.n_heads = c.n_heads;
  d.kv_heads = c.kv_n_heads;
  d.head_dim = c.head_dim();
  d.n_layers = c.n_layers;
  d.vocab_size = c.vocab_size;
  d.max_seq_len = c.max_seq_len;
  d.ffn_hidden = c.ffn_hidden_size;
  d.n_experts = c.moe_num_experts;
  d.top_k = c.moe_top_k;
  d.expert_weight_norm_p = c.moe_normalize_expert_weights;
  d.norm = NormKind::LayerNorm;
  d.norm_eps = c.layer_norm_eps;
  d.rope = RopeStyle::RotateHalf;
  d.rope_theta = c.rope_theta;
  d.clip_qkv = c.clip_qkv;
  d.parameters = c.parameter_count();
  d.active_parameters = c.active_parameter_count();
  return d;
}

std::unique_ptr<DecoderModel> DbrxModel::load(const std::filesystem::path& dir) {
  DbrxConfig config = DbrxConfig::load(dir / "config.json");
  auto checkpoint = std::make_shared<SafetensorsCheckpoint>(dir);
  auto fetch = [&](const std::string& name, const Shape& shape) {
    Tensor t = checkpoint->get(name);
    if (t.shape() != shape)
      fail("{}: weight '{}' has shape {}, expected {} from config.json", checkpoint->file_of(name).string(), name,
           shape_str(t.shape()), shape_str(shape));
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      fail("{}: weight '{}' has dtype {}; expected f32, bf16 or f16", checkpoint->file_of(name).string(), name,
           dtype_name(t.dtype()));
    return t;
  };
  DecoderWeights w;
  w.embedding = fetch("transformer.wte.weight", {config.vocab_size, config.d_model});
  const int64_t expert_rows = config.moe_num_experts * config.ffn_hidden_size;
  for (int64_t i = 0; i < config.n_layers; ++i) {
    DecoderLayer layer;
    layer.attn_norm = fetch(block_name(i, "norm_attn_norm.norm_1.weight"), {config.d_model});
    layer.wqkv = fetch(block_name(i, "norm_attn_norm.attn.Wqkv.weight"), {config.qkv_dim(), config.d_model});
    layer.wo = fetch(block_name(i, "norm_attn_norm.attn.out_proj.weight"), {config.d_model, config.d_model});
    layer.ffn_norm = fetch(block_name(i, "norm_attn_norm.norm_2.weight"), {config.d_model});
    layer.router = fetch(block_name(i, "ffn.router.layer.weight"), {config.moe_num_experts, config.d_model});
    layer.gate = fetch(block_name(i, "ffn.experts.mlp.w1"), {expert_rows, config.d_model});
    layer.up = fetch(block_name(i, "ffn.experts.mlp.v1"), {expert_rows, config.d_model});
    layer.down = fetch(block_name(i, "ffn.experts.mlp.w2"), {expert_rows, config.d_model});
    layer.down_is_nn = true;
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = fetch("transformer.norm_f.weight", {config.d_model});
  if (config.tie_word_embeddings) {
    w.lm_head = w.embedding;
  } else {
    w.lm_head = fetch("lm_head.weight", {config.vocab_size, config.d_model});
  }
  std::string name = std::filesystem::absolute(dir).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::absolute(dir).lexically_normal().parent_path().filename().string();
  return std::make_unique<DecoderModel>(decoder_config(config), std::move(w), name, checkpoint);
}

}  // namespace tessera
