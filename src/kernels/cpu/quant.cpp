// Block formats: dequantization, quantization, activation quantization, the scalar reference
// products and the dispatch of quantized products to a SIMD path.
#include "kernels/cpu/quant.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace tessera::kernels {

using detail::load_f16;

namespace {

void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, sizeof(h));
}

void check_length(DType dtype, int64_t n, const char* what) {
  if (!dtype_is_quantized(dtype)) fail("{}: {} is not a block-quantized type", what, dtype_name(dtype));
  const auto block = static_cast<int64_t>(dtype_block_elems(dtype));
  if (n < 0 || n % block != 0) fail("{}: {} values of {} is not a whole number of {}-value blocks", what, n, dtype_name(dtype), block);
}

// ---- dequantization: plain loops -------------------------------------------------------

void dequant_ref_q8_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 34, dst += 32) {
    const float d = load_f16(src);
    const auto* q = reinterpret_cast<const int8_t*>(src + 2);
    for (int l = 0; l < 32; ++l) dst[l] = d * static_cast<float>(q[l]);
  }
}

void dequant_ref_q4_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 18, dst += 32) {
    const float d = load_f16(src);
    const uint8_t* qs = src + 2;
    for (int l = 0; l < 16; ++l) {
      dst[l] = d * static_cast<float>((qs[l] & 15) - 8);
      dst[l + 16] = d * static_cast<float>((qs[l] >> 4) - 8);
    }
  }
}

void dequant_ref_q4_1(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 20, dst += 32) {
    const float d = load_f16(src), m = load_f16(src + 2);
    const uint8_t* qs = src + 4;
    for (int l = 0; l < 16; ++l) {
      dst[l] = std::fma(d, static_cast<float>(qs[l] & 15), m);
      dst[l + 16] = std::fma(d, static_cast<float>(qs[l] >> 4), m);
    }
  }
}

void dequant_ref_q4_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 144, dst += 256) {
    const float d = load_f16(src), dmin = load_f16(src + 2);
    uint8_t sc[8], mn[8];
    detail::unpack_q4k_scales(src + 4, sc, mn);
    const uint8_t* qs = src + 16;
    for (int c = 0; c < 4; ++c) {
      const float d0 = d * sc[2 * c], m0 = dmin * mn[2 * c];
      const float d1 = d * sc[2 * c + 1], m1 = dmin * mn[2 * c + 1];
      for (int l = 0; l < 32; ++l) {
        dst[64 * c + l] = std::fma(d0, static_cast<float>(qs[32 * c + l] & 15), -m0);
        dst[64 * c + 32 + l] = std::fma(d1, static_cast<float>(qs[32 * c + l] >> 4), -m1);
      }
    }
  }
}

// The 256 six-bit values (0..63, in element order) of a Q6_K block: low nibbles from ql, the
// two high bits from qh.
void q6_k_values(const uint8_t* block, int out[256]) {
  const uint8_t* ql = block;
  const uint8_t* qh = block + 128;
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t lo = ql[64 * h + l], hi = ql[64 * h + l + 32], bits = qh[32 * h + l];
      out[128 * h + l] = (lo & 15) | ((bits & 3) << 4);
      out[128 * h + 32 + l] = (hi & 15) | (((bits >> 2) & 3) << 4);
      out[128 * h + 64 + l] = (lo >> 4) | (((bits >> 4) & 3) << 4);
      out[128 * h + 96 + l] = (hi >> 4) | (((bits >> 6) & 3) << 4);
    }
  }
}

void dequant_ref_q6_k(const uint8_t* src, float* dst, int64_t nb) {
  int q[256];
  for (int64_t b = 0; b < nb; ++b, src += 210, dst += 256) {
    const auto* sc = reinterpret_cast<const int8_t*>(src + 192);
    const float d = load_f16(src + 208);
    q6_k_values(src, q);
    for (int e = 0; e < 256; ++e) dst[e] = (d * static_cast<float>(sc[e / 16])) * static_cast<float>(q[e] - 32);
  }
}

