#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <numeric>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/storage.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"

using namespace tessera;

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one (1.0).
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);
  // 1 + 3*2^-8 is halfway too; the even neighbour is above.
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);
  EXPECT_FLOAT_EQ(bf16_to_f32(0xc0490fdb >> 16), -3.140625f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16RoundTripAndNames) {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 0.000061035156f}) EXPECT_EQ(f16_to_f32(f32_to_f16(v)), v);
  EXPECT_EQ(dtype_from_safetensors("BF16"), DType::BF16);
  EXPECT_FALSE(dtype_from_safetensors("F8_E9").has_value());
  EXPECT_EQ(dtype_size(DType::F16), 2u);
}

TEST(Tensor, ViewsShareStorageAndContiguousCopies) {
  std::vector<float> values(24);
  std::iota(values.begin(), values.end(), 0.0f);
  Tensor t = Tensor::from_vector(values, {2, 3, 4});
  Tensor s = t.slice(1, 1, 3);  // [2, 2, 4]
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.shape(), (Shape{2, 2, 4}));
  auto sv = s.to_vector();
  EXPECT_EQ(sv[0], 4.0f);
  EXPECT_EQ(sv[8], 16.0f);
  Tensor tr = t.select(0, 1).transpose(0, 1);  // [4, 3] of the second matrix
  auto trv = tr.contiguous().to_vector();
  EXPECT_EQ(trv[0], 12.0f);
  EXPECT_EQ(trv[1], 16.0f);
  EXPECT_EQ(trv[3], 13.0f);
  EXPECT_EQ(t.view({6, -1}).shape(), (Shape{6, 4}));
  EXPECT_THROW(t.view({5, 5}), std::exception);
  EXPECT_THROW(s.view({16}), std::exception);
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(b.to(DType::F32).to_vector(), values);  // small integers are exact in bf16
}

TEST(ThreadPool, CoversEveryIndexOnceAndNests) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> hits(10007);
  pool.parallel_for(hits.size(), 3, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) hits[i]++;
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  std::atomic<int> total{0};
  pool.parallel_for(8, 1, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) pool.parallel_for(10, 1, [&](size_t b2, size_t e2) { total += int(e2 - b2); });
  });
  EXPECT_EQ(total.load(), 80);
}

TEST(ThreadPool, SharesEqualItemsEvenly) {
  // 36 items with a grain of 29 still go to both threads in halves, and long loops run as a
  // multiple of the thread count of equal chunks.
  ThreadPool pool(2);
  for (size_t n : {36, 96, 1000}) {
    std::mutex m;
    std::vector<size_t> sizes;
    pool.parallel_for(n, 29, [&](size_t b, size_t e) {
      std::lock_guard lock(m);
      sizes.push_back(e - b);
    });
    EXPECT_EQ(sizes.size() % 2, 0u) << n;
    EXPECT_LE(*std::max_element(sizes.begin(), sizes.end()) - *std::min_element(sizes.begin(), sizes.end()), 1u) << n;
  }
  size_t calls = 0;
  pool.parallel_for(29, 29, [&](size_t, size_t) { ++calls; });  // not above the grain: one call
  EXPECT_EQ(calls, 1u);
}

TEST(MappedFile, HugePageCopyHoldsTheSameBytes) {
  // A file of a few huge pages plus an odd tail, read into huge pages and mapped, byte for byte.
  const auto path = std::filesystem::temp_directory_path() / ("tessera_hugepages_" + std::to_string(::getpid()));
  std::vector<char> bytes((size_t{5} << 20) + 12345);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 2654435761u) >> 13);
  {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  {
    MappedFile mapped(path), copied(path, FileResidency::HugePages);
    EXPECT_EQ(mapped.residency(), FileResidency::Mapped);
    EXPECT_EQ(copied.residency(), FileResidency::HugePages);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(copied.data()) % (size_t{2} << 20), 0u);
    ASSERT_EQ(copied.size(), bytes.size());
    EXPECT_EQ(std::memcmp(copied.data(), bytes.data(), bytes.size()), 0);
    EXPECT_EQ(std::memcmp(mapped.data(), copied.data(), bytes.size()), 0);
  }
  std::filesystem::remove(path);
  EXPECT_THROW(MappedFile(path, FileResidency::HugePages), Error);  // gone: the same error as mapping
  EXPECT_THROW(MappedFile(std::filesystem::temp_directory_path(), FileResidency::HugePages), Error);

  // Small files stay mapped; TESSERA_HUGEPAGES=0 keeps every file mapped.
  EXPECT_EQ(weights_residency(1 << 20), FileResidency::Mapped);
  ::setenv("TESSERA_HUGEPAGES", "0", 1);
  EXPECT_EQ(weights_residency(size_t{100} << 20), FileResidency::Mapped);
  ::unsetenv("TESSERA_HUGEPAGES");
}

