// LoRA on the DBRX training engine: adapter gradients against a float64 torch reference
// (tests/fixtures/lora, made by tools/golden/make_lora_golden.py), base + adapter against the
// merged model in the inference engine, a short training run, the adapter files and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "models/llm/dbrx_model.h"
#include "test_util.h"
#include "training/lora.h"
#include "training/optimizer.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using training::DbrxTrainingModel;
using training::LoraAdapter;
using training::LoraConfig;

struct LoraCase {
  fs::path dir;
  nlohmann::json golden;
  std::vector<int32_t> inputs, targets;
  int64_t rows = 0, seq = 0, counted = 0;
  training::TokenBatch batch() const { return {inputs.data(), targets.data(), rows, seq}; }
};

LoraCase load_case(const std::string& name) {
  LoraCase c;
  c.dir = testing::fixtures() / "lora" / name;
  std::ifstream in(c.dir / "golden.json");
  c.golden = nlohmann::json::parse(in);
  for (const auto& row : c.golden["inputs"])
    for (int v : row) c.inputs.push_back(v);
  for (const auto& row : c.golden["targets"])
    for (int v : row) {
      c.targets.push_back(v);
      c.counted += v >= 0;
    }
  c.rows = static_cast<int64_t>(c.golden["inputs"].size());
  c.seq = static_cast<int64_t>(c.golden["inputs"][0].size());
  return c;
}

// Largest |a - b| and largest |b| over two equal-length arrays.
std::pair<double, double> max_err_and_ref(const float* got, const float* want, size_t n) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < n; ++i) {
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    ref = std::max(ref, std::fabs(static_cast<double>(want[i])));
  }
  return {err, ref};
}

// All logits [rows * seq, vocab] of each row of the case's inputs, by the inference engine.
std::vector<float> engine_logits(LanguageModel& model, const LoraCase& c) {
  std::vector<float> out;
  for (int64_t r = 0; r < c.rows; ++r) {
    KvCache cache = model.new_cache();
    Tensor logits = model.forward(std::span(c.inputs).subspan(r * c.seq, c.seq), cache, true);
    out.insert(out.end(), logits.data<float>(), logits.data<float>() + logits.numel());
  }
  return out;
}

class LoraGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraGolden, LossAndAdapterGradientsMatchTorch) {
  const LoraCase c = load_case(GetParam());
  auto model = DbrxTrainingModel::load(c.dir);
  auto adapter = LoraAdapter::load_adapter(c.dir / "adapter", model.config());
  EXPECT_EQ(adapter.config().rank, c.golden["rank"].get<int64_t>());
  EXPECT_EQ(adapter.config().alpha, c.golden["alpha"].get<double>());
  EXPECT_EQ(adapter.config().targets, c.golden["lora_targets"].get<std::vector<std::string>>());
  adapter.attach(model);
  adapter.apply(model);
  model.zero_grad();
  const auto loss = model.forward_backward(c.batch(), 1.0f / static_cast<float>(c.counted), 1.0f, nullptr);
  EXPECT_EQ(loss.counted, c.counted);
  EXPECT_NEAR(loss.ce_mean(), c.golden["ce_loss"].get<double>(), 1e-5 * c.golden["ce_loss"].get<double>());
  EXPECT_NEAR(loss.aux_loss, c.golden["aux_loss"].get<double>(), 1e-5 * c.golden["aux_loss"].get<double>());

  adapter.gather_grads(model);
  SafetensorsFile grads(c.dir / "grads.safetensors");
  ASSERT_EQ(grads.names().size(), adapter.parameters().size());
  for (const auto& p : adapter.parameters()) {
    ASSERT_TRUE(grads.contains(p.name)) << p.name;
    const Tensor ref = grads.get(p.name);
    ASSERT_EQ(ref.shape(), p.shape) << p.name;
    const auto [err, max_ref] = max_err_and_ref(adapter.grads().data() + p.offset, ref.data<float>(), p.size);
    EXPECT_GT(max_ref, 0.0) << p.name;
    EXPECT_LE(err, 1e-4 * max_ref) << p.name << ": largest gradient " << max_ref;
  }
}

