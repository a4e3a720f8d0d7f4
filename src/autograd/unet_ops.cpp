#include "autograd/unet_ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "autograd/ops.h"
#include "core/thread_pool.h"
#include "kernels/cpu/nn.h"

namespace tessera::autograd {

namespace {

// Items per parallel chunk so that each chunk holds at least ~16k elements of work.
size_t grain_for(int64_t width) {
  return static_cast<size_t>(std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width)));
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// ---- im2col ----
// cols[(c, ky, kx), (oy, ox)] = x[c, oy * stride - pad + ky, ox * stride - pad + kx], 0 outside
// the image, so that the convolution of one image is the product weight[out, in*k*k] . cols.

void im2col(const Conv2dShape& s, const float* x, float* cols) {
  const int64_t k = s.kernel, oh = s.out_height(), ow = s.out_width(), ohw = oh * ow;
  parallel_for(static_cast<size_t>(s.in_channels * k * k), grain_for(ohw), [&](size_t begin, size_t end) {
    for (size_t row = begin; row < end; ++row) {
      const int64_t c = static_cast<int64_t>(row) / (k * k), ky = (static_cast<int64_t>(row) / k) % k,
                    kx = static_cast<int64_t>(row) % k;
      const float* plane = x + c * s.height * s.width;
      float* out = cols + static_cast<int64_t>(row) * ohw;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const int64_t iy = oy * s.stride - s.padding + ky;
        float* orow = out + oy * ow;
        if (iy < 0 || iy >= s.height) {
          std::fill(orow, orow + ow, 0.0f);
          continue;
        }
        const float* irow = plane + iy * s.width;
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t ix = ox * s.stride - s.padding + kx;
          orow[ox] = ix >= 0 && ix < s.width ? irow[ix] : 0.0f;
        }
      }
    }
  });
}

// The adjoint of im2col: every column entry is added back into the pixel it was read from.
// One job per input channel, so no two jobs touch the same plane.
void col2im_add(const Conv2dShape& s, const float* cols, float* dx) {
  const int64_t k = s.kernel, oh = s.out_height(), ow = s.out_width(), ohw = oh * ow;
  parallel_for(static_cast<size_t>(s.in_channels), grain_for(k * k * ohw), [&](size_t begin, size_t end) {
    for (size_t c = begin; c < end; ++c) {
      float* plane = dx + static_cast<int64_t>(c) * s.height * s.width;
      for (int64_t ky = 0; ky < k; ++ky)
        for (int64_t kx = 0; kx < k; ++kx) {
          const float* in = cols + ((static_cast<int64_t>(c) * k + ky) * k + kx) * ohw;
          for (int64_t oy = 0; oy < oh; ++oy) {
            const int64_t iy = oy * s.stride - s.padding + ky;
            if (iy < 0 || iy >= s.height) continue;
            float* drow = plane + iy * s.width;
            const float* crow = in + oy * ow;
            for (int64_t ox = 0; ox < ow; ++ox) {
              const int64_t ix = ox * s.stride - s.padding + kx;
              if (ix >= 0 && ix < s.width) drow[ix] += crow[ox];
            }
          }
        }
    }
  });
}

// A 1x1, stride-1, unpadded convolution reads the image itself as its column matrix.
bool is_pointwise(const Conv2dShape& s) { return s.kernel == 1 && s.stride == 1 && s.padding == 0; }

}  // namespace

