// GGUF reader and writer: round trips, the real SmolLM2 file (checked against gguf-py's
// reading of it), and a hand-built malformed file for every validation.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "core/error.h"
#include "core/paths.h"
#include "formats/gguf.h"
#include "test_util.h"

using namespace tessera;
using tessera::testing::TempDir;
using tessera::testing::write_file;
namespace fs = std::filesystem;

using tessera::testing::error_of;

namespace {

// Little-endian GGUF bytes, built by hand so that every field can be made wrong.
struct Bytes {
  std::string s;
  Bytes& u8(uint8_t v) { return raw(&v, 1); }
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& i64(int64_t v) { return raw(&v, 8); }
  Bytes& f32(float v) { return raw(&v, 4); }
  Bytes& str(std::string_view v) {
    u64(v.size());
    s.append(v);
    return *this;
  }
  Bytes& raw(const void* p, size_t n) {
    s.append(static_cast<const char*>(p), n);
    return *this;
  }
  Bytes& pad(size_t alignment) {
    s.append((alignment - s.size() % alignment) % alignment, '\0');
    return *this;
  }
  Bytes& zeros(size_t n) {
    s.append(n, '\0');
    return *this;
  }
  // Header: magic, version, counts.
  static Bytes header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
    Bytes b;
    b.s = "GGUF";
    b.u32(version).u64(tensors).u64(kvs);
    return b;
  }
  // One tensor info: name, dims (ggml order), type, offset.
  Bytes& tensor(std::string_view name, std::vector<int64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (int64_t d : ne) i64(d);
    return u32(type).u64(offset);
  }
  Bytes& kv_string(std::string_view key, std::string_view value) { return str(key).u32(8).str(value); }
  Bytes& kv_u32(std::string_view key, uint32_t value) { return str(key).u32(4).u32(value); }
};

// A valid file with one f32 tensor of 4 elements, for variants to break.
Bytes valid_file() {
  Bytes b = Bytes::header(1, 1);
  b.kv_string("general.architecture", "test");
  b.tensor("a", {4}, 0, 0);
  b.pad(32);
  for (float v : {1.0f, 2.0f, 3.0f, 4.0f}) b.f32(v);
  return b;
}

// Writes `bytes` to a file called `name` and opens it; returns the error message.
std::string open_error(const TempDir& dir, const std::string& name, const Bytes& bytes) {
  const fs::path path = dir / name;
  write_file(path, bytes.s);
  return error_of([&] { GgufFile file(path); });
}

#define EXPECT_GGUF_ERROR(dir, name, bytes, text)                      \
  do {                                                                 \
    const std::string message = open_error(dir, name, bytes);          \
    EXPECT_NE(message.find(text), std::string::npos) << message;       \
    EXPECT_NE(message.find(name), std::string::npos) << message;       \
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;       \
  } while (0)

fs::path smollm_path() { return models_dir() / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"; }

std::vector<std::byte> pattern_bytes(size_t n, int seed) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 131 + seed * 17 + (i >> 5)) & 0xFF);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Round trips

