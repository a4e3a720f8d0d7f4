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
