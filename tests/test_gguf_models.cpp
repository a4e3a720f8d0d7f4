// DBRX models read from GGUF files written by llama.cpp's own converter
// (tools/golden/make_dbrx_gguf_golden.py) give the logits of their safetensors originals (the
// transformers goldens): exactly for F32, within quantization error for Q8_0. And tessera's own
// `quantize` output loads back with the same accuracy.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "models/llm/language_model.h"
#include "models/llm/quantize.h"
#include "test_util.h"

using namespace tessera;
namespace fs = std::filesystem;

namespace {

struct Diff {
  double max_abs = 0;
  double max_logit = 0;
  int argmax_mismatches = 0;
  int positions = 0;
};

Diff compare_with_golden(LanguageModel& model, const fs::path& golden_dir) {
  std::ifstream in(golden_dir / "golden.json");
  const auto golden = nlohmann::json::parse(in);
  Diff diff;
  for (size_t s = 0; s < golden["sequences"].size(); ++s) {
    const auto ids = golden["sequences"][s].get<std::vector<int32_t>>();
    KvCache cache = model.new_cache();
    Tensor logits = model.forward(ids, cache, true);
    for (size_t t = 0; t < ids.size(); ++t) {
      const auto row = golden["logits"][s][t].get<std::vector<float>>();
      const float* got = logits.data<float>() + t * row.size();
      size_t best_got = 0, best_ref = 0;
      for (size_t v = 0; v < row.size(); ++v) {
        diff.max_abs = std::max(diff.max_abs, std::fabs(double(got[v]) - row[v]));
        diff.max_logit = std::max(diff.max_logit, std::fabs(double(row[v])));
        if (got[v] > got[best_got]) best_got = v;
        if (row[v] > row[best_ref]) best_ref = v;
      }
      diff.argmax_mismatches += best_got != best_ref;
      ++diff.positions;
    }
  }
  return diff;
}

const char* kModels[] = {"e4_top1_gqa_clip_f32", "e4_top2_d64_clip_f32"};

}  // namespace

TEST(GgufModels, LlamaCppConvertedF32MatchesTheReference) {
  for (const char* name : kModels) {
    const auto file = tessera::testing::fixtures() / "dbrx_gguf" / (std::string(name) + ".f32.gguf");
    auto model = load_language_model(file);
    EXPECT_EQ(model->info().architecture, "dbrx");
    const Diff d = compare_with_golden(*model, tessera::testing::fixtures() / "dbrx" / name);
    EXPECT_LE(d.max_abs, 1e-4) << name;
    EXPECT_EQ(d.argmax_mismatches, 0) << name;
  }
}

TEST(GgufModels, LlamaCppConvertedQ8_0IsCloseToTheReference) {
  for (const char* name : kModels) {
    const auto file = tessera::testing::fixtures() / "dbrx_gguf" / (std::string(name) + ".q8_0.gguf");
    auto model = load_language_model(file);
    const Diff d = compare_with_golden(*model, tessera::testing::fixtures() / "dbrx" / name);
    // 8-bit weights and activations: errors of a few per cent of the logit range.
    EXPECT_LE(d.max_abs, 0.03 * d.max_logit) << name << " max |diff| " << d.max_abs;
    EXPECT_LE(d.argmax_mismatches, d.positions / 10) << name;
  }
}

TEST(GgufModels, QuantizeCommandOutputLoadsBack) {
  tessera::testing::TempDir tmp;
  for (const char* name : kModels) {
    const auto source = tessera::testing::fixtures() / "dbrx" / name;
    for (DType type : {DType::F32, DType::Q8_0}) {
      const auto out = tmp / (std::string(name) + std::string(dtype_name(type)));
      const auto written = quantize_model_files(source, type, out);
      EXPECT_TRUE(fs::exists(written));
      auto model = load_language_model(out);
      const Diff d = compare_with_golden(*model, source);
      if (type == DType::F32) {
        EXPECT_LE(d.max_abs, 1e-4) << name;
      } else {
        EXPECT_LE(d.max_abs, 0.03 * d.max_logit) << name << " max |diff| " << d.max_abs;
        EXPECT_LT(fs::file_size(written), fs::file_size(source / "model.safetensors") / 2);
      }
    }
  }
}

TEST(GgufModels, LoadTimeQuantizationMatchesAheadOfTime) {
  const auto source = tessera::testing::fixtures() / "dbrx" / "e4_top2_d64_clip_f32";
  auto in_memory = quantize_model(*load_language_model(source), DType::Q8_0);
  tessera::testing::TempDir tmp;
  quantize_model_files(source, DType::Q8_0, tmp.path());
  auto from_file = load_language_model(tmp.path());
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6};
  KvCache a = in_memory->new_cache(), b = from_file->new_cache();
  Tensor la = in_memory->forward(ids, a, true), lb = from_file->forward(ids, b, true);
  for (int64_t i = 0; i < la.numel(); ++i) ASSERT_EQ(la.data<float>()[i], lb.data<float>()[i]);
}
