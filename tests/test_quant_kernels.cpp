// Block-quantized formats and the integer products over them: layouts checked against blocks
// built byte by byte from ggml's definitions, quantizer round trips, every SIMD path against a
// reference with the same integer math and against f32 math, and printed throughput.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant.h"

using namespace tessera;
using kernels::SimdPath;

namespace {

const DType kFormats[] = {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K};

std::string format_name(const ::testing::TestParamInfo<DType>& info) { return std::string(dtype_name(info.param)); }

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

std::vector<float> normal_values(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

std::vector<float> dequantized(DType dtype, const std::vector<uint8_t>& data, int64_t rows, int64_t cols) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  const size_t row_bytes = dtype_bytes(dtype, static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r)
    kernels::dequantize_row_reference(dtype, data.data() + r * row_bytes, out.data() + r * cols, cols);
  return out;
}

// Weight blocks of random bytes (every quant value and packed scale occurs, Q8_0's -128 and
// Q6_K's -128 scale included) with moderate f16 scales of either sign.
std::vector<uint8_t> random_blocks(DType dtype, int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> mag(0.002f, 0.05f);
  const size_t block_bytes = dtype_block_bytes(dtype);
  const size_t blocks = static_cast<size_t>(rows * cols) / dtype_block_elems(dtype);
  std::vector<uint8_t> data(blocks * block_bytes);
  for (auto& b : data) b = static_cast<uint8_t>(byte(gen));
  auto scale = [&] { return (byte(gen) & 1 ? -1.0f : 1.0f) * mag(gen); };
  for (size_t b = 0; b < blocks; ++b) {
    uint8_t* p = data.data() + b * block_bytes;
    switch (dtype) {
      case DType::Q8_0:
      case DType::Q4_0: put_f16(p, scale()); break;
      case DType::Q4_1: put_f16(p, scale()); put_f16(p + 2, scale() * 8); break;
      case DType::Q4_K: put_f16(p, std::fabs(scale()) / 16); put_f16(p + 2, std::fabs(scale()) / 16); break;
      case DType::Q6_K: put_f16(p + 208, scale() / 64); break;
      default: break;
    }
  }
  return data;
}

// The activation quantization the kernels promise (quant.h), written out independently:
// per block of 32 (256 for the K formats) d = amax / 127 and q = round-half-even(x / d).
std::vector<double> quantized_activations(DType weights, const float* x, int64_t m, int64_t k,
                                          std::vector<double>* half_steps = nullptr) {
  const int64_t block = dtype_block_elems(weights) == 256 ? 256 : 32;
  std::vector<double> out(static_cast<size_t>(m * k));
  if (half_steps) half_steps->assign(out.size(), 0.0);
  for (int64_t i = 0; i < m * k; i += block) {
    float amax = 0.0f;
    for (int64_t l = 0; l < block; ++l) amax = std::max(amax, std::fabs(x[i + l]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int64_t l = 0; l < block; ++l) {
      out[i + l] = double(d) * std::nearbyint(x[i + l] * id);
      if (half_steps) (*half_steps)[i + l] = 0.5 * d;
    }
  }
  return out;
}

// ---- known answers from hand-built blocks ------------------------------------------------

TEST(QuantLayout, Q8_0KnownAnswer) {
  uint8_t block[34];
  block[0] = 0x00, block[1] = 0x38;  // f16 0.5
  for (int l = 0; l < 32; ++l) block[2 + l] = static_cast<uint8_t>(l - 16);
  block[2] = 0x80;  // -128
  float out[32], ref[32];
  kernels::dequantize_row(DType::Q8_0, block, out, 32);
  kernels::dequantize_row_reference(DType::Q8_0, block, ref, 32);
  EXPECT_EQ(out[0], -64.0f);
  for (int l = 1; l < 32; ++l) EXPECT_EQ(out[l], 0.5f * (l - 16)) << l;
  for (int l = 0; l < 32; ++l) EXPECT_EQ(out[l], ref[l]);
}

TEST(QuantLayout, Q4_0KnownAnswer) {
  uint8_t block[18];
  block[0] = 0x00, block[1] = 0x40;  // f16 2.0
  for (int j = 0; j < 16; ++j) block[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float out[32], ref[32];
  kernels::dequantize_row(DType::Q4_0, block, out, 32);
  kernels::dequantize_row_reference(DType::Q4_0, block, ref, 32);
  EXPECT_EQ(out[0], -16.0f);
  EXPECT_EQ(out[15], 14.0f);
  EXPECT_EQ(out[16], 14.0f);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 2.0f * (j - 8)) << j;
    EXPECT_EQ(out[j + 16], 2.0f * (7 - j)) << j;
  }
  for (int l = 0; l < 32; ++l) EXPECT_EQ(out[l], ref[l]);
}

TEST(QuantLayout, Q4_1KnownAnswer) {
  uint8_t block[20];
  block[0] = 0x00, block[1] = 0x34;  // d = f16 0.25
  block[2] = 0x00, block[3] = 0xbc;  // m = f16 -1.0
  for (int j = 0; j < 16; ++j) block[4 + j] = static_cast<uint8_t>(j | ((j ^ 5) << 4));
  float out[32], ref[32];
  kernels::dequantize_row(DType::Q4_1, block, out, 32);
  kernels::dequantize_row_reference(DType::Q4_1, block, ref, 32);
  EXPECT_EQ(out[0], -1.0f);
  EXPECT_EQ(out[16], 0.25f);  // nibble 5
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], 0.25f * j - 1.0f) << j;
    EXPECT_EQ(out[j + 16], 0.25f * (j ^ 5) - 1.0f) << j;
  }
  for (int l = 0; l < 32; ++l) EXPECT_EQ(out[l], ref[l]);
}