// ---- dequantization: AVX2 -------------------------------------------------------------

// 32 unsigned bytes to floats: v * mul + add, with separate constants for each half of 16.
inline void store_u8x32(__m256i v, float* dst, __m256 mul0, __m256 add0, __m256 mul1, __m256 add1) {
  const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
  auto cvt = [](__m128i x) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x)); };
  _mm256_storeu_ps(dst, _mm256_fmadd_ps(cvt(lo), mul0, add0));
  _mm256_storeu_ps(dst + 8, _mm256_fmadd_ps(cvt(_mm_srli_si128(lo, 8)), mul0, add0));
  _mm256_storeu_ps(dst + 16, _mm256_fmadd_ps(cvt(hi), mul1, add1));
  _mm256_storeu_ps(dst + 24, _mm256_fmadd_ps(cvt(_mm_srli_si128(hi, 8)), mul1, add1));
}

// The 32 nibbles of a 16-byte Q4_0/Q4_1 block in element order.
inline __m256i unpack_nibbles16(const uint8_t* qs) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(15);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
}

void dequant_avx2(DType dtype, const uint8_t* src, float* dst, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(15);
  switch (dtype) {
    case DType::Q8_0:
      for (int64_t b = 0; b < nb; ++b, src += 34, dst += 32) {
        const __m256 d = _mm256_set1_ps(load_f16(src));
        // q + 128 as unsigned, so (q + 128) * d - 128 * d rounds once, like d * q.
        const __m256i u = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2)),
                                           _mm256_set1_epi8(static_cast<char>(0x80)));
        const __m256 off = _mm256_mul_ps(d, _mm256_set1_ps(-128.0f));
        store_u8x32(u, dst, d, off, d, off);
      }
      return;
    case DType::Q4_0:
      for (int64_t b = 0; b < nb; ++b, src += 18, dst += 32) {
        const __m256 d = _mm256_set1_ps(load_f16(src));
        const __m256 off = _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
        store_u8x32(unpack_nibbles16(src + 2), dst, d, off, d, off);
      }
      return;
    case DType::Q4_1:
      for (int64_t b = 0; b < nb; ++b, src += 20, dst += 32) {
        const __m256 d = _mm256_set1_ps(load_f16(src)), m = _mm256_set1_ps(load_f16(src + 2));
        store_u8x32(unpack_nibbles16(src + 4), dst, d, m, d, m);
      }
      return;
    case DType::Q4_K:
      for (int64_t b = 0; b < nb; ++b, src += 144, dst += 256) {
        const float d = load_f16(src), dmin = load_f16(src + 2);
        uint8_t sc[8], mn[8];
        detail::unpack_q4k_scales(src + 4, sc, mn);
        for (int c = 0; c < 4; ++c) {
          const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 16 + 32 * c));
          const __m256 d0 = _mm256_set1_ps(d * sc[2 * c]), m0 = _mm256_set1_ps(-(dmin * mn[2 * c]));
          const __m256 d1 = _mm256_set1_ps(d * sc[2 * c + 1]), m1 = _mm256_set1_ps(-(dmin * mn[2 * c + 1]));
          store_u8x32(_mm256_and_si256(q, m4), dst + 64 * c, d0, m0, d0, m0);
          store_u8x32(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), dst + 64 * c + 32, d1, m1, d1, m1);
        }
      }
      return;
    case DType::Q6_K:
      for (int64_t b = 0; b < nb; ++b, src += 210, dst += 256) {
        const auto* sc = reinterpret_cast<const int8_t*>(src + 192);
        const float d = load_f16(src + 208);
        for (int h = 0; h < 2; ++h) {
          const __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 64 * h));
          const __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 64 * h + 32));
          const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 128 + 32 * h));
          const __m256i m2 = _mm256_set1_epi8(0x30);
          const __m256i q[4] = {
              _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2)),
              _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2)),
              _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m2)),
              _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                              _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2)),
          };
          for (int part = 0; part < 4; ++part) {
            const int g = 8 * h + 2 * part;  // the scale of the first 16 of these 32 values
            const float s0 = d * static_cast<float>(sc[g]), s1 = d * static_cast<float>(sc[g + 1]);
            store_u8x32(q[part], dst + 128 * h + 32 * part, _mm256_set1_ps(s0), _mm256_set1_ps(-32.0f * s0),
                        _mm256_set1_ps(s1), _mm256_set1_ps(-32.0f * s1));
          }
        }
      }
      return;
    default:
      fail("dequantize: {} is not a block-quantized type", dtype_name(dtype));
  }
}