TEST_P(LoraGolden, MergedModelAndBasePlusAdapterGiveTheSameLogits) {
  const LoraCase c = load_case(GetParam());
  testing::TempDir tmp;

  // Base + adapter, merged on load into the inference engine: the torch logits of the adapted model.
  auto with_adapter = training::load_dbrx_with_adapter(c.dir, c.dir / "adapter");
  const std::vector<float> adapted = engine_logits(*with_adapter, c);
  const auto& want = c.golden["logits"];
  const int64_t vocab = with_adapter->config().vocab_size;
  ASSERT_EQ(adapted.size(), static_cast<size_t>(c.rows * c.seq * vocab));
  double torch_err = 0;
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t t = 0; t < c.seq; ++t)
      for (int64_t v = 0; v < vocab; ++v)
        torch_err = std::max(torch_err, std::fabs(adapted[(r * c.seq + t) * vocab + v] - want[r][t][v].get<double>()));
  EXPECT_LE(torch_err, 1e-4);

  // The adapter matters: the base model alone is far from it.
  auto base = DbrxModel::load(c.dir);
  const std::vector<float> plain = engine_logits(*base, c);
  double base_diff = 0;
  for (size_t i = 0; i < plain.size(); ++i) base_diff = std::max(base_diff, double(std::fabs(plain[i] - adapted[i])));
  EXPECT_GT(base_diff, 0.05);

  // Merged in the training model, saved as a normal checkpoint, loaded by the inference engine.
  auto training_model = DbrxTrainingModel::load(c.dir);
  auto adapter = LoraAdapter::load_adapter(c.dir / "adapter", training_model.config());
  adapter.attach(training_model);
  adapter.merge(training_model);
  EXPECT_FALSE(adapter.attached());
  training_model.save(tmp / "merged");
  auto merged = DbrxModel::load(tmp / "merged");
  const std::vector<float> from_merged = engine_logits(*merged, c);
  ASSERT_EQ(from_merged.size(), adapted.size());
  double merged_diff = 0;
  for (size_t i = 0; i < adapted.size(); ++i)
    merged_diff = std::max(merged_diff, double(std::fabs(from_merged[i] - adapted[i])));
  EXPECT_LE(merged_diff, 1e-4);

  // The training engine's evaluation agrees: merged checkpoint vs base with the adapter applied.
  auto reloaded = DbrxTrainingModel::load(tmp / "merged");
  const auto merged_eval = reloaded.evaluate(c.batch());
  auto applied = DbrxTrainingModel::load(c.dir);
  auto adapter2 = LoraAdapter::load_adapter(c.dir / "adapter", applied.config());
  adapter2.attach(applied);
  adapter2.apply(applied);
  const auto applied_eval = applied.evaluate(c.batch());
  EXPECT_EQ(merged_eval.counted, applied_eval.counted);
  EXPECT_NEAR(merged_eval.ce_sum, applied_eval.ce_sum, 1e-4 * applied_eval.ce_sum);
  EXPECT_NEAR(merged_eval.ce_mean(), c.golden["ce_loss"].get<double>(), 1e-5 * c.golden["ce_loss"].get<double>());
  auto merged_on_load = training::load_merged_training_model(c.dir, c.dir / "adapter");
  EXPECT_NEAR(merged_on_load.evaluate(c.batch()).ce_sum, applied_eval.ce_sum, 1e-4 * applied_eval.ce_sum);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraGolden, ::testing::Values("all_targets_e4_top2", "qkv_w2_e4_top1"));

DbrxConfig tiny_config() {
  DbrxConfig c;
  c.d_model = 32;
  c.n_heads = 4;
  c.kv_n_heads = 2;
  c.n_layers = 2;
  c.max_seq_len = 32;
  c.vocab_size = 24;
  c.ffn_hidden_size = 16;
  c.moe_num_experts = 4;
  c.moe_top_k = 2;
  c.clip_qkv = 4.0f;
  return c;
}

