// The diffusion networks against diffusers/transformers on the tiny pipelines that
// tools/golden/make_diffusion_golden.py builds: text encoders and the UNet within 1e-4,
// the VAE within 1e-3 (f32 everywhere).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "formats/safetensors.h"
#include "models/diffusion/clip_text_model.h"
#include "models/diffusion/unet.h"
#include "models/diffusion/vae.h"
#include "diffusion_test_util.h"
#include "test_util.h"

namespace tessera::diffusion {
namespace {

using testing::feature_map;
using testing::ids_of;
using testing::max_diff;

std::filesystem::path pipeline_dir(const std::string& name) { return tessera::testing::fixtures() / "diffusion" / name; }




class DiffusionGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { golden_ = std::make_unique<SafetensorsFile>(pipeline_dir(GetParam()) / "golden.safetensors"); }
  Tensor g(const std::string& name) const { return golden_->get(name); }
  int cases() const {
    int n = 0;
    while (golden_->contains("case" + std::to_string(n) + ".latents")) ++n;
    return n;
  }
  std::unique_ptr<SafetensorsFile> golden_;
};

TEST_P(DiffusionGolden, TextEncodersMatchTransformers) {
  std::vector<std::string> encoders{"text_encoder"};
  if (std::filesystem::exists(pipeline_dir(GetParam()) / "text_encoder_2")) encoders.push_back("text_encoder_2");
  ASSERT_GT(cases(), 0);
  for (size_t e = 0; e < encoders.size(); ++e) {
    const ClipTextModel model = ClipTextModel::load(pipeline_dir(GetParam()) / encoders[e]);
    for (int i = 0; i < cases(); ++i) {
      const std::string key = "case" + std::to_string(i) + ".";
      const ClipTextOutput out = model.encode(ids_of(g(key + "ids" + std::to_string(e))));
      EXPECT_LT(max_diff(out.last_hidden.data<float>(), g(key + "hidden" + std::to_string(e))), 1e-4)
          << encoders[e] << " case " << i;
      EXPECT_LT(max_diff(out.penultimate.data<float>(), g(key + "penultimate" + std::to_string(e))), 1e-4)
          << encoders[e] << " case " << i;
      EXPECT_LT(max_diff(out.pooled.data<float>(), g(key + "pooled" + std::to_string(e))), 1e-4)
          << encoders[e] << " case " << i;
    }
  }
}

TEST_P(DiffusionGolden, UNetNoisePredictionMatchesDiffusers) {
  const auto unet = UNet::load(pipeline_dir(GetParam()) / "unet");
  const bool sdxl = unet->config().text_time_embedding;
  for (int i = 0; i < cases(); ++i) {
    const std::string key = "case" + std::to_string(i) + ".";
    const float t = g(key + "unet_t").to_vector()[0];
    FeatureMap latents = feature_map(g(key + "latents"));
    FeatureMap halved = latents;
    for (float& v : halved.data) v *= 0.5f;
    const Tensor want = g(key + "unet_out");  // [2, C, H, W]: negative on latents, prompt on latents/2
    const int64_t per_item = want.numel() / 2;
    const std::vector<float> want_all = want.to_vector();
    const char* embeds[2] = {"negative_prompt_embeds", "prompt_embeds"};
    const char* pooled[2] = {"negative_pooled_embeds", "pooled_embeds"};
    for (int b = 0; b < 2; ++b) {
      const Tensor ctx = g(key + embeds[b]);
      std::vector<float> time_ids;
      Tensor text;
      if (sdxl) {
        const float h = static_cast<float>(latents.height * 8), w = static_cast<float>(latents.width * 8);
        time_ids = {h, w, 0, 0, h, w};
        text = g(key + pooled[b]).contiguous();
      }
      const FeatureMap out = unet->forward(b == 0 ? latents : halved, t, ctx.contiguous().data<float>(), ctx.dim(0),
                                           sdxl ? text.data<float>() : nullptr, sdxl ? time_ids.data() : nullptr);
      ASSERT_EQ(static_cast<int64_t>(out.data.size()), per_item);
      const Tensor ref = Tensor::from_vector(
          std::vector<float>(want_all.begin() + b * per_item, want_all.begin() + (b + 1) * per_item), {per_item});
      EXPECT_LT(max_diff(out.data.data(), ref), 1e-4) << "case " << i << " batch item " << b;
    }
  }
}

TEST_P(DiffusionGolden, VaeDecodesAndEncodesLikeDiffusers) {
  const auto vae = Vae::load(pipeline_dir(GetParam()) / "vae");
  const FeatureMap decoded = vae->decode(feature_map(g("vae.latents")));
  EXPECT_EQ(decoded.height, 48);
  EXPECT_EQ(decoded.width, 80);
  EXPECT_LT(max_diff(decoded.data.data(), g("vae.decoded")), 1e-3);
  ASSERT_TRUE(vae->has_encoder());
  const FeatureMap mean = vae->encode_mean(feature_map(g("vae.image")));
  EXPECT_LT(max_diff(mean.data.data(), g("vae.encoded_mean")), 1e-3);
}

TEST_P(DiffusionGolden, VaeTiledDecodingMatchesDiffusers) {
  const auto vae = Vae::load(pipeline_dir(GetParam()) / "vae");
  const FeatureMap latents = feature_map(g("vae.tiled_latents"));
  const int64_t tile = vae->config().sample_size / vae->config().scale_factor();
  ASSERT_LT(tile, latents.width);  // really tiled
  const FeatureMap decoded = vae->decode_tiled(latents, tile);
  EXPECT_EQ(decoded.height, latents.height * 8);
  EXPECT_EQ(decoded.width, latents.width * 8);
  EXPECT_LT(max_diff(decoded.data.data(), g("vae.tiled_decoded")), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Pipelines, DiffusionGolden, ::testing::Values("sd", "sdxl"));

}  // namespace
}  // namespace tessera::diffusion
