// Quantized products with AVX-512 VNNI, compiled per function (the build's baseline is AVX2)
// and chosen at run time. _mm512_dpbusd_epi32 multiplies unsigned by signed bytes and adds
// each group of four into an int32 lane, with no int16 saturation on the way.
//  - Q8_0, Q4_0, Q4_1: the activations are stored biased (q + 128, unsigned) and the weights
//    are signed bytes, two 32-value blocks per register; starting the accumulation from
//    -128 * (the sum of each lane's four weights) takes the bias back off exactly.
//  - Q4_K, Q6_K: the weights are unsigned (4 and 6 bits) and the activations signed; each
//    lane's sum (|sum| < 2^15) is then multiplied by its sub-block scale with
//    _mm512_dpwssd_epi32 against a vector holding the scale in the low int16 of each lane.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/quant.h"

// GCC 12's AVX-512 headers start some intrinsics from a deliberately undefined register and
// warn about it once they are inlined here.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace tessera::kernels::detail {
namespace {

#define TS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define TS_AVX512_INLINE inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512vnni")))

TS_AVX512_INLINE __m512i load512(const void* p) { return _mm512_loadu_si512(p); }
TS_AVX512_INLINE __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

TS_AVX512_INLINE __m512i join256(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// [a x 8, b x 8]
TS_AVX512_INLINE __m512 pair_ps(float a, float b) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(a)), _mm256_castps_pd(_mm256_set1_ps(b)), 1));
}

// The 32 nibbles of a 16-byte Q4_0/Q4_1 block in element order (low nibbles first).
TS_AVX512_INLINE __m256i nibbles32(const uint8_t* qs) {
  // The 16 bytes in both halves, the upper half shifted down a nibble: loads and shifts only.
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(15));
}

// ---- Q8_0, Q4_0, Q4_1 --------------------------------------------------------------------

// A 32-value weight block as signed bytes.
template <DType kType>
TS_AVX512_INLINE __m256i block32(const uint8_t* p) {
  if constexpr (kType == DType::Q8_0) return load256(p + 2);
  if constexpr (kType == DType::Q4_0) return _mm256_sub_epi8(nibbles32(p + 2), _mm256_set1_epi8(8));
  if constexpr (kType == DType::Q4_1) return nibbles32(p + 4);
}

template <DType kType>
constexpr int64_t block32_bytes() {
  return kType == DType::Q8_0 ? 34 : kType == DType::Q4_0 ? 18 : 20;
}

struct Acc32 {
  __m512 v;
  float m;
};

template <DType kType, int RM, int RN>
TS_AVX512 void tile32(const ActView& a, int64_t i0, const uint8_t* w, size_t row_bytes, float* y, int64_t ldy) {
  constexpr int64_t kBytes = block32_bytes<kType>();
  constexpr bool kMin = kType == DType::Q4_1;
  const int64_t k = a.k, nb = k / 32;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  Acc32 acc[RM][RN];
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j) acc[i][j] = {_mm512_setzero_ps(), 0.0f};
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    __m512i wq[RN], neg_bias[RN];
    __m512 wd[RN];
    float wm[RN][2];
    for (int j = 0; j < RN; ++j) {
      const uint8_t* p = w + j * row_bytes + b * kBytes;
      if constexpr (RM == 1) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchAhead), _MM_HINT_T0);
      wq[j] = join256(block32<kType>(p), block32<kType>(p + kBytes));
      neg_bias[j] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, wq[j]));
      wd[j] = pair_ps(load_f16(p), load_f16(p + kBytes));
      if constexpr (kMin) {
        wm[j][0] = load_f16(p + 2);
        wm[j][1] = load_f16(p + kBytes + 2);
      }
    }
    for (int i = 0; i < RM; ++i) {
      const int64_t row = i0 + i;
      const __m512i aq = load512(a.q + row * k + 32 * b);
      const float* ad = a.d + row * nb + b;
      const __m512 da = pair_ps(ad[0], ad[1]);
      for (int j = 0; j < RN; ++j) {
        const __m512i dot = _mm512_dpbusd_epi32(neg_bias[j], aq, wq[j]);
        acc[i][j].v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(da, wd[j]), acc[i][j].v);
        if constexpr (kMin) {
          const float* as = a.s + row * nb + b;
          acc[i][j].m += wm[j][0] * as[0] + wm[j][1] * as[1];
        }
      }
    }
  }
  if (b < nb) {  // an odd last block, at 256 bits
    const __m256i bias256 = _mm256_set1_epi8(static_cast<char>(0x80));
    for (int j = 0; j < RN; ++j) {
      const uint8_t* p = w + j * row_bytes + b * kBytes;
      const __m256i wq = block32<kType>(p);
      const __m256i neg = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), bias256, wq));
      const float dw = load_f16(p);
      for (int i = 0; i < RM; ++i) {
        const int64_t row = i0 + i;
        const __m256i dot = _mm256_dpbusd_epi32(neg, load256(a.q + row * k + 32 * b), wq);
        const __m256 part = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw * a.d[row * nb + b]));
        acc[i][j].v = _mm512_add_ps(acc[i][j].v, _mm512_zextps256_ps512(part));
        if constexpr (kMin) acc[i][j].m += load_f16(p + 2) * a.s[row * nb + b];
      }
    }
  }
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j) y[i * ldy + j] = _mm512_reduce_add_ps(acc[i][j].v) + acc[i][j].m;
}

