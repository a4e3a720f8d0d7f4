#pragma once
// 256-bit building blocks shared by the AVX2 and AVX-VNNI quantized kernels: loads, nibble
// unpacking, f16 broadcasts, horizontal sums and the per-row views of quantized activations.
// Baseline (AVX2) code, always inlined, so it also serves functions compiled for wider targets.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu/quant.h"

namespace tessera::kernels::detail::simd256 {

#define TS_INLINE inline __attribute__((always_inline))

TS_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

TS_INLINE __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// The 32 nibbles of a 16-byte Q4_0/Q4_1 block in element order (low nibbles first).
TS_INLINE __m256i nibbles32(const uint8_t* qs) {
  // The 16 bytes in both halves, the upper half shifted down a nibble: loads and shifts only.
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi32(both, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(15));
}

// An f16 value broadcast to all eight lanes.
TS_INLINE __m256 broadcast_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h)));
}

// The f16 values at p and p + 2 as floats in lanes 0 and 1 (one 32-bit load); lanes 2 and 3
// are zero. For a lone f16, lane 1 holds whatever follows it.
TS_INLINE __m128 f16_pair(const uint8_t* p) {
  uint32_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(bits)));
}

// Software prefetch of each weight row kPrefetchAhead bytes ahead (quant.h).
template <int RN>
TS_INLINE void prefetch_ahead(const uint8_t* w, size_t row_bytes) {
  for (int j = 0; j < RN; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + j * row_bytes + kPrefetchAhead), _MM_HINT_T0);
}

// One activation row's arrays (see QuantizedActivations).
struct ActRow {
  const int8_t* q;
  const float* d;
  const float* s;
  const int16_t* bsum16;
  const int16_t* bsum32;
};

TS_INLINE ActRow act_row(const ActView& a, int64_t row, int64_t block) {
  const int64_t nb = a.k / block;
  ActRow r{a.q + row * a.k, a.d + row * nb, nullptr, nullptr, nullptr};
  if (block == 32) {
    r.s = a.s + row * nb;
  } else {
    r.bsum16 = a.bsum16 + row * (a.k / 16);
    r.bsum32 = a.bsum32 + row * (a.k / 32);
  }
  return r;
}

// The running sum of one (activation row, weight row) pair.
struct Acc {
  __m256 v = _mm256_setzero_ps();
  float m = 0.0f;
  __m128 offset = _mm_setzero_ps();  // per-block offset terms, for formats that keep them apart
};

}  // namespace tessera::kernels::detail::simd256