// ggml's get_scale_min_k4, written out for the test.
void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

TEST(QuantLayout, Q4_KKnownAnswer) {
  uint8_t block[144];
  block[0] = 0x00, block[1] = 0x3c;  // d = 1.0
  block[2] = 0x00, block[3] = 0x38;  // dmin = 0.5
  // sc = {1, 2, 3, 4, 33, 34, 63, 5}, mins = {0, 1, 2, 3, 40, 17, 63, 8}, packed by hand:
  // bytes 0-3: sc[j] | (sc[j+4] >> 4) << 6; bytes 4-7: m[j] | (m[j+4] >> 4) << 6;
  // bytes 8-11: (sc[j+4] & 15) | (m[j+4] & 15) << 4.
  const uint8_t packed[12] = {0x81, 0x82, 0xc3, 0x04, 0x80, 0x41, 0xc2, 0x03, 0x81, 0x12, 0xff, 0x85};
  std::memcpy(block + 4, packed, 12);
  for (int i = 0; i < 128; ++i) block[16 + i] = static_cast<uint8_t>(i * 7 + 3);
  const int want_sc[8] = {1, 2, 3, 4, 33, 34, 63, 5}, want_m[8] = {0, 1, 2, 3, 40, 17, 63, 8};
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    scale_min_k4(j, packed, sc, m);
    ASSERT_EQ(sc, want_sc[j]) << j;
    ASSERT_EQ(m, want_m[j]) << j;
  }
  float out[256], ref[256];
  kernels::dequantize_row(DType::Q4_K, block, out, 256);
  kernels::dequantize_row_reference(DType::Q4_K, block, ref, 256);
  // Element 0: low nibble of qs[0] = 3, sub-block 0: 1 * 1 * 3 - 0.5 * 0.
  EXPECT_EQ(out[0], 3.0f);
  // Element 32: high nibble of qs[0] = 0, sub-block 1: 2 * 0 - 0.5 * 1.
  EXPECT_EQ(out[32], -0.5f);
  for (int e = 0; e < 256; ++e) {
    const int sub = e / 32, chunk = e / 64, l = e % 32;
    const uint8_t byte = block[16 + 32 * chunk + l];
    const int nib = (e % 64) < 32 ? (byte & 15) : (byte >> 4);
    const float expect = 1.0f * want_sc[sub] * nib - 0.5f * want_m[sub];
    EXPECT_EQ(out[e], expect) << e;
    EXPECT_EQ(ref[e], expect) << e;
  }
}