// ---- quantization ----------------------------------------------------------------------

int nearest(float v) { return static_cast<int>(std::nearbyint(v)); }

void quant_q8_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += 32, dst += 34) {
    float amax = 0.0f;
    for (int l = 0; l < 32; ++l) amax = std::max(amax, std::fabs(x[l]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(dst, d);
    for (int l = 0; l < 32; ++l) dst[2 + l] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[l] * id)));
  }
}

void quant_q4_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += 32, dst += 18) {
    float amax = 0.0f, max = 0.0f;  // max: the value of largest magnitude, with its sign
    for (int l = 0; l < 32; ++l)
      if (std::fabs(x[l]) > amax) {
        amax = std::fabs(x[l]);
        max = x[l];
      }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(dst, d);
    for (int l = 0; l < 16; ++l) {
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(x[l] * id + 8.5f)));
      const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>(x[l + 16] * id + 8.5f)));
      dst[2 + l] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quant_q4_1(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += 32, dst += 20) {
    float min = x[0], max = x[0];
    for (int l = 1; l < 32; ++l) {
      min = std::min(min, x[l]);
      max = std::max(max, x[l]);
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(dst, d);
    store_f16(dst + 2, min);
    for (int l = 0; l < 16; ++l) {
      const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>((x[l] - min) * id + 0.5f)));
      const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>((x[l + 16] - min) * id + 0.5f)));
      dst[4 + l] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void quant_q4_k(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += 256, dst += 144) {
    // Per sub-block: value = scale * q - min with min >= 0, scale = (max - lo) / 15.
    float scale[8], mins[8];
    for (int j = 0; j < 8; ++j) {
      float lo = 0.0f, hi = 0.0f;
      for (int l = 0; l < 32; ++l) {
        lo = std::min(lo, x[32 * j + l]);
        hi = std::max(hi, x[32 * j + l]);
      }
      scale[j] = (hi - lo) / 15.0f;
      mins[j] = -lo;
    }
    const float max_scale = *std::max_element(scale, scale + 8), max_min = *std::max_element(mins, mins + 8);
    store_f16(dst, max_scale / 63.0f);
    store_f16(dst + 2, max_min / 63.0f);
    const float d = load_f16(dst), dmin = load_f16(dst + 2);  // as the reader will see them
    uint8_t sc[8], mn[8];
    for (int j = 0; j < 8; ++j) {
      sc[j] = static_cast<uint8_t>(d > 0.0f ? std::clamp(nearest(scale[j] / d), 0, 63) : 0);
      mn[j] = static_cast<uint8_t>(dmin > 0.0f ? std::clamp(nearest(mins[j] / dmin), 0, 63) : 0);
    }
    uint8_t* packed = dst + 4;
    for (int j = 0; j < 4; ++j) {
      packed[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
      packed[j + 4] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
      packed[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
    uint8_t q[256];
    for (int j = 0; j < 8; ++j) {
      const float ds = d * sc[j], dm = dmin * mn[j];
      for (int l = 0; l < 32; ++l)
        q[32 * j + l] = static_cast<uint8_t>(ds > 0.0f ? std::clamp(nearest((x[32 * j + l] + dm) / ds), 0, 15) : 0);
    }
    uint8_t* qs = dst + 16;
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) qs[32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
  }
}

void quant_q6_k(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += 256, dst += 210) {
    // Per group of 16: the value of largest magnitude maps to -32.
    float scale[16];
    float max_abs_scale = 0.0f;
    for (int g = 0; g < 16; ++g) {
      float amax = 0.0f, max = 0.0f;
      for (int l = 0; l < 16; ++l)
        if (std::fabs(x[16 * g + l]) > amax) {
          amax = std::fabs(x[16 * g + l]);
          max = x[16 * g + l];
        }
      scale[g] = max / -32.0f;
      max_abs_scale = std::max(max_abs_scale, std::fabs(scale[g]));
    }
    store_f16(dst + 208, max_abs_scale / 127.0f);
    const float d = load_f16(dst + 208);
    auto* sc = reinterpret_cast<int8_t*>(dst + 192);
    int q[256];
    for (int g = 0; g < 16; ++g) {
      sc[g] = static_cast<int8_t>(d > 0.0f ? std::clamp(nearest(scale[g] / d), -127, 127) : 0);
      const float ds = d * static_cast<float>(sc[g]);
      for (int l = 0; l < 16; ++l)
        q[16 * g + l] = (ds != 0.0f ? std::clamp(nearest(x[16 * g + l] / ds), -32, 31) : 0) + 32;
    }
    uint8_t* ql = dst;
    uint8_t* qh = dst + 128;
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 32; ++l) {
        const int* qq = q + 128 * h;
        ql[64 * h + l] = static_cast<uint8_t>((qq[l] & 15) | ((qq[l + 64] & 15) << 4));
        ql[64 * h + l + 32] = static_cast<uint8_t>((qq[l + 32] & 15) | ((qq[l + 96] & 15) << 4));
        qh[32 * h + l] = static_cast<uint8_t>((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) | ((qq[l + 64] >> 4) << 4) |
                                              ((qq[l + 96] >> 4) << 6));
      }
  }
}

}  // namespace

