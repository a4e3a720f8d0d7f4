// The UNet training model (training/unet_training_model.h) against diffusers: a whole tiny
// UNet2DConditionModel with random weights (tests/fixtures/unet_grad, made by
// tools/golden/make_unet_grad_golden.py, reference in float64) gives the same prediction, loss,
// gradient of every parameter and gradient of the text context; a saved model loads in the
// inference UNet and predicts the same; unsupported configs are refused by field name.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "formats/safetensors.h"
#include "models/diffusion/unet.h"
#include "test_util.h"
#include "training/unet_training_model.h"

namespace tessera {
namespace {

using training::UnetBatch;
using training::UnetTrainingModel;
using Buffer = std::vector<float>;

std::filesystem::path case_dir(const std::string& name) { return testing::fixtures() / "unet_grad" / name; }

// A fixture case: the model folder and the tensors of one reference step.
struct Step {
  SafetensorsFile tensors;
  Buffer sample, timesteps, context, noise;
  int64_t batch, height, width, tokens;

  explicit Step(const std::string& name) : tensors(case_dir(name) / "step.safetensors") {
    sample = get("sample");
    timesteps = get("timesteps");
    context = get("context");
    noise = get("noise");
    const Shape s = tensors.get("sample").shape();
    batch = s[0];
    height = s[2];
    width = s[3];
    tokens = tensors.get("context").shape()[1];
  }
  Buffer get(const std::string& key) const {
    const Tensor t = tensors.get(key);
    return Buffer(t.data<float>(), t.data<float>() + t.numel());
  }
  UnetBatch batch_view() const {
    return {sample.data(), timesteps.data(), context.data(), noise.data(), batch, height, width, tokens};
  }
};

// Largest |got - want| over the largest |want|.
double relative_error(const float* got, const Buffer& want) {
  double max_ref = 0, max_err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
    max_err = std::max(max_err, std::fabs(static_cast<double>(got[i]) - want[i]));
  }
  return max_ref > 0 ? max_err / max_ref : max_err;
}

// One forward and backward of the case against diffusers; `model` must hold the case's weights.
void check_step(UnetTrainingModel& model, const Step& step, const std::string& name) {
  constexpr double kTolerance = 1e-4;
  model.zero_grad();
  Buffer pred(step.noise.size()), dcontext(step.context.size(), 0.0f);
  const double loss = model.loss(step.batch_view(), /*backward=*/true, 1.0f, dcontext.data(), pred.data());
  const double want_loss = step.get("loss")[0];
  EXPECT_NEAR(loss, want_loss, kTolerance * std::fabs(want_loss)) << name;
  const double pred_err = relative_error(pred.data(), step.get("pred"));
  EXPECT_LE(pred_err, kTolerance) << name << " prediction";
  const double context_err = relative_error(dcontext.data(), step.get("grad.context"));
  EXPECT_LE(context_err, kTolerance) << name << " context gradient";

  // Every parameter diffusers has, and no other, with its gradient.
  std::set<std::string> reference;
  for (const auto& key : step.tensors.names())
    if (key.starts_with("grad.") && key != "grad.context") reference.insert(key.substr(5));
  std::set<std::string> ours;
  for (const auto& p : model.parameters()) ours.insert(p.name);
  EXPECT_EQ(ours, reference) << name;

  double worst = 0;
  std::string worst_name;
  for (const auto& p : model.parameters()) {
    if (!reference.count(p.name)) continue;
    const Buffer want = step.get("grad." + p.name);
    ASSERT_EQ(want.size(), p.size) << p.name;
    const double err = relative_error(model.grads().data() + p.offset, want);
    EXPECT_LE(err, kTolerance) << name << " gradient of " << p.name;
    if (err > worst) {
      worst = err;
      worst_name = p.name;
    }
  }
  std::printf("  %s: loss %.7f (diffusers %.7f), prediction %.2e, context gradient %.2e, %zu parameter gradients, "
              "largest relative error %.2e (%s)\n",
              name.c_str(), loss, want_loss, pred_err, context_err, model.parameters().size(), worst,
              worst_name.c_str());
}

TEST(UnetTraining, ConvProjectionLossAndEveryGradientMatchDiffusers) {
  UnetTrainingModel model = UnetTrainingModel::load(case_dir("conv") / "model");
  EXPECT_FALSE(model.config().linear_projection);
  EXPECT_EQ(model.config().unet.layers_per_block, (std::vector<int64_t>{2, 2}));
  check_step(model, Step("conv"), "conv");
}

TEST(UnetTraining, LinearProjectionLossAndEveryGradientMatchDiffusers) {
  UnetTrainingModel model = UnetTrainingModel::load(case_dir("linear") / "model");
  EXPECT_TRUE(model.config().linear_projection);
  EXPECT_EQ(model.parameter("mid_block.attentions.0.proj_in.weight").shape, (Shape{8, 8}));
  check_step(model, Step("linear"), "linear");
}

TEST(UnetTraining, BackwardAccumulatesAndScales) {
  UnetTrainingModel model = UnetTrainingModel::load(case_dir("linear") / "model");
  const Step step("linear");
  model.zero_grad();
  model.loss(step.batch_view(), true);
  const Buffer once(model.grads().begin(), model.grads().end());
  model.loss(step.batch_view(), true, 0.5f);
  double max_ref = 0, max_err = 0;
  for (size_t i = 0; i < once.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(once[i])));
    max_err = std::max(max_err, std::fabs(model.grads()[i] - 1.5 * once[i]));
  }
  EXPECT_LE(max_err, 1e-6 * max_ref);
  // A forward without backward leaves the gradients alone.
  const Buffer before(model.grads().begin(), model.grads().end());
  model.loss(step.batch_view(), false);
  EXPECT_TRUE(std::equal(before.begin(), before.end(), model.grads().begin()));
}

