#include "models/llm/dbrx_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"

namespace tessera {

using kernels::WeightMatrix;

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

DbrxModel::DbrxModel(DbrxConfig config, DbrxWeights weights, std::string name, size_t weight_bytes,
                     std::shared_ptr<SafetensorsCheckpoint> checkpoint)
    : config_(std::move(config)), weights_(std::move(weights)), weight_bytes_(weight_bytes),
      checkpoint_(std::move(checkpoint)) {
  info_.architecture = "dbrx";
  info_.name = std::move(name);
  info_.vocab_size = config_.vocab_size;
  info_.max_seq_len = config_.max_seq_len;
  info_.n_layers = config_.n_layers;
  info_.kv_heads = config_.kv_n_heads;
  info_.head_dim = config_.head_dim();
  info_.parameters = config_.parameter_count();
  info_.active_parameters = config_.active_parameter_count();
  const int64_t half = config_.head_dim() / 2;
  inv_freq_.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // float32 arithmetic, matching how the reference builds its inverse frequencies.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(config_.head_dim());
    inv_freq_[i] = 1.0f / std::pow(static_cast<float>(config_.rope_theta), exponent);
  }
}

std::unique_ptr<DbrxModel> DbrxModel::load(const std::filesystem::path& dir) {
  DbrxConfig config = DbrxConfig::load(dir / "config.json");
  auto checkpoint = std::make_shared<SafetensorsCheckpoint>(dir);
  size_t bytes = 0;
  auto fetch = [&](const std::string& name, const Shape& shape) {
    Tensor t = checkpoint->get(name);
    if (t.shape() != shape)
      fail("{}: weight '{}' has shape {}, expected {} from config.json", checkpoint->file_of(name).string(), name,
           shape_str(t.shape()), shape_str(shape));
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      fail("{}: weight '{}' has dtype {}; expected f32, bf16 or f16", checkpoint->file_of(name).string(), name,
           dtype_name(t.dtype()));
    bytes += t.nbytes();
    return t;
  };
  DbrxWeights w;
  w.wte = fetch("transformer.wte.weight", {config.vocab_size, config.d_model});
  for (int64_t i = 0; i < config.n_layers; ++i) {
    const int64_t expert_rows = config.moe_num_experts * config.ffn_hidden_size;
    DbrxLayerWeights layer;
    layer.norm_1 = fetch(block_name(i, "norm_attn_norm.norm_1.weight"), {config.d_model});
    layer.wqkv = fetch(block_name(i, "norm_attn_norm.attn.Wqkv.weight"), {config.qkv_dim(), config.d_model});
    layer.out_proj = fetch(block_name(i, "norm_attn_norm.attn.out_proj.weight"), {config.d_model, config.d_model});
    layer.norm_2 = fetch(block_name(i, "norm_attn_norm.norm_2.weight"), {config.d_model});
    layer.router = fetch(block_name(i, "ffn.router.layer.weight"), {config.moe_num_experts, config.d_model});
    layer.w1 = fetch(block_name(i, "ffn.experts.mlp.w1"), {expert_rows, config.d_model});
    layer.v1 = fetch(block_name(i, "ffn.experts.mlp.v1"), {expert_rows, config.d_model});
    layer.w2 = fetch(block_name(i, "ffn.experts.mlp.w2"), {expert_rows, config.d_model});
    w.layers.push_back(std::move(layer));
  }
  w.norm_f = fetch("transformer.norm_f.weight", {config.d_model});
  if (config.tie_word_embeddings || !checkpoint->contains("lm_head.weight")) {
    if (!config.tie_word_embeddings) fail("{}: weight 'lm_head.weight' is missing", dir.string());
    w.lm_head = w.wte;
  } else {
    w.lm_head = fetch("lm_head.weight", {config.vocab_size, config.d_model});
  }
  std::string name = std::filesystem::absolute(dir).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::absolute(dir).lexically_normal().parent_path().filename().string();
  return std::make_unique<DbrxModel>(std::move(config), std::move(w), name, bytes, std::move(checkpoint));
}

