#include "kernels/cpu/gemm.h"

// Goto/BLIS-style blocking, on AVX2+FMA (the build's baseline).
//
// The micro-kernel keeps a 6x16 tile of C in twelve ymm registers and, per step of k, does 12
// FMAs from two loads of B and six broadcasts of A. It reads micro-panels: kMR rows of op(A)
// by kc steps (6 values per step) and kc steps by kNR columns of op(B) (16 values per step),
// packed contiguously and padded with zeros at the edges, so every tile is computed whole and
// only the write-back of edge tiles is special. Packing handles the four transpose cases.
//
// Blocking. C is cut into tasks of up to kMC rows by a run of B micro-panels; each task walks
// k in slices of kKC: it takes the kMC x kKC block of op(A) packed (L2-sized), and sweeps
// each kKC x 16 micro-panel of B (L1-sized) over all the A micro-panels of the block. Tasks
// are handed out one at a time, so a thread slowed by other load on the machine holds up no
// one. With a single block of rows, a task packs all it uses itself, its B panels a few at a
// time right before use. With several, B is packed up front by all threads and shared (each
// B panel serves every row block), one block of up to kPackBudget floats at a time (one wait
// per block, not one per slice of k); A is then packed up front and shared too when few row
// blocks make the columns split over several tasks, or B comes in several column blocks.
//
// Shapes that packing serves badly take other routes:
// - few columns (n <= kDirectMaxN, A not transposed): the kernel reads the rows of A in place;
//   packing A would cost as much as the product.
// - few rows, B not transposed (m <= kAxpyMaxM): rows of C are accumulated in L1 while the
//   rows of B stream past in order, so B is read once, sequentially.
// - few rows, B transposed (m <= kDotMaxM): both operands run along k in memory, so C is
//   computed as dot products of rows, which reads B once.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

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

namespace {

constexpr int64_t kMR = 6;    // rows of a micro-tile
constexpr int64_t kNR = 16;   // columns of a micro-tile (two ymm)
constexpr int64_t kKC = 320;  // steps of k per slice: a 320x16 B micro-panel (20 KB) stays in L1
constexpr int64_t kMC = 144;  // rows per block of A: 144x320 packed floats (180 KB) stay in L2
// Most floats of packed B (and of shared packed A) held at once: 16 MB each, kept per calling
// thread between calls.
constexpr int64_t kPackBudget = int64_t{1} << 22;
// Shapes that skip packing an operand (see the top of the file). Measured on Zen 3: reading A
// in place wins by ~10% at n = 40 and 64, and is even from n = 96 on.
constexpr int64_t kDirectMaxN = 64;
constexpr int64_t kAxpyMaxM = 4;
constexpr int64_t kDotMaxM = 16;
// Below this many multiply-adds, waking the pool costs more than it saves.
constexpr int64_t kSerialWork = int64_t{1} << 17;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// A 64-byte aligned scratch area that only grows; one per thread, reused across calls.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(data_); }

  float* get(size_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      data_ = nullptr;
      capacity_ = 0;
      const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data_) throw std::bad_alloc();
      capacity_ = bytes / sizeof(float);
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

// Transposes the 8x8 block held in r0..r7 (rows) into columns, in place.
inline void transpose8x8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6,
                         __m256& r7) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Stores the first 6 floats of v.
inline void store6(float* d, __m256 v) {
  _mm_storeu_ps(d, _mm256_castps256_ps128(v));
  _mm_storel_pi(reinterpret_cast<__m64*>(d + 4), _mm256_extractf128_ps(v, 1));
}

