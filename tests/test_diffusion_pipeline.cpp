// The whole text-to-image pipeline against diffusers (every sampler, PSNR >= 40 dB on the
// tiny pipelines of tools/golden/make_diffusion_golden.py), its determinism, and the
// `tessera image` command's handling of bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "formats/png.h"
#include "formats/safetensors.h"
#include "models/diffusion/pipeline.h"
#include "diffusion_test_util.h"
#include "test_util.h"

namespace tessera::diffusion {
namespace {

using tessera::testing::fixtures;
using tessera::testing::run_tessera;
using tessera::testing::TempDir;

std::filesystem::path pipeline_dir(const std::string& name) { return fixtures() / "diffusion" / name; }

double psnr(const std::vector<float>& got, const std::vector<float>& want) {
  double mse = 0;
  for (size_t i = 0; i < want.size(); ++i) mse += (got[i] - want[i]) * (got[i] - want[i]);
  mse /= static_cast<double>(want.size());
  return mse == 0 ? 200.0 : 10.0 * std::log10(1.0 / mse);
}

class PipelineGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(PipelineGolden, EverySamplerMatchesDiffusers) {
  const auto dir = pipeline_dir(GetParam());
  const SafetensorsFile golden(dir / "golden.safetensors");
  std::ifstream in(dir / "golden.json");
  const auto info = nlohmann::json::parse(in);
  const auto pipe = DiffusionPipeline::load(dir);
  EXPECT_EQ(pipe->is_sdxl(), GetParam() == "sdxl");
  int index = 0;
  for (const auto& c : info["cases"]) {
    const std::string key = "case" + std::to_string(index++) + ".";
    for (const auto& sampler : info["samplers"]) {
      ImageRequest r = testing::golden_request(c, golden, key);
      r.sampler = parse_sampler(sampler.get<std::string>());
      const std::string noise_key = key + "noise." + sampler.get<std::string>();
      std::vector<float> noise;
      size_t used = 0;
      if (golden.contains(noise_key)) {
        noise = golden.get(noise_key).to_vector();
        r.noise = [&](float* out, int64_t n) {
          ASSERT_LE(used + static_cast<size_t>(n), noise.size());
          std::copy_n(noise.begin() + static_cast<std::ptrdiff_t>(used), n, out);
          used += static_cast<size_t>(n);
        };
      }
      const ImageResult result = pipe->generate(r);
      ASSERT_EQ(result.width, r.width);
      ASSERT_EQ(result.height, r.height);
      const std::vector<float> want = golden.get(key + "image." + sampler.get<std::string>()).to_vector();
      ASSERT_EQ(result.pixels.size(), want.size());
      EXPECT_GE(psnr(result.pixels, want), 40.0) << key << sampler;
      EXPECT_EQ(used, noise.size()) << "all recorded noise is consumed by " << sampler;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Pipelines, PipelineGolden, ::testing::Values("sd", "sdxl"));

TEST(ImagePipeline, ProductSizesWork) {
  // The sizes the product offers (width x height), one unguided step on the tiny SDXL-style
  // pipeline (its full-resolution level has no attention, which keeps this test quick).
  const auto pipe = DiffusionPipeline::load(pipeline_dir("sdxl"));
  for (const auto& [w, h] : std::vector<std::pair<int64_t, int64_t>>{{1024, 1024}, {1280, 768}, {768, 1280}}) {
    ImageRequest r;
    r.prompt = "a wide landscape";
    r.width = w;
    r.height = h;
    r.steps = 1;
    r.seed = 3;
    r.sampler = SamplerKind::Euler;
    r.guidance = 1.0f;
    r.vae_tiling = w == 1024;  // both decoders at a product size
    const ImageResult result = pipe->generate(r);
    EXPECT_EQ(result.width, w);
    EXPECT_EQ(result.height, h);
    ASSERT_EQ(result.rgb.size(), static_cast<size_t>(w * h * 3));
    // Not a blank image: the pixels vary.
    const auto [lo, hi] = std::minmax_element(result.rgb.begin(), result.rgb.end());
    EXPECT_LT(*lo + 10, *hi) << w << "x" << h;
  }
}

TEST(ImageCommand, SameSeedSameBytesOtherSeedOtherImage) {
  TempDir tmp;
  const std::string model = pipeline_dir("sd").string();
  auto make = [&](const std::string& name, int seed) {
    const auto r = run_tessera("image -m '" + model + "' -p 'a red cube' --steps 3 --size 64x48 -s " +
                               std::to_string(seed) + " -o '" + (tmp / name).string() + "'");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return tessera::testing::read_file(tmp / name);
  };
  const std::string a = make("a.png", 7), b = make("b.png", 7), c = make("c.png", 8);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  const PngImage png = read_png(tmp / "a.png");
  EXPECT_EQ(png.width, 64);
  EXPECT_EQ(png.height, 48);
  bool has_seed = false;
  for (const auto& [k, v] : png.text) has_seed |= k == "seed" && v == "7";
  EXPECT_TRUE(has_seed);
}

TEST(ImageCommand, BadInputIsOneLineAndExitTwo) {
  TempDir tmp;
  const std::string model = pipeline_dir("sd").string();
  const std::string out = " -o '" + (tmp / "x.png").string() + "'";
  auto expect_error = [&](const std::string& args, const std::string& needle) {
    const auto r = run_tessera("image " + args + out);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(std::filesystem::exists(tmp / "x.png"));
  };
  expect_error("-m '" + model + "' -p x --sampler plms", "unknown sampler");
  expect_error("-m '" + model + "' -p x --size 60x64", "multiples of 8");
  expect_error("-m '" + model + "' -p x --size 4096x4096", "between 32 and");
  expect_error("-m '" + model + "' -p x --size big", "WIDTHxHEIGHT");
  expect_error("-m '" + model + "' -p x --steps 0", "steps");
  expect_error("-m '" + (tmp / "nowhere").string() + "' -p x", "no such model");

  // A pipeline missing a component, with a mis-shaped weight, or with corrupt weights.
  auto copy = [&](const std::string& name) {
    const auto dst = tmp / name;
    std::filesystem::copy(pipeline_dir("sd"), dst, std::filesystem::copy_options::recursive);
    return dst;
  };
  const auto missing = copy("missing");
  std::filesystem::remove_all(missing / "vae");
  expect_error("-m '" + missing.string() + "' -p x", "vae");

  const auto corrupt = copy("corrupt");
  const auto unet_file = corrupt / "unet" / "diffusion_pytorch_model.safetensors";
  std::filesystem::resize_file(unet_file, std::filesystem::file_size(unet_file) / 2);
  expect_error("-m '" + corrupt.string() + "' -p x", "diffusion_pytorch_model.safetensors");

  const auto reshaped = copy("reshaped");
  {
    std::ifstream in(reshaped / "unet" / "config.json");
    auto cfg = nlohmann::json::parse(in);
    cfg["cross_attention_dim"] = 40;
    std::ofstream(reshaped / "unet" / "config.json") << cfg.dump();
  }
  expect_error("-m '" + reshaped.string() + "' -p x", "shape");

  const auto latents = tmp / "latents.safetensors";
  write_safetensors(latents, {{"latents", Tensor::zeros({4, 5, 5})}});
  expect_error("-m '" + model + "' -p x --size 64x64 --init-latents '" + latents.string() + "'", "latents");
}

}  // namespace
}  // namespace tessera::diffusion
