#include "formats/gguf.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include <fmt/format.h>

#include "core/error.h"

namespace tessera {

static_assert(std::endian::native == std::endian::little, "GGUF reading assumes a little-endian host");

namespace {

constexpr uint32_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 3;  // an array of arrays of arrays, no deeper
constexpr uint32_t kMaxDims = 4;

constexpr uint32_t kQK = 256;  // elements per k-quant super-block

// Every type ggml defines (ids 4, 5, 31-33 and 36-38 were removed from ggml and are unknown here).
constexpr std::array<GgmlTypeInfo, 35> kGgmlTypes{{
    {0, "f32", 1, 4, DType::F32},
    {1, "f16", 1, 2, DType::F16},
    {2, "q4_0", 32, 18, DType::Q4_0},
    {3, "q4_1", 32, 20, DType::Q4_1},
    {6, "q5_0", 32, 22, std::nullopt},
    {7, "q5_1", 32, 24, std::nullopt},
    {8, "q8_0", 32, 34, DType::Q8_0},
    {9, "q8_1", 32, 36, std::nullopt},
    {10, "q2_K", kQK, 84, std::nullopt},
    {11, "q3_K", kQK, 110, std::nullopt},
    {12, "q4_K", kQK, 144, DType::Q4_K},
    {13, "q5_K", kQK, 176, std::nullopt},
    {14, "q6_K", kQK, 210, DType::Q6_K},
    {15, "q8_K", kQK, 292, std::nullopt},
    {16, "iq2_xxs", kQK, 66, std::nullopt},
    {17, "iq2_xs", kQK, 74, std::nullopt},
    {18, "iq3_xxs", kQK, 98, std::nullopt},
    {19, "iq1_s", kQK, 50, std::nullopt},
    {20, "iq4_nl", 32, 18, std::nullopt},
    {21, "iq3_s", kQK, 110, std::nullopt},
    {22, "iq2_s", kQK, 82, std::nullopt},
    {23, "iq4_xs", kQK, 136, std::nullopt},
    {24, "i8", 1, 1, DType::I8},
    {25, "i16", 1, 2, DType::I16},
    {26, "i32", 1, 4, DType::I32},
    {27, "i64", 1, 8, DType::I64},
    {28, "f64", 1, 8, DType::F64},
    {29, "iq1_m", kQK, 56, std::nullopt},
    {30, "bf16", 1, 2, DType::BF16},
    {34, "tq1_0", kQK, 54, std::nullopt},
    {35, "tq2_0", kQK, 66, std::nullopt},
    {39, "mxfp4", 32, 17, std::nullopt},
    {40, "nvfp4", 64, 36, std::nullopt},
    {41, "q1_0", 128, 18, std::nullopt},
    {42, "q2_0", 64, 18, std::nullopt},
}};

std::string supported_tensor_types() {
  std::string out;
  for (const auto& t : kGgmlTypes) {
    if (!t.dtype) continue;
    if (!out.empty()) out += ", ";
    out += t.name;
  }
  return out;
}

// Smallest encoded size of one value of each type, used to reject counts that cannot fit.
uint64_t min_encoded_size(GgufType type) {
  switch (type) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: case GgufType::String: return 8;
    case GgufType::Array: return 12;
  }
  return 1;
}

bool known_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::F64); }

bool is_unsigned(GgufType t) {
  return t == GgufType::U8 || t == GgufType::U16 || t == GgufType::U32 || t == GgufType::U64 || t == GgufType::Bool;
}
bool is_signed(GgufType t) {
  return t == GgufType::I8 || t == GgufType::I16 || t == GgufType::I32 || t == GgufType::I64;
}
bool is_float(GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }

// A printable excerpt of untrusted text for messages.
std::string excerpt(std::string_view s, size_t limit = 60) {
  std::string out;
  for (char c : s.substr(0, limit)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u != 0x7F) ? c : '?';
  }
  if (s.size() > limit) out += "...";
  return out;
}