void dequantize_row_reference(DType dtype, const void* src, float* dst, int64_t n) {
  check_length(dtype, n, "dequantize");
  const auto* in = static_cast<const uint8_t*>(src);
  const int64_t nb = n / static_cast<int64_t>(dtype_block_elems(dtype));
  switch (dtype) {
    case DType::Q8_0: return dequant_ref_q8_0(in, dst, nb);
    case DType::Q4_0: return dequant_ref_q4_0(in, dst, nb);
    case DType::Q4_1: return dequant_ref_q4_1(in, dst, nb);
    case DType::Q4_K: return dequant_ref_q4_k(in, dst, nb);
    case DType::Q6_K: return dequant_ref_q6_k(in, dst, nb);
    default: fail("dequantize: {} is not a block-quantized type", dtype_name(dtype));
  }
}

void dequantize_row(DType dtype, const void* src, float* dst, int64_t n) {
  check_length(dtype, n, "dequantize");
  dequant_avx2(dtype, static_cast<const uint8_t*>(src), dst, n / static_cast<int64_t>(dtype_block_elems(dtype)));
}

void quantize_row(DType dtype, const float* src, void* dst, int64_t n) {
  check_length(dtype, n, "quantize");
  auto* out = static_cast<uint8_t*>(dst);
  const int64_t nb = n / static_cast<int64_t>(dtype_block_elems(dtype));
  switch (dtype) {
    case DType::Q8_0: return quant_q8_0(src, out, nb);
    case DType::Q4_0: return quant_q4_0(src, out, nb);
    case DType::Q4_1: return quant_q4_1(src, out, nb);
    case DType::Q4_K: return quant_q4_k(src, out, nb);
    case DType::Q6_K: return quant_q6_k(src, out, nb);
    default: fail("quantize: {} is not a block-quantized type", dtype_name(dtype));
  }
}

// ---- SIMD path selection ---------------------------------------------------------------

std::string_view simd_path_name(SimdPath path) {
  switch (path) {
    case SimdPath::Scalar: return "scalar";
    case SimdPath::Avx2: return "avx2";
    case SimdPath::AvxVnni: return "avxvnni";
    case SimdPath::Avx512Vnni: return "avx512";
  }
  return "?";
}