void conv2d_forward(const Conv2dShape& s, const float* x, const float* weight, const float* bias, float* y) {
  const int64_t ckk = s.in_channels * s.kernel * s.kernel, ohw = s.out_height() * s.out_width();
  const int64_t in_size = s.in_channels * s.height * s.width, out_size = s.out_channels * ohw;
  std::vector<float> cols(is_pointwise(s) ? 0 : static_cast<size_t>(ckk * ohw));
  // Images one after another, each product threaded inside gemm: the column buffer of one image
  // is already large, and this keeps only one of them alive.
  for (int64_t b = 0; b < s.batch; ++b) {
    const float* xb = x + b * in_size;
    float* yb = y + b * out_size;
    const float* c = xb;
    if (!is_pointwise(s)) {
      im2col(s, xb, cols.data());
      c = cols.data();
    }
    gemm(false, false, s.out_channels, ohw, ckk, 1.0f, weight, ckk, c, ohw, 0.0f, yb, ohw);
    if (bias)
      parallel_for(static_cast<size_t>(s.out_channels), grain_for(ohw), [&](size_t begin, size_t end) {
        for (size_t o = begin; o < end; ++o) {
          float* row = yb + static_cast<int64_t>(o) * ohw;
          const float v = bias[o];
          for (int64_t i = 0; i < ohw; ++i) row[i] += v;
        }
      });
  }
}

void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* weight, float* dx,
                     float* dweight, float* dbias) {
  const int64_t ckk = s.in_channels * s.kernel * s.kernel, ohw = s.out_height() * s.out_width();
  const int64_t in_size = s.in_channels * s.height * s.width, out_size = s.out_channels * ohw;
  const bool pointwise = is_pointwise(s);
  std::vector<float> cols(pointwise || !dweight ? 0 : static_cast<size_t>(ckk * ohw));
  std::vector<float> dcols(pointwise || !dx ? 0 : static_cast<size_t>(ckk * ohw));
  for (int64_t b = 0; b < s.batch; ++b) {
    const float* dyb = dy + b * out_size;
    if (dbias)
      parallel_for(static_cast<size_t>(s.out_channels), grain_for(ohw), [&](size_t begin, size_t end) {
        for (size_t o = begin; o < end; ++o) {
          const float* row = dyb + static_cast<int64_t>(o) * ohw;
          double sum = 0;
          for (int64_t i = 0; i < ohw; ++i) sum += row[i];
          dbias[o] += static_cast<float>(sum);
        }
      });
    // dweight[out, in*k*k] += dy[out, ohw] . cols^T
    if (dweight) {
      const float* c = x + b * in_size;
      if (!pointwise) {
        im2col(s, c, cols.data());
        c = cols.data();
      }
      gemm(false, true, s.out_channels, ckk, ohw, 1.0f, dyb, ohw, c, ohw, 1.0f, dweight, ckk);
    }
    // dcols = weight^T . dy, folded back onto the image.
    if (dx) {
      float* dxb = dx + b * in_size;
      if (pointwise) {
        gemm(true, false, ckk, ohw, s.out_channels, 1.0f, weight, ckk, dyb, ohw, 1.0f, dxb, ohw);
      } else {
        gemm(true, false, ckk, ohw, s.out_channels, 1.0f, weight, ckk, dyb, ohw, 0.0f, dcols.data(), ohw);
        col2im_add(s, dcols.data(), dxb);
      }
    }
  }
}

void group_norm_forward(const float* x, int64_t batch, int64_t channels, int64_t hw, int64_t groups,
                        const float* weight, const float* bias, float eps, float* y, float* mean, float* rstd) {
  const int64_t cpg = channels / groups, size = cpg * hw;
  parallel_for(static_cast<size_t>(batch * groups), grain_for(size), [&](size_t begin, size_t end) {
    for (size_t job = begin; job < end; ++job) {
      const int64_t b = static_cast<int64_t>(job) / groups, g = static_cast<int64_t>(job) % groups;
      const int64_t offset = (b * channels + g * cpg) * hw;
      const float* in = x + offset;
      // Two passes in double: a group can hold tens of thousands of values.
      double sum = 0;
      for (int64_t i = 0; i < size; ++i) sum += in[i];
      const double mu = sum / static_cast<double>(size);
      double var = 0;
      for (int64_t i = 0; i < size; ++i) var += (in[i] - mu) * (in[i] - mu);
      var /= static_cast<double>(size);
      const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
      const float m = static_cast<float>(mu);
      for (int64_t c = 0; c < cpg; ++c) {
        const float w = weight[g * cpg + c], sh = bias[g * cpg + c];
        const float* row = in + c * hw;
        float* out = y + offset + c * hw;
        for (int64_t i = 0; i < hw; ++i) out[i] = (row[i] - m) * inv * w + sh;
      }
      mean[job] = m;
      rstd[job] = inv;
    }
  });
}