class ByteReader {
 public:
  ByteReader(std::span<const std::byte> file, const std::string& origin) : file_(file), origin_(origin) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return file_.size() - pos_; }

  template <typename T>
  T read(std::string_view what) {
    if (remaining() < sizeof(T))
      fail("{}: {} at byte {} runs past the end of the file ({} bytes; truncated?)", origin_, what, pos_,
           file_.size());
    T value;
    std::memcpy(&value, file_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(std::string_view what) {
    const size_t at = pos_;
    const auto len = read<uint64_t>(what);
    if (len > remaining())
      fail("{}: {} at byte {} has length {}, past the end of the file ({} bytes left)", origin_, what, at, len,
           remaining());
    std::string out(reinterpret_cast<const char*>(file_.data() + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return out;
  }

 private:
  std::span<const std::byte> file_;
  const std::string& origin_;
  size_t pos_ = 0;
};

struct ValueParser {
  ByteReader& in;
  const std::string& origin;

  GgufValue scalar(GgufType type, const std::string& what) {
    GgufValue v;
    v.type = type;
    switch (type) {
      case GgufType::U8: v.u64 = in.read<uint8_t>(what); break;
      case GgufType::I8: v.i64 = in.read<int8_t>(what); break;
      case GgufType::U16: v.u64 = in.read<uint16_t>(what); break;
      case GgufType::I16: v.i64 = in.read<int16_t>(what); break;
      case GgufType::U32: v.u64 = in.read<uint32_t>(what); break;
      case GgufType::I32: v.i64 = in.read<int32_t>(what); break;
      case GgufType::U64: v.u64 = in.read<uint64_t>(what); break;
      case GgufType::I64: v.i64 = in.read<int64_t>(what); break;
      case GgufType::F32: v.f64 = in.read<float>(what); break;
      case GgufType::F64: v.f64 = in.read<double>(what); break;
      case GgufType::Bool: {
        const auto b = in.read<uint8_t>(what);
        if (b > 1) fail("{}: {} is a bool with byte value {} (expected 0 or 1)", origin, what, b);
        v.boolean = b != 0;
        v.u64 = b;
        break;
      }
      case GgufType::String: v.string = in.read_string(what); break;
      case GgufType::Array: break;  // not reached
    }
    return v;
  }

  // After the array's own type tag: element type, count, elements.
  GgufValue array(const std::string& what, int depth) {
    if (depth > kMaxArrayDepth) fail("{}: {} nests arrays more than {} levels deep", origin, what, kMaxArrayDepth);
    const auto raw_type = in.read<uint32_t>(what);
    if (!known_type(raw_type)) fail("{}: {} is an array of unknown value type {}", origin, what, raw_type);
    GgufValue v;
    v.type = GgufType::Array;
    v.element_type = static_cast<GgufType>(raw_type);
    const auto count = in.read<uint64_t>(what);
    if (count > in.remaining() / min_encoded_size(v.element_type))
      fail("{}: {} claims {} elements of type {}, more than the {} bytes left in the file can hold", origin, what,
           count, gguf_type_name(v.element_type), in.remaining());
    const auto n = static_cast<size_t>(count);
    const GgufType t = v.element_type;
    if (t == GgufType::String) {
      v.strings.reserve(n);
      for (size_t i = 0; i < n; ++i) v.strings.push_back(in.read_string(what));
    } else if (t == GgufType::Array) {
      v.arrays.reserve(n);
      for (size_t i = 0; i < n; ++i) v.arrays.push_back(array(what, depth + 1));
    } else if (is_float(t)) {
      v.f64s.reserve(n);
      for (size_t i = 0; i < n; ++i) v.f64s.push_back(scalar(t, what).f64);
    } else if (is_signed(t)) {
      v.i64s.reserve(n);
      for (size_t i = 0; i < n; ++i) v.i64s.push_back(scalar(t, what).i64);
    } else {
      v.u64s.reserve(n);
      for (size_t i = 0; i < n; ++i) v.u64s.push_back(scalar(t, what).u64);
    }
    return v;
  }

  GgufValue value(GgufType type, const std::string& what) {
    if (type == GgufType::Array) return array(what, 1);
    return scalar(type, what);
  }
};

uint64_t align_up(uint64_t offset, uint64_t alignment) {
  const uint64_t rem = offset % alignment;
  return rem == 0 ? offset : offset + (alignment - rem);
}

}  // namespace

std::string_view gguf_type_name(GgufType type) {
  switch (type) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::Bool: return "bool";
    case GgufType::String: return "string";
    case GgufType::Array: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "unknown";
}

const GgmlTypeInfo* ggml_type_info(uint32_t id) {
  for (const auto& t : kGgmlTypes)
    if (t.id == id) return &t;
  return nullptr;
}

std::optional<uint32_t> ggml_type_of(DType dtype) {
  for (const auto& t : kGgmlTypes)
    if (t.dtype == dtype) return t.id;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------
// GgufValue

size_t GgufValue::size() const {
  if (type != GgufType::Array) return 0;
  switch (element_type) {
    case GgufType::String: return strings.size();
    case GgufType::Array: return arrays.size();
    case GgufType::F32: case GgufType::F64: return f64s.size();
    case GgufType::I8: case GgufType::I16: case GgufType::I32: case GgufType::I64: return i64s.size();
    default: return u64s.size();
  }
}

std::string GgufValue::type_str() const {
  if (type != GgufType::Array) return std::string(gguf_type_name(type));
  if (element_type == GgufType::Array) {
    return "array of arrays";
  }
  return fmt::format("array of {}", gguf_type_name(element_type));
}

std::string GgufValue::summary() const {
  const auto scalar_text = [](GgufType t, uint64_t u, int64_t i, double f, const std::string& s) -> std::string {
    if (t == GgufType::String) return fmt::format("\"{}\"", excerpt(s));
    if (t == GgufType::Bool) return u ? "true" : "false";
    if (is_float(t)) return fmt::format("{}", f);
    if (is_signed(t)) return fmt::format("{}", i);
    return fmt::format("{}", u);
  };
  if (type != GgufType::Array) return scalar_text(type, u64, i64, f64, string);
  std::string out = "[";
  const size_t n = size();
  const size_t shown = std::min<size_t>(n, 8);
  for (size_t k = 0; k < shown; ++k) {
    if (k) out += ", ";
    switch (element_type) {
      case GgufType::String: out += scalar_text(element_type, 0, 0, 0, strings[k]); break;
      case GgufType::Array: out += arrays[k].summary(); break;
      case GgufType::F32: case GgufType::F64: out += scalar_text(element_type, 0, 0, f64s[k], ""); break;
      case GgufType::I8: case GgufType::I16: case GgufType::I32: case GgufType::I64:
        out += scalar_text(element_type, 0, i64s[k], 0, "");
        break;
      default: out += scalar_text(element_type, u64s[k], 0, 0, ""); break;
    }
  }
  if (n > shown) out += fmt::format(", ... ({} items)", n);
  return out + "]";
}

GgufValue GgufValue::from_u8(uint8_t v) { GgufValue out; out.type = GgufType::U8; out.u64 = v; return out; }
GgufValue GgufValue::from_i8(int8_t v) { GgufValue out; out.type = GgufType::I8; out.i64 = v; return out; }
GgufValue GgufValue::from_u16(uint16_t v) { GgufValue out; out.type = GgufType::U16; out.u64 = v; return out; }
GgufValue GgufValue::from_i16(int16_t v) { GgufValue out; out.type = GgufType::I16; out.i64 = v; return out; }
GgufValue GgufValue::from_u32(uint32_t v) { GgufValue out; out.type = GgufType::U32; out.u64 = v; return out; }
GgufValue GgufValue::from_i32(int32_t v) { GgufValue out; out.type = GgufType::I32; out.i64 = v; return out; }
GgufValue GgufValue::from_u64(uint64_t v) { GgufValue out; out.type = GgufType::U64; out.u64 = v; return out; }
GgufValue GgufValue::from_i64(int64_t v) { GgufValue out; out.type = GgufType::I64; out.i64 = v; return out; }
GgufValue GgufValue::from_f32(float v) { GgufValue out; out.type = GgufType::F32; out.f64 = v; return out; }
GgufValue GgufValue::from_f64(double v) { GgufValue out; out.type = GgufType::F64; out.f64 = v; return out; }
GgufValue GgufValue::from_bool(bool v) {
  GgufValue out;
  out.type = GgufType::Bool;
  out.boolean = v;
  out.u64 = v ? 1 : 0;
  return out;
}
GgufValue GgufValue::from_string(std::string v) {
  GgufValue out;
  out.type = GgufType::String;
  out.string = std::move(v);
  return out;
}
GgufValue GgufValue::from_strings(std::vector<std::string> v) {
  GgufValue out;
  out.type = GgufType::Array;
  out.element_type = GgufType::String;
  out.strings = std::move(v);
  return out;
}
GgufValue GgufValue::from_ints(GgufType element_type, const std::vector<int64_t>& v) {
  GgufValue out;
  out.type = GgufType::Array;
  out.element_type = element_type;
  if (is_signed(element_type)) {
    out.i64s = v;
  } else if (is_unsigned(element_type)) {
    for (int64_t x : v) {
      if (x < 0) fail("GgufValue::from_ints: {} does not fit {}", x, gguf_type_name(element_type));
      out.u64s.push_back(static_cast<uint64_t>(x));
    }
  } else {
    fail("GgufValue::from_ints: {} is not an integer type", gguf_type_name(element_type));
  }
  return out;
}
GgufValue GgufValue::from_f32s(const std::vector<float>& v) {
  GgufValue out;
  out.type = GgufType::Array;
  out.element_type = GgufType::F32;
  out.f64s.assign(v.begin(), v.end());
  return out;
}
GgufValue GgufValue::from_f64s(std::vector<double> v) {
  GgufValue out;
  out.type = GgufType::Array;
  out.element_type = GgufType::F64;
  out.f64s = std::move(v);
  return out;
}
GgufValue GgufValue::from_arrays(GgufType inner_type, std::vector<GgufValue> v) {
  GgufValue out;
  out.type = GgufType::Array;
  out.element_type = GgufType::Array;
  for (const auto& item : v)
    if (!item.is_array() || item.element_type != inner_type)
      fail("GgufValue::from_arrays: every element must be an array of {}", gguf_type_name(inner_type));
  out.arrays = std::move(v);
  return out;
}

// ---------------------------------------------------------------------------------------
// Reading

GgufHeader parse_gguf(std::span<const std::byte> file, const std::string& origin) {
  if (file.size() < 4 || std::memcmp(file.data(), "GGUF", 4) != 0) {
    std::string magic;
    for (size_t i = 0; i < std::min<size_t>(4, file.size()); ++i) magic += static_cast<char>(file[i]);
    fail("{}: not a GGUF file (magic \"{}\", expected \"GGUF\")", origin, excerpt(magic));
  }
  ByteReader in(file, origin);
  in.read<uint32_t>("magic");
  GgufHeader out;
  out.version = in.read<uint32_t>("version");
  if (out.version != 2 && out.version != 3) {
    if (out.version != 0 && (out.version & 0xFFFF) == 0)
      fail("{}: a big-endian GGUF file (version {}), which is not supported", origin, __builtin_bswap32(out.version));
    if (out.version == 1) fail("{}: GGUF version 1 is not supported (only versions 2 and 3)", origin);
    fail("{}: unsupported GGUF version {} (only versions 2 and 3)", origin, out.version);
  }
  const auto tensor_count = in.read<uint64_t>("tensor count");
  const auto kv_count = in.read<uint64_t>("metadata count");
  // Each metadata entry takes at least 14 bytes (key length, one key byte, type, a u8 value)
  // and each tensor info at least 25 (name length, one name byte, n_dims, type, offset).
  constexpr uint64_t kMinKv = 14, kMinTensor = 25;
  if (kv_count > in.remaining() / kMinKv)
    fail("{}: metadata count {} cannot fit in the {} bytes after the header", origin, kv_count, in.remaining());
  if (tensor_count > (in.remaining() - kv_count * kMinKv) / kMinTensor)
    fail("{}: tensor count {} cannot fit in the {} bytes after the header", origin, tensor_count, in.remaining());

  ValueParser values{in, origin};
  std::set<std::string, std::less<>> keys;
  out.metadata.reserve(static_cast<size_t>(kv_count));
  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key = in.read_string(fmt::format("metadata key {}", i));
    if (key.empty()) fail("{}: metadata key {} is empty", origin, i);
    if (!keys.insert(key).second) fail("{}: metadata key '{}' appears twice", origin, excerpt(key));
    const std::string what = fmt::format("metadata '{}'", excerpt(key));
    const auto raw_type = in.read<uint32_t>(what);
    if (!known_type(raw_type)) fail("{}: {} has unknown value type {}", origin, what, raw_type);
    GgufValue value = values.value(static_cast<GgufType>(raw_type), what);
    out.metadata.emplace_back(std::move(key), std::move(value));
  }

  for (const auto& [key, value] : out.metadata) {
    if (key != "general.alignment") continue;
    if (value.type != GgufType::U32)
      fail("{}: metadata key 'general.alignment' has type {}, expected u32", origin, value.type_str());
    if (value.u64 == 0 || !std::has_single_bit(value.u64))
      fail("{}: general.alignment {} is not a power of two", origin, value.u64);
    out.alignment = static_cast<uint32_t>(value.u64);
  }

  std::set<std::string, std::less<>> names;
  out.tensors.reserve(static_cast<size_t>(tensor_count));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo info;
    info.name = in.read_string(fmt::format("name of tensor {}", i));
    if (info.name.empty()) fail("{}: tensor {} has an empty name", origin, i);
    const std::string name = excerpt(info.name);
    if (!names.insert(info.name).second) fail("{}: tensor name '{}' appears twice", origin, name);
    const std::string what = fmt::format("tensor '{}'", name);
    const auto n_dims = in.read<uint32_t>(what);
    if (n_dims > kMaxDims) fail("{}: tensor '{}' has {} dimensions (at most {})", origin, name, n_dims, kMaxDims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto ne = in.read<int64_t>(what);
      if (ne <= 0) fail("{}: tensor '{}' dimension {} is {} (must be positive)", origin, name, d, ne);
      if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / static_cast<uint64_t>(ne))
        fail("{}: tensor '{}' has too many elements (the dimensions overflow)", origin, name);
      numel *= static_cast<uint64_t>(ne);
      info.ne.push_back(ne);
    }
    info.shape.assign(info.ne.rbegin(), info.ne.rend());
    info.ggml_type = in.read<uint32_t>(what);
    const GgmlTypeInfo* type = ggml_type_info(info.ggml_type);
    if (!type) fail("{}: tensor '{}' has unknown ggml type {}", origin, name, info.ggml_type);
    info.type_name = type->name;
    info.dtype = type->dtype;
    const uint64_t row = info.ne.empty() ? 1 : static_cast<uint64_t>(info.ne[0]);
    if (row % type->block_elems != 0)
      fail("{}: tensor '{}' of type {} has rows of {} elements, not a multiple of the block size {}", origin, name,
           type->name, row, type->block_elems);
    const uint64_t blocks = numel / type->block_elems;
    if (blocks > std::numeric_limits<uint64_t>::max() / type->block_bytes)
      fail("{}: tensor '{}' is too large", origin, name);
    info.nbytes = blocks * type->block_bytes;
    info.offset = in.read<uint64_t>(what);
    out.tensors.push_back(std::move(info));
  }

  const uint64_t end_of_infos = in.pos();
  out.data_start = align_up(end_of_infos, out.alignment);
  if (out.data_start > file.size()) {
    if (!out.tensors.empty())
      fail("{}: the tensor data would start at byte {}, past the end of the file ({} bytes; truncated?)", origin,
           out.data_start, file.size());
    out.data_start = file.size();
  }
  const uint64_t data_size = file.size() - out.data_start;
  for (const auto& info : out.tensors) {
    if (info.offset % out.alignment != 0)
      fail("{}: tensor '{}' data offset {} is not a multiple of the alignment {}", origin, excerpt(info.name),
           info.offset, out.alignment);
    if (info.offset > data_size || info.nbytes > data_size - info.offset)
      fail("{}: tensor '{}' data ({} bytes at offset {}) runs past the end of the file (the data section has {} "
           "bytes; truncated?)",
           origin, excerpt(info.name), info.nbytes, info.offset, data_size);
  }
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& info : out.tensors) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->offset < by_offset[i - 1]->offset + by_offset[i - 1]->nbytes)
      fail("{}: tensors '{}' and '{}' overlap", origin, excerpt(by_offset[i - 1]->name), excerpt(by_offset[i]->name));
  }
  return out;
}