std::vector<SimdPath> supported_paths() {
  const CpuFeatures& f = cpu_features();
  std::vector<SimdPath> paths{SimdPath::Scalar};
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  if (avx2) paths.push_back(SimdPath::Avx2);
  if (avx2 && f.avx_vnni) paths.push_back(SimdPath::AvxVnni);
  if (avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni) paths.push_back(SimdPath::Avx512Vnni);
  return paths;
}

namespace {
std::optional<SimdPath> g_forced_path;

SimdPath default_path() {
  static const SimdPath path = [] {
    const std::vector<SimdPath> paths = supported_paths();
    const char* env = std::getenv("TESSERA_SIMD");
    if (!env || !*env) return paths.back();
    const std::string cap(env);
    SimdPath limit;
    if (cap == "scalar") limit = SimdPath::Scalar;
    else if (cap == "avx2") limit = SimdPath::Avx2;
    else if (cap == "avxvnni") limit = SimdPath::AvxVnni;
    else if (cap == "avx512") limit = SimdPath::Avx512Vnni;
    else fail("TESSERA_SIMD={}: expected scalar, avx2, avxvnni or avx512", cap);
    SimdPath chosen = SimdPath::Scalar;
    for (SimdPath p : paths)
      if (p <= limit) chosen = p;
    return chosen;
  }();
  return path;
}
}  // namespace

SimdPath active_simd_path() { return g_forced_path ? *g_forced_path : default_path(); }

void set_simd_path_for_testing(std::optional<SimdPath> path) { g_forced_path = path; }

// ---- activation quantization -----------------------------------------------------------

namespace detail {
namespace {

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

float absmax(const float* x, int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  return hmax(m);
}

// Rounds 32 values times `id` (half to even) into 32 int8 at q; returns the sums of the
// first and second 16.
inline void quantize32(const float* x, __m256 id, int8_t* q, bool biased, int& sum0, int& sum1) {
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), id));
  const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id));
  const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id));
  const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id));
  sum0 = hsum_i32(_mm256_add_epi32(i0, i1));
  sum1 = hsum_i32(_mm256_add_epi32(i2, i3));
  __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
  packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  if (biased) packed = _mm256_xor_si256(packed, _mm256_set1_epi8(static_cast<char>(0x80)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), packed);
}

}  // namespace

void quantize_activations(const float* x, int64_t m, int64_t k, DType weights, SimdPath path,
                          QuantizedActivations& out) {
  const bool k_quant = dtype_block_elems(weights) == 256;
  out.m = m;
  out.k = k;
  out.biased = !k_quant && (path == SimdPath::AvxVnni || path == SimdPath::Avx512Vnni);
  const int64_t block = k_quant ? 256 : 32;
  const int64_t nb = k / block;
  out.q.resize(static_cast<size_t>(m * k));
  out.d.resize(static_cast<size_t>(m * nb));
  if (k_quant) {
    out.bsum16.resize(static_cast<size_t>(m * k / 16));
    out.bsum32.resize(static_cast<size_t>(m * k / 32));
  } else {
    out.s.resize(static_cast<size_t>(m * nb));
  }
  const size_t grain = static_cast<size_t>(std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(k, 1)));
  parallel_for(static_cast<size_t>(m), grain, [&](size_t r0, size_t r1) {
    for (auto row = static_cast<int64_t>(r0); row < static_cast<int64_t>(r1); ++row) {
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + row * k + b * block;
        const float amax = absmax(xb, block);
        const float d = amax / 127.0f;
        const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
        const int64_t bi = row * nb + b;
        out.d[static_cast<size_t>(bi)] = d;
        int8_t* q = out.q.data() + row * k + b * block;
        if (k_quant) {
          for (int c = 0; c < 8; ++c) {
            int s0, s1;
            quantize32(xb + 32 * c, id, q + 32 * c, false, s0, s1);
            out.bsum16[static_cast<size_t>(bi * 16 + 2 * c)] = static_cast<int16_t>(s0);
            out.bsum16[static_cast<size_t>(bi * 16 + 2 * c + 1)] = static_cast<int16_t>(s1);
            out.bsum32[static_cast<size_t>(bi * 8 + c)] = static_cast<int16_t>(s0 + s1);
          }
        } else {
          int s0, s1;
          quantize32(xb, id, q, out.biased, s0, s1);
          out.s[static_cast<size_t>(bi)] = d * static_cast<float>(s0 + s1);
        }
      }
    }
  });
}

