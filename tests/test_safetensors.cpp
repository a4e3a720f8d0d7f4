#include <gtest/gtest.h>

#include <cstring>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/safetensors.h"
#include "test_util.h"

using namespace tessera;
using tessera::testing::TempDir;
using tessera::testing::write_file;

using tessera::testing::error_of;

namespace {

std::string make_file(const nlohmann::json& header, size_t data_bytes, int pad_to = 8) {
  std::string text = header.dump();
  if (pad_to > 1) text.append((pad_to - text.size() % pad_to) % pad_to, ' ');
  std::string out(8, '\0');
  uint64_t len = text.size();
  std::memcpy(out.data(), &len, 8);
  return out + text + std::string(data_bytes, '\x01');
}

}  // namespace

TEST(Safetensors, WriteThenReadIsZeroCopy) {
  TempDir dir;
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector({7, 8, 9}, {3}).to(DType::BF16);
  Tensor t = a.transpose(0, 1);  // strided input is written contiguously
  write_safetensors(dir / "m.safetensors", {{"a", a}, {"b", b}, {"t", t}}, {{"format", "pt"}});
  SafetensorsFile file(dir / "m.safetensors");
  EXPECT_EQ(file.header().metadata.at("format"), "pt");
  Tensor ra = file.get("a");
  EXPECT_TRUE(ra.is_mapped());
  EXPECT_EQ(ra.shape(), (Shape{2, 3}));
  EXPECT_EQ(ra.to_vector(), a.to_vector());
  EXPECT_EQ(file.get("b").dtype(), DType::BF16);
  EXPECT_EQ(file.get("b").to_vector(), (std::vector<float>{7, 8, 9}));
  EXPECT_EQ(file.get("t").to_vector(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  // The tensor points into the mapping: its address lies within the mapped file.
  const auto* base = file.get("a").storage()->data();
  EXPECT_GE(static_cast<const std::byte*>(ra.raw()), base);
  EXPECT_LT(static_cast<const std::byte*>(ra.raw()), base + file.get("a").storage()->size());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ra.raw()) % 8, 0u);  // header padded: data aligned
}

TEST(Safetensors, ShardedCheckpointFollowsTheIndex) {
  TempDir dir;
  write_safetensors(dir / "model-00001-of-00002.safetensors", {{"x", Tensor::from_vector({1, 2}, {2})}});
  write_safetensors(dir / "model-00002-of-00002.safetensors", {{"y", Tensor::from_vector({3}, {1})}});
  write_file(dir / "model.safetensors.index.json",
             R"({"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}})");
  SafetensorsCheckpoint ckpt(dir.path());
  EXPECT_EQ(ckpt.get("y").to_vector(), std::vector<float>{3});
  EXPECT_EQ(ckpt.names().size(), 2u);
  EXPECT_EQ(ckpt.total_bytes(), 12u);
  EXPECT_NE(error_of([&] { ckpt.get("z"); }).find("weight 'z' is missing"), std::string::npos);

  write_file(dir / "model.safetensors.index.json", R"({"weight_map": {"x": "model-00003-of-00002.safetensors"}})");
  EXPECT_NE(error_of([&] { SafetensorsCheckpoint c(dir.path()); }).find("shard model-00003-of-00002.safetensors is missing"),
            std::string::npos);
  write_file(dir / "model.safetensors.index.json", R"({"weight_map": {"y": "model-00001-of-00002.safetensors"}})");
  EXPECT_NE(error_of([&] { SafetensorsCheckpoint c(dir.path()); }).find("is not there"), std::string::npos);
}

struct BadCase {
  const char* name;
  std::string bytes;
  const char* expected;
};

TEST(Safetensors, CorruptFilesGiveOneLineErrorsNamingTheFile) {
  using nlohmann::json;
  const json ok = {{"w", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}}};
  std::string header_past_end = make_file(ok, 8);
  header_past_end[0] = '\x7f';
  header_past_end[1] = '\x7f';
  std::vector<BadCase> cases = {
      {"tiny", "abc", "too short"},
      {"header_past_end", header_past_end, "runs past the end"},
      {"truncated", make_file(ok, 8).substr(0, make_file(ok, 8).size() - 3), "run past the end of the data"},
      {"not_json", std::string("\x05\0\0\0\0\0\0\0{nope", 13), "not valid JSON"},
      {"bad_dtype", make_file({{"w", {{"dtype", "Q9"}, {"shape", {2}}, {"data_offsets", {0, 8}}}}}, 8),
       "unsupported dtype 'Q9'"},
      {"wrong_size", make_file({{"w", {{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 8}}}}}, 8),
       "needs 12"},
      {"overlap",
       make_file({{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
                  {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {4, 12}}}}},
                 12),
       "overlap"},
      {"reversed", make_file({{"w", {{"dtype", "U8"}, {"shape", {0}}, {"data_offsets", {4, 0}}}}}, 8), "reversed"},
      {"negative_shape", make_file({{"w", {{"dtype", "F32"}, {"shape", {-2}}, {"data_offsets", {0, 8}}}}}, 8),
       "bad shape entry"},
      {"not_object", make_file(json::array({1, 2}), 0), "not a JSON object"},
  };
  TempDir dir;
  for (const auto& c : cases) {
    const auto path = dir / (std::string(c.name) + ".safetensors");
    write_file(path, c.bytes);
    const std::string message = error_of([&] { SafetensorsFile f(path); });
    EXPECT_NE(message.find(c.expected), std::string::npos) << c.name << ": " << message;
    EXPECT_NE(message.find(path.string()), std::string::npos) << c.name << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << c.name;
  }
  EXPECT_NE(error_of([&] { SafetensorsFile f(dir / "absent.safetensors"); }).find("cannot open"), std::string::npos);
  EXPECT_NE(error_of([&] { SafetensorsCheckpoint c(dir / "nothing-here"); }).find("no model.safetensors"),
            std::string::npos);
}
