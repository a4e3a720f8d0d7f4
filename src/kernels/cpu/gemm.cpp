#include "kernels/cpu/gemm.h"

#include "core/thread_pool.h"

namespace tessera::kernels {

void sgemm_reference(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                     int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t p = 0; p < k; ++p) {
        const float av = trans_a ? a[p * lda + i] : a[i * lda + p];
        const float bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
        sum += static_cast<double>(av) * bv;
      }
      float& out = c[i * ldc + j];
      out = static_cast<float>(alpha * sum) + (beta == 0.0f ? 0.0f : beta * out);
    }
  }
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  // Rows of C are independent: split them over the pool.
  parallel_for(static_cast<size_t>(m), 4, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      float* crow = c + static_cast<int64_t>(i) * ldc;
      if (beta == 0.0f) {
        for (int64_t j = 0; j < n; ++j) crow[j] = 0.0f;
      } else if (beta != 1.0f) {
        for (int64_t j = 0; j < n; ++j) crow[j] *= beta;
      }
      for (int64_t p = 0; p < k; ++p) {
        const float av = alpha * (trans_a ? a[p * lda + static_cast<int64_t>(i)] : a[static_cast<int64_t>(i) * lda + p]);
        if (trans_b) {
          for (int64_t j = 0; j < n; ++j) crow[j] += av * b[j * ldb + p];
        } else {
          const float* brow = b + p * ldb;
          for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
        }
      }
    }
  });
}

}  // namespace tessera::kernels
