#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/matmul.h"

using namespace tessera;
using tessera::kernels::sgemm;
using tessera::kernels::sgemm_reference;

namespace {

struct Case {
  bool trans_a, trans_b;
  int64_t m, n, k;
  float alpha, beta;
  int64_t pad_a = 0, pad_b = 0, pad_c = 0;  // extra elements per row beyond the width
  int64_t row_step = 1;  // compare every row_step-th row of C (and the last): for big shapes
};

std::string describe(const Case& t) {
  return std::string(t.trans_a ? "T" : "N") + (t.trans_b ? "T" : "N") + " m=" + std::to_string(t.m) +
         " n=" + std::to_string(t.n) + " k=" + std::to_string(t.k) + " alpha=" + std::to_string(t.alpha) +
         " beta=" + std::to_string(t.beta) + " pads=" + std::to_string(t.pad_a) + "," + std::to_string(t.pad_b) +
         "," + std::to_string(t.pad_c);
}

std::vector<float> random_vector(size_t size, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(size);
  for (float& x : v) x = dist(rng);
  return v;
}

// Runs sgemm and sgemm_reference on the same random operands and compares every element of C,
// including the padding between rows, which must be left alone.
void check(const Case& t, std::mt19937& rng) {
  SCOPED_TRACE(describe(t));
  // Stored shapes: A is m x k (k x m when transposed), B is k x n (n x k when transposed).
  const int64_t a_rows = t.trans_a ? t.k : t.m, a_cols = t.trans_a ? t.m : t.k;
  const int64_t b_rows = t.trans_b ? t.n : t.k, b_cols = t.trans_b ? t.k : t.n;
  const int64_t lda = a_cols + t.pad_a, ldb = b_cols + t.pad_b, ldc = t.n + t.pad_c;
  const auto a = random_vector(static_cast<size_t>(std::max<int64_t>(1, a_rows * lda)), rng);
  const auto b = random_vector(static_cast<size_t>(std::max<int64_t>(1, b_rows * ldb)), rng);
  std::vector<float> c0 = random_vector(static_cast<size_t>(t.m * ldc), rng);
  if (t.beta == 0.0f) {
    // beta == 0 must not read C: NaN there must not leak into the result.
    for (int64_t i = 0; i < t.m; ++i)
      for (int64_t j = 0; j < t.n; ++j) c0[i * ldc + j] = std::numeric_limits<float>::quiet_NaN();
  }
  std::vector<float> expected = c0, actual = c0;
  auto checked = [&](int64_t i) { return i % t.row_step == 0 || i == t.m - 1; };
  for (int64_t i = 0; i < t.m; ++i) {
    // Row i of C needs row i of op(A): A + i*lda, or column i of A when transposed.
    if (!checked(i)) continue;
    const float* ai = a.data() + (t.trans_a ? i : i * lda);
    sgemm_reference(t.trans_a, t.trans_b, 1, t.n, t.k, t.alpha, ai, lda, b.data(), ldb, t.beta,
                    expected.data() + i * ldc, ldc);
  }
  sgemm(t.trans_a, t.trans_b, t.m, t.n, t.k, t.alpha, a.data(), lda, b.data(), ldb, t.beta, actual.data(), ldc);
  // Each term is below |alpha| in size; f32 accumulation errs by about sqrt(k) ulps of the sum.
  const float tolerance = 2e-6f * std::fabs(t.alpha) * (8.0f + static_cast<float>(t.k));
  int reported = 0;
  for (int64_t i = 0; i < t.m; ++i) {
    if (!checked(i)) continue;
    for (int64_t j = 0; j < ldc; ++j) {
      const size_t at = static_cast<size_t>(i * ldc + j);
      if (j >= t.n) {
        ASSERT_EQ(std::memcmp(&actual[at], &c0[at], sizeof(float)), 0) << "padding of C written at " << i << "," << j;
        continue;
      }
      ASSERT_FALSE(std::isnan(actual[at])) << "at " << i << "," << j;
      if (std::fabs(actual[at] - expected[at]) > tolerance && reported++ < 5)
        ADD_FAILURE() << "at " << i << "," << j << ": " << actual[at] << " vs " << expected[at];
    }
  }
}

std::vector<Case> odd_shapes() {
  std::vector<Case> cases;
  const int64_t shapes[][3] = {{1, 1, 1},    {1, 1, 7},    {2, 3, 5},    {5, 17, 3},    {6, 16, 8},
                               {7, 15, 9},   {13, 33, 1},  {1, 40, 300}, {40, 1, 300},  {17, 31, 257},
                               {25, 47, 40}, {96, 64, 64}, {97, 81, 19}, {150, 35, 520}, {37, 290, 70},
                               {8, 600, 33}};
  for (const auto& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) cases.push_back({ta == 1, tb == 1, s[0], s[1], s[2], 1.0f, 0.0f});
  return cases;
}

// Shapes big enough to cross every blocking boundary (several slices of k, several row blocks,
// partial micro-panels at both ends) and to be split over threads.
std::vector<Case> blocked_shapes() {
  return {
      {false, false, 301, 275, 600, 1.0f, 0.0f},
      {true, false, 301, 275, 600, 0.5f, 1.0f},
      {false, true, 301, 275, 600, -1.5f, 0.25f},
      {true, true, 301, 275, 600, 2.0f, -1.0f},
      {false, true, 77, 200, 768, 1.0f, 0.0f},
      {false, false, 500, 130, 40, 1.0f, 0.0f},
      {true, false, 7, 4200, 33, 1.0f, 1.0f},  // more columns than one block of B
      {false, true, 3, 900, 520, 1.0f, 0.0f},
  };
}

void run_all(std::mt19937& rng) {
  for (const auto& t : odd_shapes()) check(t, rng);
  for (const auto& t : blocked_shapes()) check(t, rng);
}

}  // namespace