GgufFile::GgufFile(const std::filesystem::path& path, FileResidency residency)
    : path_(path), mapping_(std::make_shared<MappedFile>(path, residency)) {
  header_ = parse_gguf(std::span<const std::byte>(mapping_->data(), mapping_->size()), path.string());
  for (size_t i = 0; i < header_.metadata.size(); ++i) key_index_.emplace(header_.metadata[i].first, i);
  for (size_t i = 0; i < header_.tensors.size(); ++i) tensor_index_.emplace(header_.tensors[i].name, i);
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = key_index_.find(key);
  return it == key_index_.end() ? nullptr : &header_.metadata[it->second].second;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: metadata key '{}' is missing", path_.string(), key);
  return *v;
}

namespace {

[[noreturn]] void wrong_type(const std::filesystem::path& path, const std::string& key, const GgufValue& v,
                             std::string_view expected) {
  fail("{}: metadata key '{}' has type {}, expected {}", path.string(), key, v.type_str(), expected);
}

// Any integer value as a signed 128-bit number, for range checks.
std::optional<__int128> integer_of(const GgufValue& v) {
  if (is_signed(v.type)) return v.i64;
  if (is_unsigned(v.type) && v.type != GgufType::Bool) return v.u64;
  return std::nullopt;
}

template <typename T>
T get_integer(const std::filesystem::path& path, const std::string& key, const GgufValue& v,
              std::string_view expected) {
  const auto value = integer_of(v);
  if (!value) wrong_type(path, key, v, expected);
  if (*value < static_cast<__int128>(std::numeric_limits<T>::min()) ||
      *value > static_cast<__int128>(std::numeric_limits<T>::max()))
    fail("{}: metadata key '{}' value {} does not fit {}", path.string(), key, v.summary(), expected);
  return static_cast<T>(*value);
}

}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::String) wrong_type(path_, key, v, "string");
  return v.string;
}
uint32_t GgufFile::get_u32(const std::string& key) const { return get_integer<uint32_t>(path_, key, get(key), "u32"); }
int32_t GgufFile::get_i32(const std::string& key) const { return get_integer<int32_t>(path_, key, get(key), "i32"); }
uint64_t GgufFile::get_u64(const std::string& key) const { return get_integer<uint64_t>(path_, key, get(key), "u64"); }
int64_t GgufFile::get_i64(const std::string& key) const { return get_integer<int64_t>(path_, key, get(key), "i64"); }
double GgufFile::get_f64(const std::string& key) const {
  const GgufValue& v = get(key);
  if (!is_float(v.type)) wrong_type(path_, key, v, "f64");
  return v.f64;
}
float GgufFile::get_f32(const std::string& key) const {
  const GgufValue& v = get(key);
  if (!is_float(v.type)) wrong_type(path_, key, v, "f32");
  return static_cast<float>(v.f64);
}
bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::Bool) wrong_type(path_, key, v, "bool");
  return v.boolean;
}
std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  return contains(key) ? get_string(key) : fallback;
}
uint32_t GgufFile::get_u32(const std::string& key, uint32_t fallback) const {
  return contains(key) ? get_u32(key) : fallback;
}
int64_t GgufFile::get_i64(const std::string& key, int64_t fallback) const {
  return contains(key) ? get_i64(key) : fallback;
}
float GgufFile::get_f32(const std::string& key, float fallback) const {
  return contains(key) ? get_f32(key) : fallback;
}
bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  return contains(key) ? get_bool(key) : fallback;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = get(key);
  if (!v.is_array() || v.element_type != GgufType::String) wrong_type(path_, key, v, "array of string");
  return v.strings;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = get(key);
  if (!v.is_array()) wrong_type(path_, key, v, "array of integers");
  if (is_signed(v.element_type)) return v.i64s;
  if (!is_unsigned(v.element_type) || v.element_type == GgufType::Bool)
    wrong_type(path_, key, v, "array of integers");
  std::vector<int64_t> out;
  out.reserve(v.u64s.size());
  for (uint64_t x : v.u64s) {
    if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("{}: metadata key '{}' holds {}, which does not fit i64", path_.string(), key, x);
    out.push_back(static_cast<int64_t>(x));
  }
  return out;
}