TEST(Lora, TrainingLowersTheLossAndLeavesTheBaseWeightsBitIdentical) {
  const DbrxConfig cfg = tiny_config();
  DbrxTrainingModel model(cfg, 7, 0.1f);
  const std::vector<float> original(model.values().begin(), model.values().end());

  LoraConfig lc;
  lc.rank = 4;
  lc.alpha = 8;
  lc.seed = 3;
  LoraAdapter adapter(cfg, lc);
  adapter.attach(model);

  // A repeated pattern: each sequence is a window of the cycle 0..11, so every next token is
  // determined by the current one.
  const int64_t rows = 4, seq = 16, period = 12;
  std::vector<int32_t> inputs(rows * seq), targets(rows * seq);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < seq; ++t) {
      inputs[r * seq + t] = static_cast<int32_t>((r * 5 + t) % period);
      targets[r * seq + t] = static_cast<int32_t>((r * 5 + t + 1) % period);
    }
  const training::TokenBatch batch{inputs.data(), targets.data(), rows, seq};

  training::AdamW opt(adapter.values().size(), {0.9, 0.95, 1e-8, 0.0});
  double first = 0, last = 0;
  for (int step = 1; step <= 40; ++step) {
    adapter.apply(model);
    model.zero_grad();
    const auto loss = model.forward_backward(batch, 1.0f / static_cast<float>(rows * seq), 1.0f, nullptr);
    if (step == 1) first = loss.ce_mean();
    last = loss.ce_mean();
    adapter.gather_grads(model);
    opt.step(adapter.values(), adapter.grads(), adapter.parameters(), 1e-2);
  }
  adapter.apply(model);
  const double final_loss = model.evaluate(batch).ce_mean();
  std::printf("LoRA training: loss %.4f -> %.4f (evaluated after the last step: %.4f)\n", first, last, final_loss);
  EXPECT_LT(final_loss, 0.5 * first);

  // Only the targets moved; every other weight (norms, embeddings, router, lm_head) is untouched.
  std::vector<bool> targeted(original.size(), false);
  for (const auto& p : model.parameters()) {
    const bool is_target = p.name.ends_with("Wqkv.weight") || p.name.ends_with("out_proj.weight") ||
                           p.name.ends_with("mlp.w1") || p.name.ends_with("mlp.v1") || p.name.ends_with("mlp.w2");
    for (size_t i = 0; i < p.size; ++i) targeted[p.offset + i] = is_target;
    if (is_target) {
      const auto base = adapter.base(p.name);
      ASSERT_EQ(base.size(), p.size);
      for (size_t i = 0; i < p.size; ++i) ASSERT_EQ(base[i], original[p.offset + i]) << p.name;
    }
  }
  size_t changed_targets = 0;
  for (size_t i = 0; i < original.size(); ++i) {
    if (!targeted[i])
      ASSERT_EQ(model.values()[i], original[i]) << "a frozen weight changed at " << i;
    else
      changed_targets += model.values()[i] != original[i];
  }
  EXPECT_GT(changed_targets, 0u);
  adapter.restore(model);
  for (size_t i = 0; i < original.size(); ++i) ASSERT_EQ(model.values()[i], original[i]);
}

