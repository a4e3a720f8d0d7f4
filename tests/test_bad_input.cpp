// Bad model folders and requests reach the user as one line naming the file and the problem,
// with exit code 2, never a crash.
#include <gtest/gtest.h>

#include <cstring>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "test_util.h"

using namespace tessera;
using namespace tessera::testing;
namespace fs = std::filesystem;

namespace {

const fs::path kFixture = fixtures() / "dbrx" / "e4_top1_gqa_clip_f32";

// A writable copy of the single-file f32 fixture.
fs::path copy_fixture(const TempDir& tmp) {
  fs::path dir = tmp / "model";
  fs::create_directories(dir);
  for (const char* name : {"config.json", "model.safetensors"}) fs::copy_file(kFixture / name, dir / name);
  return dir;
}

void expect_one_line_error(const CommandResult& r, const std::string& must_contain, const std::string& file) {
  EXPECT_EQ(r.exit_code, 2) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(must_contain), std::string::npos) << r.err;
  if (!file.empty()) {
    EXPECT_NE(r.err.find(file), std::string::npos) << r.err;
  }
}

// Rewrites the safetensors header of `path` through `edit`, keeping the data section.
void edit_header(const fs::path& path, const std::function<void(nlohmann::json&)>& edit) {
  std::string bytes = read_file(path);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, len));
  edit(header);
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t new_len = text.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &new_len, 8);
  write_file(path, out + text + bytes.substr(8 + len));
}

std::string score(const fs::path& dir, const std::string& tokens = "1,2,3") {
  return "score --model '" + dir.string() + "' --tokens " + tokens;
}

}  // namespace

TEST(BadInput, MissingFolderConfigAndWeights) {
  TempDir tmp;
  expect_one_line_error(run_tessera(score(tmp / "nope")), "no such model file or folder", (tmp / "nope").string());
  fs::path dir = copy_fixture(tmp);
  fs::remove(dir / "config.json");
  expect_one_line_error(run_tessera(score(dir)), "config.json is missing", dir.string());
  fs::copy_file(kFixture / "config.json", dir / "config.json");
  fs::remove(dir / "model.safetensors");
  expect_one_line_error(run_tessera(score(dir)), "no model.safetensors", dir.string());
}

TEST(BadInput, BadConfig) {
  TempDir tmp;
  fs::path dir = copy_fixture(tmp);
  auto config = nlohmann::json::parse(read_file(dir / "config.json"));
  config["model_type"] = "gpt99";
  write_file(dir / "config.json", config.dump());
  expect_one_line_error(run_tessera(score(dir)), "unknown model_type 'gpt99'", (dir / "config.json").string());
  write_file(dir / "config.json", "{\"model_type\": \"dbrx\", ");
  expect_one_line_error(run_tessera(score(dir)), "not valid JSON", (dir / "config.json").string());
  config["model_type"] = "dbrx";
  config["d_model"] = "wide";
  write_file(dir / "config.json", config.dump());
  expect_one_line_error(run_tessera(score(dir)), "d_model must be an integer", "config.json");
}

TEST(BadInput, MissingTensorAndWrongShape) {
  TempDir tmp;
  fs::path dir = copy_fixture(tmp);
  const fs::path weights = dir / "model.safetensors";
  edit_header(weights, [](nlohmann::json& h) { h.erase("transformer.norm_f.weight"); });
  expect_one_line_error(run_tessera(score(dir)), "weight 'transformer.norm_f.weight' is missing", dir.string());

  fs::copy_file(kFixture / "model.safetensors", weights, fs::copy_options::overwrite_existing);
  auto config = nlohmann::json::parse(read_file(dir / "config.json"));
  config["ffn_config"]["ffn_hidden_size"] = config["ffn_config"]["ffn_hidden_size"].get<int>() + 1;
  write_file(dir / "config.json", config.dump());
  expect_one_line_error(run_tessera(score(dir)), "has shape", weights.string());
}

TEST(BadInput, CorruptSafetensors) {
  TempDir tmp;
  fs::path dir = copy_fixture(tmp);
  const fs::path weights = dir / "model.safetensors";
  const std::string original = read_file(weights);

  write_file(weights, original.substr(0, original.size() - 100));  // truncated
  expect_one_line_error(run_tessera(score(dir)), "past the end of the data", weights.string());

  std::string huge = original;
  huge[5] = '\x10';  // header length far past the end
  write_file(weights, huge);
  expect_one_line_error(run_tessera(score(dir)), "header length", weights.string());

  write_file(weights, original);
  edit_header(weights, [](nlohmann::json& h) {
    h["transformer.norm_f.weight"]["data_offsets"] = h["transformer.wte.weight"]["data_offsets"];
    h["transformer.norm_f.weight"]["shape"] = h["transformer.wte.weight"]["shape"];
  });
  expect_one_line_error(run_tessera(score(dir)), "overlap", weights.string());

  write_file(weights, original);
  edit_header(weights, [](nlohmann::json& h) { h["transformer.norm_f.weight"]["dtype"] = "F8_E7M9"; });
  expect_one_line_error(run_tessera(score(dir)), "unsupported dtype", weights.string());

  write_file(weights, std::string(3, 'x'));
  expect_one_line_error(run_tessera(score(dir)), "too short", weights.string());
}

TEST(BadInput, SequenceLongerThanMaxSeqLenAndBadTokens) {
  const auto config = nlohmann::json::parse(read_file(kFixture / "config.json"));
  const int max_len = config["max_seq_len"].get<int>();
  std::string tokens;
  for (int i = 0; i <= max_len; ++i) tokens += (i ? "," : "") + std::to_string(i % 7);
  expect_one_line_error(run_tessera(score(kFixture, tokens)), "exceeds max_seq_len", "");
  expect_one_line_error(run_tessera(score(kFixture, "1,999999")), "token id 999999 is out of range", "");
  expect_one_line_error(run_tessera(score(kFixture, "1,x")), "'x' is not a token id", "");
}

TEST(BadInput, UnknownPresetAndFlags) {
  TempDir tmp;
  expect_one_line_error(run_tessera("init --preset dbrx-huge -o '" + (tmp / "m").string() + "'"),
                        "unknown preset 'dbrx-huge'", "");
  auto r = run_tessera("generate --model x --prompt hi --temperature -1");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("temperature"), std::string::npos) << r.err;
}
