#pragma once
// Block-quantized weights (GGUF/ggml layouts) and the integer products that use them.
//
// Weight blocks, bytes in file order (f16 = IEEE half, little endian):
//   Q8_0  32 values, 34 bytes: f16 d | int8 q[32]                 value = d * q
//   Q4_0  32 values, 18 bytes: f16 d | u8 qs[16]                  value = d * (nibble - 8)
//   Q4_1  32 values, 20 bytes: f16 d | f16 m | u8 qs[16]          value = d * nibble + m
//         (for both 4-bit formats: element j < 16 is the low nibble of qs[j], element j + 16
//         the high nibble of qs[j])
//   Q4_K 256 values, 144 bytes: f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
//         eight sub-blocks of 32, each with a 6-bit scale sc and 6-bit min mn packed in
//         scales[]: for j < 4, sc = scales[j] & 63, mn = scales[j+4] & 63; for j >= 4,
//         sc = (scales[j+4] & 15) | (scales[j-4] >> 6) << 4, mn = (scales[j+4] >> 4) |
//         (scales[j] >> 6) << 4. Chunk c (elements 64c .. 64c+63) uses qs[32c .. 32c+31]:
//         low nibbles are sub-block 2c, high nibbles sub-block 2c+1.
//         value = d * sc * nibble - dmin * mn
//   Q6_K 256 values, 210 bytes: u8 ql[128] | u8 qh[64] | int8 scales[16] | f16 d
//         in each half h (128 values, ql + 64h, qh + 32h), for l < 32 the 6-bit q of element
//         l, l+32, l+64, l+96 is ql[l] & 15, ql[l+32] & 15, ql[l] >> 4, ql[l+32] >> 4 with
//         bits 4-5 from qh[l] bits 0-1, 2-3, 4-5, 6-7. value = d * scales[e / 16] * (q - 32)
//
// Products: matmul_nt with a quantized WeightMatrix quantizes each activation row on the fly
// (symmetric round-to-nearest, scale = amax / 127, so q is in [-127, 127]):
//   - for Q8_0, Q4_0, Q4_1: blocks of 32 with an f32 scale and the block's sum of q (ggml's Q8_0/Q8_1);
//   - for Q4_K, Q6_K: blocks of 256 with an f32 scale and sums of q over each 16 and 32 (ggml's Q8_K).
// Each weight block then meets its activation block in exact int32 arithmetic and one f32
// multiply-add per block, so results differ from f32 math on the dequantized weights only by
// the activation rounding (about 1e-2 relative), and between SIMD paths only by f32 summation
// order (about 1e-6 relative).
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace tessera::kernels {

// Converts n values (a multiple of the block size) of a quantized row to f32.
void dequantize_row(DType dtype, const void* src, float* dst, int64_t n);
// Quantizes n f32 values (a multiple of the block size): Q8_0, Q4_0, Q4_1 with ggml's
// round-to-nearest scale choices; Q4_K and Q6_K with a per-sub-block min/max scale search.
void quantize_row(DType dtype, const float* src, void* dst, int64_t n);
// Plain loops over the layout, the reference the vectorized dequantizer is tested against.
void dequantize_row_reference(DType dtype, const void* src, float* dst, int64_t n);

// The instruction-set paths of the quantized products, narrowest first.
// AvxVnni: 256-bit VNNI without AVX-512 (Alder Lake and later clients); Avx512Vnni: AVX-512 F, BW,
// VL and VNNI (Ice Lake / Zen 4 and later).
enum class SimdPath { Scalar, Avx2, AvxVnni, Avx512Vnni };
std::string_view simd_path_name(SimdPath path);  // "scalar", "avx2", "avxvnni", "avx512"
// Paths this CPU can run (Scalar always), regardless of TESSERA_SIMD.
std::vector<SimdPath> supported_paths();
// The path matmul_nt uses: the widest supported, or the widest supported one not wider than
// TESSERA_SIMD=scalar|avx2|avxvnni|avx512 (read once), or the override below.
SimdPath active_simd_path();
// Forces the path for tests and benchmarks; nullopt restores the default. Not thread-safe:
// call it while no product is running.
void set_simd_path_for_testing(std::optional<SimdPath> path);

// y[M,N] = x[M,K] . W[N,K]^T for block-quantized W (rows of `row_bytes` bytes at `w`) on a
// given path (which must be supported). matmul_nt calls this with active_simd_path().
void matmul_nt_quantized(const float* x, int64_t m, const void* w, DType dtype, int64_t n, int64_t k, float* y,
                         SimdPath path);

// Several products of the same activations x[M,K] with quantized weights of one type, as one
// parallel loop: the activations are quantized once and the threads share out the rows of all
// the weights, so small matrices (a layer's key and value projections) still use every thread.
struct QuantizedProduct {
  const void* w;  // n rows of K values
  int64_t n;
  float* y;  // [M, n]
};
void matmul_nt_quantized_multi(const float* x, int64_t m, DType dtype, int64_t k, const QuantizedProduct* products,
                               int64_t count, SimdPath path);

namespace detail {

// Decoding streams each weight byte from memory once; the hardware prefetcher alone left about
// a fifth of the read bandwidth unused (2-core Zen 3), so the kernels for one activation row
// ask for the bytes this far ahead of each of their weight rows.
constexpr int64_t kPrefetchAhead = 2048;

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return f16_to_f32(h);
}

// The eight 6-bit scales and mins of a Q4_K block from its 12 packed bytes.
inline void unpack_q4k_scales(const uint8_t* packed, uint8_t sc[8], uint8_t mn[8]) {
  uint32_t w0, w1, w2;
  std::memcpy(&w0, packed, 4);
  std::memcpy(&w1, packed + 4, 4);
  std::memcpy(&w2, packed + 8, 4);
  const uint32_t sc_lo = w0 & 0x3f3f3f3fu, mn_lo = w1 & 0x3f3f3f3fu;
  const uint32_t sc_hi = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
  const uint32_t mn_hi = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
  std::memcpy(sc, &sc_lo, 4);
  std::memcpy(sc + 4, &sc_hi, 4);
  std::memcpy(mn, &mn_lo, 4);
  std::memcpy(mn + 4, &mn_hi, 4);
}

// Activations quantized for one weight format and path. Rows are m rows of k values.
struct QuantizedActivations {
  int64_t m = 0, k = 0;
  std::vector<int8_t> q;        // m*k values; stored as q + 128 (u8) when `biased` (VNNI paths, 32-value blocks)
  std::vector<float> d;         // one scale per block (32 or 256 values)
  std::vector<float> s;         // 32-value blocks: d * sum(q) (the signed q)
  std::vector<int16_t> bsum16;  // 256-value blocks: sum(q) over each 16 values
  std::vector<int16_t> bsum32;  // 256-value blocks: sum(q) over each 32 values
  bool biased = false;
};

// What a kernel reads: the arrays above as pointers (no library types cross into the
// target-specific translation units).
struct ActView {
  int64_t m = 0, k = 0;
  const int8_t* q = nullptr;
  const float* d = nullptr;
  const float* s = nullptr;
  const int16_t* bsum16 = nullptr;
  const int16_t* bsum32 = nullptr;
};

void quantize_activations(const float* x, int64_t m, int64_t k, DType weights, SimdPath path,
                          QuantizedActivations& out);

// Computes y[i*ldy + j] for all activation rows i and weight rows j in [j0, j1); weight row j
// starts at w + j * row_bytes.
using RowsKernel = void (*)(const ActView& a, const uint8_t* w, size_t row_bytes, int64_t j0, int64_t j1, float* y,
                            int64_t ldy);
RowsKernel scalar_kernel(DType dtype);
RowsKernel avx2_kernel(DType dtype);
RowsKernel avxvnni_kernel(DType dtype);
RowsKernel avx512vnni_kernel(DType dtype);

}  // namespace detail
}  // namespace tessera::kernels
