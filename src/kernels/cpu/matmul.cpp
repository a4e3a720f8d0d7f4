#include "kernels/cpu/matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/gemm.h"

namespace tessera::kernels {

WeightMatrix WeightMatrix::of(const Tensor& t) {
  if (t.ndim() != 2 || !t.is_contiguous()) fail("weight matrix must be 2-d and contiguous, got {}", shape_str(t.shape()));
  if (t.device() != Device::CPU) fail("CPU kernel given a tensor on another device");
  return WeightMatrix{t.raw(), t.dtype(), t.dim(0), t.dim(1)};
}

WeightMatrix WeightMatrix::row_block(int64_t begin, int64_t end) const {
  const auto* base = static_cast<const std::byte*>(data);
  return WeightMatrix{base + dtype_bytes(dtype, static_cast<size_t>(begin * cols)), dtype, end - begin, cols};
}

namespace {

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// Converts `rows` weight rows starting at `row` into f32 (a contiguous rows x cols block).
// f32 weights are returned in place without copying.
const float* rows_as_f32(const WeightMatrix& w, int64_t row, int64_t rows, std::vector<float>& scratch) {
  const int64_t cols = w.cols;
  const auto* base = static_cast<const std::byte*>(w.data) + dtype_bytes(w.dtype, static_cast<size_t>(row * cols));
  if (w.dtype == DType::F32) return reinterpret_cast<const float*>(base);
  scratch.resize(static_cast<size_t>(rows * cols));
  convert_to_f32(w.dtype, base, scratch.data(), scratch.size());
  return scratch.data();
}

// Two activation rows against four weight rows: 8 dot products sharing their loads.
void kernel_2x4(const float* x0, const float* x1, const float* w, int64_t k, float* y0, float* y1) {
  const float* w0 = w;
  const float* w1 = w + k;
  const float* w2 = w + 2 * k;
  const float* w3 = w + 3 * k;
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
  __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 v0 = _mm256_loadu_ps(x0 + i), v1 = _mm256_loadu_ps(x1 + i);
    __m256 b = _mm256_loadu_ps(w0 + i);
    a00 = _mm256_fmadd_ps(v0, b, a00);
    a10 = _mm256_fmadd_ps(v1, b, a10);
    b = _mm256_loadu_ps(w1 + i);
    a01 = _mm256_fmadd_ps(v0, b, a01);
    a11 = _mm256_fmadd_ps(v1, b, a11);
    b = _mm256_loadu_ps(w2 + i);
    a02 = _mm256_fmadd_ps(v0, b, a02);
    a12 = _mm256_fmadd_ps(v1, b, a12);
    b = _mm256_loadu_ps(w3 + i);
    a03 = _mm256_fmadd_ps(v0, b, a03);
    a13 = _mm256_fmadd_ps(v1, b, a13);
  }
  float r0[4] = {hsum(a00), hsum(a01), hsum(a02), hsum(a03)};
  float r1[4] = {hsum(a10), hsum(a11), hsum(a12), hsum(a13)};
  for (; i < k; ++i) {
    for (int j = 0; j < 4; ++j) {
      r0[j] += x0[i] * w[j * k + i];
      r1[j] += x1[i] * w[j * k + i];
    }
  }
  for (int j = 0; j < 4; ++j) {
    y0[j] = r0[j];
    y1[j] = r1[j];
  }
}

}  // namespace

float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void matmul_nt_multi(const float* x, int64_t m, std::initializer_list<MatmulTarget> targets) {
  if (targets.size() == 0) return;
  const WeightMatrix& first = targets.begin()->w;
  bool fused = dtype_is_quantized(first.dtype);
  for (const MatmulTarget& t : targets) {
    if (t.w.cols != first.cols) fail("matmul_nt_multi: weights of {} and {} columns", first.cols, t.w.cols);
    fused = fused && t.w.dtype == first.dtype;
  }
  if (!fused) {
    for (const MatmulTarget& t : targets) matmul_nt(x, m, t.w, t.y);
    return;
  }
  std::vector<QuantizedProduct> products;
  for (const MatmulTarget& t : targets) products.push_back({t.w.data, t.w.rows, t.y});
  matmul_nt_quantized_multi(x, m, first.dtype, first.cols, products.data(), static_cast<int64_t>(products.size()),
                            active_simd_path());
}

