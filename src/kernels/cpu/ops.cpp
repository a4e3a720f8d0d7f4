#include "kernels/cpu/ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace tessera::kernels {

namespace {
std::vector<float> weight_row(const WeightMatrix& w, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  convert_to_f32(w.dtype, w.data, out.data(), out.size());
  return out;
}
}  // namespace

void layer_norm(const float* x, int64_t rows, int64_t n, const WeightMatrix& weight, float eps, float* y) {
  const std::vector<float> g = weight_row(weight, n);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * n;
    float* out = y + r * n;
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += in[i];
    const double mean = sum / static_cast<double>(n);
    double var = 0;
    for (int64_t i = 0; i < n; ++i) var += (in[i] - mean) * (in[i] - mean);
    var /= static_cast<double>(n);
    const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float m = static_cast<float>(mean);
    for (int64_t i = 0; i < n; ++i) out[i] = (in[i] - m) * inv * g[i];
  }
}

void rms_norm(const float* x, int64_t rows, int64_t n, const WeightMatrix& weight, float eps, float* y) {
  const std::vector<float> g = weight_row(weight, n);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * n;
    float* out = y + r * n;
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(in[i]) * in[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) out[i] = in[i] * inv * g[i];
  }
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float max = *std::max_element(x, x + n);
  if (std::isinf(max) && max < 0) max = 0;  // all -inf: leave uniform-safe values
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = sum > 0 ? static_cast<float>(1.0 / sum) : 0.0f;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void silu_mul(float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = a[i];
    a[i] = v / (1.0f + std::exp(-v)) * b[i];
  }
}

namespace {
// cos/sin of pos * inv_freq[i] for i < half. The angle is a float32 product, as the references
// compute it, so long positions round the same way.
struct RopeAngles {
  RopeAngles(int64_t half, int64_t pos, const float* inv_freq) {
    if (half > 512) {
      heap_cos.resize(half);
      heap_sin.resize(half);
      c = heap_cos.data();
      s = heap_sin.data();
    }
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos) * inv_freq[i];
      c[i] = std::cos(angle);
      s[i] = std::sin(angle);
    }
  }
  float stack_cos[512], stack_sin[512];
  std::vector<float> heap_cos, heap_sin;
  float* c = stack_cos;
  float* s = stack_sin;
};
}  // namespace

void rope_interleaved(float* x, int64_t heads, int64_t head_dim, int64_t pos, const float* inv_freq) {
  const int64_t half = head_dim / 2;
  RopeAngles a(half, pos, inv_freq);
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = v[2 * i], x2 = v[2 * i + 1];
      v[2 * i] = x1 * a.c[i] - x2 * a.s[i];
      v[2 * i + 1] = x2 * a.c[i] + x1 * a.s[i];
    }
  }
}

void axpy(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

namespace {

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return f16_to_f32(*p); }

// Four horizontal sums at once: {sum(a), sum(b), sum(c), sum(d)}.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

template <typename T>
void dot_rows_impl(const float* q, const T* rows, int64_t stride, int64_t count, int64_t n, float* out) {
  const int64_t n8 = n / 8 * 8;
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const T* r0 = rows + j * stride;
    const T* r1 = r0 + stride;
    const T* r2 = r1 + stride;
    const T* r3 = r2 + stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < n8; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      a0 = _mm256_fmadd_ps(qv, load8(r0 + i), a0);
      a1 = _mm256_fmadd_ps(qv, load8(r1 + i), a1);
      a2 = _mm256_fmadd_ps(qv, load8(r2 + i), a2);
      a3 = _mm256_fmadd_ps(qv, load8(r3 + i), a3);
    }
    float sums[4];
    _mm_storeu_ps(sums, hsum4(a0, a1, a2, a3));
    for (int64_t i = n8; i < n; ++i) {
      sums[0] += q[i] * load1(r0 + i);
      sums[1] += q[i] * load1(r1 + i);
      sums[2] += q[i] * load1(r2 + i);
      sums[3] += q[i] * load1(r3 + i);
    }
    std::copy(sums, sums + 4, out + j);
  }
  for (; j < count; ++j) {
    const T* r = rows + j * stride;
    float sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += q[i] * load1(r + i);
    out[j] = sum;
  }
}

}  // namespace

void dot_rows(const float* q, const float* rows, int64_t stride, int64_t count, int64_t n, float* out) {
  dot_rows_impl(q, rows, stride, count, n, out);
}

void dot_rows_f16(const float* q, const uint16_t* rows, int64_t stride, int64_t count, int64_t n, float* out) {
  dot_rows_impl(q, rows, stride, count, n, out);
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * f16_to_f32(x[i]);
}

float dot_f32_f16(const float* a, const uint16_t* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 bv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), bv, acc);
  }
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  float sum = _mm_cvtss_f32(lo);
  for (; i < n; ++i) sum += a[i] * f16_to_f32(b[i]);
  return sum;
}

void add_inplace(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
  for (; i < n; ++i) y[i] += x[i];
}

void rope_rotate_half(float* x, int64_t heads, int64_t head_dim, int64_t pos, const float* inv_freq) {
  const int64_t half = head_dim / 2;
  RopeAngles a(half, pos, inv_freq);
  const float* c = a.c;
  const float* s = a.s;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = v[i], x2 = v[i + half];
      v[i] = x1 * c[i] - x2 * s[i];
      v[i + half] = x2 * c[i] + x1 * s[i];
    }
  }
}

void clamp(float* x, int64_t n, float limit) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::clamp(x[i], -limit, limit);
}

}  // namespace tessera::kernels
