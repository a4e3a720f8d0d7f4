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

// out[j] = q . rows[j * stride .. + n] for j < count: attention scores against cached keys,
// four rows at a time (f32 or f16 rows).
void dot_rows(const float* q, const float* rows, int64_t stride, int64_t count, int64_t n, float* out);
void dot_rows_f16(const float* q, const uint16_t* rows, int64_t stride, int64_t count, int64_t n, float* out);

// y += a * x
void axpy(float a, const float* x, float* y, int64_t n);
// The same with x in f16, and a dot product of f32 with f16 (an f16 KV cache).
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n);
float dot_f32_f16(const float* a, const uint16_t* b, int64_t n);
// y += x
void add_inplace(float* y, const float* x, int64_t n);

// Clamps every value to [-limit, limit].
void clamp(float* x, int64_t n, float limit);

}  // namespace tessera::kernels