TEST(QuantLayout, Q6_KKnownAnswer) {
  uint8_t block[210];
  for (int i = 0; i < 128; ++i) block[i] = static_cast<uint8_t>(i * 5 + 3);          // ql
  for (int i = 0; i < 64; ++i) block[128 + i] = static_cast<uint8_t>(i * 37 + 11);  // qh
  int8_t scales[16];
  for (int g = 0; g < 16; ++g) scales[g] = static_cast<int8_t>(g * 17 - 128);
  std::memcpy(block + 192, scales, 16);
  block[208] = 0x00, block[209] = 0x30;  // d = 0.125
  float out[256], ref[256];
  kernels::dequantize_row(DType::Q6_K, block, out, 256);
  kernels::dequantize_row_reference(DType::Q6_K, block, ref, 256);
  // Element 0: ql[0] = 3 (low 4 bits 3), qh[0] = 11 (bits 0-1 = 3): q = 3 | 3 << 4 = 51;
  // 0.125 * -128 * (51 - 32).
  EXPECT_EQ(out[0], 0.125f * -128.0f * 19.0f);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, r = e % 128, part = r / 32, l = r % 32;
    const uint8_t lo_byte = block[64 * h + l + (part & 1) * 32];
    const int low = part < 2 ? (lo_byte & 15) : (lo_byte >> 4);
    const int high = (block[128 + 32 * h + l] >> (2 * part)) & 3;
    const float expect = 0.125f * static_cast<float>(scales[e / 16]) * static_cast<float>((low | (high << 4)) - 32);
    EXPECT_EQ(out[e], expect) << e;
    EXPECT_EQ(ref[e], expect) << e;
  }
}

// ---- quantizers ----------------------------------------------------------------------------

class QuantFormat : public ::testing::TestWithParam<DType> {};

TEST_P(QuantFormat, RoundTripErrorIsBounded) {
  const DType dtype = GetParam();
  const int64_t n = 256 * 64;
  auto x = normal_values(static_cast<size_t>(n), 11);
  for (int64_t i = 0; i < n; i += 1000) x[static_cast<size_t>(i)] *= 6.0f;  // outliers
  std::fill(x.begin() + 512, x.begin() + 768, 0.0f);                        // an all-zero stretch
  std::vector<uint8_t> q(dtype_bytes(dtype, static_cast<size_t>(n)));
  kernels::quantize_row(dtype, x.data(), q.data(), n);
  std::vector<float> back(static_cast<size_t>(n)), ref(static_cast<size_t>(n));
  kernels::dequantize_row(dtype, q.data(), back.data(), n);
  kernels::dequantize_row_reference(dtype, q.data(), ref.data(), n);
  double err2 = 0, sig2 = 0;
  const int64_t block = static_cast<int64_t>(dtype_block_elems(dtype));
  for (int64_t b = 0; b < n; b += block) {
    float amax = 0, lo = 0, hi = 0;
    for (int64_t l = 0; l < block; ++l) {
      amax = std::max(amax, std::fabs(x[b + l]));
      lo = std::min(lo, x[b + l]);
      hi = std::max(hi, x[b + l]);
    }
    for (int64_t l = 0; l < block; ++l) {
      const size_t i = static_cast<size_t>(b + l);
      ASSERT_NEAR(back[i], ref[i], 1e-6f * (std::fabs(ref[i]) + amax)) << i;
      const float e = std::fabs(back[i] - x[i]);
      switch (dtype) {  // worst cases of each rounding rule, with room for the f16 scales
        case DType::Q8_0: ASSERT_LE(e, amax / 127 * 0.5f + amax * 1e-3f + 1e-7f) << i; break;
        case DType::Q4_0: ASSERT_LE(e, amax / 8 * 1.01f + 1e-7f) << i; break;
        case DType::Q4_1: ASSERT_LE(e, (hi - lo) / 15 * 0.5f + (hi - lo + std::fabs(lo)) * 1e-3f + 1e-6f) << i; break;
        default: ASSERT_LE(e, amax * 0.2f + 1e-6f) << i; break;
      }
      err2 += double(e) * e;
      sig2 += double(x[i]) * x[i];
    }
  }
  const double rel = std::sqrt(err2 / sig2);
  const double limit = dtype == DType::Q8_0 ? 0.006 : dtype == DType::Q6_K ? 0.03 : 0.13;
  EXPECT_LT(rel, limit) << "relative rms error " << rel;
  // A zero block comes back as zeros.
  for (int i = 512; i < 768; ++i) ASSERT_EQ(back[static_cast<size_t>(i)], 0.0f) << i;
}

