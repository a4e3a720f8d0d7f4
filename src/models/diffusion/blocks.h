#pragma once
// The layers the UNet and the VAE are built from, under diffusers' weight names: convolutions,
// GroupNorm, ResNet blocks, resampling, spatial transformers and the VAE's single-head
// attention. Activations are one image at a time, channel-major [C, H, W].
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/nn.h"
#include "models/diffusion/component_weights.h"

namespace tessera::diffusion {

struct FeatureMap {
  int64_t channels = 0, height = 0, width = 0;
  std::vector<float> data;

  FeatureMap() = default;
  FeatureMap(int64_t c, int64_t h, int64_t w) : channels(c), height(h), width(w), data(static_cast<size_t>(c * h * w)) {}
  int64_t pixels() const { return height * width; }
  float* plane(int64_t c) { return data.data() + c * pixels(); }
};

struct Linear {
  Tensor weight, bias;  // [out, in], [out] or undefined
  int64_t in = 0, out = 0;
  void load(const ComponentWeights& w, const std::string& prefix, int64_t in, int64_t out, bool bias);
  // Also accepts a 1x1 convolution's [out, in, 1, 1] weight.
  void load_matrix(const ComponentWeights& w, const std::string& prefix, int64_t in, int64_t out);
  void apply(const float* x, int64_t rows, float* y) const;
};

struct Conv2d {
  Tensor weight, bias;
  kernels::Conv2dShape shape;
  void load(const ComponentWeights& w, const std::string& prefix, int64_t in, int64_t out, int64_t kernel,
            int64_t stride = 1, int64_t padding = -1);
  FeatureMap apply(const FeatureMap& x) const;
};

struct GroupNorm {
  Tensor gamma, beta;
  int64_t groups = 32;
  float eps = 1e-5f;
  void load(const ComponentWeights& w, const std::string& prefix, int64_t channels, int64_t groups, float eps);
  void apply(FeatureMap& x, bool silu) const;
};

struct LayerNorm {
  Tensor gamma, beta;
  float eps = 1e-5f;
  void load(const ComponentWeights& w, const std::string& prefix, int64_t dim, float eps);
  void apply(const float* x, int64_t rows, float* y) const;
};

// ResnetBlock2D: norm, SiLU, conv, (+ projected time embedding), norm, SiLU, conv, plus the
// input (through a 1x1 convolution when the channel count changes).
struct ResnetBlock {
  GroupNorm norm1, norm2;
  Conv2d conv1, conv2, shortcut;
  bool has_shortcut = false;
  Linear time_proj;  // absent in the VAE
  void load(const ComponentWeights& w, const std::string& prefix, int64_t in, int64_t out, int64_t temb_dim,
            int64_t groups, float eps);
  // silu_temb: SiLU of the time embedding, or null.
  FeatureMap apply(const FeatureMap& x, const float* silu_temb) const;
};

// Multi-head attention with separate q/k/v projections and an output projection with bias.
struct Attention {
  Linear to_q, to_k, to_v, to_out;
  int64_t heads = 1, head_dim = 0;
  void load(const ComponentWeights& w, const std::string& prefix, int64_t query_dim, int64_t context_dim,
            int64_t heads, int64_t head_dim, bool qkv_bias);
  // x[n, query_dim] attends to context[m, context_dim] (context == x for self-attention).
  void apply(const float* x, int64_t n, const float* context, int64_t m, float* out) const;
};

// BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward, each after a
// LayerNorm and added back.
struct TransformerBlock {
  LayerNorm norm1, norm2, norm3;
  Attention attn1, attn2;
  Linear ff_in, ff_out;
  void load(const ComponentWeights& w, const std::string& prefix, int64_t dim, int64_t context_dim, int64_t heads);
  void apply(float* x, int64_t n, const float* context, int64_t m) const;
};

// Transformer2DModel: GroupNorm, projection in, transformer blocks over the pixels as
// tokens, projection out, plus the input.
struct SpatialTransformer {
  GroupNorm norm;
  Linear proj_in, proj_out;
  std::vector<TransformerBlock> blocks;
  void load(const ComponentWeights& w, const std::string& prefix, int64_t channels, int64_t context_dim,
            int64_t heads, int64_t layers, int64_t groups);
  void apply(FeatureMap& x, const float* context, int64_t m) const;
};

// The VAE's mid-block attention: GroupNorm, one head over all channels, residual.
struct VaeAttention {
  GroupNorm norm;
  Attention attn;
  void load(const ComponentWeights& w, const std::string& prefix, int64_t channels, int64_t groups, float eps);
  void apply(FeatureMap& x) const;
};

// Nearest-neighbour resize to (h, w) followed by a 3x3 convolution.
FeatureMap upsample(const Conv2d& conv, const FeatureMap& x, int64_t h, int64_t w);
// Channel concatenation [a; b].
FeatureMap concat_channels(const FeatureMap& a, const FeatureMap& b);

}  // namespace tessera::diffusion