TEST(UnetTraining, SavedModelLoadsInTheInferenceUnetAndPredictsTheSame) {
  for (const char* name : {"conv", "linear"}) {
    const UnetTrainingModel trained = UnetTrainingModel::load(case_dir(name) / "model");
    const Step step(name);
    testing::TempDir dir;
    trained.save(dir.path());

    // The training model reads its own folder back bit for bit.
    const UnetTrainingModel again = UnetTrainingModel::load(dir.path());
    EXPECT_EQ(again.config().linear_projection, trained.config().linear_projection) << name;
    ASSERT_EQ(again.values().size(), trained.values().size()) << name;
    EXPECT_TRUE(std::equal(again.values().begin(), again.values().end(), trained.values().begin())) << name;

    UnetTrainingModel model = UnetTrainingModel::load(dir.path());
    const Buffer pred = model.predict(step.batch_view());
    const auto unet = diffusion::UNet::load(dir.path());
    const auto& c = unet->config();
    const int64_t hw = step.height * step.width, in_size = c.in_channels * hw, out_size = c.out_channels * hw;
    Buffer served;
    for (int64_t b = 0; b < step.batch; ++b) {
      diffusion::FeatureMap x(c.in_channels, step.height, step.width);
      std::copy_n(step.sample.data() + b * in_size, in_size, x.data.data());
      const auto y = unet->forward(x, step.timesteps[b], step.context.data() + b * step.tokens * c.cross_attention_dim,
                                   step.tokens);
      ASSERT_EQ(static_cast<int64_t>(y.data.size()), out_size);
      served.insert(served.end(), y.data.begin(), y.data.end());
    }
    const double err = relative_error(pred.data(), served);
    std::printf("  %s: inference UNet vs training forward, largest relative difference %.2e\n", name, err);
    EXPECT_LE(err, 1e-5) << name;
  }
}

TEST(UnetTraining, SeededModelHasDiffusersNamesAndTrainsOneStep) {
  training::UnetTrainingConfig config;
  config.unet = diffusion::UNetConfig::load(case_dir("conv") / "model" / "config.json");
  UnetTrainingModel model(config, 3);
  EXPECT_NO_THROW(model.parameter("conv_in.weight"));
  EXPECT_NO_THROW(model.parameter("time_embedding.linear_1.weight"));
  EXPECT_NO_THROW(model.parameter("down_blocks.0.resnets.0.norm1.weight"));
  EXPECT_NO_THROW(model.parameter("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"));
  EXPECT_EQ(model.parameter("up_blocks.1.attentions.0.proj_out.weight").shape, (Shape{4, 4, 1, 1}));
  const float* norm = model.values().data() + model.parameter("conv_norm_out.weight").offset;
  EXPECT_EQ(norm[0], 1.0f);
  // A plain gradient step on the fixture's batch lowers the loss.
  const Step step("conv");
  model.zero_grad();
  const double before = model.loss(step.batch_view(), true);
  for (size_t i = 0; i < model.values().size(); ++i) model.values()[i] -= 0.05f * model.grads()[i];
  const double after = model.loss(step.batch_view(), false);
  EXPECT_LT(after, before);
}

TEST(UnetTraining, UnsupportedConfigFieldsAreRefusedByName) {
  std::ifstream in(case_dir("conv") / "model" / "config.json");
  const nlohmann::json base = nlohmann::json::parse(in);
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"dropout", 0.1}}, "dropout"},
      {{{"mid_block_scale_factor", 2}}, "mid_block_scale_factor"},
      {{{"num_class_embeds", 10}}, "num_class_embeds"},
      {{{"resnet_skip_time_act", true}}, "resnet_skip_time_act"},
      {{{"addition_embed_type", "text_time"}}, "addition_embed_type"},
      {{{"up_block_types", {"UpBlock2D", "AttnUpBlock2D"}}}, "AttnUpBlock2D"},
      {{{"attention_head_dim", 3}}, "attention_head_dim"},
  };
  for (const auto& [patch, field] : cases) {
    testing::TempDir dir;
    nlohmann::json j = base;
    j.update(patch);
    std::ofstream(dir / "config.json") << j.dump();
    try {
      training::UnetTrainingConfig::load(dir / "config.json");
      ADD_FAILURE() << "accepted " << patch.dump();
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace tessera