void group_norm_backward(const float* dy, const float* x, int64_t batch, int64_t channels, int64_t hw, int64_t groups,
                         const float* weight, const float* mean, const float* rstd, float* dx, float* dweight,
                         float* dbias) {
  // Per (image, group), with xhat = (x - mean) * rstd and g = dy * weight[channel]:
  //   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
  // the means over the group's channels and pixels. One job per group, looping over the images,
  // so the per-channel weight and bias gradients of a group are only ever touched by one job.
  const int64_t cpg = channels / groups, size = cpg * hw;
  parallel_for(static_cast<size_t>(groups), 1, [&](size_t begin, size_t end) {
    std::vector<double> dw(static_cast<size_t>(cpg)), db(static_cast<size_t>(cpg));
    for (size_t gi = begin; gi < end; ++gi) {
      const int64_t g = static_cast<int64_t>(gi);
      std::fill(dw.begin(), dw.end(), 0.0);
      std::fill(db.begin(), db.end(), 0.0);
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t offset = (b * channels + g * cpg) * hw;
        const float m = mean[b * groups + g], inv = rstd[b * groups + g];
        double sum_g = 0, sum_gx = 0;
        for (int64_t c = 0; c < cpg; ++c) {
          const float w = weight[g * cpg + c];
          const float* in = x + offset + c * hw;
          const float* gy = dy + offset + c * hw;
          double sum_dy = 0, sum_dyx = 0;
          for (int64_t i = 0; i < hw; ++i) {
            const float xhat = (in[i] - m) * inv;
            sum_dy += gy[i];
            sum_dyx += static_cast<double>(gy[i]) * xhat;
          }
          sum_g += w * sum_dy;
          sum_gx += w * sum_dyx;
          dw[c] += sum_dyx;
          db[c] += sum_dy;
        }
        if (!dx) continue;
        const float mean_g = static_cast<float>(sum_g / static_cast<double>(size));
        const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(size));
        for (int64_t c = 0; c < cpg; ++c) {
          const float w = weight[g * cpg + c];
          const float* in = x + offset + c * hw;
          const float* gy = dy + offset + c * hw;
          float* out = dx + offset + c * hw;
          for (int64_t i = 0; i < hw; ++i) {
            const float xhat = (in[i] - m) * inv;
            out[i] += inv * (gy[i] * w - mean_g - xhat * mean_gx);
          }
        }
      }
      for (int64_t c = 0; c < cpg; ++c) {
        if (dweight) dweight[g * cpg + c] += static_cast<float>(dw[c]);
        if (dbias) dbias[g * cpg + c] += static_cast<float>(db[c]);
      }
    }
  });
}

void layer_norm_affine_forward(const float* x, int64_t rows, int64_t d, const float* weight, const float* bias,
                               float eps, float* y, float* mean, float* rstd) {
  layer_norm_forward(x, rows, d, weight, eps, y, mean, rstd, bias);
}

void layer_norm_affine_backward(const float* dy, const float* x, int64_t rows, int64_t d, const float* weight,
                                const float* mean, const float* rstd, float* dx, float* dweight, float* dbias) {
  // The bias does not depend on x, so dx and dweight are the bias-free LayerNorm's; dbias sums dy
  // over rows.
  layer_norm_backward(dy, x, rows, d, weight, mean, rstd, dx, dweight);
  if (dbias)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < d; ++i) dbias[i] += dy[r * d + i];
}