// Packs op(A)[i0 : i0+mc, p0 : p0+kc] as micro-panels of kMR rows, one after another: panel q
// holds dst[q * kMR * kc + p * kMR + r], rows past mc are zeros. Nothing outside the block is
// written (blocks next to each other are packed by different threads).
void pack_a_block(bool trans_a, const float* a, int64_t lda, int64_t i0, int64_t p0, int64_t mc, int64_t kc,
                  float* dst) {
  if (trans_a) {
    // op(A)(i, p) = a[p * lda + i]: a row of A holds one step of k for every row of the block;
    // read it whole and deal it out to the panels.
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = a + (p0 + p) * lda + i0;
      float* d = dst + p * kMR;
      int64_t i = 0;
      for (; i + kMR <= mc; i += kMR, d += kMR * kc) std::memcpy(d, src + i, kMR * sizeof(float));
      if (i < mc) {
        for (int64_t r = 0; r < kMR; ++r) d[r] = i + r < mc ? src[i + r] : 0.0f;
      }
    }
    return;
  }
  // op(A)(i, p) = a[i * lda + p]: rows are contiguous in k; transpose 8 steps of k at a time.
  for (int64_t ip = 0; ip < mc; ip += kMR, dst += kMR * kc) {
    const int64_t mr = std::min(kMR, mc - ip);
    const float* rows[kMR];
    for (int64_t r = 0; r < kMR; ++r) rows[r] = a + (i0 + ip + std::min(r, mr - 1)) * lda + p0;
    int64_t p = 0;
    if (mr == kMR) {
      for (; p + 8 <= kc; p += 8) {
        __m256 r0 = _mm256_loadu_ps(rows[0] + p), r1 = _mm256_loadu_ps(rows[1] + p);
        __m256 r2 = _mm256_loadu_ps(rows[2] + p), r3 = _mm256_loadu_ps(rows[3] + p);
        __m256 r4 = _mm256_loadu_ps(rows[4] + p), r5 = _mm256_loadu_ps(rows[5] + p);
        __m256 r6 = _mm256_setzero_ps(), r7 = _mm256_setzero_ps();
        transpose8x8(r0, r1, r2, r3, r4, r5, r6, r7);
        // Each column is 6 values and 2 zeros; the zeros are overwritten by the next column,
        // and the last column is stored without them.
        float* d = dst + p * kMR;
        _mm256_storeu_ps(d + 0 * kMR, r0);
        _mm256_storeu_ps(d + 1 * kMR, r1);
        _mm256_storeu_ps(d + 2 * kMR, r2);
        _mm256_storeu_ps(d + 3 * kMR, r3);
        _mm256_storeu_ps(d + 4 * kMR, r4);
        _mm256_storeu_ps(d + 5 * kMR, r5);
        _mm256_storeu_ps(d + 6 * kMR, r6);
        store6(d + 7 * kMR, r7);
      }
    }
    for (; p < kc; ++p) {
      float* d = dst + p * kMR;
      int64_t r = 0;
      for (; r < mr; ++r) d[r] = rows[r][p];
      for (; r < kMR; ++r) d[r] = 0.0f;
    }
  }
}

// Packs op(B)[p0 : p0+kc, j0 : j0+nc] as micro-panels of kNR columns, one after another:
// panel q holds dst[q * kNR * kc + p * kNR + j], columns past nc are zeros.
void pack_b_block(bool trans_b, const float* b, int64_t ldb, int64_t p0, int64_t j0, int64_t nc, int64_t kc,
                  float* dst) {
  if (!trans_b) {
    // op(B)(p, j) = b[p * ldb + j]: read each row of B across the block and deal it out to the
    // panels, so that B is read in order.
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = b + (p0 + p) * ldb + j0;
      float* d = dst + p * kNR;
      int64_t j = 0;
      for (; j + kNR <= nc; j += kNR, d += kNR * kc) {
        _mm256_store_ps(d, _mm256_loadu_ps(src + j));
        _mm256_store_ps(d + 8, _mm256_loadu_ps(src + j + 8));
      }
      if (j < nc) {
        for (int64_t q = 0; q < kNR; ++q) d[q] = j + q < nc ? src[j + q] : 0.0f;
      }
    }
    return;
  }
  // op(B)(p, j) = b[j * ldb + p]: columns of a panel are contiguous; transpose 8x8 blocks.
  for (int64_t jp = 0; jp < nc; jp += kNR, dst += kNR * kc) {
    const int64_t nr = std::min(kNR, nc - jp);
    const float* cols[kNR];
    for (int64_t j = 0; j < kNR; ++j) cols[j] = b + (j0 + jp + std::min(j, nr - 1)) * ldb + p0;
    int64_t p = 0;
    if (nr == kNR) {
      for (; p + 8 <= kc; p += 8) {
        for (int64_t half = 0; half < 2; ++half) {
          const float* const* s = cols + half * 8;
          __m256 r0 = _mm256_loadu_ps(s[0] + p), r1 = _mm256_loadu_ps(s[1] + p);
          __m256 r2 = _mm256_loadu_ps(s[2] + p), r3 = _mm256_loadu_ps(s[3] + p);
          __m256 r4 = _mm256_loadu_ps(s[4] + p), r5 = _mm256_loadu_ps(s[5] + p);
          __m256 r6 = _mm256_loadu_ps(s[6] + p), r7 = _mm256_loadu_ps(s[7] + p);
          transpose8x8(r0, r1, r2, r3, r4, r5, r6, r7);
          float* d = dst + p * kNR + half * 8;
          _mm256_store_ps(d + 0 * kNR, r0);
          _mm256_store_ps(d + 1 * kNR, r1);
          _mm256_store_ps(d + 2 * kNR, r2);
          _mm256_store_ps(d + 3 * kNR, r3);
          _mm256_store_ps(d + 4 * kNR, r4);
          _mm256_store_ps(d + 5 * kNR, r5);
          _mm256_store_ps(d + 6 * kNR, r6);
          _mm256_store_ps(d + 7 * kNR, r7);
        }
      }
    }
    for (; p < kc; ++p) {
      float* d = dst + p * kNR;
      int64_t j = 0;
      for (; j < nr; ++j) d[j] = cols[j][p];
      for (; j < kNR; ++j) d[j] = 0.0f;
    }
  }
}