TEST_P(QuantFormat, VectorizedDequantizeMatchesReference) {
  const DType dtype = GetParam();
  const int64_t n = 256 * 40;
  const auto data = random_blocks(dtype, 1, n, 5);
  std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
  kernels::dequantize_row(dtype, data.data(), a.data(), n);
  kernels::dequantize_row_reference(dtype, data.data(), b.data(), n);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-6f * std::fabs(b[i]) + 1e-9f) << i;
}

TEST_P(QuantFormat, RejectsPartialBlocks) {
  const DType dtype = GetParam();
  std::vector<float> x(300);
  std::vector<uint8_t> q(1024);
  EXPECT_THROW(kernels::quantize_row(dtype, x.data(), q.data(), 33), Error);
  EXPECT_THROW(kernels::dequantize_row(dtype, q.data(), x.data(), 33), Error);
  const int64_t k = static_cast<int64_t>(dtype_block_elems(dtype)) + 16;
  std::vector<uint8_t> w(4096);
  std::vector<float> xs(static_cast<size_t>(k)), y(4);
  EXPECT_THROW(kernels::matmul_nt(xs.data(), 1, kernels::WeightMatrix{w.data(), dtype, 1, k}, y.data()), Error);
}

// ---- products ------------------------------------------------------------------------------

void check_product(DType dtype, SimdPath path, int64_t m, int64_t n, int64_t k, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << dtype_name(dtype) << " " << kernels::simd_path_name(path) << " M=" << m
                                    << " N=" << n << " K=" << k);
  const auto w = random_blocks(dtype, n, k, seed);
  auto x = normal_values(static_cast<size_t>(m * k), seed + 1);
  if (m > 1) std::fill(x.begin() + k, x.begin() + 2 * k, 0.0f);                            // a zero row
  if (m > 2) for (int64_t c = 0; c < k; c += 37) x[static_cast<size_t>(2 * k + c)] *= 40;  // outliers
  const auto wf = dequantized(dtype, w, n, k);
  std::vector<double> half_step;
  const auto xq = quantized_activations(dtype, x.data(), m, k, &half_step);

  std::vector<float> y(static_cast<size_t>(m * n), NAN);
  kernels::matmul_nt_quantized(x.data(), m, w.data(), dtype, n, k, y.data(), path);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const float* wr = wf.data() + j * k;
      double same_math = 0, f32_math = 0, abs_sum = 0, act_bound = 0, wmax = 0, amass = 0;
      for (int64_t c = 0; c < k; ++c) {
        const double a = xq[static_cast<size_t>(i * k + c)];
        same_math += double(wr[c]) * a;
        f32_math += double(wr[c]) * x[static_cast<size_t>(i * k + c)];
        abs_sum += std::fabs(double(wr[c]) * a);
        act_bound += std::fabs(double(wr[c])) * half_step[static_cast<size_t>(i * k + c)];
        wmax = std::max(wmax, std::fabs(double(wr[c])));
        amass += std::fabs(a);
      }
      const double got = y[static_cast<size_t>(i * n + j)];
      // Same integer math: only f32 rounding (K-quant weights are d*sc*q - dmin*m, whose two
      // parts may cancel, hence the second term).
      ASSERT_NEAR(got, same_math, 1e-5 * abs_sum + 2e-6 * wmax * amass + 1e-6) << i << "," << j;
      // f32 activations: off by at most half an activation step per weight.
      ASSERT_NEAR(got, f32_math, act_bound * 1.001 + 1e-5 * abs_sum + 2e-6 * wmax * amass + 1e-6) << i << "," << j;
    }
}