TEST(Lora, FreshAdapterChangesNothingAndRoundTripsThroughItsFiles) {
  const DbrxConfig cfg = tiny_config();
  DbrxTrainingModel model(cfg, 11, 0.1f);
  const std::vector<float> original(model.values().begin(), model.values().end());
  LoraConfig lc;
  lc.rank = 3;
  lc.alpha = 5;
  lc.targets = {"out_proj", "v1"};
  lc.base_model = "tiny";
  LoraAdapter adapter(cfg, lc);
  // 2 layers x (out_proj A, B + v1 A, B)
  ASSERT_EQ(adapter.parameters().size(), 8u);
  EXPECT_EQ(adapter.parameter("transformer.blocks.1.norm_attn_norm.attn.out_proj.lora_A.weight").shape,
            (Shape{3, 32}));
  EXPECT_EQ(adapter.parameter("transformer.blocks.0.ffn.experts.mlp.v1.lora_B.weight").shape, (Shape{4, 16, 3}));
  // Kaiming-uniform A within 1/sqrt(in), B zero: applying it leaves the model as it was.
  for (const auto& p : adapter.parameters()) {
    const bool is_a = p.name.find("lora_A") != std::string::npos;
    double max_abs = 0;
    for (size_t i = 0; i < p.size; ++i) max_abs = std::max(max_abs, double(std::fabs(adapter.values()[p.offset + i])));
    if (is_a) {
      EXPECT_GT(max_abs, 0.5 / std::sqrt(32.0)) << p.name;
      EXPECT_LE(max_abs, 1.0 / std::sqrt(32.0)) << p.name;
    } else {
      EXPECT_EQ(max_abs, 0.0) << p.name;
    }
  }
  adapter.attach(model);
  adapter.apply(model);
  for (size_t i = 0; i < original.size(); ++i) ASSERT_EQ(model.values()[i], original[i]);

  // Nonzero B, saved and loaded back bit for bit, with its config.
  for (size_t i = 0; i < adapter.values().size(); ++i) adapter.values()[i] += 0.001f * static_cast<float>(i % 7);
  testing::TempDir tmp;
  adapter.save_adapter(tmp / "adapter");
  auto back = LoraAdapter::load_adapter(tmp / "adapter", cfg);
  EXPECT_EQ(back.config().rank, 3);
  EXPECT_EQ(back.config().alpha, 5.0);
  EXPECT_EQ(back.config().targets, lc.targets);
  EXPECT_EQ(back.config().base_model, "tiny");
  ASSERT_EQ(back.values().size(), adapter.values().size());
  for (size_t i = 0; i < adapter.values().size(); ++i) ASSERT_EQ(back.values()[i], adapter.values()[i]);

  // Gaussian init: standard deviation 1/r.
  lc.init = training::LoraInit::Gaussian;
  lc.rank = 4;
  lc.targets = {"w1"};
  LoraAdapter gaussian(cfg, lc);
  const auto& a = gaussian.parameter("transformer.blocks.0.ffn.experts.mlp.w1.lora_A.weight");
  double sq = 0;
  for (size_t i = 0; i < a.size; ++i) sq += double(gaussian.values()[a.offset + i]) * gaussian.values()[a.offset + i];
  EXPECT_NEAR(std::sqrt(sq / a.size), 0.25, 0.03);
}