// c = alpha * acc + beta * c for one row of 8 * kVecs (read_c false: c is not read).
template <int kVecs>
inline void store_row(float* c, __m256 lo, __m256 hi, __m256 alpha, __m256 beta, bool read_c) {
  lo = _mm256_mul_ps(lo, alpha);
  if (read_c) lo = _mm256_fmadd_ps(beta, _mm256_loadu_ps(c), lo);
  _mm256_storeu_ps(c, lo);
  if constexpr (kVecs == 2) {
    hi = _mm256_mul_ps(hi, alpha);
    if (read_c) hi = _mm256_fmadd_ps(beta, _mm256_loadu_ps(c + 8), hi);
    _mm256_storeu_ps(c + 8, hi);
  }
}

// One row of the tile for one step of k: lo/hi += a * (b0, b1).
template <int kVecs>
inline void fma_row(const float* a, __m256 b0, __m256 b1, __m256& lo, __m256& hi) {
  const __m256 x = _mm256_broadcast_ss(a);
  lo = _mm256_fmadd_ps(x, b0, lo);
  if constexpr (kVecs == 2) hi = _mm256_fmadd_ps(x, b1, hi);
}

// Where the micro-kernel finds op(A)[r, p] for its rows.
enum class AccessA {
  Packed,  // a packed micro-panel: a[p * kMR + r]
  Rows,    // A in place, not transposed: a[r * lda + p]
};