TEST_P(QuantFormat, ProductsMatchReferenceOnEveryPath) {
  const DType dtype = GetParam();
  const bool k_quant = dtype_block_elems(dtype) == 256;
  const std::vector<int64_t> ks = k_quant ? std::vector<int64_t>{256, 512, 768} : std::vector<int64_t>{32, 256, 288};
  uint64_t seed = 100;
  for (SimdPath path : kernels::supported_paths())
    for (int64_t k : ks)
      for (int64_t m : {1, 2, 7, 33})
        for (int64_t n : {1, 5, 100, 1030}) check_product(dtype, path, m, n, k, seed++);
}

TEST_P(QuantFormat, PathsAgreeWithScalar) {
  const DType dtype = GetParam();
  const int64_t k = dtype_block_elems(dtype) == 256 ? 1024 : 32 * 37, m = 9, n = 67;
  const auto w = random_blocks(dtype, n, k, 77);
  const auto x = normal_values(static_cast<size_t>(m * k), 78);
  std::vector<float> ref(static_cast<size_t>(m * n)), y(static_cast<size_t>(m * n));
  kernels::matmul_nt_quantized(x.data(), m, w.data(), dtype, n, k, ref.data(), SimdPath::Scalar);
  const auto wf = dequantized(dtype, w, n, k);
  const auto xq = quantized_activations(dtype, x.data(), m, k);
  for (SimdPath path : kernels::supported_paths()) {
    kernels::matmul_nt_quantized(x.data(), m, w.data(), dtype, n, k, y.data(), path);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double mass = 0;
        for (int64_t c = 0; c < k; ++c) mass += std::fabs(double(wf[j * k + c]) * xq[i * k + c]);
        ASSERT_NEAR(y[i * n + j], ref[i * n + j], 1e-5 * mass) << kernels::simd_path_name(path) << " " << i << "," << j;
      }
  }
}

TEST_P(QuantFormat, MatmulUsesTheForcedPath) {
  const DType dtype = GetParam();
  const int64_t k = 512, m = 3, n = 40;
  const auto w = random_blocks(dtype, n, k, 9);
  const auto x = normal_values(static_cast<size_t>(m * k), 10);
  const kernels::WeightMatrix wm{w.data(), dtype, n, k};
  std::vector<float> direct(static_cast<size_t>(m * n)), via(static_cast<size_t>(m * n));
  for (SimdPath path : kernels::supported_paths()) {
    kernels::set_simd_path_for_testing(path);
    EXPECT_EQ(kernels::active_simd_path(), path);
    kernels::matmul_nt(x.data(), m, wm, via.data());
    kernels::matmul_nt_quantized(x.data(), m, w.data(), dtype, n, k, direct.data(), path);
    EXPECT_EQ(via, direct) << kernels::simd_path_name(path);
  }
  kernels::set_simd_path_for_testing(std::nullopt);
  // Rows of a stacked matrix: the second half on its own gives the second half of the outputs.
  std::vector<float> all(static_cast<size_t>(n)), half(static_cast<size_t>(n / 2));
  kernels::matmul_nt(x.data(), 1, wm, all.data());
  kernels::matmul_nt(x.data(), 1, wm.row_block(n / 2, n), half.data());
  for (int64_t j = 0; j < n / 2; ++j) EXPECT_EQ(half[j], all[n / 2 + j]);
}