TEST(Rng, SeedRepeatsAndNormalHasUnitVariance) {
  Rng a(42), b(42), c(43);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  EXPECT_NE(Rng(42).next_u64(), c.next_u64());
  double sum = 0, sq = 0;
  const int n = 200000;
  Rng r(7);
  for (int i = 0; i < n; ++i) {
    double v = r.normal();
    sum += v;
    sq += v * v;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.02);
}

namespace {
std::vector<float> random_vector(size_t n, uint64_t seed) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(r.normal());
  return v;
}
}  // namespace

class MatmulTest : public ::testing::TestWithParam<std::tuple<DType, int, int, int>> {};

TEST_P(MatmulTest, MatchesNaiveProduct) {
  auto [dtype, m, n, k] = GetParam();
  auto x = random_vector(size_t(m) * k, 1);
  Tensor w = Tensor::from_vector(random_vector(size_t(n) * k, 2), {n, k}).to(dtype);
  auto wf = w.to_vector();  // the values the kernel sees after rounding
  std::vector<float> y(size_t(m) * n);
  kernels::matmul_nt(x.data(), m, kernels::WeightMatrix::of(w), y.data());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double ref = 0;
      for (int c = 0; c < k; ++c) ref += double(x[i * k + c]) * wf[j * k + c];
      ASSERT_NEAR(y[i * n + j], ref, 1e-4 * std::sqrt(double(k)) + 1e-5) << i << "," << j;
    }
  // x[M,N] . W[N,K] with the same weights read the other way round.
  auto x2 = random_vector(size_t(m) * n, 3);
  std::vector<float> y2(size_t(m) * k, 1.0f);
  kernels::matmul_nn(x2.data(), m, kernels::WeightMatrix::of(w), y2.data(), true);
  for (int i = 0; i < m; ++i)
    for (int c = 0; c < k; ++c) {
      double ref = 1.0;
      for (int j = 0; j < n; ++j) ref += double(x2[i * n + j]) * wf[j * k + c];
      ASSERT_NEAR(y2[i * k + c], ref, 1e-4 * std::sqrt(double(n)) + 1e-5);
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulTest,
                         ::testing::Combine(::testing::Values(DType::F32, DType::BF16, DType::F16),
                                            ::testing::Values(1, 3, 8), ::testing::Values(1, 5, 37, 130),
                                            ::testing::Values(1, 7, 64, 200)));

TEST(Ops, SoftmaxLayerNormRope) {
  std::vector<float> v = {1000.0f, 1000.0f, -INFINITY};
  kernels::softmax(v.data(), 3);
  EXPECT_FLOAT_EQ(v[0], 0.5f);
  EXPECT_FLOAT_EQ(v[2], 0.0f);

  std::vector<float> x = {1, 2, 3, 4}, g = {1, 1, 2, 1}, y(4);
  Tensor gt = Tensor::from_vector(g, {1, 4});
  kernels::layer_norm(x.data(), 1, 4, kernels::WeightMatrix::of(gt), 0.0f, y.data());
  const float s = 1.0f / std::sqrt(1.25f);
  EXPECT_NEAR(y[0], -1.5f * s, 1e-6);
  EXPECT_NEAR(y[2], 2 * 0.5f * s, 1e-6);

  // Position 0 leaves vectors unchanged; rotation preserves each pair's norm.
  std::vector<float> q = {1, 2, 3, 4}, inv = {1.0f, 0.01f};
  kernels::rope_rotate_half(q.data(), 1, 4, 0, inv.data());
  EXPECT_EQ(q, (std::vector<float>{1, 2, 3, 4}));
  kernels::rope_rotate_half(q.data(), 1, 4, 5, inv.data());
  EXPECT_NEAR(q[0] * q[0] + q[2] * q[2], 10.0f, 1e-5);
  EXPECT_NEAR(q[0], 1 * std::cos(5.0f) - 3 * std::sin(5.0f), 1e-5);
}

