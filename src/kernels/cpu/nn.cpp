#include "kernels/cpu/nn.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/vec_math.h"

namespace tessera::kernels {

namespace {

// Elements handled per task by the element-wise loops.
constexpr int64_t kElementGrain = 1 << 14;

template <typename F>
void map_inplace(float* x, int64_t n, F f) {
  parallel_for(static_cast<size_t>((n + kElementGrain - 1) / kElementGrain), 1, [&](size_t b, size_t e) {
    const int64_t begin = static_cast<int64_t>(b) * kElementGrain;
    const int64_t end = std::min(n, static_cast<int64_t>(e) * kElementGrain);
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) _mm256_storeu_ps(x + i, f(_mm256_loadu_ps(x + i)));
    if (i < end) apply_tail(x + i, end - i, f);
  });
}

// Mean and 1/sqrt(variance + eps) of n values, accumulated in double (two passes).
std::pair<float, float> mean_rstd(const float* x, int64_t n, float eps) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const double mean = sum / static_cast<double>(n);
  double sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = x[i] - mean;
    sq += d * d;
  }
  return {static_cast<float>(mean), static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(n) + eps))};
}

}  // namespace

void conv2d(const float* x, int64_t h, int64_t w, const Conv2dShape& s, const float* weight, const float* bias,
            float* y) {
  const int64_t oh = s.out_height(h), ow = s.out_width(w);
  const int64_t kk = s.kernel * s.kernel;
  const int64_t kdim = s.in_channels * kk;
  if (s.kernel == 1 && s.stride == 1 && s.pad_top == 0 && s.pad_left == 0 && s.pad_bottom == 0 && s.pad_right == 0) {
    sgemm(false, false, s.out_channels, h * w, s.in_channels, 1.0f, weight, s.in_channels, x, h * w, 0.0f, y, h * w);
  } else {
    // Unfold a band of output rows at a time: about 8M floats of scratch at most.
    const int64_t band = std::clamp<int64_t>((int64_t{8} << 20) / std::max<int64_t>(1, kdim * ow), 1, oh);
    std::vector<float> cols(static_cast<size_t>(kdim * band * ow));
    for (int64_t r0 = 0; r0 < oh; r0 += band) {
      const int64_t rows = std::min(band, oh - r0);
      const int64_t npix = rows * ow;
      parallel_for(static_cast<size_t>(kdim), 4, [&](size_t b, size_t e) {
        for (size_t kidx = b; kidx < e; ++kidx) {
          const int64_t c = static_cast<int64_t>(kidx) / kk;
          const int64_t ky = (static_cast<int64_t>(kidx) % kk) / s.kernel;
          const int64_t kx = static_cast<int64_t>(kidx) % s.kernel;
          float* dst = cols.data() + static_cast<int64_t>(kidx) * npix;
          const float* src = x + c * h * w;
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t iy = (r0 + r) * s.stride + ky - s.pad_top;
            float* drow = dst + r * ow;
            if (iy < 0 || iy >= h) {
              std::fill(drow, drow + ow, 0.0f);
              continue;
            }
            const float* srow = src + iy * w;
            if (s.stride == 1) {
              // Output columns whose input column lies inside the image form one run.
              const int64_t lo = std::clamp<int64_t>(s.pad_left - kx, 0, ow);
              const int64_t hi = std::clamp<int64_t>(w + s.pad_left - kx, lo, ow);
              std::fill(drow, drow + lo, 0.0f);
              std::copy(srow + lo + kx - s.pad_left, srow + hi + kx - s.pad_left, drow + lo);
              std::fill(drow + hi, drow + ow, 0.0f);
            } else {
              for (int64_t ox = 0; ox < ow; ++ox) {
                const int64_t ix = ox * s.stride + kx - s.pad_left;
                drow[ox] = (ix >= 0 && ix < w) ? srow[ix] : 0.0f;
              }
            }
          }
        }
      });
      sgemm(false, false, s.out_channels, npix, kdim, 1.0f, weight, kdim, cols.data(), npix, 0.0f, y + r0 * ow,
            oh * ow);
    }
  }
  if (bias) {
    const int64_t hw = oh * ow;
    parallel_for(static_cast<size_t>(s.out_channels), 8, [&](size_t b, size_t e) {
      for (size_t c = b; c < e; ++c) {
        float* row = y + static_cast<int64_t>(c) * hw;
        const float bv = bias[c];
        for (int64_t i = 0; i < hw; ++i) row[i] += bv;
      }
    });
  }
}

