// The DBRX forward pass against transformers' DbrxForCausalLM: fixtures made by
// tools/golden/make_dbrx_golden.py (tiny random configs covering expert counts, top-k, clip_qkv,
// GQA, rope_theta, normalisation, f32/bf16 storage and sharding).
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <fstream>

#include <nlohmann/json.hpp>

#include "models/llm/dbrx_model.h"
#include "serving/sampling.h"
#include "test_util.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

std::vector<fs::path> fixture_dirs() {
  std::vector<fs::path> dirs;
  for (const auto& item : fs::directory_iterator(tessera::testing::fixtures() / "dbrx"))
    if (fs::exists(item.path() / "golden.json")) dirs.push_back(item.path());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

nlohmann::json load_golden(const fs::path& dir) {
  std::ifstream in(dir / "golden.json");
  return nlohmann::json::parse(in);
}

std::vector<int32_t> greedy(LanguageModel& model, const std::vector<int32_t>& prompt, size_t count) {
  KvCache cache = model.new_cache();
  Tensor logits = model.forward(prompt, cache, false);
  std::vector<int32_t> out;
  SamplingParams params;
  params.temperature = 0;
  Sampler sampler(params);
  for (size_t i = 0; i < count; ++i) {
    const int32_t next = sampler.sample({logits.data<float>(), size_t(logits.dim(1))}, prompt, out.size());
    out.push_back(next);
    if (i + 1 < count) {
      const int32_t one[1] = {next};
      logits = model.forward(one, cache, false);
    }
  }
  return out;
}

}  // namespace

class DbrxGolden : public ::testing::TestWithParam<fs::path> {};

TEST_P(DbrxGolden, LogitsMatchTheReference) {
  const auto golden = load_golden(GetParam());
  auto model = DbrxModel::load(GetParam());
  const auto& sequences = golden["sequences"];
  ASSERT_GE(sequences.size(), 1u);
  for (size_t s = 0; s < sequences.size(); ++s) {
    const auto ids = sequences[s].get<std::vector<int32_t>>();
    KvCache cache = model->new_cache();
    Tensor logits = model->forward(ids, cache, true);
    const auto& expected = golden["logits"][s];
    ASSERT_EQ(logits.dim(0), static_cast<int64_t>(expected.size()));
    double max_diff = 0;
    for (size_t t = 0; t < expected.size(); ++t) {
      const auto row = expected[t].get<std::vector<float>>();
      ASSERT_EQ(logits.dim(1), static_cast<int64_t>(row.size()));
      for (size_t v = 0; v < row.size(); ++v)
        max_diff = std::max(max_diff, std::fabs(double(logits.data<float>()[t * row.size() + v]) - row[v]));
    }
    EXPECT_LE(max_diff, 1e-4) << GetParam().filename() << " sequence " << s;
  }
}

TEST_P(DbrxGolden, IncrementalDecodingMatchesAFullForward) {
  const auto golden = load_golden(GetParam());
  auto model = DbrxModel::load(GetParam());
  const auto ids = golden["sequences"].back().get<std::vector<int32_t>>();
  KvCache full_cache = model->new_cache();
  Tensor full = model->forward(ids, full_cache, true);
  // Prefill a prefix, then feed the rest one token at a time.
  KvCache cache = model->new_cache();
  const size_t prefix = ids.size() / 2;
  model->forward(std::span(ids).first(prefix), cache, false);
  for (size_t t = prefix; t < ids.size(); ++t) {
    Tensor step = model->forward(std::span(ids).subspan(t, 1), cache, false);
    for (int64_t v = 0; v < step.dim(1); ++v)
      ASSERT_NEAR(step.data<float>()[v], full.data<float>()[t * step.dim(1) + v], 1e-4);
  }
  EXPECT_EQ(cache.length(), static_cast<int64_t>(ids.size()));
}

TEST_P(DbrxGolden, GreedyContinuationIsIdentical) {
  const auto golden = load_golden(GetParam());
  auto model = DbrxModel::load(GetParam());
  for (const auto& g : golden["greedy"]) {
    const auto prompt = g["prompt"].get<std::vector<int32_t>>();
    const auto expected = g["tokens"].get<std::vector<int32_t>>();
    EXPECT_EQ(greedy(*model, prompt, expected.size()), expected) << GetParam().filename();
  }
}

TEST_P(DbrxGolden, ParameterCountsMatchTheReference) {
  const auto golden = load_golden(GetParam());
  auto model = DbrxModel::load(GetParam());
  EXPECT_EQ(model->info().parameters, golden["n_params"].get<int64_t>());
  EXPECT_EQ(model->info().active_parameters, golden["n_active_params"].get<int64_t>());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DbrxGolden, ::testing::ValuesIn(fixture_dirs()),
                         [](const auto& info) { return info.param.filename().string(); });

TEST(DbrxGolden, FixturesCoverTheConfigSpace) {
  // The suite is only meaningful if the fixtures differ where the architecture branches.
  std::set<int64_t> experts, top_k;
  bool clip = false, no_clip = false, gqa = false, bf16 = false, sharded = false;
  for (const auto& dir : fixture_dirs()) {
    const auto c = DbrxConfig::load(dir / "config.json");
    experts.insert(c.moe_num_experts);
    top_k.insert(c.moe_top_k);
    (c.clip_qkv ? clip : no_clip) = true;
    gqa |= c.kv_n_heads < c.n_heads;
    bf16 |= DbrxModel::load(dir)->weight_bytes() < size_t(c.parameter_count()) * 4;
    sharded |= fs::exists(dir / "model.safetensors.index.json");
  }
  EXPECT_GE(fixture_dirs().size(), 3u);
  EXPECT_GE(experts.size(), 2u);
  EXPECT_GE(top_k.size(), 2u);
  EXPECT_TRUE(clip && no_clip && gqa && bf16 && sharded);
}