void matmul_nt(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  const int64_t n = w.rows, k = w.cols;
  if (dtype_is_quantized(w.dtype)) {
    matmul_nt_quantized(x, m, w.data, w.dtype, n, k, y, active_simd_path());
    return;
  }
  // From 16 rows of activations on, the blocked product (gemm.h), which packs both operands
  // and keeps a 6x16 tile of y in registers, is faster on f32 weights than the dot products
  // below (about 1.3x at 16 rows, 2x at 77, on AVX2); fewer rows stay here.
  constexpr int64_t kSgemmMinRows = 16;
  if (w.dtype == DType::F32 && m >= kSgemmMinRows) {
    sgemm(false, true, m, n, k, 1.0f, x, k, static_cast<const float*>(w.data), k, 0.0f, y, n);
    return;
  }
  constexpr int64_t kBlock = 16;  // weight rows converted and reused across all activation rows
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  // Enough work per task that thread wake-ups stay cheap for small matrices.
  const size_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k * m));
  parallel_for(static_cast<size_t>(blocks), grain, [&](size_t b0, size_t b1) {
    std::vector<float> scratch;
    for (size_t b = b0; b < b1; ++b) {
      const int64_t row0 = static_cast<int64_t>(b) * kBlock;
      const int64_t rows = std::min(kBlock, n - row0);
      const float* wf = rows_as_f32(w, row0, rows, scratch);
      int64_t r = 0;
      for (; r + 4 <= rows; r += 4) {
        int64_t i = 0;
        float out0[4], out1[4];
        for (; i + 2 <= m; i += 2) {
          kernel_2x4(x + i * k, x + (i + 1) * k, wf + r * k, k, out0, out1);
          for (int j = 0; j < 4; ++j) {
            y[i * n + row0 + r + j] = out0[j];
            y[(i + 1) * n + row0 + r + j] = out1[j];
          }
        }
        for (; i < m; ++i)
          for (int j = 0; j < 4; ++j) y[i * n + row0 + r + j] = dot_f32(x + i * k, wf + (r + j) * k, k);
      }
      for (; r < rows; ++r)
        for (int64_t i = 0; i < m; ++i) y[i * n + row0 + r] = dot_f32(x + i * k, wf + r * k, k);
    }
  });
}

void matmul_nn(const float* x, int64_t m, const WeightMatrix& w, float* y, bool accumulate) {
  const int64_t k = w.rows, n = w.cols;
  const bool quantized = dtype_is_quantized(w.dtype);
  const auto qblock = static_cast<int64_t>(dtype_block_elems(w.dtype));
  if (quantized && n % qblock != 0)
    fail("matmul_nn: {} weights need rows of a multiple of {} values, got {}", dtype_name(w.dtype), qblock, n);
  // Split the output columns; each task walks all K rows of W for its column range.
  // Quantized column ranges start and end on block boundaries.
  const int64_t kColBlock = quantized ? std::max<int64_t>(64, qblock) : 64;
  const int64_t blocks = (n + kColBlock - 1) / kColBlock;
  const size_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k * m * kColBlock / 64));
  parallel_for(static_cast<size_t>(blocks), grain, [&](size_t b0, size_t b1) {
    std::vector<float> row(kColBlock);
    for (size_t b = b0; b < b1; ++b) {
      const int64_t c0 = static_cast<int64_t>(b) * kColBlock;
      const int64_t cols = std::min(kColBlock, n - c0);
      if (!accumulate)
        for (int64_t i = 0; i < m; ++i) std::fill(y + i * n + c0, y + i * n + c0 + cols, 0.0f);
      for (int64_t kk = 0; kk < k; ++kk) {
        const auto* src = static_cast<const std::byte*>(w.data) + dtype_bytes(w.dtype, static_cast<size_t>(kk * n + c0));
        const float* wr;
        if (w.dtype == DType::F32) {
          wr = reinterpret_cast<const float*>(src);
        } else if (quantized) {
          dequantize_row(w.dtype, src, row.data(), cols);
          wr = row.data();
        } else {
          convert_to_f32(w.dtype, src, row.data(), static_cast<size_t>(cols));
          wr = row.data();
        }
        for (int64_t i = 0; i < m; ++i) {
          const float a = x[i * k + kk];
          if (a == 0.0f) continue;
          float* out = y + i * n + c0;
          const __m256 av = _mm256_set1_ps(a);
          int64_t c = 0;
          for (; c + 8 <= cols; c += 8)
            _mm256_storeu_ps(out + c, _mm256_fmadd_ps(av, _mm256_loadu_ps(wr + c), _mm256_loadu_ps(out + c)));
          for (; c < cols; ++c) out[c] += a * wr[c];
        }
      }
    }
  });
}

}  // namespace tessera::kernels