std::vector<double> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue& v = get(key);
  if (!v.is_array()) wrong_type(path_, key, v, "array of numbers");
  if (is_float(v.element_type)) return v.f64s;
  if (is_signed(v.element_type)) return std::vector<double>(v.i64s.begin(), v.i64s.end());
  if (is_unsigned(v.element_type) && v.element_type != GgufType::Bool)
    return std::vector<double>(v.u64s.begin(), v.u64s.end());
  wrong_type(path_, key, v, "array of numbers");
}

std::optional<std::string> GgufFile::chat_template() const {
  if (!contains("tokenizer.chat_template")) return std::nullopt;
  return get_string("tokenizer.chat_template");
}

const GgufTensorInfo& GgufFile::tensor_info(const std::string& name) const {
  auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) fail("{}: no tensor named '{}'", path_.string(), name);
  return header_.tensors[it->second];
}

Tensor GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo& info = tensor_info(name);
  if (!info.dtype)
    fail("{}: tensor '{}' has ggml type {} ({}), which tessera does not support (supported: {})", path_.string(),
         name, info.type_name, info.ggml_type, supported_tensor_types());
  return Tensor(mapping_, static_cast<size_t>(header_.data_start + info.offset), *info.dtype, info.shape);
}

std::span<const std::byte> GgufFile::tensor_bytes(const std::string& name) const {
  const GgufTensorInfo& info = tensor_info(name);
  return {mapping_->data() + header_.data_start + info.offset, static_cast<size_t>(info.nbytes)};
}