// ---- scalar reference products ---------------------------------------------------------

namespace {

float dot_scalar(DType dtype, const uint8_t* w, const ActView& a, int64_t row) {
  const int64_t k = a.k;
  const int8_t* aq = a.q + row * k;
  float sum = 0.0f;
  switch (dtype) {
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_1: {
      const int64_t nb = k / 32;
      const size_t bytes = dtype_block_bytes(dtype);
      for (int64_t b = 0; b < nb; ++b, w += bytes) {
        const int8_t* ab = aq + 32 * b;
        const float da = a.d[row * nb + b];
        const float dw = load_f16(w);
        int isum = 0;
        if (dtype == DType::Q8_0) {
          const auto* q = reinterpret_cast<const int8_t*>(w + 2);
          for (int l = 0; l < 32; ++l) isum += q[l] * ab[l];
        } else {
          const int off = dtype == DType::Q4_0 ? 8 : 0;
          const uint8_t* qs = w + (dtype == DType::Q4_0 ? 2 : 4);
          for (int l = 0; l < 16; ++l) isum += ((qs[l] & 15) - off) * ab[l] + ((qs[l] >> 4) - off) * ab[l + 16];
        }
        sum += (dw * da) * static_cast<float>(isum);
        if (dtype == DType::Q4_1) sum += load_f16(w + 2) * a.s[row * nb + b];
      }
      return sum;
    }
    case DType::Q4_K: {
      const int64_t nb = k / 256;
      for (int64_t b = 0; b < nb; ++b, w += 144) {
        const int8_t* ab = aq + 256 * b;
        const float da = a.d[row * nb + b];
        uint8_t sc[8], mn[8];
        unpack_q4k_scales(w + 4, sc, mn);
        const uint8_t* qs = w + 16;
        int isum = 0, imin = 0;
        for (int c = 0; c < 4; ++c) {
          int s0 = 0, s1 = 0;
          for (int l = 0; l < 32; ++l) {
            s0 += (qs[32 * c + l] & 15) * ab[64 * c + l];
            s1 += (qs[32 * c + l] >> 4) * ab[64 * c + 32 + l];
          }
          isum += sc[2 * c] * s0 + sc[2 * c + 1] * s1;
        }
        for (int j = 0; j < 8; ++j) imin += mn[j] * a.bsum32[(row * nb + b) * 8 + j];
        sum += (load_f16(w) * da) * static_cast<float>(isum) - (load_f16(w + 2) * da) * static_cast<float>(imin);
      }
      return sum;
    }
    case DType::Q6_K: {
      const int64_t nb = k / 256;
      for (int64_t b = 0; b < nb; ++b, w += 210) {
        const int8_t* ab = aq + 256 * b;
        const float da = a.d[row * nb + b];
        const auto* sc = reinterpret_cast<const int8_t*>(w + 192);
        int q[256];
        q6_k_values(w, q);
        int group[16] = {};
        for (int e = 0; e < 256; ++e) group[e / 16] += q[e] * ab[e];
        int isum = 0;
        for (int g = 0; g < 16; ++g) isum += sc[g] * (group[g] - 32 * a.bsum16[(row * nb + b) * 16 + g]);
        sum += (load_f16(w + 208) * da) * static_cast<float>(isum);
      }
      return sum;
    }
    default:
      fail("quantized product: {} is not a block-quantized type", dtype_name(dtype));
  }
}

template <DType kType>
void scalar_rows(const ActView& a, const uint8_t* w, size_t row_bytes, int64_t j0, int64_t j1, float* y, int64_t ldy) {
  for (int64_t j = j0; j < j1; ++j)
    for (int64_t i = 0; i < a.m; ++i) y[i * ldy + j] = dot_scalar(kType, w + j * row_bytes, a, i);
}

}  // namespace