// C[0:mr, 0:nr] = alpha * (op(A) . op(B)) + beta * C over kc steps of k, for kRows rows
// (mr <= kRows <= kMR) and 8 * kVecs columns (nr <= 8 * kVecs) of a packed micro-panel of B
// (b[p * kNR + j]). With AccessA::Rows, rows of A past mr are never read (the last valid row
// stands in for them and its copies are dropped). The accumulators are named variables
// rather than an array: that is what keeps them in registers with g++.
template <AccessA kAccess, int kRows, int kVecs>
void micro_kernel(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b, float alpha,
                  float beta, float* c, int64_t ldc, int64_t mr, int64_t nr) {
  static_assert(kRows >= 1 && kRows <= kMR && (kVecs == 1 || kVecs == 2));
  constexpr int64_t kStepA = kAccess == AccessA::Packed ? kMR : 1;
  auto row = [&](int64_t r) {
    return kAccess == AccessA::Packed ? a + r : a + std::min<int64_t>(r, mr - 1) * lda;
  };
  const float *a0 = row(0), *a1 = row(1), *a2 = row(2), *a3 = row(3), *a4 = row(4), *a5 = row(5);
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const bool full = mr == kRows && nr == 8 * kVecs;
  if (full)
    for (int r = 0; r < kRows; ++r) _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
  int64_t p = 0;
  if constexpr (kRows <= 2) {
    // One or two rows make too few FMA chains to hide their latency: even and odd steps of k
    // go to separate accumulators (the ones rows 2 and 3 would use), added up at the end.
#pragma GCC unroll 2
    for (; p + 2 <= kc; p += 2) {
      const __m256 b0 = _mm256_load_ps(b), e0 = _mm256_load_ps(b + kNR);
      const __m256 b1 = kVecs == 2 ? _mm256_load_ps(b + 8) : b0;
      const __m256 e1 = kVecs == 2 ? _mm256_load_ps(b + kNR + 8) : e0;
      fma_row<kVecs>(a0 + p * kStepA, b0, b1, c00, c01);
      fma_row<kVecs>(a0 + (p + 1) * kStepA, e0, e1, c20, c21);
      if constexpr (kRows > 1) {
        fma_row<kVecs>(a1 + p * kStepA, b0, b1, c10, c11);
        fma_row<kVecs>(a1 + (p + 1) * kStepA, e0, e1, c30, c31);
      }
      b += 2 * kNR;
    }
  }
#pragma GCC unroll 4
  for (; p < kc; ++p) {
    const int64_t at = p * kStepA;
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = kVecs == 2 ? _mm256_load_ps(b + 8) : b0;
    fma_row<kVecs>(a0 + at, b0, b1, c00, c01);
    if constexpr (kRows > 1) fma_row<kVecs>(a1 + at, b0, b1, c10, c11);
    if constexpr (kRows > 2) fma_row<kVecs>(a2 + at, b0, b1, c20, c21);
    if constexpr (kRows > 3) fma_row<kVecs>(a3 + at, b0, b1, c30, c31);
    if constexpr (kRows > 4) fma_row<kVecs>(a4 + at, b0, b1, c40, c41);
    if constexpr (kRows > 5) fma_row<kVecs>(a5 + at, b0, b1, c50, c51);
    b += kNR;
  }
  if constexpr (kRows <= 2) {
    c00 = _mm256_add_ps(c00, c20);
    c01 = _mm256_add_ps(c01, c21);
    c10 = _mm256_add_ps(c10, c30);
    c11 = _mm256_add_ps(c11, c31);
  }
  const bool read_c = beta != 0.0f;
  __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  float* out = c;
  int64_t ld_out = ldc;
  // Edge tile: into a buffer first, then only the valid corner goes to C.
  alignas(32) float tile[kMR][kNR];
  if (!full) {
    va = _mm256_set1_ps(1.0f);
    out = &tile[0][0];
    ld_out = kNR;
  }
  const bool read_out = full && read_c;
  store_row<kVecs>(out, c00, c01, va, vb, read_out);
  if constexpr (kRows > 1) store_row<kVecs>(out + 1 * ld_out, c10, c11, va, vb, read_out);
  if constexpr (kRows > 2) store_row<kVecs>(out + 2 * ld_out, c20, c21, va, vb, read_out);
  if constexpr (kRows > 3) store_row<kVecs>(out + 3 * ld_out, c30, c31, va, vb, read_out);
  if constexpr (kRows > 4) store_row<kVecs>(out + 4 * ld_out, c40, c41, va, vb, read_out);
  if constexpr (kRows > 5) store_row<kVecs>(out + 5 * ld_out, c50, c51, va, vb, read_out);
  if (full) return;
  for (int64_t r = 0; r < mr; ++r) {
    float* crow = c + r * ldc;
    for (int64_t j = 0; j < nr; ++j) crow[j] = alpha * tile[r][j] + (read_c ? beta * crow[j] : 0.0f);
  }
}

template <AccessA kAccess, int kRows>
void micro_kernel_cols(int64_t kc, const float* a, int64_t lda, const float* b, float alpha, float beta, float* c,
                       int64_t ldc, int64_t mr, int64_t nr) {
  if (nr > 8)
    micro_kernel<kAccess, kRows, 2>(kc, a, lda, b, alpha, beta, c, ldc, mr, nr);
  else
    micro_kernel<kAccess, kRows, 1>(kc, a, lda, b, alpha, beta, c, ldc, mr, nr);
}