void group_norm(float* x, int64_t channels, int64_t hw, int64_t groups, const float* gamma, const float* beta,
                float eps, bool silu) {
  const int64_t per_group = channels / groups;
  parallel_for(static_cast<size_t>(groups), 1, [&](size_t b, size_t e) {
    for (size_t g = b; g < e; ++g) {
      float* gx = x + static_cast<int64_t>(g) * per_group * hw;
      const auto [fmean, rstd] = mean_rstd(gx, per_group * hw, eps);
      for (int64_t c = static_cast<int64_t>(g) * per_group; c < static_cast<int64_t>(g + 1) * per_group; ++c) {
        float* row = x + c * hw;
        const float scale = rstd * gamma[c];
        const float shift = beta[c] - fmean * scale;
        const __m256 vs = _mm256_set1_ps(scale), vb = _mm256_set1_ps(shift);
        int64_t i = 0;
        for (; i + 8 <= hw; i += 8) {
          const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(row + i), vs, vb);
          _mm256_storeu_ps(row + i, silu ? silu256(v) : v);
        }
        for (; i < hw; ++i) row[i] = row[i] * scale + shift;
        if (silu && hw % 8) apply_tail(row + (hw - hw % 8), hw % 8, silu256);
      }
    }
  });
}

void layer_norm_affine(const float* x, int64_t rows, int64_t n, const float* gamma, const float* beta, float eps,
                       float* y) {
  parallel_for(static_cast<size_t>(rows), 16, [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) {
      const float* xr = x + static_cast<int64_t>(r) * n;
      float* yr = y + static_cast<int64_t>(r) * n;
      const auto [fmean, rstd] = mean_rstd(xr, n, eps);
      for (int64_t i = 0; i < n; ++i) yr[i] = (xr[i] - fmean) * rstd * gamma[i] + (beta ? beta[i] : 0.0f);
    }
  });
}

void linear(const float* x, int64_t m, int64_t k, const float* weight, const float* bias, int64_t n, float* y) {
  sgemm(false, true, m, n, k, 1.0f, x, k, weight, k, 0.0f, y, n);
  if (bias) {
    parallel_for(static_cast<size_t>(m), 64, [&](size_t b, size_t e) {
      for (size_t r = b; r < e; ++r) {
        float* row = y + static_cast<int64_t>(r) * n;
        for (int64_t j = 0; j < n; ++j) row[j] += bias[j];
      }
    });
  }
}

void silu_inplace(float* x, int64_t n) { map_inplace(x, n, silu256); }
void gelu_inplace(float* x, int64_t n) { map_inplace(x, n, gelu256); }
void quick_gelu_inplace(float* x, int64_t n) {
  map_inplace(x, n, [](__m256 v) {
    const __m256 e = exp256(_mm256_mul_ps(v, _mm256_set1_ps(-1.702f)));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  });
}

void geglu(const float* x, int64_t rows, int64_t n, float* y) {
  parallel_for(static_cast<size_t>(rows), 4, [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) {
      const float* h = x + static_cast<int64_t>(r) * 2 * n;
      const float* g = h + n;
      float* out = y + static_cast<int64_t>(r) * n;
      int64_t i = 0;
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(h + i), gelu256(_mm256_loadu_ps(g + i))));
      if (i < n) {
        std::copy(g + i, g + n, out + i);
        apply_tail(out + i, n - i, gelu256);
        for (; i < n; ++i) out[i] *= h[i];
      }
    }
  });
}

