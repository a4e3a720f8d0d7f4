// Quantized products with AVX-VNNI: 256-bit _mm256_dpbusd_avx_epi32 / _mm256_dpwssd_avx_epi32
// on CPUs that have them without AVX-512 (and where 256-bit registers are the better width).
// Compiled per function (the build's baseline is AVX2) and chosen at run time. The integer
// scheme is the AVX-512 one (quant_avx512.cpp) one 256-bit register at a time:
//  - Q8_0, Q4_0, Q4_1: biased unsigned activations (q + 128) times signed weight bytes, the
//    accumulation starting from -128 * (each lane's sum of weights);
//  - Q4_K, Q6_K: unsigned weights times signed activations, each lane's sum then scaled by
//    its sub-block scale with dpwssd against the scale in the low int16 of the lane.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/quant_simd256.h"

namespace tessera::kernels::detail {
namespace {

#define TS_VNNI __attribute__((target("avxvnni")))
#define TS_VNNI_INLINE inline __attribute__((always_inline, target("avxvnni")))

using namespace simd256;

template <DType kType>
struct Fmt32 {
  static constexpr int64_t kBlock = 32;
  static constexpr int64_t kBytes = kType == DType::Q8_0 ? 34 : kType == DType::Q4_0 ? 18 : 20;
  struct W {
    __m256i q, neg_bias;
    __m256 d;
    float m;
  };
  static TS_VNNI_INLINE W load(const uint8_t* p) {
    W w;
    if constexpr (kType == DType::Q8_0) w.q = load256(p + 2);
    if constexpr (kType == DType::Q4_0) w.q = _mm256_sub_epi8(nibbles32(p + 2), _mm256_set1_epi8(8));
    if constexpr (kType == DType::Q4_1) w.q = nibbles32(p + 4);
    const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
    w.neg_bias = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), bias, w.q));
    w.d = broadcast_f16(p);
    w.m = kType == DType::Q4_1 ? load_f16(p + 2) : 0.0f;
    return w;
  }
  static TS_VNNI_INLINE void accum(Acc& acc, const W& w, const ActRow& a, int64_t b) {
    const __m256i dot = _mm256_dpbusd_avx_epi32(w.neg_bias, load256(a.q + 32 * b), w.q);
    acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(_mm256_broadcast_ss(a.d + b), w.d), acc.v);
    if constexpr (kType == DType::Q4_1) acc.m += w.m * a.s[b];
  }
};

struct FmtQ4_K {
  static constexpr int64_t kBlock = 256, kBytes = 144;
  struct W {
    __m256i lo[4], hi[4];  // sub-blocks 2c and 2c+1
    __m256i sc[8];         // each sub-block's scale in every int32 lane
    __m128i mn;            // the eight mins as int16
    __m256 d, neg_dmin;
  };
  static TS_VNNI_INLINE W load(const uint8_t* p) {
    W w;
    uint8_t sc[8], mn[8];
    unpack_q4k_scales(p + 4, sc, mn);
    for (int j = 0; j < 8; ++j) w.sc[j] = _mm256_set1_epi32(sc[j]);
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
  static TS_VNNI_INLINE void accum(Acc& acc, const W& w, const ActRow& a, int64_t b) {
    const int8_t* q = a.q + 256 * b;
    const __m256i zero = _mm256_setzero_si256();
    __m256i isum = zero;
    for (int c = 0; c < 4; ++c) {
      isum = _mm256_dpwssd_avx_epi32(isum, _mm256_dpbusd_avx_epi32(zero, w.lo[c], load256(q + 64 * c)), w.sc[2 * c]);
      isum = _mm256_dpwssd_avx_epi32(isum, _mm256_dpbusd_avx_epi32(zero, w.hi[c], load256(q + 64 * c + 32)),
                                     w.sc[2 * c + 1]);
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
    __m256i q[8];    // 32 values each, 0..63
    __m256i sc[8];   // the scale of each lane's group of 16, in the low int16 of the lane
    __m256i nsc16;   // -32 * the sixteen scales as int16
    __m256 d;
  };
  static TS_VNNI_INLINE W load(const uint8_t* p) {
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
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192)));
    // Chunk c wants scale 2c in the low int16 of its lanes 0-3 and 2c+1 in lanes 4-7 (the high
    // int16 zero): shuffle the int16 scales of its half of the block (0-7 or 8-15) into place.
    const __m256i halves[2] = {_mm256_permute2x128_si256(sc16, sc16, 0x00),
                               _mm256_permute2x128_si256(sc16, sc16, 0x11)};
    const char z = static_cast<char>(0x80);
    for (int c = 0; c < 8; ++c) {
      const char lo = static_cast<char>(4 * (c % 4)), hi = static_cast<char>(4 * (c % 4) + 2);
      const __m256i pick = _mm256_setr_epi8(lo, lo + 1, z, z, lo, lo + 1, z, z, lo, lo + 1, z, z, lo, lo + 1, z, z, hi,
                                            hi + 1, z, z, hi, hi + 1, z, z, hi, hi + 1, z, z, hi, hi + 1, z, z);
      w.sc[c] = _mm256_shuffle_epi8(halves[c / 4], pick);
    }
    w.nsc16 = _mm256_mullo_epi16(sc16, _mm256_set1_epi16(-32));
    w.d = broadcast_f16(p + 208);
    return w;
  }
  static TS_VNNI_INLINE void accum(Acc& acc, const W& w, const ActRow& a, int64_t b) {
    const int8_t* q = a.q + 256 * b;
    const __m256i zero = _mm256_setzero_si256();
    __m256i isum = zero;
    for (int c = 0; c < 8; ++c)
      isum = _mm256_dpwssd_avx_epi32(isum, _mm256_dpbusd_avx_epi32(zero, w.q[c], load256(q + 32 * c)), w.sc[c]);
    // The stored q is value + 32: add -32 * scale * (sum of each group's activations).
    isum = _mm256_dpwssd_avx_epi32(isum, w.nsc16, load256(a.bsum16 + 16 * b));
    acc.v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(_mm256_broadcast_ss(a.d + b), w.d), acc.v);
  }
};