// One packed micro-panel of op(B) (nr <= kNR columns) against every micro-panel of a block
// of mc rows of op(A): a packed block (micro-panels of kMR rows, one after another) or A's
// rows in place. A ragged last micro-panel runs a kernel with as many rows as it has.
template <AccessA kAccess>
void sweep_block(int64_t kc, const float* a, int64_t lda, int64_t mc, const float* b, int64_t nr, float alpha,
                 float beta, float* c, int64_t ldc) {
  for (int64_t i0 = 0; i0 < mc; i0 += kMR) {
    const float* ap = kAccess == AccessA::Packed ? a + i0 * kc : a + i0 * lda;
    float* cp = c + i0 * ldc;
    switch (const int64_t mr = std::min(kMR, mc - i0)) {
      case 1: micro_kernel_cols<kAccess, 1>(kc, ap, lda, b, alpha, beta, cp, ldc, mr, nr); break;
      case 2: micro_kernel_cols<kAccess, 2>(kc, ap, lda, b, alpha, beta, cp, ldc, mr, nr); break;
      case 3: micro_kernel_cols<kAccess, 3>(kc, ap, lda, b, alpha, beta, cp, ldc, mr, nr); break;
      case 4: micro_kernel_cols<kAccess, 4>(kc, ap, lda, b, alpha, beta, cp, ldc, mr, nr); break;
      case 5: micro_kernel_cols<kAccess, 5>(kc, ap, lda, b, alpha, beta, cp, ldc, mr, nr); break;
      default: micro_kernel_cols<kAccess, 6>(kc, ap, lda, b, alpha, beta, cp, ldc, mr, nr); break;
    }
  }
}

// C = beta * C (beta == 0: C is not read).
void scale_c(int64_t m, int64_t n, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    float* row = c + i * ldc;
    if (beta == 0.0f)
      std::fill(row, row + n, 0.0f);
    else if (beta != 1.0f)
      for (int64_t j = 0; j < n; ++j) row[j] *= beta;
  }
}

// Runs fn(t) for every t in [0, tasks), handing tasks out one at a time over `threads`
// threads of the global pool, so that a thread slowed down by other load does not hold up the
// rest. (The pool's own chunks are coarser than this.)
template <class Fn>
void run_tasks(int64_t tasks, size_t threads, const Fn& fn) {
  if (threads <= 1 || tasks <= 1) {
    for (int64_t t = 0; t < tasks; ++t) fn(t);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(std::min(threads, static_cast<size_t>(tasks)), 1, [&](size_t, size_t) {
    for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < tasks;
         t = next.fetch_add(1, std::memory_order_relaxed))
      fn(t);
  });
}

inline float hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// C[0:R, 0:C] = alpha * (dot products of R rows of A with C rows of B, along k) + beta * C.
template <int R, int C>
void dot_tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float alpha, float beta, float* c,
              int64_t ldc) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = _mm256_setzero_ps();
  int64_t p = 0;
  for (; p + 8 <= k; p += 8) {
    __m256 av[R];
    for (int r = 0; r < R; ++r) av[r] = _mm256_loadu_ps(a + r * lda + p);
    for (int j = 0; j < C; ++j) {
      const __m256 bv = _mm256_loadu_ps(b + j * ldb + p);
      for (int r = 0; r < R; ++r) acc[r][j] = _mm256_fmadd_ps(av[r], bv, acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < C; ++j) {
      float sum = hsum(acc[r][j]);
      for (int64_t q = p; q < k; ++q) sum += a[r * lda + q] * b[j * ldb + q];
      float& out = c[r * ldc + j];
      out = alpha * sum + (beta == 0.0f ? 0.0f : beta * out);
    }
  }
}

template <int R>
void dot_rows(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, int64_t n, float alpha,
              float beta, float* c, int64_t ldc) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) dot_tile<R, 4>(k, a, lda, b + j * ldb, ldb, alpha, beta, c + j, ldc);
  for (; j < n; ++j) dot_tile<R, 1>(k, a, lda, b + j * ldb, ldb, alpha, beta, c + j, ldc);
}

