// The commands as a user runs them.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

using namespace tessera::testing;

namespace {
const std::string kModel = (fixtures() / "dbrx" / "e4_top2_d64_clip_f32").string();
}

TEST(Cli, PresetsListTheFamilyWithParameterCounts) {
  auto r = run_tessera("models presets");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* row : {"dbrx-132b", "132B", "36B", "dbrx-73b", "73B", "20B", "dbrx-36b", "10B", "dbrx-19b", "19B",
                          "5.2B", "dbrx-9b", "9.0B", "2.6B", "dbrx-tiny"})
    EXPECT_NE(r.out.find(row), std::string::npos) << row << "\n" << r.out;
  auto j = nlohmann::json::parse(run_tessera("models presets --json").out);
  for (const auto& p : j) {
    if (p["name"] == "dbrx-132b") {
      EXPECT_NEAR(p["parameters"].get<double>(), 132e9, 0.5e9);
      EXPECT_NEAR(p["active_parameters"].get<double>(), 36e9, 0.5e9);
      EXPECT_EQ(p["config"]["ffn_config"]["moe_num_experts"], 16);
      EXPECT_EQ(p["config"]["ffn_config"]["moe_top_k"], 4);
    }
    if (p["name"] == "dbrx-tiny") {
      EXPECT_LT(p["parameters"].get<int64_t>(), 10'000'000);
      EXPECT_EQ(p["config"]["ffn_config"]["moe_num_experts"], 16);
    }
  }
}

TEST(Cli, InitWritesALoadableCheckpoint) {
  TempDir tmp;
  const auto dir = tmp / "tiny";
  auto r = run_tessera("init --preset dbrx-tiny -o '" + dir.string() + "' --seed 5 --dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer_config.json", "cl100k_base.tiktoken"})
    EXPECT_TRUE(std::filesystem::exists(dir / f)) << f;
  auto gen = run_tessera("generate --model '" + dir.string() + "' --prompt 'Hello there' --max-tokens 8 --seed 3");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  EXPECT_NE(gen.err.find("prompt: 2 tokens"), std::string::npos) << gen.err;
  EXPECT_NE(gen.err.find("generation: 8 tokens"), std::string::npos) << gen.err;
  // Same seed, same output; the timing line is on stderr only.
  auto again = run_tessera("generate --model '" + dir.string() + "' --prompt 'Hello there' --max-tokens 8 --seed 3");
  EXPECT_EQ(gen.out, again.out);
  // The same seed writes the same weights.
  const auto dir2 = tmp / "tiny2";
  run_tessera("init --preset dbrx-tiny -o '" + dir2.string() + "' --seed 5 --dtype bf16");
  EXPECT_EQ(read_file(dir / "model.safetensors"), read_file(dir2 / "model.safetensors"));
}

TEST(Cli, ScorePrintsFullLogits) {
  auto r = run_tessera("score --model '" + kModel + "' --tokens 1,2,3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["logits"].size(), 3u);
  EXPECT_EQ(j["logits"][0].size(), 256u);
}

TEST(Cli, TokenizeAndDetokenizeRoundTrip) {
  auto r = run_tessera("tokenize --model '" + kModel + "' --text 'Hello world<|endoftext|>'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "9906,1917,100257\n");  // cl100k_base ids
  auto plain = run_tessera("tokenize --model '" + kModel + "' --text '<|endoftext|>' --no-special");
  EXPECT_NE(plain.out, "100257\n");
  auto d = run_tessera("detokenize --model '" + kModel + "' --tokens 9906,1917,100257");
  EXPECT_EQ(d.out, "Hello world<|endoftext|>\n");
}

TEST(Cli, ChatResetStartsOver) {
  TempDir tmp;
  const auto dir = tmp / "tiny";
  ASSERT_EQ(run_tessera("init --preset dbrx-tiny -o '" + dir.string() + "'").exit_code, 0);
  const std::string chat = "chat --model '" + dir.string() + "' --system 'Be brief.' --max-tokens 6 --seed 1";
  // After /reset the same message gets the same reply (same seed, same prompt).
  write_file(tmp / "reset.txt", "Hello\n/reset\nHello\n/exit\n");
  auto r = run_tessera(chat, (tmp / "reset.txt").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(r.out.size() % 2, 0u);
  EXPECT_EQ(r.out.substr(0, r.out.size() / 2), r.out.substr(r.out.size() / 2));
  EXPECT_NE(r.err.find("conversation cleared"), std::string::npos);
}