void silu_forward(const float* x, int64_t n, float* y) {
  parallel_for(static_cast<size_t>(n), 1 << 14, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) y[i] = x[i] * sigmoid(x[i]);
  });
}

void silu_backward(const float* dy, const float* x, int64_t n, float* dx) {
  // d silu / dx = s * (1 + x * (1 - s)) with s = sigmoid(x).
  parallel_for(static_cast<size_t>(n), 1 << 14, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      const float s = sigmoid(x[i]);
      dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
  });
}

namespace {

// torch's legacy 'nearest' source index, as kernels::upsample_nearest computes it.
std::vector<int64_t> nearest_sources(int64_t in, int64_t out) {
  std::vector<int64_t> src(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o)
    src[o] = std::min(in - 1, static_cast<int64_t>(std::floor(o * (static_cast<double>(in) / out))));
  return src;
}

}  // namespace

void upsample_nearest_forward(const float* x, int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, float* y) {
  kernels::upsample_nearest(x, planes, h, w, oh, ow, y);
}

void upsample_nearest_backward(const float* dy, int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,
                               float* dx) {
  const std::vector<int64_t> sy = nearest_sources(h, oh), sx = nearest_sources(w, ow);
  parallel_for(static_cast<size_t>(planes), grain_for(oh * ow), [&](size_t begin, size_t end) {
    for (size_t p = begin; p < end; ++p) {
      const float* src = dy + static_cast<int64_t>(p) * oh * ow;
      float* dst = dx + static_cast<int64_t>(p) * h * w;
      for (int64_t oy = 0; oy < oh; ++oy) {
        float* drow = dst + sy[oy] * w;
        const float* srow = src + oy * ow;
        for (int64_t ox = 0; ox < ow; ++ox) drow[sx[ox]] += srow[ox];
      }
    }
  });
}

void add_channel_bias_forward(float* y, int64_t batch, int64_t channels, int64_t hw, const float* v) {
  parallel_for(static_cast<size_t>(batch * channels), grain_for(hw), [&](size_t begin, size_t end) {
    for (size_t p = begin; p < end; ++p) {
      float* row = y + static_cast<int64_t>(p) * hw;
      const float add = v[p];
      for (int64_t i = 0; i < hw; ++i) row[i] += add;
    }
  });
}

void add_channel_bias_backward(const float* dy, int64_t batch, int64_t channels, int64_t hw, float* dv) {
  parallel_for(static_cast<size_t>(batch * channels), grain_for(hw), [&](size_t begin, size_t end) {
    for (size_t p = begin; p < end; ++p) {
      const float* row = dy + static_cast<int64_t>(p) * hw;
      double sum = 0;
      for (int64_t i = 0; i < hw; ++i) sum += row[i];
      dv[p] += static_cast<float>(sum);
    }
  });
}

void linear_bias_forward(const float* x, int64_t n, int64_t k, const float* w, const float* bias, int64_t m, float* y) {
  if (n == 0) return;
  linear_forward(x, n, k, w, m, y);
  if (!bias) return;
  parallel_for(static_cast<size_t>(n), grain_for(m), [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      float* row = y + static_cast<int64_t>(r) * m;
      for (int64_t j = 0; j < m; ++j) row[j] += bias[j];
    }
  });
}

void linear_bias_backward(const float* dy, const float* x, int64_t n, int64_t k, const float* w, int64_t m, float* dx,
                          float* dw, float* dbias) {
  if (n == 0) return;
  linear_backward(dy, x, n, k, w, m, dx, dw);
  if (!dbias) return;
  // Column sums: one job per slice of columns, each walking all rows, so no two jobs share an
  // output; kept in double since n can be every pixel of a batch.
  parallel_for(static_cast<size_t>(m), std::max<size_t>(8, grain_for(n)), [&](size_t begin, size_t end) {
    std::vector<double> acc(end - begin, 0.0);
    for (int64_t r = 0; r < n; ++r) {
      const float* row = dy + r * m;
      for (size_t j = begin; j < end; ++j) acc[j - begin] += row[j];
    }
    for (size_t j = begin; j < end; ++j) dbias[j] += static_cast<float>(acc[j - begin]);
  });
}

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