TEST(Gguf, WriteThenReadEveryValueType) {
  TempDir dir;
  GgufWriter w(dir / "m.gguf");
  w.set("u8", GgufValue::from_u8(250));
  w.set("i8", GgufValue::from_i8(-120));
  w.set("u16", GgufValue::from_u16(65000));
  w.set("i16", GgufValue::from_i16(-32000));
  w.set_u32("u32", 4000000000u);
  w.set_i32("i32", -2000000000);
  w.set_u64("u64", 18000000000000000000ull);
  w.set_i64("i64", -9000000000000000000ll);
  w.set_f32("f32", 0.1f);
  w.set_f64("f64", 1e-300);
  w.set_bool("bool", true);
  w.set_string("string", std::string("h\xC3\xA9llo\0x", 8));
  w.set_strings("strings", {"a", "", "ccc", std::string(1000, 'z')});
  w.set("ints", GgufValue::from_ints(GgufType::I32, {-1, 0, 7}));
  w.set("u8s", GgufValue::from_ints(GgufType::U8, {0, 255}));
  w.set("bools", GgufValue::from_ints(GgufType::Bool, {1, 0, 1}));
  w.set("floats", GgufValue::from_f32s({1.5f, -2.25f}));
  w.set("doubles", GgufValue::from_f64s({3.0, 1e100}));
  w.set("nested", GgufValue::from_arrays(GgufType::String, {GgufValue::from_strings({"x", "y"}),
                                                             GgufValue::from_strings({})}));
  w.set("empty", GgufValue::from_strings({}));
  w.write();
  EXPECT_FALSE(fs::exists(dir / "m.gguf.tmp"));

  GgufFile f(dir / "m.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.metadata().size(), 20u);
  EXPECT_EQ(f.metadata()[0].first, "u8");  // insertion order is kept
  EXPECT_EQ(f.get("u8").type, GgufType::U8);
  EXPECT_EQ(f.get_u32("u8"), 250u);
  EXPECT_EQ(f.get_i64("i8"), -120);
  EXPECT_EQ(f.get("i8").type, GgufType::I8);
  EXPECT_EQ(f.get_u32("u16"), 65000u);
  EXPECT_EQ(f.get_i32("i16"), -32000);
  EXPECT_EQ(f.get_u32("u32"), 4000000000u);
  EXPECT_EQ(f.get_i32("i32"), -2000000000);
  EXPECT_EQ(f.get_u64("u64"), 18000000000000000000ull);
  EXPECT_EQ(f.get_i64("i64"), -9000000000000000000ll);
  EXPECT_EQ(f.get_f32("f32"), 0.1f);
  EXPECT_EQ(f.get("f32").type, GgufType::F32);
  EXPECT_EQ(f.get_f64("f64"), 1e-300);
  EXPECT_TRUE(f.get_bool("bool"));
  EXPECT_EQ(f.get_string("string"), std::string("h\xC3\xA9llo\0x", 8));
  EXPECT_EQ(f.get_string_array("strings"), (std::vector<std::string>{"a", "", "ccc", std::string(1000, 'z')}));
  EXPECT_EQ(f.get_int_array("ints"), (std::vector<int64_t>{-1, 0, 7}));
  EXPECT_EQ(f.get("ints").element_type, GgufType::I32);
  EXPECT_EQ(f.get_int_array("u8s"), (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(f.get("bools").element_type, GgufType::Bool);
  EXPECT_EQ(f.get("bools").u64s, (std::vector<uint64_t>{1, 0, 1}));
  EXPECT_EQ(f.get_float_array("floats"), (std::vector<double>{1.5, -2.25}));
  EXPECT_EQ(f.get_float_array("doubles"), (std::vector<double>{3.0, 1e100}));
  const GgufValue& nested = f.get("nested");
  ASSERT_EQ(nested.element_type, GgufType::Array);
  ASSERT_EQ(nested.arrays.size(), 2u);
  EXPECT_EQ(nested.arrays[0].strings, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(nested.arrays[1].size(), 0u);
  EXPECT_EQ(nested.type_str(), "array of arrays");
  EXPECT_EQ(f.get("empty").size(), 0u);
  EXPECT_EQ(f.get("strings").type_str(), "array of string");
  EXPECT_EQ(f.get_string("missing", "fallback"), "fallback");
  EXPECT_EQ(f.get_u32("missing", 7u), 7u);
  EXPECT_EQ(f.find("missing"), nullptr);
  EXPECT_TRUE(f.tensors().empty());
}

TEST(Gguf, WriteThenReadTensorsOfEveryDtype) {
  for (uint32_t alignment : {32u, 64u}) {
    TempDir dir;
    const fs::path path = dir / "t.gguf";
    GgufWriter w(path, alignment);
    w.set_string("general.architecture", "llama");
    Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
    w.add_tensor("f32", a);
    w.add_tensor("f32.transposed", a.transpose(0, 1));  // strided input is written contiguously
    w.add_tensor("f16", a.to(DType::F16));
    w.add_tensor("bf16", a.to(DType::BF16));
    struct Raw {
      const char* name;
      DType dtype;
      Shape shape;
    };
    const std::vector<Raw> raws = {{"q8_0", DType::Q8_0, {3, 64}},   {"q4_0", DType::Q4_0, {2, 32}},
                                   {"q4_1", DType::Q4_1, {1, 2, 32}}, {"q4_k", DType::Q4_K, {2, 256}},
                                   {"q6_k", DType::Q6_K, {1, 512}},   {"i32", DType::I32, {5}}};
    for (size_t i = 0; i < raws.size(); ++i) {
      const auto bytes = pattern_bytes(dtype_bytes(raws[i].dtype, shape_numel(raws[i].shape)), static_cast<int>(i));
      w.add_tensor_bytes(raws[i].name, raws[i].dtype, raws[i].shape, bytes);
    }
    w.write();

    GgufFile f(path);
    EXPECT_EQ(f.header().alignment, alignment);
    if (alignment != 32) EXPECT_EQ(f.get_u32("general.alignment"), alignment);
    EXPECT_EQ(f.architecture(), "llama");
    ASSERT_EQ(f.tensors().size(), 10u);
    Tensor ra = f.tensor("f32");
    EXPECT_TRUE(ra.is_mapped());
    EXPECT_EQ(ra.shape(), (Shape{2, 3}));
    EXPECT_EQ(f.tensor_info("f32").ne, (std::vector<int64_t>{3, 2}));  // ggml order: innermost first
    EXPECT_EQ(ra.to_vector(), a.to_vector());
    EXPECT_EQ(f.tensor("f32.transposed").shape(), (Shape{3, 2}));
    EXPECT_EQ(f.tensor("f32.transposed").to_vector(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
    EXPECT_EQ(f.tensor("f16").dtype(), DType::F16);
    EXPECT_EQ(f.tensor("f16").to_vector(), a.to_vector());
    EXPECT_EQ(f.tensor("bf16").dtype(), DType::BF16);
    EXPECT_EQ(f.tensor_info("bf16").ggml_type, 30u);
    EXPECT_EQ(f.tensor("bf16").to_vector(), a.to_vector());
    for (size_t i = 0; i < raws.size(); ++i) {
      SCOPED_TRACE(raws[i].name);
      Tensor t = f.tensor(raws[i].name);
      EXPECT_EQ(t.dtype(), raws[i].dtype);
      EXPECT_EQ(t.shape(), raws[i].shape);
      const auto expected = pattern_bytes(dtype_bytes(raws[i].dtype, shape_numel(raws[i].shape)), static_cast<int>(i));
      ASSERT_EQ(t.nbytes(), expected.size());
      EXPECT_EQ(std::memcmp(t.raw(), expected.data(), expected.size()), 0);
      EXPECT_EQ(f.tensor_bytes(raws[i].name).size(), expected.size());
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % alignment, 0u);
      EXPECT_EQ(f.tensor_info(raws[i].name).offset % alignment, 0u);
    }
    EXPECT_EQ(f.tensor_info("q4_k").ggml_type, 12u);
    EXPECT_EQ(f.tensor_info("q4_k").type_name, "q4_K");
    EXPECT_EQ(f.tensor_info("q6_k").ggml_type, 14u);
    EXPECT_EQ(f.tensor_info("q8_0").ggml_type, 8u);
    EXPECT_EQ(f.tensor_info("q4_0").ggml_type, 2u);
    EXPECT_EQ(f.tensor_info("q4_1").ggml_type, 3u);
    EXPECT_EQ(f.tensor_info("q4_1").ne, (std::vector<int64_t>{32, 2, 1}));

    // What the writer wrote parses identically from memory.
    const std::string bytes = tessera::testing::read_file(path);
    GgufHeader h = parse_gguf(std::as_bytes(std::span(bytes.data(), bytes.size())), "mem");
    EXPECT_EQ(h.tensors.size(), 10u);
    EXPECT_EQ(h.data_start % alignment, 0u);
  }
}

TEST(Gguf, WriterOverwritesAtomicallyAndRejectsBadInput) {
  TempDir dir;
  const fs::path path = dir / "w.gguf";
  write_file(path, "old contents");
  GgufWriter w(path);
  w.set_u32("x", 1);
  w.write();
  EXPECT_EQ(GgufFile(path).get_u32("x"), 1u);

  GgufWriter bad(dir / "bad.gguf");
  bad.set_u32("x", 1);
  EXPECT_NE(error_of([&] { bad.set_u32("x", 2); }).find("set twice"), std::string::npos);
  bad.add_tensor("t", Tensor::zeros({2, 2}));
  EXPECT_NE(error_of([&] { bad.add_tensor("t", Tensor::zeros({2})); }).find("added twice"), std::string::npos);
  EXPECT_NE(error_of([&] { bad.add_tensor("q", Tensor::zeros({2, 40}, DType::Q4_0)); }).find("not a multiple"),
            std::string::npos);
  EXPECT_NE(error_of([&] { bad.add_tensor("z", Tensor::zeros({0, 4})); }).find("positive"), std::string::npos);
  EXPECT_NE(error_of([&] { bad.add_tensor("b", Tensor::zeros({4}, DType::Bool)); }).find("cannot hold"),
            std::string::npos);
  EXPECT_NE(error_of([&] { bad.add_tensor("5d", Tensor::zeros({1, 1, 1, 1, 1})); }).find("1 to 4"),
            std::string::npos);
  const std::vector<std::byte> three(3);
  EXPECT_NE(error_of([&] { bad.add_tensor_bytes("r", DType::F32, {1}, three); }).find("needs 4"), std::string::npos);
  EXPECT_NE(error_of([&] { GgufWriter(dir / "a.gguf", 48); }).find("power of two"), std::string::npos);
  GgufWriter wide(dir / "wide.gguf");
  wide.set("v", GgufValue::from_ints(GgufType::U8, {256}));
  EXPECT_NE(error_of([&] { wide.write(); }).find("does not fit u8"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "wide.gguf"));
}

TEST(Gguf, TypedGettersNameTheKeyAndTheTypes) {
  TempDir dir;
  const fs::path path = dir / "g.gguf";
  GgufWriter w(path);
  w.set_string("name", "x");
  w.set_i32("negative", -1);
  w.set_u64("big", 1ull << 40);
  w.set_f32("ratio", 0.5f);
  w.set("ints", GgufValue::from_ints(GgufType::I32, {1}));
  w.write();
  GgufFile f(path);
  const std::string file = path.string();
  std::string e = error_of([&] { f.get_string("absent"); });
  EXPECT_EQ(e, file + ": metadata key 'absent' is missing");
  e = error_of([&] { f.get_u32("name"); });
  EXPECT_EQ(e, file + ": metadata key 'name' has type string, expected u32");
  e = error_of([&] { f.get_string("big"); });
  EXPECT_EQ(e, file + ": metadata key 'big' has type u64, expected string");
  e = error_of([&] { f.get_u32("negative"); });
  EXPECT_NE(e.find("value -1 does not fit u32"), std::string::npos) << e;
  e = error_of([&] { f.get_u32("big"); });
  EXPECT_NE(e.find("does not fit u32"), std::string::npos) << e;
  EXPECT_EQ(f.get_i64("negative"), -1);
  EXPECT_EQ(f.get_u64("big"), 1ull << 40);
  EXPECT_EQ(f.get_f64("ratio"), 0.5);
  e = error_of([&] { f.get_f32("name"); });
  EXPECT_EQ(e, file + ": metadata key 'name' has type string, expected f32");
  e = error_of([&] { f.get_bool("ratio", false); });  // a present key of the wrong type is an error
  EXPECT_EQ(e, file + ": metadata key 'ratio' has type f32, expected bool");
  e = error_of([&] { f.get_string_array("ints"); });
  EXPECT_EQ(e, file + ": metadata key 'ints' has type array of i32, expected array of string");
  e = error_of([&] { f.tensor("nope"); });
  EXPECT_EQ(e, file + ": no tensor named 'nope'");
  e = error_of([&] { f.architecture(); });
  EXPECT_EQ(e, file + ": metadata key 'general.architecture' is missing");
  EXPECT_FALSE(f.chat_template().has_value());
}

// ---------------------------------------------------------------------------------------
// The real file

TEST(Gguf, ReadsSmolLM2AsGgufPyDoes) {
  const fs::path path = smollm_path();
  ASSERT_TRUE(fs::exists(path)) << path << " is missing: run scripts/setup";
  GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.metadata().size(), 33u);
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(f.architecture(), "llama");
  EXPECT_EQ(f.get_u32("llama.block_count"), 30u);
  EXPECT_EQ(f.get_u32("llama.embedding_length"), 576u);
  EXPECT_EQ(f.get_u32("llama.attention.head_count_kv"), 3u);
  EXPECT_EQ(f.get_f32("llama.rope.freq_base"), 100000.0f);
  EXPECT_EQ(f.get_f32("llama.attention.layer_norm_rms_epsilon"), 9.999999747378752e-06f);
  EXPECT_FALSE(f.get_bool("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "smollm");
  EXPECT_EQ(f.get_string_array("general.languages"), (std::vector<std::string>{"en"}));
  const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 49152u);
  EXPECT_EQ(tokens[0], "<|endoftext|>");
  EXPECT_EQ(tokens[100], "t");
  EXPECT_EQ(tokens[1000], "()");
  EXPECT_EQ(tokens[49151], "ectable");
  const auto merges = f.get_string_array("tokenizer.ggml.merges");
  ASSERT_EQ(merges.size(), 48900u);
  EXPECT_EQ(merges[0], "\xC4\xA0 t");  // "Ġ t"
  EXPECT_EQ(merges[48899], "ect able");
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").element_type, GgufType::I32);
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type").size(), 49152u);
  ASSERT_TRUE(f.chat_template().has_value());
  EXPECT_NE(f.chat_template()->find("<|im_start|>"), std::string::npos);

  // Offsets and bytes as gguf-py reports them (its data_offset is from the start of the file).
  EXPECT_EQ(f.header().data_start, 1785664u);
  const GgufTensorInfo& embd = f.tensor_info("token_embd.weight");
  EXPECT_EQ(embd.ne, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(embd.nbytes, 30081024u);
  EXPECT_EQ(f.header().data_start + embd.offset, 1785664u);
  Tensor e = f.tensor("token_embd.weight");
  EXPECT_EQ(e.shape(), (Shape{49152, 576}));
  EXPECT_EQ(e.dtype(), DType::Q8_0);
  EXPECT_EQ(e.nbytes(), 30081024u);
  const auto* eb = static_cast<const uint8_t*>(e.raw());
  EXPECT_EQ((std::vector<uint8_t>(eb, eb + 8)), (std::vector<uint8_t>{0x32, 0x19, 0xd6, 0x0d, 0x13, 0xf7, 0xe5, 0xee}));
  Tensor down = f.tensor("blk.29.ffn_down.weight");
  EXPECT_EQ(down.shape(), (Shape{576, 1536}));
  EXPECT_EQ(down.dtype(), DType::Q4_1);
  EXPECT_EQ(f.header().data_start + f.tensor_info("blk.29.ffn_down.weight").offset, 80630848u);
  const auto* db = static_cast<const uint8_t*>(down.raw());
  EXPECT_EQ((std::vector<uint8_t>(db, db + 8)), (std::vector<uint8_t>{0xe2, 0x29, 0xd8, 0xb5, 0xf2, 0x9c, 0x4c, 0xd9}));
  Tensor norm = f.tensor("blk.0.attn_norm.weight");
  EXPECT_EQ(norm.shape(), (Shape{576}));
  const auto v = norm.to_vector();
  EXPECT_EQ((std::vector<float>(v.begin(), v.begin() + 4)),
            (std::vector<float>{0.01397705078125f, 0.0238037109375f, -0.019775390625f, -0.0302734375f}));
  const auto out = f.tensor("output_norm.weight").to_vector();
  EXPECT_EQ(out[0], 1.7578125f);
  EXPECT_EQ(f.header().data_start + f.tensor_info("output_norm.weight").offset, 98360128u);
  size_t q4_1 = 0, f32 = 0, q8_0 = 0;
  for (const auto& info : f.tensors()) {
    q4_1 += info.dtype == DType::Q4_1;
    f32 += info.dtype == DType::F32;
    q8_0 += info.dtype == DType::Q8_0;
  }
  EXPECT_EQ(q4_1, 210u);
  EXPECT_EQ(f32, 61u);
  EXPECT_EQ(q8_0, 1u);
}

TEST(Gguf, RewritingSmolLM2KeepsEverything) {
  const fs::path path = smollm_path();
  ASSERT_TRUE(fs::exists(path)) << path << " is missing: run scripts/setup";
  GgufFile f(path);
  TempDir dir;
  GgufWriter w(dir / "copy.gguf");
  for (const auto& [key, value] : f.metadata()) w.set(key, value);
  for (const auto& info : f.tensors()) w.add_tensor(info.name, f.tensor(info.name));
  w.write();
  // Same layout as llama.cpp writes it: the copy is byte-identical.
  EXPECT_EQ(tessera::testing::read_file(dir / "copy.gguf"), tessera::testing::read_file(path));
}

// ---------------------------------------------------------------------------------------
// Malformed files: one line naming the file and the problem

TEST(GgufBadFiles, ValidBaseFileOpens) {
  TempDir dir;
  write_file(dir / "ok.gguf", valid_file().s);
  GgufFile f(dir / "ok.gguf");
  EXPECT_EQ(f.tensor("a").to_vector(), (std::vector<float>{1, 2, 3, 4}));
}

TEST(GgufBadFiles, MagicAndVersion) {
  TempDir dir;
  Bytes b = valid_file();
  b.s[0] = 'X';
  EXPECT_GGUF_ERROR(dir, "magic.gguf", b, "not a GGUF file");
  EXPECT_GGUF_ERROR(dir, "empty.gguf", Bytes{}, "not a GGUF file");
  b = valid_file();
  b.s[4] = 1;
  EXPECT_GGUF_ERROR(dir, "v1.gguf", b, "version 1 is not supported");
  b.s[4] = 4;
  EXPECT_GGUF_ERROR(dir, "v4.gguf", b, "unsupported GGUF version 4");
  b.s[4] = 0;
  b.s[7] = 3;
  EXPECT_GGUF_ERROR(dir, "be.gguf", b, "big-endian");
  Bytes v2 = valid_file();
  v2.s[4] = 2;
  write_file(dir / "v2.gguf", v2.s);
  EXPECT_EQ(GgufFile(dir / "v2.gguf").version(), 2u);
  EXPECT_GGUF_ERROR(dir, "short.gguf", Bytes{valid_file().s.substr(0, 10)}, "runs past the end");
}

TEST(GgufBadFiles, CountsThatCannotFit) {
  TempDir dir;
  Bytes b = Bytes::header(1, 1ull << 60);
  b.kv_string("general.architecture", "test");
  EXPECT_GGUF_ERROR(dir, "kvs.gguf", b, "metadata count 1152921504606846976 cannot fit");
  b = Bytes::header(1ull << 62, 0);
  b.zeros(64);
  EXPECT_GGUF_ERROR(dir, "tensors.gguf", b, "tensor count 4611686018427387904 cannot fit");
  // A count that fits the bytes left, but the entries then run out.
  b = Bytes::header(0, 3);
  b.kv_string("general.architecture", "test").str("k2").u32(4);
  EXPECT_GGUF_ERROR(dir, "few.gguf", b, "runs past the end");
}

TEST(GgufBadFiles, StringsPastTheEnd) {
  TempDir dir;
  Bytes b = Bytes::header(0, 1);
  b.u64(1ull << 40).s.append("general.architecture");
  EXPECT_GGUF_ERROR(dir, "key.gguf", b, "past the end of the file");
  b = Bytes::header(0, 1);
  b.str("general.architecture").u32(8).u64(1000).s.append("short");
  EXPECT_GGUF_ERROR(dir, "value.gguf", b, "metadata 'general.architecture'");
  b = Bytes::header(1, 0);
  b.u64(~0ull).zeros(40);
  EXPECT_GGUF_ERROR(dir, "name.gguf", b, "name of tensor 0");
}

TEST(GgufBadFiles, ValueTypes) {
  TempDir dir;
  Bytes b = Bytes::header(0, 1);
  b.str("k").u32(13).u32(0);
  EXPECT_GGUF_ERROR(dir, "type.gguf", b, "metadata 'k' has unknown value type 13");
  b = Bytes::header(0, 1);
  b.str("k").u32(9).u32(77).u64(1).u32(0);
  EXPECT_GGUF_ERROR(dir, "elem.gguf", b, "array of unknown value type 77");
  b = Bytes::header(0, 1);
  b.str("k").u32(9).u32(8).u64(1ull << 50).zeros(16);
  EXPECT_GGUF_ERROR(dir, "alen.gguf", b, "claims 1125899906842624 elements of type string");
  b = Bytes::header(0, 1);
  b.str("k").u32(7).u8(2);
  EXPECT_GGUF_ERROR(dir, "bool.gguf", b, "bool with byte value 2");
  b = Bytes::header(0, 1);
  b.str("").u32(4).u32(0);
  EXPECT_GGUF_ERROR(dir, "emptykey.gguf", b, "metadata key 0 is empty");
  b = Bytes::header(0, 2);
  b.kv_u32("k", 1).kv_u32("k", 2);
  EXPECT_GGUF_ERROR(dir, "dupkey.gguf", b, "metadata key 'k' appears twice");
}

TEST(GgufBadFiles, NestedArraysHaveADepthLimit) {
  TempDir dir;
  // Three levels (array of array of array of u8) are fine...
  Bytes ok = Bytes::header(0, 1);
  ok.str("k").u32(9).u32(9).u64(1).u32(9).u64(1).u32(0).u64(2).u8(1).u8(2);
  write_file(dir / "three.gguf", ok.s);
  GgufFile f(dir / "three.gguf");
  EXPECT_EQ(f.get("k").arrays.at(0).arrays.at(0).u64s, (std::vector<uint64_t>{1, 2}));
  // ... four are not, however the bytes continue.
  Bytes b = Bytes::header(0, 1);
  b.str("k").u32(9);
  for (int i = 0; i < 64; ++i) b.u32(9).u64(1);
  b.zeros(64);
  EXPECT_GGUF_ERROR(dir, "deep.gguf", b, "nests arrays more than 3 levels deep");
}

TEST(GgufBadFiles, Alignment) {
  TempDir dir;
  Bytes b = Bytes::header(1, 1);
  b.kv_u32("general.alignment", 48).tensor("a", {4}, 0, 0).pad(48).zeros(16);
  EXPECT_GGUF_ERROR(dir, "align48.gguf", b, "general.alignment 48 is not a power of two");
  b = Bytes::header(0, 1);
  b.kv_u32("general.alignment", 0);
  EXPECT_GGUF_ERROR(dir, "align0.gguf", b, "general.alignment 0 is not a power of two");
  b = Bytes::header(0, 1);
  b.str("general.alignment").u32(10).u64(64);
  EXPECT_GGUF_ERROR(dir, "align64bit.gguf", b, "'general.alignment' has type u64, expected u32");
  // A custom power-of-two alignment is honoured.
  b = Bytes::header(1, 1);
  b.kv_u32("general.alignment", 256).tensor("a", {4}, 0, 256).pad(256).zeros(256).f32(1).f32(2).f32(3).f32(4);
  write_file(dir / "align256.gguf", b.s);
  GgufFile f(dir / "align256.gguf");
  EXPECT_EQ(f.header().data_start % 256, 0u);
  EXPECT_EQ(f.tensor("a").to_vector(), (std::vector<float>{1, 2, 3, 4}));
}

TEST(GgufBadFiles, Dimensions) {
  TempDir dir;
  auto file_with = [](std::vector<int64_t> ne, uint32_t type = 0) {
    Bytes b = Bytes::header(1, 0);
    b.tensor("w", std::move(ne), type, 0).pad(32).zeros(4096);
    return b;
  };
  EXPECT_GGUF_ERROR(dir, "dims5.gguf", file_with({1, 1, 1, 1, 1}), "tensor 'w' has 5 dimensions (at most 4)");
  Bytes huge_dims = Bytes::header(1, 0);
  huge_dims.str("w").u32(0xFFFFFFFF).zeros(64);
  EXPECT_GGUF_ERROR(dir, "dimsbig.gguf", huge_dims, "tensor 'w' has 4294967295 dimensions");
  EXPECT_GGUF_ERROR(dir, "zero.gguf", file_with({4, 0}), "tensor 'w' dimension 1 is 0 (must be positive)");
  EXPECT_GGUF_ERROR(dir, "neg.gguf", file_with({-4}), "tensor 'w' dimension 0 is -4");
  EXPECT_GGUF_ERROR(dir, "overflow.gguf", file_with({1ll << 40, 1ll << 40}), "too many elements");
  EXPECT_GGUF_ERROR(dir, "block.gguf", file_with({33, 2}, 2),
                    "tensor 'w' of type q4_0 has rows of 33 elements, not a multiple of the block size 32");
  EXPECT_GGUF_ERROR(dir, "kblock.gguf", file_with({128}, 12), "not a multiple of the block size 256");
  EXPECT_GGUF_ERROR(dir, "bytes.gguf", file_with({1ll << 60}, 0), "runs past the end");
}

TEST(GgufBadFiles, TensorTypes) {
  TempDir dir;
  Bytes b = Bytes::header(1, 0);
  b.tensor("w", {32}, 99, 0).pad(32).zeros(128);
  EXPECT_GGUF_ERROR(dir, "type99.gguf", b, "tensor 'w' has unknown ggml type 99");
  b = Bytes::header(1, 0);
  b.tensor("w", {32}, 31, 0).pad(32).zeros(128);  // a type ggml removed
  EXPECT_GGUF_ERROR(dir, "type31.gguf", b, "unknown ggml type 31");
  // A type ggml knows but tessera cannot compute with: the file opens, the tensor does not.
  b = Bytes::header(1, 0);
  b.tensor("w", {256}, 13, 0).pad(32).zeros(176);
  write_file(dir / "q5k.gguf", b.s);
  GgufFile f(dir / "q5k.gguf");
  EXPECT_EQ(f.tensor_info("w").type_name, "q5_K");
  EXPECT_EQ(f.tensor_info("w").nbytes, 176u);
  EXPECT_EQ(f.tensor_bytes("w").size(), 176u);
  const std::string e = error_of([&] { f.tensor("w"); });
  EXPECT_NE(e.find("q5k.gguf: tensor 'w' has ggml type q5_K (13), which tessera does not support"), std::string::npos)
      << e;
  EXPECT_NE(e.find("q4_K"), std::string::npos) << e;
}

TEST(GgufBadFiles, TensorData) {
  TempDir dir;
  Bytes b = Bytes::header(1, 0);
  b.tensor("w", {4}, 0, 16).pad(32).zeros(64);
  EXPECT_GGUF_ERROR(dir, "misaligned.gguf", b, "tensor 'w' data offset 16 is not a multiple of the alignment 32");
  b = Bytes::header(1, 0);
  b.tensor("w", {4}, 0, 64).pad(32).zeros(64);
  EXPECT_GGUF_ERROR(dir, "past.gguf", b, "tensor 'w' data (16 bytes at offset 64) runs past the end of the file");
  b = Bytes::header(1, 0);
  b.tensor("w", {1024}, 0, 0).pad(32).zeros(100);
  EXPECT_GGUF_ERROR(dir, "truncated.gguf", b, "truncated?");
  b = Bytes::header(1, 0);
  b.tensor("w", {4}, 0, ~0ull - 31).pad(32).zeros(64);
  EXPECT_GGUF_ERROR(dir, "wrap.gguf", b, "runs past the end");
  b = Bytes::header(2, 0);
  b.tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad(32).zeros(128);
  EXPECT_GGUF_ERROR(dir, "overlap.gguf", b, "tensors 'a' and 'b' overlap");
  b = Bytes::header(2, 0);
  b.tensor("a", {8}, 0, 0).tensor("a", {8}, 0, 32).pad(32).zeros(64);
  EXPECT_GGUF_ERROR(dir, "dupname.gguf", b, "tensor name 'a' appears twice");
  b = Bytes::header(1, 0);
  b.tensor("", {8}, 0, 0).pad(32).zeros(64);
  EXPECT_GGUF_ERROR(dir, "noname.gguf", b, "tensor 0 has an empty name");
  // The infos end where the data section would start past the end of the file.
  b = Bytes::header(1, 0);
  b.tensor("w", {1}, 0, 0);
  EXPECT_GGUF_ERROR(dir, "nodata.gguf", b, "past the end of the file");
}

TEST(GgufBadFiles, EveryTruncationIsAnError) {
  // Every prefix of a valid file fails cleanly (and never crashes).
  TempDir dir;
  GgufWriter w(dir / "full.gguf");
  w.set_string("general.architecture", "llama");
  w.set_strings("tokens", {"a", "b"});
  w.set("nested", GgufValue::from_arrays(GgufType::I32, {GgufValue::from_ints(GgufType::I32, {1, 2})}));
  w.add_tensor("t", Tensor::from_vector({1, 2, 3}, {3}));
  w.write();
  const std::string full = tessera::testing::read_file(dir / "full.gguf");
  for (size_t n = 0; n + 1 < full.size(); ++n) {
    const std::string prefix = full.substr(0, n);
    const std::string e = error_of([&] { parse_gguf(std::as_bytes(std::span(prefix.data(), prefix.size())), "cut.gguf"); });
    // Cutting only the padding after the last tensor's data still leaves a valid file.
    if (n >= full.size() - 32 + 12) continue;
    EXPECT_NE(e.find("cut.gguf"), std::string::npos) << "prefix of " << n << " bytes: " << e;
  }
}
