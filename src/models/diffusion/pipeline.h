#pragma once
// Text to image: CLIP tokenizer(s) and text encoder(s), the UNet denoising loop under
// classifier-free guidance (the negative prompt is the unconditional branch) driven by a
// scheduler, and the VAE decoder. Loads a diffusers pipeline folder (model_index.json, unet/,
// vae/, text_encoder/, tokenizer/, scheduler/, and text_encoder_2/ + tokenizer_2/ for SDXL;
// without vae/, and none named in model_index.json, a pixel-space model)
// or a single-file checkpoint in the original Stable Diffusion naming.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "formats/png.h"

#include "models/diffusion/blocks.h"
#include "models/diffusion/scheduler.h"

namespace tessera::diffusion {

struct ImageRequest {
  std::string prompt;
  std::optional<std::string> negative_prompt;  // SDXL: absent means zero embeddings
  int64_t width = 0, height = 0;               // 0: the model's native size
  int64_t steps = 30;
  std::optional<float> guidance;               // default 7.5 (SD), 5.0 (SDXL)
  uint64_t seed = 0;
  std::optional<SamplerKind> sampler;          // default: the pipeline's own scheduler
  std::optional<FeatureMap> init_latents;      // [latent channels, h/f, w/f], unscaled N(0, 1)
  NoiseFn noise;                               // ancestral noise; default: drawn from the seed
  bool vae_tiling = false;
};

struct ImageResult {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> rgb;     // height * width * 3
  std::vector<float> pixels;    // the same in [0, 1] before rounding, HWC
  std::vector<std::string> warnings;  // e.g. a prompt truncated to 77 tokens
  std::string sampler;
  float guidance = 0;
  int64_t steps = 0;
  uint64_t seed = 0;
  double text_seconds = 0, denoise_seconds = 0, vae_seconds = 0;  // where the time went
};

class DiffusionPipeline {
 public:
  // `config_dir` gives the configs and tokenizers of a single-file checkpoint (optional).
  static std::unique_ptr<DiffusionPipeline> load(const std::filesystem::path& path,
                                                 const std::optional<std::filesystem::path>& config_dir = {});
  ~DiffusionPipeline();

  bool is_sdxl() const;
  int64_t native_size() const;     // pixels per side the model was trained at
  int64_t vae_scale_factor() const;  // 1 for a pixel-space model
  // A pixel-space model (no VAE: the UNet denoises RGB) draws a large request at about its
  // native size and upscales it by this power of two; 1 for latent models and small sizes.
  bool is_pixel_space() const;
  int64_t upscale_factor(int64_t width, int64_t height) const;
  int64_t max_side() const { return 2048; }
  std::string name() const;

  // Checks a request's size, steps and guidance; throws one clear line when out of range.
  void validate(const ImageRequest& request) const;
  ImageResult generate(const ImageRequest& request,
                       const std::function<void(int64_t step, int64_t total)>& progress = {}) const;

  struct PromptEmbeddings {
    std::vector<float> context;  // [77, context dim]
    int64_t tokens = 0;
    std::vector<float> pooled;   // SDXL: [projection dim]
  };
  // What the UNet is conditioned on for one prompt (nullopt: SDXL's zero embeddings).
  PromptEmbeddings encode_prompt(const std::optional<std::string>& prompt, std::vector<std::string>* warnings) const;

  struct Parts;

 private:
  DiffusionPipeline() = default;
  std::unique_ptr<Parts> parts_;
};

// The image as PNG text chunks: prompt, negative prompt, seed, steps, sampler, guidance, size.
std::vector<std::pair<std::string, std::string>> image_metadata(const ImageRequest& request, const ImageResult& result);

// The result as an RGB PNG image carrying image_metadata as text chunks.
PngImage image_png(const ImageRequest& request, const ImageResult& result);

}  // namespace tessera::diffusion