// ---- Q4_K, Q6_K -----------------------------------------------------------------------------

struct FmtQ4_K {
  static constexpr int64_t kBytes = 144;
  struct W {
    __m512i q[4];   // chunk c: sub-block 2c then 2c+1, unsigned nibbles
    __m512i sc[4];  // their scales, in the low int16 of each lane
    __m128i mn;     // the eight mins as int16
    float d, neg_dmin;
  };
  static TS_AVX512_INLINE void load(W& w, const uint8_t* p) {
    uint8_t sc[8], mn[8];
    unpack_q4k_scales(p + 4, sc, mn);
    const __m256i mask = _mm256_set1_epi8(15);
    for (int c = 0; c < 4; ++c) {
      const __m256i q = load256(p + 16 + 32 * c);
      w.q[c] = join256(_mm256_and_si256(q, mask), _mm256_and_si256(_mm256_srli_epi16(q, 4), mask));
      w.sc[c] = join256(_mm256_set1_epi32(sc[2 * c]), _mm256_set1_epi32(sc[2 * c + 1]));
    }
    w.mn = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn)));
    w.d = load_f16(p);
    w.neg_dmin = -load_f16(p + 2);
  }
  static TS_AVX512_INLINE __m512 accum(__m512 acc, const W& w, const ActView& a, int64_t row, int64_t b) {
    const int64_t nb = a.k / 256;
    const int8_t* q = a.q + row * a.k + 256 * b;
    __m512i isum = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) {
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.q[c], load512(q + 64 * c));
      isum = _mm512_dpwssd_epi32(isum, dot, w.sc[c]);
    }
    const __m128i mins =
        _mm_madd_epi16(w.mn, _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.bsum32 + (row * nb + b) * 8)));
    const float da = a.d[row * nb + b];
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(w.d * da), acc);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi128_si512(mins)), _mm512_set1_ps(w.neg_dmin * da), acc);
  }
};

struct FmtQ6_K {
  static constexpr int64_t kBytes = 210;
  struct W {
    __m512i q[4];    // 64 values each, 0..63
    __m512i sc[4];   // the scale of each lane's group of 16, in the low int16 of the lane
    __m512i nsc16;   // -32 * the sixteen scales as int16 (upper half zero)
    float d;
  };
  static TS_AVX512_INLINE void load(W& w, const uint8_t* p) {
    const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(0x30);
    // Values 0-31 and 32-63 of each half take their high bits from qh bits 0-1 and 2-3;
    // values 64-95 and 96-127 from bits 4-5 and 6-7.
    const __m512i shl = join256(_mm256_set1_epi16(4), _mm256_set1_epi16(2));
    const __m512i shr = join256(_mm256_setzero_si256(), _mm256_set1_epi16(2));
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = load512(p + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(load256(p + 128 + 32 * h));
      w.q[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m2));
      w.q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                       _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m2));
    }
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192));
    const __m512i low16 = _mm512_set1_epi32(0xffff);
    for (int t = 0; t < 4; ++t) {
      const char g = static_cast<char>(4 * t);
      const __m128i spread = _mm_shuffle_epi8(sc, _mm_setr_epi8(g, g, g, g, g + 1, g + 1, g + 1, g + 1, g + 2, g + 2,
                                                                g + 2, g + 2, g + 3, g + 3, g + 3, g + 3));
      w.sc[t] = _mm512_and_si512(_mm512_cvtepi8_epi32(spread), low16);
    }
    w.nsc16 = _mm512_zextsi256_si512(_mm256_mullo_epi16(_mm256_cvtepi8_epi16(sc), _mm256_set1_epi16(-32)));
    w.d = load_f16(p + 208);
  }
  static TS_AVX512_INLINE __m512 accum(__m512 acc, const W& w, const ActView& a, int64_t row, int64_t b) {
    const int64_t nb = a.k / 256;
    const int8_t* q = a.q + row * a.k + 256 * b;
    __m512i isum = _mm512_setzero_si512();
    for (int t = 0; t < 4; ++t) {
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.q[t], load512(q + 64 * t));
      isum = _mm512_dpwssd_epi32(isum, dot, w.sc[t]);
    }
    // The stored q is value + 32: add -32 * scale * (sum of each group's activations).
    const __m512i bsum = _mm512_zextsi256_si512(load256(a.bsum16 + (row * nb + b) * 16));
    isum = _mm512_dpwssd_epi32(isum, w.nsc16, bsum);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(w.d * a.d[row * nb + b]), acc);
  }
};