void DbrxModel::attention(int64_t layer, const float* x, int64_t n, KvCache& cache, float* out) {
  const auto& c = config_;
  const auto& lw = weights_.layers[layer];
  const int64_t hd = c.head_dim(), nh = c.n_heads, nkv = c.kv_n_heads;
  const int64_t qkv_dim = c.qkv_dim();
  const int64_t start = cache.length();

  std::vector<float> qkv(static_cast<size_t>(n * qkv_dim));
  kernels::matmul_nt(x, n, WeightMatrix::of(lw.wqkv), qkv.data());
  if (c.clip_qkv) kernels::clamp(qkv.data(), n * qkv_dim, *c.clip_qkv);

  for (int64_t t = 0; t < n; ++t) {
    float* row = qkv.data() + t * qkv_dim;
    kernels::rope_rotate_half(row, nh, hd, start + t, inv_freq_.data());
    kernels::rope_rotate_half(row + nh * hd, nkv, hd, start + t, inv_freq_.data());
    std::copy_n(row + nh * hd, nkv * hd, cache.keys(layer, start + t));
    std::copy_n(row + (nh + nkv) * hd, nkv * hd, cache.values(layer, start + t));
  }

  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t group = nh / nkv;
  std::vector<float> context(static_cast<size_t>(n * nh * hd));
  parallel_for(static_cast<size_t>(n * nh), 1, [&](size_t begin, size_t end) {
    std::vector<float> scores(static_cast<size_t>(start + n));
    for (size_t job = begin; job < end; ++job) {
      const int64_t t = static_cast<int64_t>(job) / nh, h = static_cast<int64_t>(job) % nh, kvh = h / group;
      const int64_t visible = start + t + 1;  // causal: positions 0..start+t
      const float* q = qkv.data() + t * qkv_dim + h * hd;
      for (int64_t j = 0; j < visible; ++j) scores[j] = kernels::dot_f32(q, cache.keys(layer, j) + kvh * hd, hd) * scale;
      kernels::softmax(scores.data(), visible);
      float* ctx = context.data() + (t * nh + h) * hd;
      std::fill(ctx, ctx + hd, 0.0f);
      for (int64_t j = 0; j < visible; ++j) {
        const float p = scores[j];
        const float* v = cache.values(layer, j) + kvh * hd;
        for (int64_t d = 0; d < hd; ++d) ctx[d] += p * v[d];
      }
    }
  });
  kernels::matmul_nt(context.data(), n, WeightMatrix::of(lw.out_proj), out);
}