template <class F, int RM, int RN>
TS_VNNI void tile(const ActView& a, int64_t i0, const uint8_t* w, size_t row_bytes, float* y, int64_t ldy) {
  ActRow rows[RM];
  for (int i = 0; i < RM; ++i) rows[i] = act_row(a, i0 + i, F::kBlock);
  Acc acc[RM][RN];
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j) acc[i][j] = {_mm256_setzero_ps(), 0.0f};
  const int64_t nb = a.k / F::kBlock;
  for (int64_t b = 0; b < nb; ++b) {
    typename F::W wb[RN];
    if constexpr (RM == 1) prefetch_ahead<RN>(w + b * F::kBytes, row_bytes);
    for (int j = 0; j < RN; ++j) wb[j] = F::load(w + j * row_bytes + b * F::kBytes);
    for (int i = 0; i < RM; ++i)
      for (int j = 0; j < RN; ++j) F::accum(acc[i][j], wb[j], rows[i], b);
  }
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j) y[i * ldy + j] = hsum(acc[i][j].v) + acc[i][j].m;
}

template <class F, int RM, int RN>
TS_VNNI void row_group(const ActView& a, int64_t p0, int64_t p1, const uint8_t* w, size_t row_bytes, float* y,
                       int64_t ldy) {
  static_assert(RM <= 4);
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
}

template <class F, int RM, int RN>
TS_VNNI void rows_kernel(const ActView& a, const uint8_t* w, size_t row_bytes, int64_t j0, int64_t j1, float* y,
                         int64_t ldy) {
  constexpr int64_t kPanel = 64;
  for (int64_t p0 = 0; p0 < a.m; p0 += kPanel) {
    const int64_t p1 = std::min(a.m, p0 + kPanel);
    int64_t j = j0;
    for (; j + RN <= j1; j += RN) row_group<F, RM, RN>(a, p0, p1, w + j * row_bytes, row_bytes, y + j, ldy);
    for (; j < j1; ++j) row_group<F, RM, 1>(a, p0, p1, w + j * row_bytes, row_bytes, y + j, ldy);
  }
}

}  // namespace

RowsKernel avxvnni_kernel(DType dtype) {
  switch (dtype) {
    case DType::Q8_0: return rows_kernel<Fmt32<DType::Q8_0>, 4, 2>;
    case DType::Q4_0: return rows_kernel<Fmt32<DType::Q4_0>, 4, 2>;
    case DType::Q4_1: return rows_kernel<Fmt32<DType::Q4_1>, 4, 2>;
    case DType::Q4_K: return rows_kernel<FmtQ4_K, 4, 1>;
    case DType::Q6_K: return rows_kernel<FmtQ6_K, 4, 1>;
    default: return nullptr;
  }
}

}  // namespace tessera::kernels::detail
