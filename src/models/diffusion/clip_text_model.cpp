#include "models/diffusion/clip_text_model.h"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "kernels/cpu/nn.h"
#include "models/diffusion/model_config.h"

namespace tessera::diffusion {

namespace k = tessera::kernels;

ClipTextConfig ClipTextConfig::load(const std::filesystem::path& path) {
  const JsonConfig j(path);
  ClipTextConfig c;
  c.vocab_size = j.positive("vocab_size", c.vocab_size);
  c.hidden_size = j.positive("hidden_size", c.hidden_size);
  c.intermediate_size = j.positive("intermediate_size", c.intermediate_size);
  // No layers at all is a valid (if small) encoder: the final LayerNorm of the embeddings.
  c.num_layers = j.integer("num_hidden_layers", c.num_layers);
  if (c.num_layers < 0) fail("{}: num_hidden_layers must not be negative (got {})", path.string(), c.num_layers);
  c.num_heads = j.positive("num_attention_heads", c.num_heads);
  c.max_positions = j.positive("max_position_embeddings", c.max_positions);
  c.hidden_act = j.string("hidden_act", c.hidden_act);
  c.layer_norm_eps = static_cast<float>(j.number("layer_norm_eps", c.layer_norm_eps));
  c.eos_token_id = j.integer("eos_token_id", c.eos_token_id);
  bool with_projection = false;
  for (const auto& arch : j.string_list("architectures"))
    with_projection |= arch == "CLIPTextModelWithProjection";
  if (with_projection) c.projection_dim = j.positive("projection_dim", 512);
  if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu")
    fail("{}: hidden_act '{}' is not supported (expected quick_gelu or gelu)", path.string(), c.hidden_act);
  if (c.hidden_size % c.num_heads != 0)
    fail("{}: hidden_size {} is not a multiple of num_attention_heads {}", path.string(), c.hidden_size, c.num_heads);
  return c;
}

ClipTextModel::ClipTextModel(ClipTextConfig config, const ComponentWeights& w) : config_(std::move(config)) {
  const auto& c = config_;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  // Checkpoints name the transformer "text_model.*"; transformers 5 saves CLIPTextModel without
  // that prefix.
  const std::string tm = w.contains("text_model.embeddings.token_embedding.weight") ? "text_model." : "";
  token_embedding_ = w.get(tm + "embeddings.token_embedding.weight", {c.vocab_size, d});
  position_embedding_ = w.get(tm + "embeddings.position_embedding.weight", {c.max_positions, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    auto name = [&](const char* rest) { return fmt::format("{}encoder.layers.{}.{}", tm, i, rest); };
    Layer l;
    l.ln1_w = w.get(name("layer_norm1.weight"), {d});
    l.ln1_b = w.get(name("layer_norm1.bias"), {d});
    l.q_w = w.get(name("self_attn.q_proj.weight"), {d, d});
    l.q_b = w.get(name("self_attn.q_proj.bias"), {d});
    l.k_w = w.get(name("self_attn.k_proj.weight"), {d, d});
    l.k_b = w.get(name("self_attn.k_proj.bias"), {d});
    l.v_w = w.get(name("self_attn.v_proj.weight"), {d, d});
    l.v_b = w.get(name("self_attn.v_proj.bias"), {d});
    l.o_w = w.get(name("self_attn.out_proj.weight"), {d, d});
    l.o_b = w.get(name("self_attn.out_proj.bias"), {d});
    l.ln2_w = w.get(name("layer_norm2.weight"), {d});
    l.ln2_b = w.get(name("layer_norm2.bias"), {d});
    l.fc1_w = w.get(name("mlp.fc1.weight"), {f, d});
    l.fc1_b = w.get(name("mlp.fc1.bias"), {f});
    l.fc2_w = w.get(name("mlp.fc2.weight"), {d, f});
    l.fc2_b = w.get(name("mlp.fc2.bias"), {d});
    layers_.push_back(std::move(l));
  }
  final_ln_w_ = w.get(tm + "final_layer_norm.weight", {d});
  final_ln_b_ = w.get(tm + "final_layer_norm.bias", {d});
  if (c.projection_dim > 0) projection_ = w.get("text_projection.weight", {c.projection_dim, d});
}

ClipTextModel ClipTextModel::load(const std::filesystem::path& dir) {
  return ClipTextModel(ClipTextConfig::load(dir / "config.json"), ComponentWeights::from_folder(dir));
}

ClipTextOutput ClipTextModel::encode(const std::vector<int32_t>& ids) const {
  const auto& c = config_;
  const int64_t n = static_cast<int64_t>(ids.size()), d = c.hidden_size, f = c.intermediate_size;
  if (n == 0 || n > c.max_positions)
    fail("text encoder: {} tokens given; it takes 1 to {}", n, c.max_positions);
  Tensor x = Tensor::empty({n, d});
  float* xs = x.data<float>();
  for (int64_t t = 0; t < n; ++t) {
    if (ids[t] < 0 || ids[t] >= c.vocab_size)
      fail("text encoder: token id {} is outside the vocabulary of {}", ids[t], c.vocab_size);
    const float* te = token_embedding_.data<float>() + ids[t] * d;
    const float* pe = position_embedding_.data<float>() + t * d;
    for (int64_t i = 0; i < d; ++i) xs[t * d + i] = te[i] + pe[i];
  }
  std::vector<float> h(static_cast<size_t>(n * d)), q(h.size()), kk(h.size()), v(h.size()), att(h.size());
  std::vector<float> mlp(static_cast<size_t>(n * f));
  const int64_t head_dim = d / c.num_heads;
  ClipTextOutput out;
  if (layers_.empty()) out.penultimate = x.clone();
  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& l = layers_[li];
    if (li + 1 == layers_.size()) out.penultimate = x.clone();
    k::layer_norm_affine(xs, n, d, l.ln1_w.data<float>(), l.ln1_b.data<float>(), c.layer_norm_eps, h.data());
    k::linear(h.data(), n, d, l.q_w.data<float>(), l.q_b.data<float>(), d, q.data());
    k::linear(h.data(), n, d, l.k_w.data<float>(), l.k_b.data<float>(), d, kk.data());
    k::linear(h.data(), n, d, l.v_w.data<float>(), l.v_b.data<float>(), d, v.data());
    k::attention(q.data(), d, kk.data(), d, v.data(), d, n, n, c.num_heads, head_dim,
                 1.0f / std::sqrt(static_cast<float>(head_dim)), /*causal=*/true, att.data(), d);
    k::linear(att.data(), n, d, l.o_w.data<float>(), l.o_b.data<float>(), d, h.data());
    for (int64_t i = 0; i < n * d; ++i) xs[i] += h[i];
    k::layer_norm_affine(xs, n, d, l.ln2_w.data<float>(), l.ln2_b.data<float>(), c.layer_norm_eps, h.data());
    k::linear(h.data(), n, d, l.fc1_w.data<float>(), l.fc1_b.data<float>(), f, mlp.data());
    if (c.hidden_act == "gelu")
      k::gelu_inplace(mlp.data(), n * f);
    else
      k::quick_gelu_inplace(mlp.data(), n * f);
    k::linear(mlp.data(), n, f, l.fc2_w.data<float>(), l.fc2_b.data<float>(), d, h.data());
    for (int64_t i = 0; i < n * d; ++i) xs[i] += h[i];
  }
  out.last_hidden = Tensor::empty({n, d});
  k::layer_norm_affine(xs, n, d, final_ln_w_.data<float>(), final_ln_b_.data<float>(), c.layer_norm_eps,
                       out.last_hidden.data<float>());
  // The end-of-text position: transformers takes the largest id when eos_token_id is the
  // legacy 2, else the first occurrence of eos_token_id.
  int64_t eos = 0;
  if (c.eos_token_id == 2) {
    for (int64_t t = 1; t < n; ++t)
      if (ids[t] > ids[eos]) eos = t;
  } else {
    for (int64_t t = 0; t < n; ++t)
      if (ids[t] == c.eos_token_id) {
        eos = t;
        break;
      }
  }
  const float* pooled = out.last_hidden.data<float>() + eos * d;
  if (c.projection_dim > 0) {
    out.pooled = Tensor::empty({c.projection_dim});
    k::linear(pooled, 1, d, projection_.data<float>(), nullptr, c.projection_dim, out.pooled.data<float>());
  } else {
    out.pooled = Tensor::empty({d});
    std::memcpy(out.pooled.data<float>(), pooled, sizeof(float) * d);
  }
  return out;
}

}  // namespace tessera::diffusion
