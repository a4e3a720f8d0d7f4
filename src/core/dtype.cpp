#include "core/dtype.h"

#include <array>

#include "core/error.h"

namespace tessera {

namespace {
struct DTypeInfo {
  DType dtype;
  size_t size;  // bytes per element, or per block
  size_t block;  // elements per block
  std::string_view name;
  std::string_view safetensors;  // empty: not a safetensors type
};
constexpr std::array<DTypeInfo, 15> kInfo{{
    {DType::F32, 4, 1, "f32", "F32"},
    {DType::F16, 2, 1, "f16", "F16"},
    {DType::BF16, 2, 1, "bf16", "BF16"},
    {DType::F64, 8, 1, "f64", "F64"},
    {DType::I64, 8, 1, "i64", "I64"},
    {DType::I32, 4, 1, "i32", "I32"},
    {DType::I16, 2, 1, "i16", "I16"},
    {DType::I8, 1, 1, "i8", "I8"},
    {DType::U8, 1, 1, "u8", "U8"},
    {DType::Bool, 1, 1, "bool", "BOOL"},
    {DType::Q8_0, 34, 32, "q8_0", ""},
    {DType::Q4_0, 18, 32, "q4_0", ""},
    {DType::Q4_1, 20, 32, "q4_1", ""},
    {DType::Q4_K, 144, 256, "q4_k", ""},
    {DType::Q6_K, 210, 256, "q6_k", ""},
}};
const DTypeInfo& info(DType dtype) { return kInfo[static_cast<size_t>(dtype)]; }
}  // namespace

size_t dtype_size(DType dtype) { return info(dtype).size; }
size_t dtype_block_elems(DType dtype) { return info(dtype).block; }
size_t dtype_block_bytes(DType dtype) { return info(dtype).size; }
size_t dtype_bytes(DType dtype, size_t n) { return n / info(dtype).block * info(dtype).size; }
std::string_view dtype_name(DType dtype) { return info(dtype).name; }
std::string_view dtype_safetensors_name(DType dtype) { return info(dtype).safetensors; }

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (const auto& entry : kInfo)
    if (!entry.safetensors.empty() && entry.safetensors == name) return entry.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  if (name == "float32" || name == "fp32") return DType::F32;
  if (name == "float16" || name == "fp16" || name == "half") return DType::F16;
  if (name == "bfloat16") return DType::BF16;
  for (const auto& entry : kInfo)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

void convert_to_f32(DType src_type, const void* src, float* dst, size_t n) {
  switch (src_type) {
    case DType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::BF16: {
      const auto* in = static_cast<const uint16_t*>(src);
      size_t i = 0;
      for (; i + 8 <= n; i += 8) {
        __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
        __m256i wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16);
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(wide));
      }
      for (; i < n; ++i) dst[i] = bf16_to_f32(in[i]);
      return;
    }
    case DType::F16: {
      const auto* in = static_cast<const uint16_t*>(src);
      size_t i = 0;
      for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
      for (; i < n; ++i) dst[i] = f16_to_f32(in[i]);
      return;
    }
    case DType::F64: {
      const auto* in = static_cast<const double*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(in[i]);
      return;
    }
    default:
      fail("cannot convert {} to f32", dtype_name(src_type));
  }
}

void convert_from_f32(DType dst_type, const float* src, void* dst, size_t n) {
  switch (dst_type) {
    case DType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::BF16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) out[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      auto* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) out[i] = f32_to_f16(src[i]);
      return;
    }
    default:
      fail("cannot convert f32 to {}", dtype_name(dst_type));
  }
}

}  // namespace tessera