TEST(Lora, BadConfigsAndFilesGiveOneLineErrors) {
  const DbrxConfig cfg = tiny_config();
  auto error_of_config = [&](LoraConfig lc) { return testing::error_of([&] { (void)LoraAdapter(cfg, lc); }); };
  LoraConfig lc;
  lc.rank = 0;
  EXPECT_NE(error_of_config(lc).find("rank must be at least 1"), std::string::npos);
  lc.rank = 17;  // experts are 16 x 32
  EXPECT_NE(error_of_config(lc).find("LoRA rank 17 is larger than the w1 matrices allow"), std::string::npos);
  lc.rank = 4;
  lc.targets = {"Wqkv", "router"};
  EXPECT_NE(error_of_config(lc).find("unknown LoRA target 'router'"), std::string::npos);
  lc.targets = {"w2", "w2"};
  EXPECT_NE(error_of_config(lc).find("'w2' is listed twice"), std::string::npos);
  lc.targets = {};
  EXPECT_NE(error_of_config(lc).find("targets are empty"), std::string::npos);
  lc.targets = {"Wqkv"};
  lc.alpha = std::nan("");
  EXPECT_NE(error_of_config(lc).find("alpha must be a positive number"), std::string::npos);

  // Using an adapter before attach, and on a model of another shape.
  lc.alpha = 8;
  LoraAdapter adapter(cfg, lc);
  DbrxTrainingModel model(cfg, 1, 0.1f);
  EXPECT_NE(testing::error_of([&] { adapter.apply(model); }).find("not attached"), std::string::npos);
  DbrxConfig wider = cfg;
  wider.d_model = 48;
  wider.n_heads = 4;
  DbrxTrainingModel other(wider, 1, 0.1f);
  EXPECT_NE(testing::error_of([&] { adapter.attach(other); }).find("has shape [96, 48], the adapter was made for"),
            std::string::npos);

  // Files.
  testing::TempDir tmp;
  const fs::path dir = tmp / "adapter";
  EXPECT_NE(testing::error_of([&] { LoraAdapter::load_adapter(dir, cfg); }).find("adapter_config.json: cannot read"),
            std::string::npos);
  adapter.save_adapter(dir);
  auto load_error = [&] { return testing::error_of([&] { LoraAdapter::load_adapter(dir, cfg); }); };
  EXPECT_EQ(load_error(), "");
  const std::string good_config = testing::read_file(dir / "adapter_config.json");
  testing::write_file(dir / "adapter_config.json", "{\"r\": 4,");
  EXPECT_NE(load_error().find("adapter_config.json: not valid JSON"), std::string::npos);
  testing::write_file(dir / "adapter_config.json", R"({"r": "four", "lora_alpha": 8, "target_modules": ["Wqkv"]})");
  EXPECT_NE(load_error().find("r must be an integer"), std::string::npos);
  testing::write_file(dir / "adapter_config.json", R"({"r": 4, "target_modules": ["Wqkv"]})");
  EXPECT_NE(load_error().find("lora_alpha is missing"), std::string::npos);
  testing::write_file(dir / "adapter_config.json", R"({"r": 4, "lora_alpha": 8, "target_modules": "all"})");
  EXPECT_NE(load_error().find("target_modules must be a list of names"), std::string::npos);
  testing::write_file(dir / "adapter_config.json", R"({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})");
  EXPECT_NE(load_error().find("unknown LoRA target 'q_proj'"), std::string::npos);
  testing::write_file(dir / "adapter_config.json", R"({"r": 2, "lora_alpha": 8, "target_modules": ["Wqkv"]})");
  EXPECT_NE(load_error().find("has shape [4, 32], expected [2, 32] for r=2"), std::string::npos);
  testing::write_file(dir / "adapter_config.json", R"({"r": 4, "lora_alpha": 8, "target_modules": ["Wqkv", "w1"]})");
  EXPECT_NE(load_error().find("tensor 'transformer.blocks.0.ffn.experts.mlp.w1.lora_A.weight' is missing"),
            std::string::npos);
  testing::write_file(dir / "adapter_config.json", R"({"r": 4, "lora_alpha": 8, "target_modules": ["out_proj"]})");
  EXPECT_NE(load_error().find("unexpected tensor 'transformer.blocks.0.norm_attn_norm.attn.Wqkv.lora_A.weight'"),
            std::string::npos);
  testing::write_file(dir / "adapter_config.json", R"({"r": 20, "lora_alpha": 8, "target_modules": ["w2"]})");
  EXPECT_NE(load_error().find("adapter_config.json: LoRA rank 20 is larger than the w2 matrices allow"),
            std::string::npos);
  testing::write_file(dir / "adapter_config.json", good_config);
  testing::write_file(dir / "adapter_model.safetensors", "not a safetensors file");
  EXPECT_NE(load_error().find("adapter_model.safetensors"), std::string::npos);
  fs::remove(dir / "adapter_model.safetensors");
  EXPECT_NE(load_error().find("adapter_model.safetensors: missing"), std::string::npos);
}

}  // namespace
}  // namespace tessera