// ---------------------------------------------------------------------------------------
// Writing

namespace {

class ByteWriter {
 public:
  explicit ByteWriter(const std::string& origin) : origin_(origin) {}
  template <typename T>
  void put(T value) {
    char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));
    out_.append(bytes, sizeof(T));
  }
  void put_string(std::string_view s) {
    put<uint64_t>(s.size());
    out_.append(s);
  }
  void pad_to(uint64_t alignment) { out_.append(align_up(out_.size(), alignment) - out_.size(), '\0'); }
  std::string& bytes() { return out_; }

  template <typename T>
  void put_checked(__int128 value, GgufType type, const std::string& key) {
    if (value < static_cast<__int128>(std::numeric_limits<T>::min()) ||
        value > static_cast<__int128>(std::numeric_limits<T>::max()))
      fail("{}: metadata '{}' value does not fit {}", origin_, key, gguf_type_name(type));
    put<T>(static_cast<T>(value));
  }

  void scalar(GgufType t, uint64_t u, int64_t i, double f, const std::string& s, const std::string& key) {
    switch (t) {
      case GgufType::U8: put_checked<uint8_t>(u, t, key); break;
      case GgufType::I8: put_checked<int8_t>(i, t, key); break;
      case GgufType::U16: put_checked<uint16_t>(u, t, key); break;
      case GgufType::I16: put_checked<int16_t>(i, t, key); break;
      case GgufType::U32: put_checked<uint32_t>(u, t, key); break;
      case GgufType::I32: put_checked<int32_t>(i, t, key); break;
      case GgufType::U64: put<uint64_t>(u); break;
      case GgufType::I64: put<int64_t>(i); break;
      case GgufType::F32: put<float>(static_cast<float>(f)); break;
      case GgufType::F64: put<double>(f); break;
      case GgufType::Bool:
        if (u > 1) fail("{}: metadata '{}' bool value {} is not 0 or 1", origin_, key, u);
        put<uint8_t>(static_cast<uint8_t>(u));
        break;
      case GgufType::String: put_string(s); break;
      case GgufType::Array: break;
    }
  }

  // The array body: element type, count, elements.
  void array(const GgufValue& v, const std::string& key, int depth) {
    if (depth > kMaxArrayDepth) fail("{}: metadata '{}' nests arrays more than {} levels deep", origin_, key, kMaxArrayDepth);
    if (!known_type(static_cast<uint32_t>(v.element_type)))
      fail("{}: metadata '{}' has an unknown element type", origin_, key);
    put<uint32_t>(static_cast<uint32_t>(v.element_type));
    put<uint64_t>(v.size());
    const GgufType t = v.element_type;
    if (t == GgufType::String) {
      for (const auto& s : v.strings) put_string(s);
    } else if (t == GgufType::Array) {
      for (const auto& a : v.arrays) {
        if (!a.is_array()) fail("{}: metadata '{}' holds a non-array inside an array of arrays", origin_, key);
        array(a, key, depth + 1);
      }
    } else if (is_float(t)) {
      for (double f : v.f64s) scalar(t, 0, 0, f, {}, key);
    } else if (is_signed(t)) {
      for (int64_t i : v.i64s) scalar(t, 0, i, 0, {}, key);
    } else {
      for (uint64_t u : v.u64s) scalar(t, u, 0, 0, {}, key);
    }
  }

  void value(const GgufValue& v, const std::string& key) {
    if (!known_type(static_cast<uint32_t>(v.type))) fail("{}: metadata '{}' has an unknown type", origin_, key);
    put<uint32_t>(static_cast<uint32_t>(v.type));
    if (v.is_array()) {
      array(v, key, 1);
    } else {
      scalar(v.type, v.type == GgufType::Bool ? (v.boolean ? 1 : 0) : v.u64, v.i64, v.f64, v.string, key);
    }
  }

 private:
  const std::string& origin_;
  std::string out_;
};

}  // namespace

