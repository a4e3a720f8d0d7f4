#pragma once
// The forward and backward of the ops a diffusion UNet training step uses (the Stable-Diffusion
// layout of src/models/diffusion: ResNet blocks, spatial transformers, resampling), over plain
// f32 arrays. Images are NCHW, batch first; token activations are [rows, width] row-major.
//
// As in autograd/ops.h, a backward never overwrites an input or parameter gradient: it adds into
// it (`+=`), so a value used twice (a skip connection, the time embedding that feeds every
// ResNet) collects every contribution, and gradient accumulation over micro-batches comes free.
// Any gradient output may be null to skip it. Work is threaded over the global pool.
#include <cstdint>

namespace tessera::autograd {

// ---- Convolution -------------------------------------------------------------------------

// nn.Conv2d with a square kernel, equal padding on every side and a bias: x[batch, in, h, w],
// weight[out, in, kernel, kernel], bias[out], y[batch, out, out_height, out_width].
struct Conv2dShape {
  int64_t batch = 1, in_channels = 0, height = 0, width = 0;
  int64_t out_channels = 0, kernel = 3, stride = 1, padding = 1;
  int64_t out_height() const { return (height + 2 * padding - kernel) / stride + 1; }
  int64_t out_width() const { return (width + 2 * padding - kernel) / stride + 1; }
};
// bias may be null (no bias).
void conv2d_forward(const Conv2dShape& s, const float* x, const float* weight, const float* bias, float* y);
// dx += conv_transpose(dy, weight);  dweight += dy (*) x;  dbias += sum of dy over batch and pixels.
void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* weight, float* dx,
                     float* dweight, float* dbias);

// ---- Normalisation -----------------------------------------------------------------------

// nn.GroupNorm over x[batch, channels, hw]: each (image, group) of channels / groups channels is
// normalised with its biased variance, then scaled and shifted per channel. Saves mean and 1/std
// of every (image, group), [batch, groups], for the backward.
void group_norm_forward(const float* x, int64_t batch, int64_t channels, int64_t hw, int64_t groups,
                        const float* weight, const float* bias, float eps, float* y, float* mean, float* rstd);
void group_norm_backward(const float* dy, const float* x, int64_t batch, int64_t channels, int64_t hw, int64_t groups,
                         const float* weight, const float* mean, const float* rstd, float* dx, float* dweight,
                         float* dbias);

// nn.LayerNorm with weight and bias over rows of width d (the transformer blocks' norms). Saves
// each row's mean and 1/std.
void layer_norm_affine_forward(const float* x, int64_t rows, int64_t d, const float* weight, const float* bias,
                               float eps, float* y, float* mean, float* rstd);
void layer_norm_affine_backward(const float* dy, const float* x, int64_t rows, int64_t d, const float* weight,
                                const float* mean, const float* rstd, float* dx, float* dweight, float* dbias);

// ---- Element-wise and resampling ---------------------------------------------------------

// y = x * sigmoid(x); y may alias x. The backward needs the input, not the output.
void silu_forward(const float* x, int64_t n, float* y);
void silu_backward(const float* dy, const float* x, int64_t n, float* dx);

// Nearest-neighbour resize of planes[planes, h, w] to [planes, oh, ow] with torch's 'nearest'
// source index min(floor(o * in / out), in - 1); oh = 2h, ow = 2w is Upsample2D. The backward
// sums each output pixel's gradient into the pixel it was copied from.
void upsample_nearest_forward(const float* x, int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, float* y);
void upsample_nearest_backward(const float* dy, int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                               float* dx);

// y[b, c, p] += v[b, c] for every pixel p (the ResNet's projected time embedding); the backward
// of v sums over pixels (the gradient of y passes to the feature map unchanged).
void add_channel_bias_forward(float* y, int64_t batch, int64_t channels, int64_t hw, const float* v);
void add_channel_bias_backward(const float* dy, int64_t batch, int64_t channels, int64_t hw, float* dv);

// ---- Linear layers and the feed-forward --------------------------------------------------

// y[n, m] = x[n, k] . w[m, k]^T + bias[m]: nn.Linear with a bias (bias may be null).
void linear_bias_forward(const float* x, int64_t n, int64_t k, const float* w, const float* bias, int64_t m, float* y);
// dx[n, k] += dy . w;  dw[m, k] += dy^T . x;  dbias[m] += column sums of dy.
void linear_bias_backward(const float* dy, const float* x, int64_t n, int64_t k, const float* w, int64_t m, float* dx,
                          float* dw, float* dbias);

// diffusers' GEGLU after its projection: each row of x[rows, 2n] splits into (hidden, gate) =
// (x[:, :n], x[:, n:]) and y[rows, n] = hidden * gelu(gate), the exact erf GELU.
void geglu_forward(const float* x, int64_t rows, int64_t n, float* y);
// dx[rows, 2n] += (dy * gelu(gate), dy * hidden * gelu'(gate)).
void geglu_backward(const float* dy, const float* x, int64_t rows, int64_t n, float* dx);

// ---- Attention ---------------------------------------------------------------------------

// Non-causal multi-head attention, scale 1 / sqrt(head_dim): for each of `batch` items, q_len
// queries attend to all kv_len keys (self-attention over the pixels, kv_len = q_len, or
// cross-attention to the text encoder's states). Head h of query row r starts at
// q + r * ldq + h * head_dim, of key/value row r at k + r * ldkv + h * head_dim (rows of item b
// are b * q_len.. and b * kv_len..). ctx is [batch * q_len, heads * head_dim]. The backward
// recomputes the attention weights rather than keeping batch * heads * q_len * kv_len floats.
struct FullAttentionShape {
  int64_t batch = 0, q_len = 0, kv_len = 0, heads = 0, head_dim = 0, ldq = 0, ldkv = 0;
};
void full_attention_forward(const FullAttentionShape& s, const float* q, const float* k, const float* v, float* ctx);
void full_attention_backward(const FullAttentionShape& s, const float* q, const float* k, const float* v,
                             const float* dctx, float* dq, float* dk, float* dv);

// ---- Timestep embedding and loss ---------------------------------------------------------

// diffusers' get_timestep_embedding for every timestep (float32, as the inference UNet computes
// it): out[batch, dim]. No gradient: the timesteps are data.
void timestep_embedding(const float* timesteps, int64_t batch, int64_t dim, bool flip_sin_to_cos, float freq_shift,
                        float* out);

// Mean squared error over n values; returns the mean (accumulated in double). When dpred is
// given, adds scale * 2 * (pred - target) / n into it (scale 1 is the gradient of the mean).
double mse_loss(const float* pred, const float* target, int64_t n, float scale, float* dpred);

}  // namespace tessera::autograd
