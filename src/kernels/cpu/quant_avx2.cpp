// Quantized products with AVX2 (the baseline build target): _mm256_maddubs_epi16 multiplies
// unsigned by signed bytes into int16 pairs and _mm256_madd_epi16 widens them to int32.
// maddubs needs one unsigned operand: 4-bit and 6-bit weights are unsigned already (their
// offsets are applied through the activation sums); Q8_0's signed weights use |w| and move
// w's sign onto the activation.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_simd256.h"

namespace tessera::kernels::detail {
namespace {

using namespace simd256;

// Q8_0's signed weights: maddubs(|w|, sign(a, w)).
struct FmtQ8_0 {
  static constexpr int64_t kBlock = 32, kBytes = 34;
  struct W {
    __m256i abs_w, w;
    __m256 d;
  };
  static TS_INLINE W load(const uint8_t* p) {
    const __m256i q = load256(p + 2);
    return {_mm256_abs_epi8(q), q, _mm256_broadcastss_ps(f16_pair(p))};
  }
  static TS_INLINE void accum(Acc& acc, const W& w, const ActRow& a, int64_t b) {
    const __m256i prod = _mm256_maddubs_epi16(w.abs_w, _mm256_sign_epi8(load256(a.q + 32 * b), w.w));
    const __m256i sum = _mm256_madd_epi16(prod, _mm256_set1_epi16(1));
    acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(_mm256_broadcast_ss(a.d + b), w.d), acc.v);
  }
};

// Both 4-bit formats multiply the unsigned nibbles q, then add the offset times the block's
// activation sum: Q4_0 is d * q - 8 * d, Q4_1 is d * q + m.
template <int64_t kBytes_, int64_t kNibbles>
struct Nibbles {
  static constexpr int64_t kBlock = 32, kBytes = kBytes_;
  struct W {
    __m256i q;
    __m256 d;
    __m128 dm;  // {d, m} (Q4_1) or {d, junk} (Q4_0) in the two low lanes
  };
  static TS_INLINE W load(const uint8_t* p) {
    const __m128 dm = f16_pair(p);
    return {nibbles32(p + kNibbles), _mm256_broadcastss_ps(dm), dm};
  }
  static TS_INLINE void accum(Acc& acc, const W& w, const ActRow& a, int64_t b) {
    const __m256i prod = _mm256_maddubs_epi16(w.q, load256(a.q + 32 * b));
    const __m256i sum = _mm256_madd_epi16(prod, _mm256_set1_epi16(1));
    acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(_mm256_broadcast_ss(a.d + b), w.d), acc.v);
    // The offset terms d * d_a * sum(q_a) and m * d_a * sum(q_a) collect in the low lanes of a
    // 128-bit sum; finish() picks the one this format needs.
    acc.offset = _mm_fmadd_ps(w.dm, _mm_broadcast_ss(a.s + b), acc.offset);
  }
  static TS_INLINE float finish(const Acc& acc) {
    const float offset = kNibbles == 2 ? -8.0f * _mm_cvtss_f32(acc.offset)
                                       : _mm_cvtss_f32(_mm_movehdup_ps(acc.offset));
    return hsum(acc.v) + offset;
  }
};
using FmtQ4_0 = Nibbles<18, 2>;
using FmtQ4_1 = Nibbles<20, 4>;

struct FmtQ4_K {
  static constexpr int64_t kBlock = 256, kBytes = 144;
  struct W {
    __m256i lo[4], hi[4];  // sub-blocks 2c and 2c+1
    __m256i sc[8];         // each sub-block's scale in every int16
    __m128i mn;            // the eight mins as int16
    __m256 d, neg_dmin;
  };
  static TS_INLINE W load(const uint8_t* p) {
    W w;
    uint8_t sc[8], mn[8];
    unpack_q4k_scales(p + 4, sc, mn);
    for (int j = 0; j < 8; ++j) w.sc[j] = _mm256_set1_epi16(sc[j]);
    w.mn = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn)));
    const __m256i mask = _mm256_set1_epi8(15);
    for (int c = 0; c < 4; ++c) {
      const __m256i q = load256(p + 16 + 32 * c);
      w.lo[c] = _mm256_and_si256(q, mask);
      w.hi[c] = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
    }
    w.d = broadcast_f16(p);
    w.neg_dmin = _mm256_set1_ps(-load_f16(p + 2));
    return w;
  }
  static TS_INLINE void accum(Acc& acc, const W& w, const ActRow& a, int64_t b) {
    const int8_t* q = a.q + 256 * b;
    __m256i isum = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(w.lo[c], load256(q + 64 * c)), w.sc[2 * c]);
      const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(w.hi[c], load256(q + 64 * c + 32)), w.sc[2 * c + 1]);
      isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
    }
    const __m128i mins = _mm_madd_epi16(w.mn, _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.bsum32 + 8 * b)));
    const __m256 da = _mm256_broadcast_ss(a.d + b);
    acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(da, w.d), acc.v);
    acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_zextsi128_si256(mins)), _mm256_mul_ps(da, w.neg_dmin), acc.v);
  }
};