GgufWriter::GgufWriter(std::filesystem::path path, uint32_t alignment) : path_(std::move(path)), alignment_(alignment) {
  if (alignment == 0 || !std::has_single_bit(alignment))
    fail("{}: GGUF alignment {} is not a power of two", path_.string(), alignment);
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  if (key.empty()) fail("{}: empty metadata key", path_.string());
  for (const auto& [k, _] : metadata_)
    if (k == key) fail("{}: metadata key '{}' set twice", path_.string(), key);
  if (key == "general.alignment") {
    if (value.type != GgufType::U32)
      fail("{}: metadata key 'general.alignment' has type {}, expected u32", path_.string(), value.type_str());
    if (value.u64 == 0 || !std::has_single_bit(value.u64))
      fail("{}: general.alignment {} is not a power of two", path_.string(), value.u64);
    alignment_ = static_cast<uint32_t>(value.u64);
  }
  metadata_.emplace_back(key, std::move(value));
}

void GgufWriter::add_tensor(const std::string& name, const Tensor& tensor) {
  const std::string& origin = path_.string();
  if (name.empty()) fail("{}: tensor with an empty name", origin);
  for (const auto& [n, _] : tensors_)
    if (n == name) fail("{}: tensor '{}' added twice", origin, name);
  if (!tensor.defined()) fail("{}: tensor '{}' is undefined", origin, name);
  if (tensor.device() != Device::CPU) fail("{}: tensor '{}' is not on the CPU", origin, name);
  if (!ggml_type_of(tensor.dtype()))
    fail("{}: tensor '{}' has dtype {}, which GGUF cannot hold", origin, name, dtype_name(tensor.dtype()));
  if (tensor.ndim() < 1 || tensor.ndim() > static_cast<int64_t>(kMaxDims))
    fail("{}: tensor '{}' has shape {}: GGUF holds 1 to {} dimensions", origin, name, shape_str(tensor.shape()), kMaxDims);
  for (int64_t d : tensor.shape())
    if (d <= 0) fail("{}: tensor '{}' has shape {}: every dimension must be positive", origin, name, shape_str(tensor.shape()));
  const auto block = static_cast<int64_t>(dtype_block_elems(tensor.dtype()));
  if (tensor.dim(-1) % block != 0)
    fail("{}: tensor '{}' of type {} has rows of {} elements, not a multiple of the block size {}", origin, name,
         dtype_name(tensor.dtype()), tensor.dim(-1), block);
  if (dtype_is_quantized(tensor.dtype()) && !tensor.is_contiguous())
    fail("{}: quantized tensor '{}' must be contiguous", origin, name);
  tensors_.emplace_back(name, tensor);
}

