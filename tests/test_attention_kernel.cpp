// The decoder's cached-attention kernel against softmax(q . K^T * scale) . V in double precision:
// query groups of 1 to 8 heads, head sizes that are and are not multiples of the vector width,
// positions split into runs (cache blocks) and into parts merged afterwards, empty parts, and
// f16 rows (which round the query and the weights to f16).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/attention.h"

using namespace tessera;

namespace {

struct Case {
  int64_t heads, dim, count, parts;
  bool f16;
};

void check(const Case& c, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t stride = c.dim * 3 + 5;  // rows of other heads in between, as in a cache row
  std::vector<float> q(static_cast<size_t>(c.heads * c.dim));
  for (auto& v : q) v = normal(gen) * 2.0f;
  std::vector<float> kf(static_cast<size_t>(c.count * stride)), vf(kf.size());
  for (auto& v : kf) v = normal(gen);
  for (auto& v : vf) v = normal(gen);
  std::vector<uint16_t> kh(kf.size()), vh(vf.size());
  for (size_t i = 0; i < kf.size(); ++i) {
    kh[i] = f32_to_f16(kf[i]);
    vh[i] = f32_to_f16(vf[i]);
    if (c.f16) {
      kf[i] = f16_to_f32(kh[i]);
      vf[i] = f16_to_f32(vh[i]);
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.dim));

  // Runs of 1 to 16 positions inside each part, as cache blocks cut them.
  std::vector<float> mx(static_cast<size_t>(c.heads * c.parts)), sm(mx.size());
  std::vector<float> acc(mx.size() * static_cast<size_t>(c.dim), NAN);
  std::uniform_int_distribution<int64_t> run_len(1, 16);
  for (int64_t p = 0; p < c.parts; ++p) {
    const int64_t j0 = c.count * p / c.parts, j1 = c.count * (p + 1) / c.parts;
    std::vector<kernels::KvRun> runs;
    for (int64_t j = j0; j < j1;) {
      const int64_t n = std::min(run_len(gen), j1 - j);
      if (c.f16)
        runs.push_back({kh.data() + j * stride, vh.data() + j * stride, n});
      else
        runs.push_back({kf.data() + j * stride, vf.data() + j * stride, n});
      j += n;
    }
    kernels::attention_partial(q.data(), c.heads, c.dim, scale, runs.data(), static_cast<int64_t>(runs.size()),
                               stride, c.f16, mx.data() + p, sm.data() + p, acc.data() + p * c.dim, c.parts);
  }

  for (int64_t h = 0; h < c.heads; ++h) {
    std::vector<float> out(static_cast<size_t>(c.dim));
    kernels::attention_merge(mx.data() + h * c.parts, sm.data() + h * c.parts, acc.data() + h * c.parts * c.dim,
                             c.parts, c.dim, out.data());
    // Reference: the query rounded the way the kernel rounds it, everything else in double.
    std::vector<double> s(static_cast<size_t>(c.count));
    double top = -INFINITY;
    for (int64_t j = 0; j < c.count; ++j) {
      double dot = 0;
      for (int64_t i = 0; i < c.dim; ++i) {
        const float qi = c.f16 ? f16_to_f32(f32_to_f16(q[h * c.dim + i])) : q[h * c.dim + i];
        dot += double(qi) * kf[j * stride + i];
      }
      s[j] = dot * scale;
      top = std::max(top, s[j]);
    }
    double total = 0;
    for (auto& v : s) total += (v = std::exp(v - top));
    double vmax = 0;
    for (int64_t i = 0; i < c.dim; ++i) {
      double want = 0;
      for (int64_t j = 0; j < c.count; ++j) {
        want += s[j] / total * vf[j * stride + i];
        vmax = std::max(vmax, std::fabs(double(vf[j * stride + i])));
      }
      // f16 weights are off by up to 2^-11 relative each; f32 only by rounding.
      const double tol = (c.f16 ? 1e-3 : 2e-5) * vmax + 1e-6;
      ASSERT_NEAR(out[i], want, tol) << "heads " << c.heads << " dim " << c.dim << " count " << c.count << " parts "
                                     << c.parts << (c.f16 ? " f16" : " f32") << " head " << h << " i " << i;
    }
  }
}

TEST(AttentionKernel, MatchesSoftmaxReference) {
  uint64_t seed = 1;
  for (bool f16 : {false, true})
    for (int64_t heads : {1, 2, 3, 4, 5, 8})
      for (int64_t dim : {64, 8, 13, 40, 128})
        for (int64_t count : {1, 7, 100})
          for (int64_t parts : {1, 2, 3}) check({heads, dim, count, parts, f16}, seed++);
}

TEST(AttentionKernel, NoPositionsGiveZero) {
  std::vector<float> q(64, 1.0f), mx(2), sm(2), acc(64, NAN), out(32, NAN);
  kernels::attention_partial(q.data(), 2, 32, 0.5f, nullptr, 0, 32, false, mx.data(), sm.data(), acc.data());
  EXPECT_TRUE(std::isinf(mx[0]) && mx[0] < 0);
  EXPECT_EQ(sm[1], 0.0f);
  for (float v : acc) EXPECT_EQ(v, 0.0f);
  kernels::attention_merge(mx.data(), sm.data(), acc.data(), 1, 32, out.data());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], 0.0f);
}

TEST(AttentionKernel, LargeScoresDoNotOverflow) {
  // Scores in the thousands: each part subtracts its own maximum and the merge rescales.
  const int64_t dim = 16, count = 40;
  std::vector<float> q(dim, 30.0f), k(count * dim), v(count * dim);
  for (int64_t j = 0; j < count; ++j)
    for (int64_t i = 0; i < dim; ++i) {
      k[j * dim + i] = static_cast<float>(j) * 0.5f;
      v[j * dim + i] = static_cast<float>(j);
    }
  std::vector<float> mx(2), sm(2), acc(2 * dim), out(dim);
  for (int p = 0; p < 2; ++p) {
    const kernels::KvRun run{k.data() + p * 20 * dim, v.data() + p * 20 * dim, 20};
    kernels::attention_partial(q.data(), 1, dim, 1.0f, &run, 1, dim, false, mx.data() + p, sm.data() + p,
                               acc.data() + p * dim);
  }
  kernels::attention_merge(mx.data(), sm.data(), acc.data(), 2, dim, out.data());
  // Scores step by 240 per position: all the weight is on the last one.
  for (int64_t i = 0; i < dim; ++i) EXPECT_FLOAT_EQ(out[i], 39.0f);
}

}  // namespace