inline float gelu(float g) { return 0.5f * g * (1.0f + std::erf(g * kInvSqrt2)); }
// d/dg [g * Phi(g)] = Phi(g) + g * phi(g).
inline float gelu_grad(float g) {
  return 0.5f * (1.0f + std::erf(g * kInvSqrt2)) + g * kInvSqrt2Pi * std::exp(-0.5f * g * g);
}

}  // namespace

void geglu_forward(const float* x, int64_t rows, int64_t n, float* y) {
  parallel_for(static_cast<size_t>(rows), grain_for(n), [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const float* hidden = x + static_cast<int64_t>(r) * 2 * n;
      const float* gate = hidden + n;
      float* out = y + static_cast<int64_t>(r) * n;
      for (int64_t i = 0; i < n; ++i) out[i] = hidden[i] * gelu(gate[i]);
    }
  });
}

void geglu_backward(const float* dy, const float* x, int64_t rows, int64_t n, float* dx) {
  parallel_for(static_cast<size_t>(rows), grain_for(n), [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const float* hidden = x + static_cast<int64_t>(r) * 2 * n;
      const float* gate = hidden + n;
      const float* g = dy + static_cast<int64_t>(r) * n;
      float* dhidden = dx + static_cast<int64_t>(r) * 2 * n;
      float* dgate = dhidden + n;
      for (int64_t i = 0; i < n; ++i) {
        dhidden[i] += g[i] * gelu(gate[i]);
        dgate[i] += g[i] * hidden[i] * gelu_grad(gate[i]);
      }
    }
  });
}

namespace {

// Queries are taken in blocks so that the weights of one block, [block, kv_len], stay small
// even for self-attention over every pixel of a large latent.
constexpr int64_t kQueryRows = 64;

// p[rows, kv_len] = softmax(scale * q[rows] . k^T), row by row.
void full_block_probs(const float* q, int64_t ldq, const float* k, int64_t ldkv, int64_t rows, int64_t kv_len,
                      int64_t hd, float scale, float* p) {
  gemm(false, true, rows, kv_len, hd, scale, q, ldq, k, ldkv, 0.0f, p, kv_len);
  softmax_forward(p, rows, kv_len, p);  // in place: each row's max is taken before it is overwritten
}

}  // namespace

void full_attention_forward(const FullAttentionShape& s, const float* q, const float* k, const float* v, float* ctx) {
  const int64_t hd = s.head_dim, ctx_ld = s.heads * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // One job per (item, head); the products inside run on the job's own thread.
  parallel_for(static_cast<size_t>(s.batch * s.heads), 1, [&](size_t begin, size_t end) {
    std::vector<float> p(static_cast<size_t>(std::min(kQueryRows, s.q_len) * s.kv_len));
    for (size_t job = begin; job < end; ++job) {
      const int64_t b = static_cast<int64_t>(job) / s.heads, h = static_cast<int64_t>(job) % s.heads;
      const float* qq = q + b * s.q_len * s.ldq + h * hd;
      const float* kk = k + b * s.kv_len * s.ldkv + h * hd;
      const float* vv = v + b * s.kv_len * s.ldkv + h * hd;
      float* out = ctx + b * s.q_len * ctx_ld + h * hd;
      for (int64_t i0 = 0; i0 < s.q_len; i0 += kQueryRows) {
        const int64_t rows = std::min(kQueryRows, s.q_len - i0);
        full_block_probs(qq + i0 * s.ldq, s.ldq, kk, s.ldkv, rows, s.kv_len, hd, scale, p.data());
        gemm(false, false, rows, hd, s.kv_len, 1.0f, p.data(), s.kv_len, vv, s.ldkv, 0.0f, out + i0 * ctx_ld, ctx_ld);
      }
    }
  });
}

