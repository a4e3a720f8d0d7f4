#include "kernels/cpu/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/vec_math.h"

namespace tessera::kernels {
namespace {

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return f16_to_f32(*p); }

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The horizontal sums of eight vectors as one vector: {sum(v[0]), ..., sum(v[7])}.
inline __m256 hsum8x8(const __m256* v) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// out[i] = sum(v[i]) for N vectors, eight at a time where possible.
template <int N>
inline void hsums(const __m256* v, float* out) {
  int i = 0;
  for (; i + 8 <= N; i += 8) _mm256_storeu_ps(out + i, hsum8x8(v + i));
  for (; i < N; ++i) out[i] = hsum8(v[i]);
}

// out[h * ld + j] = q_h . row_j for G query heads (rows of q `dim` apart) and `count` cached
// rows, P rows at a time: each row is loaded and widened once for all G heads.
template <typename T, int G, int P>
void group_scores(const float* q, int64_t dim, const T* rows, int64_t stride, int64_t count, float* out, int64_t ld) {
  const int64_t d8 = dim / 8 * 8;
  int64_t j = 0;
  for (; j + P <= count; j += P) {
    __m256 acc[P][G];
    for (int p = 0; p < P; ++p)
      for (int h = 0; h < G; ++h) acc[p][h] = _mm256_setzero_ps();
    for (int64_t i = 0; i < d8; i += 8) {
      __m256 r[P];
      for (int p = 0; p < P; ++p) r[p] = load8(rows + (j + p) * stride + i);
      for (int h = 0; h < G; ++h) {
        const __m256 qv = _mm256_loadu_ps(q + h * dim + i);
        for (int p = 0; p < P; ++p) acc[p][h] = _mm256_fmadd_ps(qv, r[p], acc[p][h]);
      }
    }
    float sums[P * G];
    hsums<P * G>(&acc[0][0], sums);
    for (int p = 0; p < P; ++p) {
      const T* row = rows + (j + p) * stride;
      for (int h = 0; h < G; ++h) {
        float s = sums[p * G + h];
        for (int64_t i = d8; i < dim; ++i) s += q[h * dim + i] * load1(row + i);
        out[h * ld + j + p] = s;
      }
    }
  }
  if constexpr (P > 1) {
    if (j < count) group_scores<T, G, 1>(q, dim, rows + j * stride, stride, count - j, out + j, ld);
  }
}

// acc[h * acc_ld + i] += sum_j w[h * ld + j] * row_j[i] for G heads, V vectors of dimensions
// at a time, so the G x V sums stay in registers over all rows.
template <typename T, int G, int V>
void group_values(const float* w, int64_t ld, const T* rows, int64_t stride, int64_t count, int64_t dim, float* acc,
                  int64_t acc_ld) {
  int64_t i = 0;
  for (; i + 8 * V <= dim; i += 8 * V) {
    __m256 a[G][V];
    for (int h = 0; h < G; ++h)
      for (int v = 0; v < V; ++v) a[h][v] = _mm256_loadu_ps(acc + h * acc_ld + i + 8 * v);
    for (int64_t j = 0; j < count; ++j) {
      const T* row = rows + j * stride + i;
      __m256 r[V];
      for (int v = 0; v < V; ++v) r[v] = load8(row + 8 * v);
      for (int h = 0; h < G; ++h) {
        const __m256 wv = _mm256_broadcast_ss(w + h * ld + j);
        for (int v = 0; v < V; ++v) a[h][v] = _mm256_fmadd_ps(wv, r[v], a[h][v]);
      }
    }
    for (int h = 0; h < G; ++h)
      for (int v = 0; v < V; ++v) _mm256_storeu_ps(acc + h * acc_ld + i + 8 * v, a[h][v]);
  }
  if constexpr (V > 1) {
    if (i < dim) group_values<T, G, 1>(w, ld, rows + i, stride, count, dim - i, acc + i, acc_ld);
  } else {
    for (; i < dim; ++i)
      for (int h = 0; h < G; ++h) {
        float s = acc[h * acc_ld + i];
        for (int64_t j = 0; j < count; ++j) s += w[h * ld + j] * load1(rows + j * stride + i);
        acc[h * acc_ld + i] = s;
      }
  }
}

// Both passes for up to four heads of one group.
template <typename T, int G>
void group_pass(bool values, const float* src, int64_t ld, const KvRun* runs, int64_t nruns, int64_t stride, int64_t dim,
                float* dst, int64_t dst_ld) {
  int64_t offset = 0;
  for (int64_t r = 0; r < nruns; ++r) {
    if (values) {
      constexpr int V = G <= 2 ? 4 : 2;
      group_values<T, G, V>(src + offset, ld, static_cast<const T*>(runs[r].values), stride, runs[r].count, dim, dst,
                            dst_ld);
    } else {
      constexpr int P = G == 1 ? 8 : G == 2 ? 4 : 2;  // 8 sums per step where registers allow
      group_scores<T, G, P>(src, dim, static_cast<const T*>(runs[r].keys), stride, runs[r].count, dst + offset, dst_ld);
    }
    offset += runs[r].count;
  }
}

template <typename T>
void pass(int g, bool values, const float* src, int64_t ld, const KvRun* runs, int64_t nruns, int64_t stride,
          int64_t dim, float* dst, int64_t dst_ld) {
  switch (g) {
    case 1: group_pass<T, 1>(values, src, ld, runs, nruns, stride, dim, dst, dst_ld); break;
    case 2: group_pass<T, 2>(values, src, ld, runs, nruns, stride, dim, dst, dst_ld); break;
    case 3: group_pass<T, 3>(values, src, ld, runs, nruns, stride, dim, dst, dst_ld); break;
    default: group_pass<T, 4>(values, src, ld, runs, nruns, stride, dim, dst, dst_ld); break;
  }
}

// x = f16(x), in place.
void round_to_f16(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
  for (; i < n; ++i) x[i] = f16_to_f32(f32_to_f16(x[i]));
}

}  // namespace