RowsKernel scalar_kernel(DType dtype) {
  switch (dtype) {
    case DType::Q8_0: return scalar_rows<DType::Q8_0>;
    case DType::Q4_0: return scalar_rows<DType::Q4_0>;
    case DType::Q4_1: return scalar_rows<DType::Q4_1>;
    case DType::Q4_K: return scalar_rows<DType::Q4_K>;
    case DType::Q6_K: return scalar_rows<DType::Q6_K>;
    default: return nullptr;
  }
}

}  // namespace detail

// ---- the product ------------------------------------------------------------------------

void matmul_nt_quantized(const float* x, int64_t m, const void* w, DType dtype, int64_t n, int64_t k, float* y,
                         SimdPath path) {
  const QuantizedProduct product{w, n, y};
  matmul_nt_quantized_multi(x, m, dtype, k, &product, 1, path);
}

void matmul_nt_quantized_multi(const float* x, int64_t m, DType dtype, int64_t k, const QuantizedProduct* products,
                               int64_t count, SimdPath path) {
  if (!dtype_is_quantized(dtype)) fail("quantized product given {} weights", dtype_name(dtype));
  const auto block = static_cast<int64_t>(dtype_block_elems(dtype));
  if (k % block != 0)
    fail("{} weights need rows of a multiple of {} values, got {}", dtype_name(dtype), block, k);
  if (m <= 0 || count <= 0) return;
  if (k == 0) {
    for (int64_t p = 0; p < count; ++p) std::fill(products[p].y, products[p].y + m * products[p].n, 0.0f);
    return;
  }
  detail::RowsKernel kernel = nullptr;
  switch (path) {
    case SimdPath::Scalar: kernel = detail::scalar_kernel(dtype); break;
    case SimdPath::Avx2: kernel = detail::avx2_kernel(dtype); break;
    case SimdPath::AvxVnni: kernel = detail::avxvnni_kernel(dtype); break;
    case SimdPath::Avx512Vnni: kernel = detail::avx512vnni_kernel(dtype); break;
  }
  if (!kernel) fail("no {} kernel for {} weights", simd_path_name(path), dtype_name(dtype));

  thread_local detail::QuantizedActivations acts;
  detail::quantize_activations(x, m, k, dtype, path, acts);
  const detail::ActView view{acts.m, acts.k, acts.q.data(), acts.d.data(), acts.s.data(), acts.bsum16.data(),
                             acts.bsum32.data()};
  const size_t row_bytes = dtype_bytes(dtype, static_cast<size_t>(k));

  // Units of 16 weight rows, numbered across all the products, so one loop covers them all; a
  // task gets enough of them that handing it to another thread pays off.
  constexpr int64_t kUnit = 16;
  std::vector<int64_t> first_unit(static_cast<size_t>(count) + 1, 0);
  for (int64_t p = 0; p < count; ++p) first_unit[p + 1] = first_unit[p] + (products[p].n + kUnit - 1) / kUnit;
  const int64_t units = first_unit[count];
  const int64_t unit_work = kUnit * m * k;
  const auto grain = static_cast<size_t>(std::max<int64_t>(1, ((int64_t{1} << 16) + unit_work - 1) / unit_work));
  parallel_for(static_cast<size_t>(units), grain, [&](size_t u0, size_t u1) {
    int64_t p = std::upper_bound(first_unit.begin(), first_unit.end(), static_cast<int64_t>(u0)) - first_unit.begin() - 1;
    for (auto u = static_cast<int64_t>(u0); u < static_cast<int64_t>(u1); ++p) {
      const int64_t stop = std::min(static_cast<int64_t>(u1), first_unit[p + 1]);
      const QuantizedProduct& product = products[p];
      const int64_t j0 = (u - first_unit[p]) * kUnit;
      const int64_t j1 = std::min(product.n, (stop - first_unit[p]) * kUnit);
      if (j1 > j0) kernel(view, static_cast<const uint8_t*>(product.w), row_bytes, j0, j1, product.y, product.n);
      u = stop;
    }
  });
}

}  // namespace tessera::kernels
