#pragma once
// Element types and the conversions between them. bf16/f16 are stored as raw 16-bit patterns.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include <immintrin.h>

namespace tessera {

// Scalar types, then block-quantized weight formats (GGUF's layouts): a block holds
// dtype_block_elems() consecutive values of a row in dtype_block_bytes() bytes.
enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, Bool, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K };

size_t dtype_size(DType dtype);         // bytes per element; for block formats, bytes per block
size_t dtype_block_elems(DType dtype);  // 1 for scalar types, 32 or 256 for block formats
size_t dtype_block_bytes(DType dtype);
inline bool dtype_is_quantized(DType dtype) { return dtype_block_elems(dtype) > 1; }
// Bytes of `n` consecutive elements (n a multiple of the block size for block formats).
size_t dtype_bytes(DType dtype, size_t n);
std::string_view dtype_name(DType dtype);                 // "f32", "bf16", ...
std::string_view dtype_safetensors_name(DType dtype);     // "F32", "BF16", ...
std::optional<DType> dtype_from_safetensors(std::string_view name);
std::optional<DType> dtype_from_name(std::string_view name);  // accepts f32/float32/bf16/...

inline float bf16_to_f32(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

inline float f16_to_f32(uint16_t bits) { return _cvtsh_ss(bits); }
inline uint16_t f32_to_f16(float value) { return _cvtss_sh(value, _MM_FROUND_TO_NEAREST_INT); }

// Converts n elements of `src_type` to f32.
void convert_to_f32(DType src_type, const void* src, float* dst, size_t n);
// Converts n f32 values to `dst_type` (f32, bf16, f16).
void convert_from_f32(DType dst_type, const float* src, void* dst, size_t n);

}  // namespace tessera