template <class F, int RM, int RN>
TS_AVX512 void tile_k(const ActView& a, int64_t i0, const uint8_t* w, size_t row_bytes, float* y, int64_t ldy) {
  __m512 acc[RM][RN];
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t nb = a.k / 256;
  for (int64_t b = 0; b < nb; ++b) {
    typename F::W wb[RN];
    for (int j = 0; j < RN; ++j) F::load(wb[j], w + j * row_bytes + b * F::kBytes);
    for (int i = 0; i < RM; ++i)
      for (int j = 0; j < RN; ++j) acc[i][j] = F::accum(acc[i][j], wb[j], a, i0 + i, b);
  }
  for (int i = 0; i < RM; ++i)
    for (int j = 0; j < RN; ++j) y[i * ldy + j] = _mm512_reduce_add_ps(acc[i][j]);
}

// ---- driving the tiles ----------------------------------------------------------------------

template <class Tiles, int RM, int RN>
TS_AVX512 void row_group(const ActView& a, int64_t p0, int64_t p1, const uint8_t* w, size_t row_bytes, float* y,
                         int64_t ldy) {
  static_assert(RM <= 4);
  int64_t i = p0;
  for (; i + RM <= p1; i += RM) Tiles::template run<RM, RN>(a, i, w, row_bytes, y + i * ldy, ldy);
  const int64_t rest = p1 - i;
  if constexpr (RM > 1) {
    if (rest == 1) Tiles::template run<1, RN>(a, i, w, row_bytes, y + i * ldy, ldy);
  }
  if constexpr (RM > 2) {
    if (rest == 2) Tiles::template run<2, RN>(a, i, w, row_bytes, y + i * ldy, ldy);
  }
  if constexpr (RM > 3) {
    if (rest == 3) Tiles::template run<3, RN>(a, i, w, row_bytes, y + i * ldy, ldy);
  }
}

template <class Tiles, int RM, int RN>
TS_AVX512 void rows_kernel(const ActView& a, const uint8_t* w, size_t row_bytes, int64_t j0, int64_t j1, float* y,
                           int64_t ldy) {
  constexpr int64_t kPanel = 64;
  for (int64_t p0 = 0; p0 < a.m; p0 += kPanel) {
    const int64_t p1 = std::min(a.m, p0 + kPanel);
    int64_t j = j0;
    for (; j + RN <= j1; j += RN) row_group<Tiles, RM, RN>(a, p0, p1, w + j * row_bytes, row_bytes, y + j, ldy);
    for (; j < j1; ++j) row_group<Tiles, RM, 1>(a, p0, p1, w + j * row_bytes, row_bytes, y + j, ldy);
  }
}

template <DType kType>
struct Tiles32 {
  template <int RM, int RN>
  static TS_AVX512_INLINE void run(const ActView& a, int64_t i0, const uint8_t* w, size_t row_bytes, float* y,
                                   int64_t ldy) {
    tile32<kType, RM, RN>(a, i0, w, row_bytes, y, ldy);
  }
};

template <class F>
struct TilesK {
  template <int RM, int RN>
  static TS_AVX512_INLINE void run(const ActView& a, int64_t i0, const uint8_t* w, size_t row_bytes, float* y,
                                   int64_t ldy) {
    tile_k<F, RM, RN>(a, i0, w, row_bytes, y, ldy);
  }
};

}  // namespace

RowsKernel avx512vnni_kernel(DType dtype) {
  switch (dtype) {
    case DType::Q8_0: return rows_kernel<Tiles32<DType::Q8_0>, 4, 2>;
    case DType::Q4_0: return rows_kernel<Tiles32<DType::Q4_0>, 4, 2>;
    case DType::Q4_1: return rows_kernel<Tiles32<DType::Q4_1>, 4, 2>;
    case DType::Q4_K: return rows_kernel<TilesK<FmtQ4_K>, 4, 1>;
    case DType::Q6_K: return rows_kernel<TilesK<FmtQ6_K>, 4, 1>;
    default: return nullptr;
  }
}

}  // namespace tessera::kernels::detail