void DbrxModel::experts(int64_t layer, const float* x, int64_t n, float* out) {
  const auto& c = config_;
  const auto& lw = weights_.layers[layer];
  const int64_t d = c.d_model, ne = c.moe_num_experts, k = c.moe_top_k, f = c.ffn_hidden_size;

  // Router: softmax over all experts, keep the top k, optionally renormalise by their p-norm.
  std::vector<float> probs(static_cast<size_t>(n * ne));
  kernels::matmul_nt(x, n, WeightMatrix::of(lw.router), probs.data());
  std::vector<std::vector<std::pair<int64_t, float>>> routed(static_cast<size_t>(ne));  // expert -> (token, weight)
  std::vector<int64_t> order(static_cast<size_t>(ne));
  for (int64_t t = 0; t < n; ++t) {
    float* p = probs.data() + t * ne;
    kernels::softmax(p, ne);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
    float norm = 1.0f;
    if (c.moe_normalize_expert_weights) {
      const double pw = *c.moe_normalize_expert_weights;
      double acc = 0;
      for (int64_t i = 0; i < k; ++i) acc += std::pow(std::fabs(static_cast<double>(p[order[i]])), pw);
      norm = static_cast<float>(std::pow(acc, 1.0 / pw));
    }
    for (int64_t i = 0; i < k; ++i) routed[order[i]].push_back({t, p[order[i]] / norm});
  }

  std::fill(out, out + n * d, 0.0f);
  const WeightMatrix w1 = WeightMatrix::of(lw.w1), v1 = WeightMatrix::of(lw.v1), w2 = WeightMatrix::of(lw.w2);
  std::vector<float> xs, gate, up, down;
  for (int64_t e = 0; e < ne; ++e) {
    const auto& tokens = routed[e];
    if (tokens.empty()) continue;
    const int64_t m = static_cast<int64_t>(tokens.size());
    xs.resize(static_cast<size_t>(m * d));
    for (int64_t i = 0; i < m; ++i) std::copy_n(x + tokens[i].first * d, d, xs.data() + i * d);
    gate.resize(static_cast<size_t>(m * f));
    up.resize(static_cast<size_t>(m * f));
    down.resize(static_cast<size_t>(m * d));
    kernels::matmul_nt(xs.data(), m, w1.row_block(e * f, (e + 1) * f), gate.data());
    kernels::matmul_nt(xs.data(), m, v1.row_block(e * f, (e + 1) * f), up.data());
    kernels::silu_mul(gate.data(), up.data(), m * f);
    kernels::matmul_nn(gate.data(), m, w2.row_block(e * f, (e + 1) * f), down.data(), false);
    for (int64_t i = 0; i < m; ++i) {
      float* dst = out + tokens[i].first * d;
      const float* src = down.data() + i * d;
      const float weight = tokens[i].second;
      for (int64_t j = 0; j < d; ++j) dst[j] += weight * src[j];
    }
  }
}

Tensor DbrxModel::forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) {
  const auto& c = config_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) fail("forward: no tokens");
  const int64_t start = cache.length();
  if (start + n > c.max_seq_len)
    fail("{}: sequence of {} tokens exceeds max_seq_len {}", info_.name, start + n, c.max_seq_len);
  for (int32_t id : tokens)
    if (id < 0 || id >= c.vocab_size) fail("{}: token id {} is out of range (vocab_size {})", info_.name, id, c.vocab_size);
  cache.reserve(start + n);

  const int64_t d = c.d_model;
  std::vector<float> hidden(static_cast<size_t>(n * d)), normed(hidden.size()), branch(hidden.size());
  const size_t row_bytes = static_cast<size_t>(d) * dtype_size(weights_.wte.dtype());
  for (int64_t t = 0; t < n; ++t) {
    const auto* row = static_cast<const std::byte*>(weights_.wte.raw()) + static_cast<size_t>(tokens[t]) * row_bytes;
    convert_to_f32(weights_.wte.dtype(), row, hidden.data() + t * d, static_cast<size_t>(d));
  }

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const auto& lw = weights_.layers[l];
    kernels::layer_norm(hidden.data(), n, d, WeightMatrix::of(lw.norm_1.view({1, d})), c.layer_norm_eps, normed.data());
    attention(l, normed.data(), n, cache, branch.data());
    for (size_t i = 0; i < hidden.size(); ++i) hidden[i] += branch[i];
    kernels::layer_norm(hidden.data(), n, d, WeightMatrix::of(lw.norm_2.view({1, d})), c.layer_norm_eps, normed.data());
    experts(l, normed.data(), n, branch.data());
    for (size_t i = 0; i < hidden.size(); ++i) hidden[i] += branch[i];
  }
  cache.advance(n);

  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  kernels::layer_norm(hidden.data() + first * d, rows, d, WeightMatrix::of(weights_.norm_f.view({1, d})),
                      c.layer_norm_eps, normed.data());
  Tensor logits = Tensor::empty({rows, c.vocab_size});
  kernels::matmul_nt(normed.data(), rows, WeightMatrix::of(weights_.lm_head), logits.data<float>());
  return logits;
}

}  // namespace tessera