void full_attention_backward(const FullAttentionShape& s, const float* q, const float* k, const float* v,
                             const float* dctx, float* dq, float* dk, float* dv) {
  const int64_t hd = s.head_dim, ctx_ld = s.heads * hd, kv = s.kv_len;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // One job per (item, head): without grouped kv heads, every job adds into its own columns of
  // dq, dk and dv.
  parallel_for(static_cast<size_t>(s.batch * s.heads), 1, [&](size_t begin, size_t end) {
    const size_t block = static_cast<size_t>(std::min(kQueryRows, s.q_len) * kv);
    std::vector<float> p(block), dp(block);
    for (size_t job = begin; job < end; ++job) {
      const int64_t b = static_cast<int64_t>(job) / s.heads, h = static_cast<int64_t>(job) % s.heads;
      const int64_t qoff = b * s.q_len * s.ldq + h * hd, kvoff = b * kv * s.ldkv + h * hd;
      const float* qq = q + qoff;
      const float* kk = k + kvoff;
      const float* vv = v + kvoff;
      const float* dc = dctx + b * s.q_len * ctx_ld + h * hd;
      for (int64_t i0 = 0; i0 < s.q_len; i0 += kQueryRows) {
        const int64_t rows = std::min(kQueryRows, s.q_len - i0);
        full_block_probs(qq + i0 * s.ldq, s.ldq, kk, s.ldkv, rows, kv, hd, scale, p.data());
        const float* dcb = dc + i0 * ctx_ld;
        // dv += p^T . dctx;  dp = dctx . v^T
        if (dv) gemm(true, false, kv, hd, rows, 1.0f, p.data(), kv, dcb, ctx_ld, 1.0f, dv + kvoff, s.ldkv);
        if (!dq && !dk) continue;
        gemm(false, true, rows, kv, hd, 1.0f, dcb, ctx_ld, vv, s.ldkv, 0.0f, dp.data(), kv);
        // Through the softmax: ds = p * (dp - sum_j dp * p).
        for (int64_t r = 0; r < rows; ++r) {
          float* dpr = dp.data() + r * kv;
          const float* pr = p.data() + r * kv;
          double dot = 0;
          for (int64_t j = 0; j < kv; ++j) dot += static_cast<double>(dpr[j]) * pr[j];
          const float c = static_cast<float>(dot);
          for (int64_t j = 0; j < kv; ++j) dpr[j] = pr[j] * (dpr[j] - c);
        }
        // dq[block] += scale * ds . k;  dk += scale * ds^T . q[block]
        if (dq) gemm(false, false, rows, hd, kv, scale, dp.data(), kv, kk, s.ldkv, 1.0f, dq + qoff + i0 * s.ldq, s.ldq);
        if (dk)
          gemm(true, false, kv, hd, rows, scale, dp.data(), kv, qq + i0 * s.ldq, s.ldq, 1.0f, dk + kvoff, s.ldkv);
      }
    }
  });
}

void timestep_embedding(const float* timesteps, int64_t batch, int64_t dim, bool flip_sin_to_cos, float freq_shift,
                        float* out) {
  for (int64_t b = 0; b < batch; ++b)
    kernels::timestep_embedding(timesteps[b], dim, flip_sin_to_cos, freq_shift, out + b * dim);
}

double mse_loss(const float* pred, const float* target, int64_t n, float scale, float* dpred) {
  if (n == 0) return 0.0;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(pred[i]) - target[i];
    sum += d * d;
  }
  if (dpred) {
    const float factor = 2.0f * scale / static_cast<float>(n);
    parallel_for(static_cast<size_t>(n), 1 << 14, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) dpred[i] += factor * (pred[i] - target[i]);
    });
  }
  return sum / static_cast<double>(n);
}

}  // namespace tessera::autograd
