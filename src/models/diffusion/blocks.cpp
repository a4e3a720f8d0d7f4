#include "models/diffusion/blocks.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"

namespace tessera::diffusion {

namespace k = tessera::kernels;

void Linear::load(const ComponentWeights& w, const std::string& prefix, int64_t in_dim, int64_t out_dim, bool with_bias) {
  in = in_dim;
  out = out_dim;
  weight = w.get(prefix + ".weight", {out, in});
  if (with_bias) bias = w.get(prefix + ".bias", {out});
}

void Linear::load_matrix(const ComponentWeights& w, const std::string& prefix, int64_t in_dim, int64_t out_dim) {
  in = in_dim;
  out = out_dim;
  weight = w.get_matrix(prefix + ".weight", out, in);
  bias = w.get(prefix + ".bias", {out});
}

void Linear::apply(const float* x, int64_t rows, float* y) const {
  k::linear(x, rows, in, weight.data<float>(), bias.defined() ? bias.data<float>() : nullptr, out, y);
}

void Conv2d::load(const ComponentWeights& w, const std::string& prefix, int64_t in, int64_t out, int64_t kernel,
                  int64_t stride, int64_t padding) {
  if (padding < 0) padding = kernel / 2;
  shape.in_channels = in;
  shape.out_channels = out;
  shape.kernel = kernel;
  shape.stride = stride;
  shape.pad_top = shape.pad_left = shape.pad_bottom = shape.pad_right = padding;
  weight = w.get(prefix + ".weight", {out, in, kernel, kernel});
  bias = w.get(prefix + ".bias", {out});
}

FeatureMap Conv2d::apply(const FeatureMap& x) const {
  if (x.channels != shape.in_channels)
    fail("convolution expects {} input channels, got {}", shape.in_channels, x.channels);
  FeatureMap y(shape.out_channels, shape.out_height(x.height), shape.out_width(x.width));
  k::conv2d(x.data.data(), x.height, x.width, shape, weight.data<float>(), bias.data<float>(), y.data.data());
  return y;
}

void GroupNorm::load(const ComponentWeights& w, const std::string& prefix, int64_t channels, int64_t g, float e) {
  if (g <= 0 || channels % g != 0)
    fail("{}: {} channels cannot be split into {} GroupNorm groups", w.origin(), channels, g);
  gamma = w.get(prefix + ".weight", {channels});
  beta = w.get(prefix + ".bias", {channels});
  groups = g;
  eps = e;
}

void GroupNorm::apply(FeatureMap& x, bool silu) const {
  k::group_norm(x.data.data(), x.channels, x.pixels(), groups, gamma.data<float>(), beta.data<float>(), eps, silu);
}

void LayerNorm::load(const ComponentWeights& w, const std::string& prefix, int64_t dim, float e) {
  gamma = w.get(prefix + ".weight", {dim});
  beta = w.get(prefix + ".bias", {dim});
  eps = e;
}

void LayerNorm::apply(const float* x, int64_t rows, float* y) const {
  k::layer_norm_affine(x, rows, gamma.dim(0), gamma.data<float>(), beta.data<float>(), eps, y);
}

void ResnetBlock::load(const ComponentWeights& w, const std::string& p, int64_t in, int64_t out, int64_t temb_dim,
                       int64_t groups, float eps) {
  norm1.load(w, p + ".norm1", in, groups, eps);
  conv1.load(w, p + ".conv1", in, out, 3);
  if (temb_dim > 0) time_proj.load(w, p + ".time_emb_proj", temb_dim, out, true);
  norm2.load(w, p + ".norm2", out, groups, eps);
  conv2.load(w, p + ".conv2", out, out, 3);
  has_shortcut = in != out;
  if (has_shortcut) shortcut.load(w, p + ".conv_shortcut", in, out, 1);
}

FeatureMap ResnetBlock::apply(const FeatureMap& x, const float* silu_temb) const {
  FeatureMap h = x;
  norm1.apply(h, /*silu=*/true);
  h = conv1.apply(h);
  if (silu_temb && time_proj.weight.defined()) {
    std::vector<float> t(static_cast<size_t>(time_proj.out));
    time_proj.apply(silu_temb, 1, t.data());
    const int64_t hw = h.pixels();
    for (int64_t c = 0; c < h.channels; ++c) {
      float* row = h.plane(c);
      for (int64_t i = 0; i < hw; ++i) row[i] += t[c];
    }
  }
  norm2.apply(h, /*silu=*/true);
  h = conv2.apply(h);
  const FeatureMap residual = has_shortcut ? shortcut.apply(x) : FeatureMap();
  const float* r = has_shortcut ? residual.data.data() : x.data.data();
  float* hd = h.data.data();
  const int64_t n = static_cast<int64_t>(h.data.size());
  for (int64_t i = 0; i < n; ++i) hd[i] += r[i];
  return h;
}

void Attention::load(const ComponentWeights& w, const std::string& p, int64_t query_dim, int64_t context_dim,
                     int64_t h, int64_t hd, bool qkv_bias) {
  heads = h;
  head_dim = hd;
  const int64_t inner = heads * head_dim;
  to_q.load(w, p + ".to_q", query_dim, inner, qkv_bias);
  to_k.load(w, p + ".to_k", context_dim, inner, qkv_bias);
  to_v.load(w, p + ".to_v", context_dim, inner, qkv_bias);
  to_out.load(w, p + ".to_out.0", inner, query_dim, true);
}

void Attention::apply(const float* x, int64_t n, const float* context, int64_t m, float* out) const {
  const int64_t inner = heads * head_dim;
  std::vector<float> q(static_cast<size_t>(n * inner)), kk(static_cast<size_t>(m * inner)),
      v(static_cast<size_t>(m * inner)), o(static_cast<size_t>(n * inner));
  to_q.apply(x, n, q.data());
  to_k.apply(context, m, kk.data());
  to_v.apply(context, m, v.data());
  k::attention(q.data(), inner, kk.data(), inner, v.data(), inner, n, m, heads, head_dim,
               1.0f / std::sqrt(static_cast<float>(head_dim)), /*causal=*/false, o.data(), inner);
  to_out.apply(o.data(), n, out);
}

void TransformerBlock::load(const ComponentWeights& w, const std::string& p, int64_t dim, int64_t context_dim,
                            int64_t heads) {
  if (dim % heads != 0) fail("{}: {} channels cannot be split into {} attention heads", w.origin(), dim, heads);
  norm1.load(w, p + ".norm1", dim, 1e-5f);
  attn1.load(w, p + ".attn1", dim, dim, heads, dim / heads, false);
  norm2.load(w, p + ".norm2", dim, 1e-5f);
  attn2.load(w, p + ".attn2", dim, context_dim, heads, dim / heads, false);
  norm3.load(w, p + ".norm3", dim, 1e-5f);
  ff_in.load(w, p + ".ff.net.0.proj", dim, dim * 8, true);
  ff_out.load(w, p + ".ff.net.2", dim * 4, dim, true);
}

void TransformerBlock::apply(float* x, int64_t n, const float* context, int64_t m) const {
  const int64_t dim = norm1.gamma.dim(0);
  std::vector<float> h(static_cast<size_t>(n * dim)), a(h.size());
  auto add_into_x = [&](const std::vector<float>& y) {
    parallel_for(static_cast<size_t>(n), 256, [&](size_t b, size_t e) {
      for (size_t i = b * dim; i < e * dim; ++i) x[i] += y[i];
    });
  };
  norm1.apply(x, n, h.data());
  attn1.apply(h.data(), n, h.data(), n, a.data());
  add_into_x(a);
  norm2.apply(x, n, h.data());
  attn2.apply(h.data(), n, context, m, a.data());
  add_into_x(a);
  norm3.apply(x, n, h.data());
  std::vector<float> proj(static_cast<size_t>(n * dim * 8)), gated(static_cast<size_t>(n * dim * 4));
  ff_in.apply(h.data(), n, proj.data());
  k::geglu(proj.data(), n, dim * 4, gated.data());
  proj = {};
  ff_out.apply(gated.data(), n, a.data());
  add_into_x(a);
}

void SpatialTransformer::load(const ComponentWeights& w, const std::string& p, int64_t channels, int64_t context_dim,
                              int64_t heads, int64_t layers, int64_t groups) {
  norm.load(w, p + ".norm", channels, groups, 1e-6f);
  proj_in.load_matrix(w, p + ".proj_in", channels, channels);
  for (int64_t i = 0; i < layers; ++i) {
    TransformerBlock b;
    b.load(w, p + ".transformer_blocks." + std::to_string(i), channels, context_dim, heads);
    blocks.push_back(std::move(b));
  }
  proj_out.load_matrix(w, p + ".proj_out", channels, channels);
}

void SpatialTransformer::apply(FeatureMap& x, const float* context, int64_t m) const {
  const int64_t c = x.channels, n = x.pixels();
  FeatureMap h = x;
  norm.apply(h, false);
  std::vector<float> tokens(static_cast<size_t>(n * c)), t2(tokens.size());
  k::transpose(h.data.data(), c, n, tokens.data());
  proj_in.apply(tokens.data(), n, t2.data());
  for (const auto& b : blocks) b.apply(t2.data(), n, context, m);
  proj_out.apply(t2.data(), n, tokens.data());
  k::transpose(tokens.data(), n, c, h.data.data());
  float* xd = x.data.data();
  for (int64_t i = 0; i < n * c; ++i) xd[i] += h.data[i];
}

void VaeAttention::load(const ComponentWeights& w, const std::string& p, int64_t channels, int64_t groups, float eps) {
  norm.load(w, p + ".group_norm", channels, groups, eps);
  attn.load(w, p, channels, channels, 1, channels, true);
}

void VaeAttention::apply(FeatureMap& x) const {
  const int64_t c = x.channels, n = x.pixels();
  FeatureMap h = x;
  norm.apply(h, false);
  std::vector<float> tokens(static_cast<size_t>(n * c)), out(tokens.size());
  k::transpose(h.data.data(), c, n, tokens.data());
  attn.apply(tokens.data(), n, tokens.data(), n, out.data());
  k::transpose(out.data(), n, c, h.data.data());
  float* xd = x.data.data();
  for (int64_t i = 0; i < n * c; ++i) xd[i] += h.data[i];
}

FeatureMap upsample(const Conv2d& conv, const FeatureMap& x, int64_t h, int64_t w) {
  FeatureMap up(x.channels, h, w);
  k::upsample_nearest(x.data.data(), x.channels, x.height, x.width, h, w, up.data.data());
  return conv.apply(up);
}

FeatureMap concat_channels(const FeatureMap& a, const FeatureMap& b) {
  if (a.height != b.height || a.width != b.width)
    fail("skip connection of {}x{} does not match {}x{}", b.height, b.width, a.height, a.width);
  FeatureMap out(a.channels + b.channels, a.height, a.width);
  std::memcpy(out.data.data(), a.data.data(), a.data.size() * sizeof(float));
  std::memcpy(out.data.data() + a.data.size(), b.data.data(), b.data.size() * sizeof(float));
  return out;
}

}  // namespace tessera::diffusion