TEST_P(QuantFormat, MultiProductEqualsSeparateProducts) {
  // Weights of different row counts (one of a single row, one not a multiple of the 16-row
  // unit) in one loop give the same outputs as one product each, on every path and thread count.
  const DType dtype = GetParam();
  const int64_t k = dtype_block_elems(dtype) == 256 ? 512 : 32 * 11;
  const int64_t rows[] = {100, 1, 37, 16};
  std::vector<std::vector<uint8_t>> ws;
  for (int i = 0; i < 4; ++i) ws.push_back(random_blocks(dtype, rows[i], k, 200 + i));
  for (int64_t m : {1, 3}) {
    const auto x = normal_values(static_cast<size_t>(m * k), 300 + m);
    for (SimdPath path : kernels::supported_paths()) {
      std::vector<std::vector<float>> want(4), got(4);
      std::vector<kernels::QuantizedProduct> products;
      for (int i = 0; i < 4; ++i) {
        want[i].resize(static_cast<size_t>(m * rows[i]));
        got[i].assign(want[i].size(), NAN);
        kernels::matmul_nt_quantized(x.data(), m, ws[i].data(), dtype, rows[i], k, want[i].data(), path);
        products.push_back({ws[i].data(), rows[i], got[i].data()});
      }
      kernels::matmul_nt_quantized_multi(x.data(), m, dtype, k, products.data(), 4, path);
      for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i], want[i]) << kernels::simd_path_name(path) << " m=" << m << " #" << i;
    }
    // Through matmul_nt_multi, on the default path.
    std::vector<float> a(static_cast<size_t>(m * rows[0])), b(static_cast<size_t>(m * rows[2]));
    std::vector<float> a1(a.size()), b1(b.size());
    const kernels::WeightMatrix wa{ws[0].data(), dtype, rows[0], k}, wb{ws[2].data(), dtype, rows[2], k};
    kernels::matmul_nt_multi(x.data(), m, {{wa, a.data()}, {wb, b.data()}});
    kernels::matmul_nt(x.data(), m, wa, a1.data());
    kernels::matmul_nt(x.data(), m, wb, b1.data());
    EXPECT_EQ(a, a1);
    EXPECT_EQ(b, b1);
  }
}

TEST_P(QuantFormat, MatmulNnDequantizes) {
  const DType dtype = GetParam();
  const int64_t kk = 5, n = static_cast<int64_t>(dtype_block_elems(dtype)) * 3, m = 2;  // W is [K, N]
  const auto w = random_blocks(dtype, kk, n, 21);
  const auto wf = dequantized(dtype, w, kk, n);
  const auto x = normal_values(static_cast<size_t>(m * kk), 22);
  std::vector<float> y(static_cast<size_t>(m * n), 1.0f);
  kernels::matmul_nn(x.data(), m, kernels::WeightMatrix{w.data(), dtype, kk, n}, y.data(), true);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < n; ++c) {
      double ref = 1.0, mass = 1.0;
      for (int64_t r = 0; r < kk; ++r) {
        ref += double(x[i * kk + r]) * wf[r * n + c];
        mass += std::fabs(double(x[i * kk + r]) * wf[r * n + c]);
      }
      ASSERT_NEAR(y[i * n + c], ref, 1e-5 * mass) << i << "," << c;
    }
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantFormat, ::testing::ValuesIn(kFormats), format_name);

TEST(QuantDispatch, PathsAndNames) {
  const auto paths = kernels::supported_paths();
  ASSERT_FALSE(paths.empty());
  EXPECT_EQ(paths.front(), SimdPath::Scalar);
  EXPECT_EQ(kernels::simd_path_name(SimdPath::Avx512Vnni), "avx512");
  // The default is a supported path (the widest unless TESSERA_SIMD caps it).
  EXPECT_NE(std::find(paths.begin(), paths.end(), kernels::active_simd_path()), paths.end());
}

// Prints the default path; run on its own below with TESSERA_SIMD set.
TEST(QuantDispatch, PrintsDefaultPath) {
  std::printf("default simd path: %s\n", std::string(kernels::simd_path_name(kernels::active_simd_path())).c_str());
}

