#pragma once
// GGUF (llama.cpp's model file), versions 2 and 3, little-endian:
//   "GGUF" u32 version, u64 tensor count, u64 metadata count,
//   metadata: (string key, u32 value type, value)*,
//   tensor infos: (string name, u32 n_dims, i64 ne[n_dims], u32 ggml type, u64 offset)*,
//   padding to general.alignment (default 32), then the tensor data; each offset is relative to
//   the start of the data section and is itself aligned.
// Strings are a u64 length and that many bytes; arrays are a u32 element type, a u64 count
// and the elements.
//
// Shapes: ggml lists dimensions innermost first (ne[0] is the row length). tessera shapes are
// row-major, so a tensor's Shape is ne reversed: ggml ne = {n_embd, n_vocab} is Shape
// [n_vocab, n_embd]. Block-quantized rows are ne[0] = the last Shape dimension long.
//
// Files are memory-mapped and tensors are zero-copy views into the mapping. Every structural
// problem is reported as one tessera::Error line naming the file: bad magic or version, counts
// or strings that run past the end, unknown value types, arrays nested too deeply, bad
// dimensions, unknown tensor types, misaligned, overlapping or truncated tensor data,
// duplicate keys or tensor names, rows that are not a whole number of quantization blocks.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace tessera {

// GGUF metadata value types, with their on-disk ids.
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7,
  String = 8, Array = 9, U64 = 10, I64 = 11, F64 = 12,
};
std::string_view gguf_type_name(GgufType type);  // "u32", "string", "array", ...

// A metadata value. Scalars keep their declared type; the payload lives in the widest field of
// its kind (unsigned integers in `u64`, signed in `i64`, f32/f64 in `f64`), so every value
// round-trips exactly. Arrays hold `element_type` and their elements in one of the vectors:
// unsigned integers and bools in `u64s`, signed integers in `i64s`, floats in `f64s`, strings
// in `strings`, nested arrays in `arrays`.
struct GgufValue {
  GgufType type = GgufType::U32;
  uint64_t u64 = 0;
  int64_t i64 = 0;
  double f64 = 0;
  bool boolean = false;
  std::string string;

  GgufType element_type = GgufType::U8;
  std::vector<uint64_t> u64s;
  std::vector<int64_t> i64s;
  std::vector<double> f64s;
  std::vector<std::string> strings;
  std::vector<GgufValue> arrays;

  bool is_array() const { return type == GgufType::Array; }
  size_t size() const;            // array length (0 for scalars)
  std::string type_str() const;   // "u32", "array of string", ...
  std::string summary() const;    // a short printable form, for messages and `inspect`

  static GgufValue from_u8(uint8_t v);
  static GgufValue from_i8(int8_t v);
  static GgufValue from_u16(uint16_t v);
  static GgufValue from_i16(int16_t v);
  static GgufValue from_u32(uint32_t v);
  static GgufValue from_i32(int32_t v);
  static GgufValue from_u64(uint64_t v);
  static GgufValue from_i64(int64_t v);
  static GgufValue from_f32(float v);
  static GgufValue from_f64(double v);
  static GgufValue from_bool(bool v);
  static GgufValue from_string(std::string v);
  static GgufValue from_strings(std::vector<std::string> v);
  // Integer arrays of the given element type (u8..i64 or bool); values must fit the type.
  static GgufValue from_ints(GgufType element_type, const std::vector<int64_t>& v);
  static GgufValue from_f32s(const std::vector<float>& v);
  static GgufValue from_f64s(std::vector<double> v);
  static GgufValue from_arrays(GgufType inner_type, std::vector<GgufValue> v);  // nested arrays
};

// ggml tensor types: the on-disk id, its name ("q4_K") and block geometry. Every type ggml
// defines is known (so files with other types still open and their sizes are checked); only
// those with a tessera DType can be read as tensors.
struct GgmlTypeInfo {
  uint32_t id = 0;
  std::string_view name;
  uint32_t block_elems = 0;  // elements per block (1 for plain types)
  uint32_t block_bytes = 0;  // bytes per block
  std::optional<DType> dtype;
};
const GgmlTypeInfo* ggml_type_info(uint32_t id);  // nullptr for ids ggml does not define
std::optional<uint32_t> ggml_type_of(DType dtype);  // F32 -> 0, Q4_K -> 12, ...; nullopt for Bool/U8

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::string_view type_name;  // "q4_K"
  std::optional<DType> dtype;  // nullopt: a ggml type tessera cannot compute with
  std::vector<int64_t> ne;     // ggml order, innermost first
  Shape shape;                 // row-major: ne reversed
  uint64_t offset = 0;         // relative to the data section
  uint64_t nbytes = 0;
};

struct GgufHeader {
  uint32_t version = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata;  // in file order
  std::vector<GgufTensorInfo> tensors;                      // in file order
  uint32_t alignment = 32;
  uint64_t data_start = 0;  // byte offset of the data section in the file
};

