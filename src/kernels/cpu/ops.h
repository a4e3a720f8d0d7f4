#pragma once
// Element-wise and row-wise CPU ops over dense f32 rows.
#include <cstdint>

#include "kernels/cpu/matmul.h"

namespace tessera::kernels {

// LayerNorm over each row of x[rows, n] with a weight and no bias (DBRX), into y (may alias x).
void layer_norm(const float* x, int64_t rows, int64_t n, const WeightMatrix& weight, float eps, float* y);
// RMSNorm (llama): y = x / sqrt(mean(x^2) + eps) * weight.
void rms_norm(const float* x, int64_t rows, int64_t n, const WeightMatrix& weight, float eps, float* y);

// In-place softmax of one row, computed with the max subtracted.
void softmax(float* x, int64_t n);

// silu(a) * b, element-wise into a.
void silu_mul(float* a, const float* b, int64_t n);

// Rotary embeddings in the "rotate half" layout (pairs are (i, i + head_dim/2)), applied in
// place to `heads` consecutive heads of one token at position `pos`.
void rope_rotate_half(float* x, int64_t heads, int64_t head_dim, int64_t pos, const float* inv_freq);

// The same rotation with pairs (2i, 2i + 1), as GGUF llama files expect.
void rope_interleaved(float* x, int64_t heads, int64_t head_dim, int64_t pos, const float* inv_freq);

// y += a * x
void axpy(float a, const float* x, float* y, int64_t n);
// y += x
void add_inplace(float* y, const float* x, int64_t n);

// Clamps every value to [-limit, limit].
void clamp(float* x, int64_t n, float limit);

}  // namespace tessera::kernels