struct FmtQ6_K {
  static constexpr int64_t kBlock = 256, kBytes = 210;
  struct W {
    __m256i q[8];   // 32 values each, 0..63
    __m256i sc[8];  // the scales of their two groups of 16, as int16
    __m256i sc16;   // all sixteen scales as int16
    __m256 d;
  };
  static TS_INLINE W load(const uint8_t* p) {
    W w;
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load256(p + 64 * h), ql1 = load256(p + 64 * h + 32), qh = load256(p + 128 + 32 * h);
      w.q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2));
      w.q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2));
      w.q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m2));
      w.q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                       _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2));
    }
    w.sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192)));
    // Chunk c wants scale 2c in its low half and 2c+1 in its high half: shuffle the int16
    // scales of its half of the block (0-7 or 8-15) into place.
    const __m256i halves[2] = {_mm256_permute2x128_si256(w.sc16, w.sc16, 0x00),
                               _mm256_permute2x128_si256(w.sc16, w.sc16, 0x11)};
    for (int c = 0; c < 8; ++c) {
      const char lo = static_cast<char>(4 * (c % 4)), hi = static_cast<char>(4 * (c % 4) + 2);
      const __m256i pick = _mm256_setr_epi8(lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo, lo + 1, lo,
                                            lo + 1, lo, lo + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1, hi,
                                            hi + 1, hi, hi + 1, hi, hi + 1, hi, hi + 1);
      w.sc[c] = _mm256_shuffle_epi8(halves[c / 4], pick);
    }
    w.d = broadcast_f16(p + 208);
    return w;
  }
  static TS_INLINE void accum(Acc& acc, const W& w, const ActRow& a, int64_t b) {
    const int8_t* q = a.q + 256 * b;
    __m256i isum = _mm256_setzero_si256();
    for (int c = 0; c < 8; ++c)
      isum = _mm256_add_epi32(isum, _mm256_madd_epi16(_mm256_maddubs_epi16(w.q[c], load256(q + 32 * c)), w.sc[c]));
    // The stored q is value + 32: take 32 * sum(scale * sum of activations) back off.
    const __m256i corr = _mm256_madd_epi16(w.sc16, load256(a.bsum16 + 16 * b));
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(corr, 5));
    acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(_mm256_broadcast_ss(a.d + b), w.d), acc.v);
  }
};

// RM activation rows against RN weight rows over the whole of K; each weight block is loaded
// and unpacked once for RM rows.
template <class F, int RM, int RN>
void tile(const ActView& a, int64_t i0, const uint8_t* w, size_t row_bytes, float* y, int64_t ldy) {
  ActRow rows[RM];
  for (int i = 0; i < RM; ++i) rows[i] = act_row(a, i0 + i, F::kBlock);
  Acc acc[RM][RN];
  const int64_t nb = a.k / F::kBlock;
  for (int64_t b = 0; b < nb; ++b) {
    typename F::W wb[RN];
    if constexpr (RM == 1) prefetch_ahead<RN>(w + b * F::kBytes, row_bytes);
    for (int j = 0; j < RN; ++j) wb[j] = F::load(w + j * row_bytes + b * F::kBytes);
    for (int i = 0; i < RM; ++i)
      for (int j = 0; j < RN; ++j) F::accum(acc[i][j], wb[j], rows[i], b);
  }
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j) {
      if constexpr (requires { F::finish(acc[i][j]); })
        y[i * ldy + j] = F::finish(acc[i][j]);
      else
        y[i * ldy + j] = hsum(acc[i][j].v) + acc[i][j].m;
    }
}

// Activation rows [p0, p1) against RN weight rows.
template <class F, int RM, int RN>
void row_group(const ActView& a, int64_t p0, int64_t p1, const uint8_t* w, size_t row_bytes, float* y, int64_t ldy) {
  int64_t i = p0;
  for (; i + RM <= p1; i += RM) tile<F, RM, RN>(a, i, w, row_bytes, y + i * ldy, ldy);
  const int64_t rest = p1 - i;
  if constexpr (RM > 1) {
    if (rest == 1) tile<F, 1, RN>(a, i, w, row_bytes, y + i * ldy, ldy);
  }
  if constexpr (RM > 2) {
    if (rest == 2) tile<F, 2, RN>(a, i, w, row_bytes, y + i * ldy, ldy);
  }
  if constexpr (RM > 3) {
    if (rest == 3) tile<F, 3, RN>(a, i, w, row_bytes, y + i * ldy, ldy);
  }
  static_assert(RM <= 4);
}

// RM x RN tiles for prefill; a single activation row (decode) streams RN1 weight rows at once.
template <class F, int RM, int RN, int RN1>
void rows_kernel(const ActView& a, const uint8_t* w, size_t row_bytes, int64_t j0, int64_t j1, float* y, int64_t ldy) {
  if (a.m == 1) {
    int64_t j = j0;
    for (; j + RN1 <= j1; j += RN1) tile<F, 1, RN1>(a, 0, w + j * row_bytes, row_bytes, y + j, ldy);
    for (; j < j1; ++j) tile<F, 1, 1>(a, 0, w + j * row_bytes, row_bytes, y + j, ldy);
    return;
  }
  // Panels of activation rows small enough to stay in cache while the weight rows pass.
  constexpr int64_t kPanel = 64;
  for (int64_t p0 = 0; p0 < a.m; p0 += kPanel) {
    const int64_t p1 = std::min(a.m, p0 + kPanel);
    int64_t j = j0;
    for (; j + RN <= j1; j += RN) row_group<F, RM, RN>(a, p0, p1, w + j * row_bytes, row_bytes, y + j, ldy);
    for (; j < j1; ++j) row_group<F, RM, 1>(a, p0, p1, w + j * row_bytes, row_bytes, y + j, ldy);
  }
}

}  // namespace

RowsKernel avx2_kernel(DType dtype) {
  switch (dtype) {
    case DType::Q8_0: return rows_kernel<FmtQ8_0, 4, 2, 1>;
    case DType::Q4_0: return rows_kernel<FmtQ4_0, 4, 2, 2>;
    case DType::Q4_1: return rows_kernel<FmtQ4_1, 4, 2, 2>;
    case DType::Q4_K: return rows_kernel<FmtQ4_K, 4, 1, 1>;
    case DType::Q6_K: return rows_kernel<FmtQ6_K, 4, 1, 1>;
    default: return nullptr;
  }
}

}  // namespace tessera::kernels::detail
