// Pixel-space pipelines (no VAE, as `tessera train-image` writes them) against diffusers'
// StableDiffusionPipeline with vae=None on the tiny pipeline of
// tools/golden/make_pixel_diffusion_golden.py: the layer-less text encoder, the whole DDIM run
// with guidance, and drawing large requests at the native scale then upscaling.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "models/diffusion/clip_text_model.h"
#include "models/diffusion/pipeline.h"
#include "training/image_trainer.h"
#include "diffusion_test_util.h"
#include "test_util.h"

namespace tessera::diffusion {
namespace {

using tessera::testing::fixtures;
using tessera::testing::TempDir;

std::filesystem::path pixel_dir() { return fixtures() / "diffusion" / "pixel"; }

TEST(PixelPipeline, TextEncoderWithoutLayersMatchesTransformers) {
  const SafetensorsFile golden(pixel_dir() / "golden.safetensors");
  const ClipTextModel model = ClipTextModel::load(pixel_dir() / "text_encoder");
  EXPECT_EQ(model.config().num_layers, 0);
  for (int i = 0; golden.contains("case" + std::to_string(i) + ".ids"); ++i) {
    const std::string key = "case" + std::to_string(i) + ".";
    const ClipTextOutput out = model.encode(testing::ids_of(golden.get(key + "ids")));
    EXPECT_LT(testing::max_diff(out.last_hidden.data<float>(), golden.get(key + "hidden")), 1e-5) << key;
  }
}

TEST(PixelPipeline, ImagesMatchDiffusersIncludingUpscaledOnes) {
  const SafetensorsFile golden(pixel_dir() / "golden.safetensors");
  std::ifstream in(pixel_dir() / "golden.json");
  const auto info = nlohmann::json::parse(in);
  const auto pipe = DiffusionPipeline::load(pixel_dir());
  EXPECT_TRUE(pipe->is_pixel_space());
  EXPECT_EQ(pipe->vae_scale_factor(), 1);
  EXPECT_EQ(pipe->native_size(), 16);
  int index = 0, upscaled = 0;
  for (const auto& c : info["cases"]) {
    const std::string key = "case" + std::to_string(index++) + ".";
    const ImageRequest r = testing::golden_request(c, golden, key);
    const Tensor lat = golden.get(key + "latents");
    const ImageResult result = pipe->generate(r);
    ASSERT_EQ(result.width, r.width);
    ASSERT_EQ(result.height, r.height);
    EXPECT_EQ(result.sampler, "ddim");  // the pipeline's own scheduler
    const std::vector<float> want = golden.get(key + "image").to_vector();
    ASSERT_EQ(result.pixels.size(), want.size());
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(double(result.pixels[i]) - want[i]));
    EXPECT_LT(worst, 2e-3) << key;
    const int64_t factor = r.width / lat.dim(2);
    if (factor > 1) {
      ++upscaled;
      EXPECT_EQ(pipe->upscale_factor(r.width, r.height), factor);
      ASSERT_EQ(result.warnings.size(), 1u) << key;
      EXPECT_NE(result.warnings[0].find("upscaled " + std::to_string(factor) + "x"), std::string::npos)
          << result.warnings[0];
    } else {
      EXPECT_TRUE(result.warnings.empty()) << key;
    }
  }
  EXPECT_EQ(upscaled, 1);
}

TEST(PixelPipeline, ProductSizesAreDrawnNearTheNativeScale) {
  const auto pipe = DiffusionPipeline::load(pixel_dir());
  // Native 16: each side drawn so that the longer one stays at least 16 pixels.
  EXPECT_EQ(pipe->upscale_factor(16, 16), 1);
  EXPECT_EQ(pipe->upscale_factor(24, 16), 1);
  EXPECT_EQ(pipe->upscale_factor(1024, 1024), 64);
  EXPECT_EQ(pipe->upscale_factor(1280, 768), 32);  // 40x24
  EXPECT_EQ(pipe->upscale_factor(768, 1280), 32);
  EXPECT_EQ(pipe->upscale_factor(72, 40), 1);  // 72 / 16 is not whole: drawn as asked
  ImageRequest r;
  r.prompt = "flag";
  r.width = 1280;
  r.height = 768;
  r.steps = 2;
  const ImageResult result = pipe->generate(r);
  EXPECT_EQ(result.width, 1280);
  EXPECT_EQ(result.height, 768);
  EXPECT_EQ(result.rgb.size(), 1280u * 768u * 3u);
}

TEST(PixelPipeline, AVaeNamedButMissingIsAnError) {
  TempDir tmp;
  std::filesystem::copy(pixel_dir(), tmp.path() / "p", std::filesystem::copy_options::recursive);
  std::ifstream in(tmp.path() / "p" / "model_index.json");
  auto index = nlohmann::json::parse(in);
  in.close();
  index["vae"] = {"diffusers", "AutoencoderKL"};
  std::ofstream(tmp.path() / "p" / "model_index.json") << index.dump();
  try {
    DiffusionPipeline::load(tmp.path() / "p");
    FAIL() << "loaded without the VAE its index names";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vae"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tessera::diffusion

namespace tessera::training {
namespace {

TEST(TextEmbeddingEncoder, ForwardAndGradientsMatchTorch) {
  const auto dir = tessera::testing::fixtures() / "diffusion" / "pixel";
  const SafetensorsFile golden(dir / "golden.safetensors");
  TextEmbeddingEncoder encoder = TextEmbeddingEncoder::load(dir / "text_encoder");
  std::vector<int32_t> ids = diffusion::testing::ids_of(golden.get("case0.ids"));
  const std::vector<int32_t> second = diffusion::testing::ids_of(golden.get("case1.ids"));
  ids.insert(ids.end(), second.begin(), second.end());
  std::vector<float> context(ids.size() * static_cast<size_t>(encoder.dim()));
  encoder.forward(ids.data(), 2, context.data());
  const std::vector<float> want_first = golden.get("case0.hidden").to_vector();
  for (size_t i = 0; i < want_first.size(); ++i) ASSERT_NEAR(context[i], want_first[i], 1e-5) << i;

  const std::vector<float> upstream = golden.get("text_grad.upstream").to_vector();
  encoder.backward(upstream.data());
  encoder.backward(upstream.data());  // gradients add up across calls
  for (const auto& p : encoder.parameters()) {
    const std::vector<float> want = golden.get("text_grad." + p.name).to_vector();
    ASSERT_EQ(want.size(), p.size) << p.name;
    double scale = 1e-3, worst = 0;
    for (float v : want) scale = std::max(scale, static_cast<double>(std::abs(v)));
    for (size_t i = 0; i < p.size; ++i)
      worst = std::max(worst, std::abs(encoder.grads()[p.offset + i] / 2.0 - want[i]) / scale);
    EXPECT_LT(worst, 1e-5) << p.name;
  }
  encoder.zero_grad();
  for (float g : encoder.grads()) ASSERT_EQ(g, 0.0f);
}

TEST(TextEmbeddingEncoder, RefusesEncodersWithLayersAndBadIds) {
  EXPECT_THROW(TextEmbeddingEncoder::load(tessera::testing::fixtures() / "diffusion" / "sd" / "text_encoder"), Error);
  TextEmbeddingEncoder encoder(10, 3, 4, 1);
  const int32_t bad[3] = {1, 10, 2};
  std::vector<float> out(12);
  EXPECT_THROW(encoder.forward(bad, 1, out.data()), Error);
}

}  // namespace
}  // namespace tessera::training
