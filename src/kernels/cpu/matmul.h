#pragma once
// Dense products of f32 activations with weights stored as f32, bf16 or f16 (converted on the
// fly, so mapped checkpoints are used in place) or block-quantized (Q8_0, Q4_0, Q4_1, Q4_K,
// Q6_K: integer products, see quant.h). Rows of a weight matrix are contiguous.
#include <cstdint>
#include <initializer_list>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/cpu/quant.h"

namespace tessera::kernels {

struct WeightMatrix {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;

  static WeightMatrix of(const Tensor& t);  // 2-d contiguous tensor
  // Rows [begin, end) of this matrix (for stacked expert weights).
  WeightMatrix row_block(int64_t begin, int64_t end) const;
};

// y[M,N] = x[M,K] . W[N,K]^T   (nn.Linear without bias). x and y are dense row-major.
// Quantized W: activations are quantized to 8 bits per row on the fly (quant.h), on the
// widest SIMD path the CPU has (active_simd_path()); K must be a multiple of the block size.
void matmul_nt(const float* x, int64_t m, const WeightMatrix& w, float* y);

// y_i = x . W_i^T for several weights with the same K (a layer's query, key and value
// projections). Quantized weights of one type run as one parallel loop over all their rows
// with the activations quantized once (matmul_nt_quantized_multi); others one by one.
struct MatmulTarget {
  WeightMatrix w;
  float* y;
};
void matmul_nt_multi(const float* x, int64_t m, std::initializer_list<MatmulTarget> targets);

// y[M,N] (+)= x[M,K] . W[K,N]. With accumulate, adds into y. Quantized W (N a multiple of the
// block size) is dequantized a block of columns at a time: correct, not fast; models use
// matmul_nt for quantized weights.
void matmul_nn(const float* x, int64_t m, const WeightMatrix& w, float* y, bool accumulate);

// Dot product of f32 vectors.
float dot_f32(const float* a, const float* b, int64_t n);

}  // namespace tessera::kernels