void GgufWriter::add_tensor_bytes(const std::string& name, DType dtype, const Shape& shape,
                                  std::span<const std::byte> bytes) {
  for (int64_t d : shape)
    if (d <= 0) fail("{}: tensor '{}' has shape {}: every dimension must be positive", path_.string(), name, shape_str(shape));
  if (!shape.empty() && shape.back() % static_cast<int64_t>(dtype_block_elems(dtype)) != 0)
    fail("{}: tensor '{}' of type {} has rows of {} elements, not a multiple of the block size {}", path_.string(),
         name, dtype_name(dtype), shape.back(), dtype_block_elems(dtype));
  const size_t expected = dtype_bytes(dtype, static_cast<size_t>(shape_numel(shape)));
  if (bytes.size() != expected)
    fail("{}: tensor '{}' has {} bytes, but shape {} of {} needs {}", path_.string(), name, bytes.size(),
         shape_str(shape), dtype_name(dtype), expected);
  auto storage = Storage::allocate(bytes.size());
  if (!bytes.empty()) std::memcpy(storage->data(), bytes.data(), bytes.size());
  add_tensor(name, Tensor(std::move(storage), 0, dtype, shape));
}

void GgufWriter::write() const {
  const std::string origin = path_.string();
  ByteWriter header(origin);
  header.put<uint32_t>(0x46554747u);  // "GGUF"
  header.put<uint32_t>(3);
  header.put<uint64_t>(tensors_.size());
  bool has_alignment_key = false;
  for (const auto& [key, _] : metadata_) has_alignment_key |= key == "general.alignment";
  const bool add_alignment_key = alignment_ != kDefaultAlignment && !has_alignment_key;
  header.put<uint64_t>(metadata_.size() + (add_alignment_key ? 1 : 0));
  if (add_alignment_key) {
    header.put_string("general.alignment");
    header.value(GgufValue::from_u32(alignment_), "general.alignment");
  }
  for (const auto& [key, value] : metadata_) {
    header.put_string(key);
    header.value(value, key);
  }
  std::vector<Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors_) {
    header.put_string(name);
    header.put<uint32_t>(static_cast<uint32_t>(tensor.ndim()));
    for (int64_t d = tensor.ndim() - 1; d >= 0; --d) header.put<int64_t>(tensor.dim(d));
    header.put<uint32_t>(*ggml_type_of(tensor.dtype()));
    header.put<uint64_t>(offset);
    data.push_back(tensor.contiguous());
    offset = align_up(offset + data.back().nbytes(), alignment_);
  }
  header.pad_to(alignment_);

  const std::filesystem::path tmp = path_.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("{}: cannot write", tmp.string());
    out.write(header.bytes().data(), static_cast<std::streamsize>(header.bytes().size()));
    static const std::array<char, 4096> zeros{};
    for (const Tensor& t : data) {
      const size_t n = t.nbytes();
      out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(n));
      size_t pad = static_cast<size_t>(align_up(n, alignment_) - n);
      while (pad > 0) {
        const size_t chunk = std::min(pad, zeros.size());
        out.write(zeros.data(), static_cast<std::streamsize>(chunk));
        pad -= chunk;
      }
    }
    out.flush();
    if (!out) {
      out.close();
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      fail("{}: write failed (disk full?)", tmp.string());
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path_, ec);
  if (ec) fail("{}: cannot move into place: {}", origin, ec.message());
}

}  // namespace tessera
