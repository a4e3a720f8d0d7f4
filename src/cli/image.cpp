#include <chrono>
#include <cstdio>
#include <memory>
#include <random>

#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/thread_pool.h"
#include "formats/png.h"
#include "formats/safetensors.h"
#include "models/diffusion/pipeline.h"

namespace tessera::cli {

namespace {

// "WxH" -> (width, height).
std::pair<int64_t, int64_t> parse_size(const std::string& text) {
  const auto x = text.find_first_of("xX");
  try {
    if (x == std::string::npos) throw std::invalid_argument(text);
    size_t used_w = 0, used_h = 0;
    const long long w = std::stoll(text.substr(0, x), &used_w);
    const long long h = std::stoll(text.substr(x + 1), &used_h);
    if (used_w != x || used_h != text.size() - x - 1 || w <= 0 || h <= 0) throw std::invalid_argument(text);
    return {w, h};
  } catch (const std::exception&) {
    fail("--size '{}': expected WIDTHxHEIGHT, e.g. 1024x1024", text);
  }
}

diffusion::FeatureMap read_latents(const std::string& path) {
  SafetensorsFile file(path);
  const auto names = file.names();
  if (names.empty()) fail("{}: holds no tensor", path);
  const std::string name = file.contains("latents") ? "latents" : names.front();
  if (names.size() > 1 && name != "latents") fail("{}: holds several tensors; name the starting one 'latents'", path);
  const Tensor t = file.get(name);
  Shape s = t.shape();
  if (s.size() == 4 && s[0] == 1) s.erase(s.begin());
  if (s.size() != 3) fail("{}: latents must be [channels, height, width] or [1, ...], got {}", path, shape_str(t.shape()));
  diffusion::FeatureMap m(s[0], s[1], s[2]);
  const std::vector<float> v = t.to_vector();
  std::copy(v.begin(), v.end(), m.data.begin());
  return m;
}

}  // namespace

void register_image(CLI::App& app) {
  struct Options {
    std::string model, config, prompt, negative, size, sampler, init_latents, output = "image.png";
    bool has_negative = false, vae_tiling = false;
    int64_t steps = 30;
    float guidance = -1;
    int64_t seed = -1;
    int threads = 0;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("image", "Make an image from a text prompt (Stable-Diffusion-style pipeline)");
  cmd->add_option("-m,--model", o->model, "Diffusers pipeline folder, or a single-file .safetensors checkpoint")->required();
  cmd->add_option("--config", o->config, "For a single-file checkpoint: a diffusers folder with its configs and tokenizers");
  cmd->add_option("-p,--prompt", o->prompt, "What to draw")->required();
  auto* neg = cmd->add_option("-n,--negative-prompt", o->negative, "What to steer away from");
  cmd->add_option("--size", o->size, "WIDTHxHEIGHT, multiples of 8 (default: the model's native size)");
  cmd->add_option("--steps", o->steps, "Denoising steps")->capture_default_str();
  cmd->add_option("-g,--guidance", o->guidance, "Classifier-free guidance scale (default 7.5, SDXL 5)");
  cmd->add_option("-s,--seed", o->seed, "Seed (default: random, printed)");
  cmd->add_option("--sampler", o->sampler, "ddim, euler, euler_a or dpmpp_2m (default: the pipeline's scheduler)");
  cmd->add_option("--init-latents", o->init_latents, "safetensors file with the starting latent tensor");
  cmd->add_flag("--vae-tiling", o->vae_tiling, "Decode in overlapping tiles (less memory for large images)");
  cmd->add_option("-o,--output", o->output, "PNG file to write")->capture_default_str();
  cmd->add_option("-t,--threads", o->threads, "Worker threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->callback([o, neg] {
    if (o->threads > 0) ThreadPool::set_global_threads(static_cast<size_t>(o->threads));
    diffusion::ImageRequest request;
    request.prompt = o->prompt;
    if (neg->count() > 0) request.negative_prompt = o->negative;
    if (!o->size.empty()) std::tie(request.width, request.height) = parse_size(o->size);
    request.steps = o->steps;
    if (o->guidance >= 0) request.guidance = o->guidance;
    if (!o->sampler.empty()) request.sampler = diffusion::parse_sampler(o->sampler);
    request.seed = o->seed >= 0 ? static_cast<uint64_t>(o->seed) : (std::random_device{}() & 0x7fffffff);
    request.vae_tiling = o->vae_tiling;
    if (!o->init_latents.empty()) request.init_latents = read_latents(o->init_latents);
    std::optional<std::filesystem::path> config;
    if (!o->config.empty()) config = o->config;

    const auto start = std::chrono::steady_clock::now();
    auto pipeline = diffusion::DiffusionPipeline::load(o->model, config);
    pipeline->validate(request);
    ProgressBar bar("denoising", request.steps, "steps");
    const diffusion::ImageResult result =
        pipeline->generate(request, [&bar](int64_t done, int64_t) { bar.update(done); });
    bar.finish();
    for (const auto& w : result.warnings) fmt::print(stderr, "warning: {}\n", w);
    write_png(o->output, diffusion::image_png(request, result));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "wrote {} ({}x{}, seed {}, {} steps, {}, guidance {:g}) in {:.1f} s\n", o->output, result.width,
               result.height, result.seed, result.steps, result.sampler, result.guidance, seconds);
    fmt::print(stderr, "timings: text {:.2f} s | denoise {:.2f} s ({:.2f} s/step) | vae decode {:.2f} s\n",
               result.text_seconds, result.denoise_seconds, result.denoise_seconds / static_cast<double>(result.steps),
               result.vae_seconds);
  });
}

}  // namespace tessera::cli