// Parses and validates a whole file held in memory (tensor data included, so that offsets can
// be checked). `origin` names the file in error messages. Throws tessera::Error.
GgufHeader parse_gguf(std::span<const std::byte> file, const std::string& origin);

class GgufFile {
 public:
  explicit GgufFile(const std::filesystem::path& path, FileResidency residency = FileResidency::Mapped);

  const std::filesystem::path& path() const { return path_; }
  const GgufHeader& header() const { return header_; }
  uint32_t version() const { return header_.version; }

  // Metadata. find() returns nullptr for a missing key. The typed getters throw
  //   "<file>: metadata key 'x' is missing" or "<file>: metadata key 'x' has type T, expected U";
  // integer getters accept any integer type whose value fits the requested one.
  const GgufValue* find(const std::string& key) const;
  bool contains(const std::string& key) const { return find(key) != nullptr; }
  const GgufValue& get(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  uint32_t get_u32(const std::string& key) const;
  int32_t get_i32(const std::string& key) const;
  uint64_t get_u64(const std::string& key) const;
  int64_t get_i64(const std::string& key) const;
  float get_f32(const std::string& key) const;   // f32 or f64
  double get_f64(const std::string& key) const;  // f32 or f64
  bool get_bool(const std::string& key) const;
  // The same with a fallback when the key is missing (a present key of the wrong type throws).
  std::string get_string(const std::string& key, const std::string& fallback) const;
  uint32_t get_u32(const std::string& key, uint32_t fallback) const;
  int64_t get_i64(const std::string& key, int64_t fallback) const;
  float get_f32(const std::string& key, float fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;   // any integer element type
  std::vector<double> get_float_array(const std::string& key) const;  // f32/f64 (or integer) elements
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return header_.metadata; }

  std::string architecture() const { return get_string("general.architecture"); }
  // tokenizer.chat_template, if the file has one.
  std::optional<std::string> chat_template() const;

  // Tensors.
  bool contains_tensor(const std::string& name) const { return tensor_index_.count(name) != 0; }
  const GgufTensorInfo& tensor_info(const std::string& name) const;  // throws naming file + tensor
  // A zero-copy view into the mapping; throws for a missing tensor or a ggml type tessera
  // does not support (naming the tensor and the type).
  Tensor tensor(const std::string& name) const;
  const std::vector<GgufTensorInfo>& tensors() const { return header_.tensors; }
  // The raw bytes of a tensor (any ggml type).
  std::span<const std::byte> tensor_bytes(const std::string& name) const;

 private:
  std::filesystem::path path_;
  std::shared_ptr<MappedFile> mapping_;
  GgufHeader header_;
  std::map<std::string, size_t, std::less<>> key_index_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Builds a GGUF v3 file: metadata in insertion order, then tensors in insertion order, each
// aligned to `alignment` (written as general.alignment when not the default 32). write()
// writes a temporary file next to `path` and renames it into place, so a reader never sees a
// partial file.
class GgufWriter {
 public:
  explicit GgufWriter(std::filesystem::path path, uint32_t alignment = 32);

  void set(const std::string& key, GgufValue value);  // a key set twice is an error
  void set_string(const std::string& key, std::string value) { set(key, GgufValue::from_string(std::move(value))); }
  void set_u32(const std::string& key, uint32_t value) { set(key, GgufValue::from_u32(value)); }
  void set_i32(const std::string& key, int32_t value) { set(key, GgufValue::from_i32(value)); }
  void set_u64(const std::string& key, uint64_t value) { set(key, GgufValue::from_u64(value)); }
  void set_i64(const std::string& key, int64_t value) { set(key, GgufValue::from_i64(value)); }
  void set_f32(const std::string& key, float value) { set(key, GgufValue::from_f32(value)); }
  void set_f64(const std::string& key, double value) { set(key, GgufValue::from_f64(value)); }
  void set_bool(const std::string& key, bool value) { set(key, GgufValue::from_bool(value)); }
  void set_strings(const std::string& key, std::vector<std::string> value) {
    set(key, GgufValue::from_strings(std::move(value)));
  }

  // A tensor of any dtype GGUF can hold (f32, f16, bf16, f64, i8..i64, q8_0, q4_0, q4_1, q4_K,
  // q6_K), any strides; shape row-major, 1 to 4 dimensions, the last a whole number of blocks
  // for quantized dtypes. The tensor's storage is kept (not copied) until write().
  void add_tensor(const std::string& name, const Tensor& tensor);
  // Raw bytes in `dtype`'s layout for a row-major `shape` (copied).
  void add_tensor_bytes(const std::string& name, DType dtype, const Shape& shape, std::span<const std::byte> bytes);

  void write() const;

 private:
  std::filesystem::path path_;
  uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<std::pair<std::string, Tensor>> tensors_;
};

}  // namespace tessera