void attention_partial(const float* q, int64_t heads, int64_t dim, float scale, const KvRun* runs, int64_t nruns,
                       int64_t stride, bool f16, float* max, float* sum, float* acc, int64_t out_stride) {
  int64_t total = 0;
  for (int64_t r = 0; r < nruns; ++r) total += runs[r].count;
  for (int64_t h = 0; h < heads; ++h) {
    max[h * out_stride] = -std::numeric_limits<float>::infinity();
    sum[h * out_stride] = 0.0f;
    std::fill_n(acc + h * out_stride * dim, dim, 0.0f);
  }
  if (total == 0 || heads == 0) return;

  thread_local std::vector<float> qr, scores;
  if (f16) {
    qr.assign(q, q + heads * dim);
    round_to_f16(qr.data(), heads * dim);
    q = qr.data();
  }
  scores.resize(static_cast<size_t>(heads * total));
  for (int64_t h0 = 0; h0 < heads; h0 += 4) {
    const int g = static_cast<int>(std::min<int64_t>(4, heads - h0));
    if (f16)
      pass<uint16_t>(g, false, q + h0 * dim, total, runs, nruns, stride, dim, scores.data() + h0 * total, total);
    else
      pass<float>(g, false, q + h0 * dim, total, runs, nruns, stride, dim, scores.data() + h0 * total, total);
  }

  const __m256 vscale = _mm256_set1_ps(scale);
  const int64_t t8 = total / 8 * 8;
  for (int64_t h = 0; h < heads; ++h) {
    float* s = scores.data() + h * total;
    __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    int64_t j = 0;
    for (; j < t8; j += 8) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(s + j), vscale);
      _mm256_storeu_ps(s + j, v);
      vmax = _mm256_max_ps(vmax, v);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float m = *std::max_element(lanes, lanes + 8);
    for (; j < total; ++j) {
      s[j] *= scale;
      m = std::max(m, s[j]);
    }
    const __m256 vm = _mm256_set1_ps(m);
    __m256 vsum = _mm256_setzero_ps();
    for (j = 0; j < t8; j += 8) {
      const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
      _mm256_storeu_ps(s + j, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    float l = hsum8(vsum);
    for (; j < total; ++j) {
      s[j] = std::exp(s[j] - m);
      l += s[j];
    }
    if (f16) round_to_f16(s, total);
    max[h * out_stride] = m;
    sum[h * out_stride] = l;
  }

  for (int64_t h0 = 0; h0 < heads; h0 += 4) {
    const int g = static_cast<int>(std::min<int64_t>(4, heads - h0));
    float* dst = acc + h0 * out_stride * dim;
    if (f16)
      pass<uint16_t>(g, true, scores.data() + h0 * total, total, runs, nruns, stride, dim, dst, out_stride * dim);
    else
      pass<float>(g, true, scores.data() + h0 * total, total, runs, nruns, stride, dim, dst, out_stride * dim);
  }
}

void attention_merge(const float* max, const float* sum, const float* acc, int64_t parts, int64_t dim, float* out) {
  std::fill_n(out, dim, 0.0f);
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t p = 0; p < parts; ++p) m = std::max(m, max[p]);
  if (std::isinf(m) && m < 0) return;
  double total = 0;
  for (int64_t p = 0; p < parts; ++p) {
    if (sum[p] == 0.0f) continue;
    const float w = parts == 1 ? 1.0f : std::exp(max[p] - m);
    total += static_cast<double>(w) * sum[p];
    const float* a = acc + p * dim;
    for (int64_t i = 0; i < dim; ++i) out[i] += w * a[i];
  }
  const float inv = static_cast<float>(1.0 / total);
  for (int64_t i = 0; i < dim; ++i) out[i] *= inv;
}

}  // namespace tessera::kernels