void attention(const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t sq,
               int64_t sk, int64_t heads, int64_t d, float scale, bool causal, float* out, int64_t ldo) {
  // Tasks are (head, query chunk) pairs; the products inside a task run on one thread.
  const int64_t chunk = std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(sk, 1), 16, 256);
  const int64_t chunks = (sq + chunk - 1) / chunk;
  parallel_for(static_cast<size_t>(heads * chunks), 1, [&](size_t b, size_t e) {
    std::vector<float> scores;
    for (size_t task = b; task < e; ++task) {
      const int64_t head = static_cast<int64_t>(task) / chunks;
      const int64_t q0 = (static_cast<int64_t>(task) % chunks) * chunk;
      const int64_t rows = std::min(chunk, sq - q0);
      scores.resize(static_cast<size_t>(rows * sk));
      sgemm(false, true, rows, sk, d, scale, q + q0 * ldq + head * d, ldq, k + head * d, ldk, 0.0f, scores.data(),
            sk);
      for (int64_t r = 0; r < rows; ++r) {
        float* row = scores.data() + r * sk;
        const int64_t valid = causal ? std::min(sk, q0 + r + 1) : sk;
        float mx = row[0];
        for (int64_t j = 1; j < valid; ++j) mx = std::max(mx, row[j]);
        const __m256 vmx = _mm256_set1_ps(mx);
        __m256 acc = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= valid; j += 8) {
          const __m256 ev = exp256(_mm256_sub_ps(_mm256_loadu_ps(row + j), vmx));
          _mm256_storeu_ps(row + j, ev);
          acc = _mm256_add_ps(acc, ev);
        }
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, acc);
        double sum = 0;
        for (float l : lanes) sum += l;
        for (; j < valid; ++j) {
          row[j] = std::exp(row[j] - mx);
          sum += row[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        for (j = 0; j < valid; ++j) row[j] *= inv;
        for (; j < sk; ++j) row[j] = 0.0f;
      }
      sgemm(false, false, rows, d, sk, 1.0f, scores.data(), sk, v + head * d, ldv, 0.0f, out + q0 * ldo + head * d,
            ldo);
    }
  });
}

void transpose(const float* x, int64_t rows, int64_t cols, float* y) {
  constexpr int64_t kTile = 32;
  const int64_t row_tiles = (rows + kTile - 1) / kTile;
  parallel_for(static_cast<size_t>(row_tiles), 1, [&](size_t b, size_t e) {
    for (int64_t r0 = static_cast<int64_t>(b) * kTile; r0 < std::min(rows, static_cast<int64_t>(e) * kTile); r0 += kTile) {
      for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
        const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) y[c * rows + r] = x[r * cols + c];
      }
    }
  });
}

void upsample_nearest(const float* x, int64_t channels, int64_t h, int64_t w, int64_t oh, int64_t ow, float* y) {
  std::vector<int64_t> src_x(static_cast<size_t>(ow));
  for (int64_t ox = 0; ox < ow; ++ox) src_x[ox] = std::min(w - 1, static_cast<int64_t>(std::floor(ox * (static_cast<double>(w) / ow))));
  parallel_for(static_cast<size_t>(channels), 1, [&](size_t b, size_t e) {
    for (size_t c = b; c < e; ++c) {
      const float* src = x + static_cast<int64_t>(c) * h * w;
      float* dst = y + static_cast<int64_t>(c) * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const int64_t iy = std::min(h - 1, static_cast<int64_t>(std::floor(oy * (static_cast<double>(h) / oh))));
        const float* srow = src + iy * w;
        float* drow = dst + oy * ow;
        for (int64_t ox = 0; ox < ow; ++ox) drow[ox] = srow[src_x[ox]];
      }
    }
  });
}

void timestep_embedding(float t, int64_t dim, bool flip_sin_to_cos, float freq_shift, float* out) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    // float32 throughout, as torch computes it: exponent, exp, product.
    const float exponent = -9.21034037197618f * static_cast<float>(i) / (static_cast<float>(half) - freq_shift);
    const float arg = t * std::exp(exponent);
    const float s = std::sin(arg), c = std::cos(arg);
    out[i] = flip_sin_to_cos ? c : s;
    out[half + i] = flip_sin_to_cos ? s : c;
  }
  if (dim % 2) out[dim - 1] = 0.0f;
}

}  // namespace tessera::kernels
