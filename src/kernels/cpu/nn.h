#pragma once
// Layers of convolutional and transformer networks over dense f32 arrays (the diffusion
// models): images are channel-major [C, H, W] (one batch item at a time), token sequences
// are row-major [tokens, features]. The heavy lifting is sgemm (gemm.h).
#include <cstdint>

namespace tessera::kernels {

struct Conv2dShape {
  int64_t in_channels = 0, out_channels = 0;
  int64_t kernel = 3;
  int64_t stride = 1;
  // Zero padding on each side; the VAE encoder's downsampler pads only bottom and right.
  int64_t pad_top = 1, pad_left = 1, pad_bottom = 1, pad_right = 1;

  int64_t out_height(int64_t h) const { return (h + pad_top + pad_bottom - kernel) / stride + 1; }
  int64_t out_width(int64_t w) const { return (w + pad_left + pad_right - kernel) / stride + 1; }
};

// y[Co, Ho, Wo] = conv(x[Ci, H, W], weight[Co, Ci, k, k]) + bias[Co] (bias may be null).
// Lowered to sgemm over bands of output rows so the unfolded input stays small.
void conv2d(const float* x, int64_t h, int64_t w, const Conv2dShape& shape, const float* weight, const float* bias,
            float* y);

// GroupNorm of x[C, hw] in place: each of `groups` channel groups normalized over its
// channels and pixels, then scaled and shifted per channel; optionally followed by SiLU.
void group_norm(float* x, int64_t channels, int64_t hw, int64_t groups, const float* gamma, const float* beta,
                float eps, bool silu);

// LayerNorm with weight and bias over each row of x[rows, n], into y (may alias x).
void layer_norm_affine(const float* x, int64_t rows, int64_t n, const float* gamma, const float* beta, float eps,
                       float* y);

// y[m, n] = x[m, k] . W[n, k]^T + bias[n] (bias may be null): nn.Linear.
void linear(const float* x, int64_t m, int64_t k, const float* weight, const float* bias, int64_t n, float* y);

// Activations, in place.
void silu_inplace(float* x, int64_t n);
void gelu_inplace(float* x, int64_t n);        // exact: x * Phi(x), with erf
void quick_gelu_inplace(float* x, int64_t n);  // x * sigmoid(1.702 x), CLIP's
// GEGLU: x[rows, 2n] = [h | g] -> y[rows, n] = h * gelu(g).
void geglu(const float* x, int64_t rows, int64_t n, float* y);

// Multi-head scaled dot-product attention. q[sq, heads*d] with row stride ldq, k and v
// [sk, heads*d] with strides ldk/ldv, out[sq, heads*d] with stride ldo. Scores are
// q.k^T * scale; causal masks keys after the query's own position. Queries are processed in
// chunks so the score matrix stays small for long sequences.
void attention(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t sq,
               int64_t sk, int64_t heads, int64_t d, float scale, bool causal, float* out, int64_t ldo);

// y[cols, rows] = x[rows, cols]^T.
void transpose(const float* x, int64_t rows, int64_t cols, float* y);

// Nearest-neighbour resize of x[C, h, w] to [C, oh, ow] (PyTorch's "nearest": source index
// floor(dst * in / out)).
void upsample_nearest(const float* x, int64_t channels, int64_t h, int64_t w, int64_t oh, int64_t ow, float* y);

// Sinusoidal timestep embedding as diffusers' get_timestep_embedding computes it (float32):
// freq_i = exp(-ln(10000) * i / (half - shift)), [sin(t f), cos(t f)] or [cos, sin] when flipped.
void timestep_embedding(float t, int64_t dim, bool flip_sin_to_cos, float freq_shift, float* out);

}  // namespace tessera::kernels