// op(B) = B^T with few rows in op(A): C[i, j] = alpha * <row i of op(A), row j of B> + beta * C.
// Columns are split over the threads; each B row is read once from memory and used for every
// row of A while it is in L1.
void sgemm_dot(bool trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc, size_t threads) {
  if (trans_a) {
    // Rows of op(A) are columns of A: gather them once (m * k values, m is small).
    static thread_local Scratch rows;
    float* dst = rows.get(static_cast<size_t>(m * k));
    for (int64_t p = 0; p < k; ++p)
      for (int64_t i = 0; i < m; ++i) dst[i * k + p] = a[p * lda + i];
    a = dst;
    lda = k;
  }
  const int64_t cols_per_task = std::max<int64_t>(16, round_up(ceil_div(n, 8 * static_cast<int64_t>(threads)), 4));
  run_tasks(ceil_div(n, cols_per_task), threads, [&](int64_t t) {
    const int64_t j0 = t * cols_per_task;
    const int64_t cols = std::min(cols_per_task, n - j0);
    // Four columns at a time against up to three rows: B is read once per four columns.
    for (int64_t jj = 0; jj < cols; jj += 4) {
      const int64_t w = std::min<int64_t>(4, cols - jj);
      const float* bj = b + (j0 + jj) * ldb;
      int64_t i = 0;
      for (; i + 3 <= m; i += 3) dot_rows<3>(k, a + i * lda, lda, bj, ldb, w, alpha, beta, c + i * ldc + j0 + jj, ldc);
      if (m - i == 2) dot_rows<2>(k, a + i * lda, lda, bj, ldb, w, alpha, beta, c + i * ldc + j0 + jj, ldc);
      if (m - i == 1) dot_rows<1>(k, a + i * lda, lda, bj, ldb, w, alpha, beta, c + i * ldc + j0 + jj, ldc);
    }
  });
}

// op(B) = B with few rows in op(A): each row of C is accumulated in place (in L1) while rows
// of B stream past in order, so B is read once and sequentially. kRows rows of C take kSteps
// rows of B at a time: kRows * kSteps broadcast coefficients stay in registers.
template <int kRows, int kSteps>
void axpy_rows(const float* a, int64_t a_rs, int64_t a_cs, float alpha, const float* b, int64_t ldb, int64_t p0,
               int64_t p1, float* c, int64_t ldc, int64_t width) {
  int64_t p = p0;
  for (; p + kSteps <= p1; p += kSteps) {
    __m256 coef[kRows][kSteps];
    float scalar[kRows][kSteps];
    for (int r = 0; r < kRows; ++r)
      for (int q = 0; q < kSteps; ++q) {
        scalar[r][q] = alpha * a[r * a_rs + (p + q) * a_cs];
        coef[r][q] = _mm256_set1_ps(scalar[r][q]);
      }
    const float* brow = b + p * ldb;
    int64_t j = 0;
    for (; j + 8 <= width; j += 8) {
      __m256 acc[kRows];
      for (int r = 0; r < kRows; ++r) acc[r] = _mm256_loadu_ps(c + r * ldc + j);
      for (int q = 0; q < kSteps; ++q) {
        const __m256 bv = _mm256_loadu_ps(brow + q * ldb + j);
        for (int r = 0; r < kRows; ++r) acc[r] = _mm256_fmadd_ps(coef[r][q], bv, acc[r]);
      }
      for (int r = 0; r < kRows; ++r) _mm256_storeu_ps(c + r * ldc + j, acc[r]);
    }
    for (; j < width; ++j)
      for (int r = 0; r < kRows; ++r) {
        float sum = c[r * ldc + j];
        for (int q = 0; q < kSteps; ++q) sum += scalar[r][q] * brow[q * ldb + j];
        c[r * ldc + j] = sum;
      }
  }
  if (p < p1) axpy_rows<kRows, 1>(a, a_rs, a_cs, alpha, b, ldb, p, p1, c, ldc, width);
}