TEST(Sgemm, MatchesReferenceOnOddShapes) {
  std::mt19937 rng(1);
  for (const auto& t : odd_shapes()) check(t, rng);
}

TEST(Sgemm, MatchesReferenceAcrossBlocks) {
  std::mt19937 rng(2);
  for (const auto& t : blocked_shapes()) check(t, rng);
}

TEST(Sgemm, AlphaBetaAndLeadingDimensions) {
  std::mt19937 rng(3);
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      for (const auto& [alpha, beta] : {std::pair{1.0f, 1.0f}, {0.5f, 0.0f}, {-2.0f, 3.0f}, {1.0f, -1.0f}}) {
        check({ta == 1, tb == 1, 3, 45, 67, alpha, beta, 2, 1, 5}, rng);
        check({ta == 1, tb == 1, 14, 29, 101, alpha, beta, 1, 4, 3}, rng);
        check({ta == 1, tb == 1, 23, 45, 67, alpha, beta, 3, 5, 7}, rng);
        check({ta == 1, tb == 1, 130, 70, 300, alpha, beta, 1, 17, 2}, rng);
      }
    }
  }
}

TEST(Sgemm, EmptyProductScalesC) {
  std::mt19937 rng(4);
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (float beta : {0.0f, 1.0f, 2.5f}) check({ta == 1, tb == 1, 9, 21, 0, 1.0f, beta, 1, 1, 3}, rng);
  // Nothing to do: C is not touched.
  float c = 7.0f;
  sgemm(false, false, 0, 1, 5, 1.0f, nullptr, 5, nullptr, 1, 0.0f, &c, 1);
  sgemm(false, false, 1, 0, 5, 1.0f, nullptr, 5, nullptr, 1, 0.0f, &c, 1);
  EXPECT_EQ(c, 7.0f);
}

TEST(Sgemm, SameResultOnOneThread) {
  // A call from inside a pool task runs on that thread alone, so this covers the serial path
  // with shapes that are otherwise split over threads.
  std::mt19937 rng(5);
  ThreadPool pool(2);
  pool.parallel_for(2, 1, [&](size_t begin, size_t) {
    if (begin == 0) run_all(rng);
  });
}

TEST(Sgemm, MoreOfBThanOnePackedBlock) {
  // k * n beyond what is packed at once. One row block: B is packed per task anyway. Several:
  // B is packed a range of k at a time (k > 2n) or a block of columns at a time.
  std::mt19937 rng(8);
  check({false, false, 20, 1100, 4000, 1.0f, 0.5f}, rng);
  check({true, true, 20, 1100, 4000, 1.0f, 0.0f}, rng);
  check({false, true, 300, 1100, 4000, 1.0f, 0.5f, 0, 0, 0, 37}, rng);
  check({true, false, 150, 300, 14000, -1.0f, 0.0f, 0, 0, 0, 37}, rng);
  check({true, false, 150, 2100, 2100, 1.0f, 2.0f, 0, 0, 0, 37}, rng);
  check({false, false, 150, 2100, 2100, 1.0f, 0.0f, 0, 0, 0, 37}, rng);
}

TEST(Sgemm, AttentionAndConvolutionShapes) {
  std::mt19937 rng(6);
  check({false, true, 512, 256, 40, 1.0f / std::sqrt(40.0f), 0.0f}, rng);  // scores Q K^T, head_dim 40
  check({false, false, 512, 40, 256, 1.0f, 0.0f}, rng);                     // probabilities . V
  check({false, false, 256, 64, 576, 1.0f, 0.0f}, rng);                     // im2col 3x3 over 64 channels
}

TEST(MatmulNt, F32WeightsMatchReferenceForManyRows) {
  std::mt19937 rng(7);
  for (const int64_t m : {1, 5, 16, 33, 200}) {
    const int64_t n = 67, k = 130;
    const auto x = random_vector(static_cast<size_t>(m * k), rng);
    const auto w = random_vector(static_cast<size_t>(n * k), rng);
    std::vector<float> y(static_cast<size_t>(m * n), std::numeric_limits<float>::quiet_NaN()), expected(y.size());
    tessera::kernels::WeightMatrix wm{w.data(), DType::F32, n, k};
    tessera::kernels::matmul_nt(x.data(), m, wm, y.data());
    sgemm_reference(false, true, m, n, k, 1.0f, x.data(), k, w.data(), k, 0.0f, expected.data(), n);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], expected[i], 1e-4f) << "m=" << m << " at " << i;
  }
}