TEST(QuantDispatch, EnvironmentCapsThePath) {
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  ASSERT_GT(len, 0);
  self[len] = 0;
  auto default_path_with = [&](const std::string& env) {
    const std::string cmd =
        "TESSERA_SIMD=" + env + " '" + self + "' --gtest_filter=QuantDispatch.PrintsDefaultPath 2>&1";
    std::string out;
    if (FILE* pipe = popen(cmd.c_str(), "r")) {
      char buf[512];
      while (fgets(buf, sizeof(buf), pipe)) out += buf;
      pclose(pipe);
    }
    const auto at = out.find("default simd path: ");
    return at == std::string::npos ? out : out.substr(at + 19, out.find('\n', at) - at - 19);
  };
  EXPECT_EQ(default_path_with("scalar"), "scalar");
  const auto paths = kernels::supported_paths();
  const bool has_avx2 = std::find(paths.begin(), paths.end(), SimdPath::Avx2) != paths.end();
  EXPECT_EQ(default_path_with("avx2"), has_avx2 ? "avx2" : "scalar");
  EXPECT_EQ(default_path_with("avx512"), std::string(kernels::simd_path_name(paths.back())));
}

// ---- throughput (printed, not asserted) --------------------------------------------------------

// Runs fn on one thread: inside a pool task, nested parallel loops run serially.
template <class Fn>
void single_threaded(Fn&& fn) {
  ThreadPool::global().parallel_for(2, 1, [&](size_t begin, size_t) {
    if (begin == 0) fn();
  });
}

template <class Fn>
double seconds_per_call(Fn&& fn) {
  fn();  // warm up
  int calls = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    fn();
    ++calls;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < 0.25 && calls < 200);
  return elapsed / calls;
}

TEST(QuantPerf, PrintsThroughput) {
  const int64_t n = 4096, k = 4096, m_prefill = 128;
  const auto x = normal_values(static_cast<size_t>(m_prefill * k), 3);
  std::vector<float> y(static_cast<size_t>(m_prefill * n));
  struct Case {
    DType dtype;
    std::vector<uint8_t> data;
  };
  std::vector<Case> cases;
  for (DType dtype : {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K}) cases.push_back({dtype, random_blocks(dtype, n, k, 1)});
  cases.push_back({DType::F32, {}});
  {
    const auto wf = normal_values(static_cast<size_t>(n * k), 4, 0.02f);
    cases.back().data.resize(wf.size() * sizeof(float));
    std::memcpy(cases.back().data.data(), wf.data(), cases.back().data.size());
  }
  const size_t threads = ThreadPool::global().size();
  std::printf("[quant perf] %zux%zu weights, cpu threads in pool: %zu\n", size_t(n), size_t(k), threads);
  for (const auto& c : cases) {
    const kernels::WeightMatrix wm{c.data.data(), c.dtype, n, k};
    const double bytes = static_cast<double>(c.data.size());
    // Every format on the default path; Q8_0 and Q4_0 on each SIMD path.
    std::vector<SimdPath> paths = {kernels::active_simd_path()};
    if (c.dtype == DType::F32) paths = {SimdPath::Avx2};
    if (c.dtype == DType::Q8_0 || c.dtype == DType::Q4_0) {
      paths.clear();
      for (SimdPath p : kernels::supported_paths())
        if (p != SimdPath::Scalar) paths.push_back(p);
    }
    for (SimdPath path : paths) {
      kernels::set_simd_path_for_testing(path);
      for (size_t t : {size_t{1}, threads}) {
        auto run = [&](int64_t m) {
          double s = 0;
          auto call = [&] { kernels::matmul_nt(x.data(), m, wm, y.data()); };
          if (t == 1) single_threaded([&] { s = seconds_per_call(call); });
          else s = seconds_per_call(call);
          return s;
        };
        const double s1 = run(1), sp = run(m_prefill);
        std::printf("[quant perf] %-5s %-6s threads=%zu  M=1: %7.2f GB/s of weights (%.3f ms)  M=%d: %7.1f GFLOP/s\n",
                    std::string(dtype_name(c.dtype)).c_str(),
                    c.dtype == DType::F32 ? "f32" : std::string(kernels::simd_path_name(path)).c_str(), t,
                    bytes / s1 / 1e9, s1 * 1e3, int(m_prefill), 2.0 * m_prefill * n * k / sp / 1e9);
        if (threads == 1) break;
      }
    }
  }
  kernels::set_simd_path_for_testing(std::nullopt);
}

}  // namespace