void sgemm_axpy(bool trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                const float* b, int64_t ldb, float beta, float* c, int64_t ldc, size_t threads) {
  const int64_t a_rs = trans_a ? 1 : lda, a_cs = trans_a ? lda : 1;
  // Columns per task: C's rows for them stay in L1; rows of B per pass: B's slab stays in L2.
  const int64_t cols_per_task =
      std::clamp<int64_t>(round_up(ceil_div(n, 4 * static_cast<int64_t>(threads)), 8), 64, 512);
  constexpr int64_t kSlab = 128;
  run_tasks(ceil_div(n, cols_per_task), threads, [&](int64_t t) {
    const int64_t j0 = t * cols_per_task, width = std::min(cols_per_task, n - j0);
    scale_c(m, width, beta, c + j0, ldc);
    for (int64_t p0 = 0; p0 < k; p0 += kSlab) {
      const int64_t p1 = std::min(k, p0 + kSlab);
      for (int64_t i = 0; i < m; i += 4) {
        const float* ai = a + i * a_rs;
        float* ci = c + i * ldc + j0;
        switch (std::min<int64_t>(4, m - i)) {
          case 1: axpy_rows<1, 8>(ai, a_rs, a_cs, alpha, b + j0, ldb, p0, p1, ci, ldc, width); break;
          case 2: axpy_rows<2, 4>(ai, a_rs, a_cs, alpha, b + j0, ldb, p0, p1, ci, ldc, width); break;
          case 3: axpy_rows<3, 2>(ai, a_rs, a_cs, alpha, b + j0, ldb, p0, p1, ci, ldc, width); break;
          default: axpy_rows<4, 2>(ai, a_rs, a_cs, alpha, b + j0, ldb, p0, p1, ci, ldc, width); break;
        }
      }
    }
  });
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0 || alpha == 0.0f) {  // as in BLAS, A and B are then not read
    scale_c(m, n, beta, c, ldc);
    return;
  }
  const size_t threads = m * n * k < kSerialWork ? 1 : ThreadPool::global().size();
  if (trans_b && m <= kDotMaxM) {
    sgemm_dot(trans_a, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
    return;
  }
  if (!trans_b && m <= kAxpyMaxM) {
    sgemm_axpy(trans_a, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
    return;
  }

  // Even block sizes, so that no block is a sliver.
  const int64_t kc_max = ceil_div(k, ceil_div(k, kKC));
  const int64_t k_slices = ceil_div(k, kc_max);
  const int64_t m_blocks = ceil_div(m, kMC);
  const int64_t mc_max = round_up(ceil_div(m, m_blocks), kMR);
  const int64_t m_pad = round_up(m, kMR);
  // With several row blocks, each B panel serves every one of them: B is packed up front and
  // shared. With one, each B panel is used by one task only, which packs it itself right
  // before use, while it is in cache.
  const bool share_b = m_blocks > 1;
  constexpr int64_t kOwnPanels = 4;  // B micro-panels a task packs at a time
  // Shared packed B is limited to kPackBudget floats: past that, B is packed a block of
  // columns or a range of k at a time. Splitting the columns has every block of columns read
  // all of A again; splitting k has every range read and write all of C again. The cheaper
  // one is taken.
  int64_t nc_max = round_up(n, kNR);
  int64_t slices_per_range = k_slices;
  if (share_b && nc_max * k > kPackBudget) {
    if (k > 2 * n) {
      nc_max = std::min(nc_max, std::max(kNR, kPackBudget / kc_max / kNR * kNR));
      const int64_t most = std::max<int64_t>(1, kPackBudget / nc_max / kc_max);
      slices_per_range = ceil_div(k_slices, ceil_div(k_slices, most));
    } else {
      const int64_t most = std::max(kNR, kPackBudget / k / kNR * kNR);
      nc_max = round_up(ceil_div(n, ceil_div(n, most)), kNR);
    }
  }
  const int64_t jc_blocks = ceil_div(n, nc_max);
  const int64_t kr_max = slices_per_range * kc_max;  // k per range
  // With few row blocks, split the columns too so every thread has several tasks, keeping at
  // least 4 micro-panels per task so a block of A is used for a while.
  int64_t panels_per_task = nc_max / kNR;
  if (threads > 1) {
    const int64_t want = ceil_div(4 * static_cast<int64_t>(threads), m_blocks);
    panels_per_task =
        ceil_div(panels_per_task, std::clamp<int64_t>(want, 1, std::max<int64_t>(1, panels_per_task / 4)));
  }
  // op(A) is packed once up front and shared when several tasks would each pack a block, and B
  // is packed up front anyway. (With a single row block, a task packing its A itself costs
  // less than the extra wait for the packing to finish, on a machine with other load.)
  const bool direct_a = !trans_a && n <= kDirectMaxN;
  const bool share_a = share_b && !direct_a && (jc_blocks > 1 || panels_per_task < nc_max / kNR) &&
                       m_pad * k <= kPackBudget;

  static thread_local Scratch packed_b_scratch, packed_a_scratch;
  float* packed_b = share_b ? packed_b_scratch.get(static_cast<size_t>(std::min(kr_max, k) * nc_max)) : nullptr;
  float* packed_a = share_a ? packed_a_scratch.get(static_cast<size_t>(m_pad * k)) : nullptr;

  for (int64_t jc = 0; jc < n; jc += nc_max) {
    const int64_t nc = std::min(nc_max, n - jc);
    const int64_t n_panels = ceil_div(nc, kNR);
    for (int64_t kr = 0; kr < k; kr += kr_max) {
      const int64_t kr_end = std::min(k, kr + kr_max);
      const int64_t range_slices = ceil_div(kr_end - kr, kc_max);
      // Up front: shared op(B) for this block, and shared op(A) (all of it) before the first.
      constexpr int64_t kPanelsPerPackTask = 8;
      const int64_t b_groups = share_b ? ceil_div(n_panels, kPanelsPerPackTask) : 0;
      const int64_t b_tasks = range_slices * b_groups;
      const int64_t a_tasks = share_a && jc == 0 && kr == 0 ? k_slices * m_blocks : 0;
      run_tasks(b_tasks + a_tasks, threads, [&](int64_t t) {
        if (t < b_tasks) {
          const int64_t pc = kr + t / b_groups * kc_max, kc = std::min(kc_max, k - pc);
          const int64_t first = t % b_groups * kPanelsPerPackTask;
          const int64_t last = std::min(n_panels, first + kPanelsPerPackTask);
          pack_b_block(trans_b, b, ldb, pc, jc + first * kNR, std::min(nc, last * kNR) - first * kNR, kc,
                       packed_b + (pc - kr) * nc_max + first * kc * kNR);
          return;
        }
        t -= b_tasks;
        const int64_t pc = t / m_blocks * kc_max, kc = std::min(kc_max, k - pc);
        const int64_t ic = t % m_blocks * mc_max, mc = std::min(mc_max, m - ic);
        if (mc > 0) pack_a_block(trans_a, a, lda, ic, pc, mc, kc, packed_a + pc * m_pad + ic * kc);
      });

      const int64_t chunks = ceil_div(n_panels, panels_per_task);
      run_tasks(m_blocks * chunks, threads, [&](int64_t t) {
        const int64_t ic = t / chunks * mc_max;
        if (ic >= m) return;
        const int64_t mc = std::min(mc_max, m - ic);
        const int64_t jp_begin = t % chunks * panels_per_task;
        const int64_t jp_end = std::min(n_panels, jp_begin + panels_per_task);
        static thread_local Scratch own_a_scratch, own_b_scratch;
        float* own_a = direct_a || share_a ? nullptr : own_a_scratch.get(static_cast<size_t>(mc_max * kc_max));
        float* own_b = share_b ? nullptr : own_b_scratch.get(static_cast<size_t>(kOwnPanels * kNR * kc_max));
        for (int64_t pc = kr; pc < kr_end; pc += kc_max) {
          const int64_t kc = std::min(kc_max, k - pc);
          const float beta_pc = pc == 0 ? beta : 1.0f;  // later slices of k add to the first
          const float* pa = a + ic * lda + pc;
          if (share_a) {
            pa = packed_a + pc * m_pad + ic * kc;
          } else if (!direct_a) {
            pack_a_block(trans_a, a, lda, ic, pc, mc, kc, own_a);
            pa = own_a;
          }
          for (int64_t group = jp_begin; group < jp_end; group += kOwnPanels) {
            const int64_t group_end = std::min(jp_end, group + kOwnPanels);
            if (!share_b)
              pack_b_block(trans_b, b, ldb, pc, jc + group * kNR, std::min(nc, group_end * kNR) - group * kNR, kc,
                           own_b);
            for (int64_t jp = group; jp < group_end; ++jp) {
              const int64_t j0 = jp * kNR, nr = std::min(kNR, nc - j0);
              const float* pb =
                  share_b ? packed_b + (pc - kr) * nc_max + jp * kc * kNR : own_b + (jp - group) * kc * kNR;
              float* cp = c + ic * ldc + jc + j0;
              if (direct_a)
                sweep_block<AccessA::Rows>(kc, pa, lda, mc, pb, nr, alpha, beta_pc, cp, ldc);
              else
                sweep_block<AccessA::Packed>(kc, pa, 0, mc, pb, nr, alpha, beta_pc, cp, ldc);
            }
          }
        }
      });
    }
  }
}

}  // namespace tessera::kernels
