#pragma once
// General f32 matrix product for compute-bound work (convolutions, attention over many
// queries, the diffusion networks): C[m,n] = alpha * op(A)[m,k] . op(B)[k,n] + beta * C.
// Row-major with leading dimensions (elements between rows), as in BLAS's row-major sgemm.
// op(X) = X or X^T. Threaded over the global pool; beta == 0 never reads C (it may hold NaN).
// Packing buffers are kept per thread between calls (for large products, up to 16 MB each for
// A and B on the calling thread).
#include <cstdint>

namespace tessera::kernels {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The plain triple loop, for tests.
void sgemm_reference(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                     int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace tessera::kernels
