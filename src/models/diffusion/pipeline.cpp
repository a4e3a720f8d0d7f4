#include "models/diffusion/pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/paths.h"
#include "core/rng.h"
#include "models/diffusion/clip_text_model.h"
#include "models/diffusion/model_config.h"
#include "models/diffusion/single_file.h"
#include "models/diffusion/unet.h"
#include "models/diffusion/vae.h"
#include "tokenizers/clip_tokenizer.h"

namespace tessera::diffusion {

namespace fs = std::filesystem;

struct DiffusionPipeline::Parts {
  std::string name;
  std::vector<ClipTokenizer> tokenizers;
  std::vector<ClipTextModel> encoders;
  std::unique_ptr<UNet> unet;
  std::unique_ptr<Vae> vae;  // null: a pixel-space model, whose UNet denoises the RGB image itself
  SchedulerConfig scheduler;
  SamplerKind default_sampler = SamplerKind::DpmppTwoM;
  bool force_zeros_for_empty_prompt = true;
};

namespace {

// The sampler a pipeline's own scheduler corresponds to; schedulers this engine lacks (PNDM,
// LMS, ...) fall back to DPM++ 2M, which needs few steps.
SamplerKind sampler_for_class(const std::string& cls, const nlohmann::json& config) {
  if (cls == "DDIMScheduler") return SamplerKind::Ddim;
  if (cls == "EulerDiscreteScheduler") return SamplerKind::Euler;
  if (cls == "EulerAncestralDiscreteScheduler") return SamplerKind::EulerAncestral;
  return SamplerKind::DpmppTwoM;
}

void require_folder(const fs::path& dir) {
  if (!fs::is_directory(dir)) fail("{}: component folder is missing", dir.string());
}

// A diffusers index marks a component the pipeline goes without as null or [null, null].
bool index_names_component(const JsonConfig& index, const std::string& name) {
  if (!index.has(name)) return false;
  const auto& entry = index.json()[name];
  return !(entry.is_array() && std::all_of(entry.begin(), entry.end(), [](const auto& v) { return v.is_null(); }));
}

// Bilinear resize by an integer factor with half-pixel centres (torch's interpolate with
// align_corners=False), edges clamped.
FeatureMap upscale_bilinear(const FeatureMap& in, int64_t factor) {
  FeatureMap out(in.channels, in.height * factor, in.width * factor);
  const auto source = [factor](int64_t o, int64_t size, int64_t& i0, int64_t& i1, float& frac) {
    const float s = std::max(0.0f, (static_cast<float>(o) + 0.5f) / static_cast<float>(factor) - 0.5f);
    i0 = std::min<int64_t>(static_cast<int64_t>(s), size - 1);
    i1 = std::min<int64_t>(i0 + 1, size - 1);
    frac = s - static_cast<float>(i0);
  };
  for (int64_t c = 0; c < in.channels; ++c) {
    const float* src = in.data.data() + c * in.pixels();
    float* dst = out.plane(c);
    for (int64_t y = 0; y < out.height; ++y) {
      int64_t y0, y1;
      float fy;
      source(y, in.height, y0, y1, fy);
      for (int64_t x = 0; x < out.width; ++x) {
        int64_t x0, x1;
        float fx;
        source(x, in.width, x0, x1, fx);
        const float top = src[y0 * in.width + x0] * (1 - fx) + src[y0 * in.width + x1] * fx;
        const float bottom = src[y1 * in.width + x0] * (1 - fx) + src[y1 * in.width + x1] * fx;
        dst[y * out.width + x] = top * (1 - fy) + bottom * fy;
      }
    }
  }
  return out;
}

fs::path installed_clip_vocab() {
  const fs::path p = models_dir() / "tokenizers" / "bpe_simple_vocab_16e6.txt.gz";
  if (!fs::exists(p)) fail("{}: CLIP vocabulary not installed (run scripts/setup)", p.string());
  return p;
}

}  // namespace

DiffusionPipeline::~DiffusionPipeline() = default;

std::unique_ptr<DiffusionPipeline> DiffusionPipeline::load(const fs::path& path,
                                                           const std::optional<fs::path>& config_dir) {
  std::unique_ptr<DiffusionPipeline> pipe(new DiffusionPipeline());
  auto parts = std::make_unique<Parts>();
  if (!fs::exists(path)) fail("{}: no such model folder or file", path.string());
  if (fs::is_regular_file(path)) {
    SingleFileCheckpoint ckpt = load_single_file(path, config_dir);
    parts->name = path.stem().string();
    const bool sdxl = ckpt.kind == CheckpointKind::Sdxl;
    if (config_dir) {
      parts->tokenizers.push_back(ClipTokenizer::load_dir(*config_dir / "tokenizer"));
      if (sdxl) parts->tokenizers.push_back(ClipTokenizer::load_dir(*config_dir / "tokenizer_2"));
    } else {
      parts->tokenizers.push_back(ClipTokenizer::from_bpe_gz(installed_clip_vocab()));
      // SD 2.x and SDXL's OpenCLIP encoders pad with "!".
      if (ckpt.kind == CheckpointKind::Sd2) parts->tokenizers.back().set_pad_token("!");
      if (sdxl) {
        parts->tokenizers.push_back(ClipTokenizer::from_bpe_gz(installed_clip_vocab()));
        parts->tokenizers.back().set_pad_token("!");
      }
    }
    parts->encoders.emplace_back(ckpt.text_config, ckpt.text_encoder);
    if (sdxl) parts->encoders.emplace_back(*ckpt.text_config_2, *ckpt.text_encoder_2);
    parts->unet = std::make_unique<UNet>(ckpt.unet_config, ckpt.unet);
    parts->vae = std::make_unique<Vae>(ckpt.vae_config, ckpt.vae);
    parts->scheduler = SchedulerConfig::from_json(ckpt.scheduler_config, path.string() + " (scheduler)");
    parts->default_sampler =
        sampler_for_class(ckpt.scheduler_config.value("_class_name", std::string()), ckpt.scheduler_config);
  } else {
    const JsonConfig index(path / "model_index.json");
    parts->name = path.filename().string();
    // Without a VAE (none named in the index and no vae/ folder) the model works in pixel space.
    const bool pixel_space = !index_names_component(index, "vae") && !fs::exists(path / "vae");
    for (const char* part : {"unet", "text_encoder", "tokenizer", "scheduler"}) require_folder(path / part);
    if (!pixel_space) require_folder(path / "vae");
    const bool sdxl = fs::exists(path / "text_encoder_2") || index.has("text_encoder_2");
    parts->force_zeros_for_empty_prompt = index.boolean("force_zeros_for_empty_prompt", sdxl);
    parts->tokenizers.push_back(ClipTokenizer::load_dir(path / "tokenizer"));
    parts->encoders.push_back(ClipTextModel::load(path / "text_encoder"));
    if (sdxl) {
      require_folder(path / "text_encoder_2");
      require_folder(path / "tokenizer_2");
      parts->tokenizers.push_back(ClipTokenizer::load_dir(path / "tokenizer_2"));
      parts->encoders.push_back(ClipTextModel::load(path / "text_encoder_2"));
    }
    parts->unet = UNet::load(path / "unet");
    if (!pixel_space) parts->vae = Vae::load(path / "vae");
    const JsonConfig sched(path / "scheduler" / "scheduler_config.json");
    parts->scheduler = SchedulerConfig::from_json(sched.json(), sched.origin());
    parts->default_sampler = sampler_for_class(sched.string("_class_name", ""), sched.json());
  }
  // The pieces must fit together: context width, pooled width, latent channels.
  const auto& uc = parts->unet->config();
  int64_t context_dim = 0;
  const bool sdxl = parts->encoders.size() == 2;
  for (size_t i = 0; i < parts->encoders.size(); ++i) context_dim += parts->encoders[i].config().hidden_size;
  if (context_dim != uc.cross_attention_dim)
    fail("{}: the text encoders give {} features per token but the UNet's cross_attention_dim is {}", path.string(),
         context_dim, uc.cross_attention_dim);
  if (sdxl != uc.text_time_embedding)
    fail("{}: {} text encoders do not fit a UNet {} added text/time embeddings", path.string(),
         parts->encoders.size(), uc.text_time_embedding ? "with" : "without");
  if (sdxl && parts->encoders[1].config().projection_dim != uc.projection_class_embeddings_input_dim - 6 * uc.addition_time_embed_dim)
    fail("{}: text_encoder_2's projection does not fit the UNet's added embedding", path.string());
  if (!parts->vae && (uc.in_channels != 3 || uc.out_channels != 3))
    fail("{}: a pixel-space model (no VAE) needs a UNet with 3 in and 3 out channels, not {} / {}", path.string(),
         uc.in_channels, uc.out_channels);
  if (parts->vae && (parts->vae->config().latent_channels != uc.in_channels || uc.out_channels != uc.in_channels))
    fail("{}: the VAE's {} latent channels do not fit the UNet's {} in / {} out", path.string(),
         parts->vae->config().latent_channels, uc.in_channels, uc.out_channels);
  pipe->parts_ = std::move(parts);
  return pipe;
}

bool DiffusionPipeline::is_sdxl() const { return parts_->encoders.size() == 2; }
bool DiffusionPipeline::is_pixel_space() const { return !parts_->vae; }
int64_t DiffusionPipeline::vae_scale_factor() const { return parts_->vae ? parts_->vae->config().scale_factor() : 1; }

int64_t DiffusionPipeline::upscale_factor(int64_t width, int64_t height) const {
  if (!is_pixel_space()) return 1;
  int64_t u = 1;
  while (width % (16 * u) == 0 && height % (16 * u) == 0 && std::max(width, height) / (2 * u) >= native_size()) u *= 2;
  return u;
}
int64_t DiffusionPipeline::native_size() const { return parts_->unet->config().sample_size * vae_scale_factor(); }
std::string DiffusionPipeline::name() const { return parts_->name; }

void DiffusionPipeline::validate(const ImageRequest& r) const {
  const int64_t w = r.width ? r.width : native_size(), h = r.height ? r.height : native_size();
  const int64_t f = vae_scale_factor();
  if (w % 8 != 0 || h % 8 != 0 || w % f != 0 || h % f != 0)
    fail("size {}x{}: width and height must be multiples of {}", w, h, std::max<int64_t>(8, f));
  const int64_t min_side = std::min<int64_t>(32, native_size());  // tiny models draw tiny pictures
  if (w < min_side || h < min_side || w > max_side() || h > max_side())
    fail("size {}x{}: each side must be between {} and {} pixels", w, h, min_side, max_side());
  if (r.steps < 1 || r.steps > 1000) fail("steps must be between 1 and 1000 (got {})", r.steps);
  if (r.guidance && (!std::isfinite(*r.guidance) || *r.guidance < 0 || *r.guidance > 50))
    fail("guidance must be between 0 and 50 (got {})", *r.guidance);
  if (r.init_latents) {
    const auto& l = *r.init_latents;
    const int64_t g = f * upscale_factor(w, h);
    if (l.channels != parts_->unet->config().in_channels || l.height != h / g || l.width != w / g)
      fail("initial latents are {}x{}x{}; a {}x{} image needs {}x{}x{}", l.channels, l.height, l.width, w, h,
           parts_->unet->config().in_channels, h / g, w / g);
  }
}

DiffusionPipeline::PromptEmbeddings DiffusionPipeline::encode_prompt(const std::optional<std::string>& prompt,
                                                                     std::vector<std::string>* warnings) const {
  PromptEmbeddings out;
  const auto& encoders = parts_->encoders;
  int64_t width = 0;
  for (const auto& e : encoders) width += e.config().hidden_size;
  const int64_t tokens = parts_->tokenizers[0].max_length();
  out.tokens = tokens;
  out.context.assign(static_cast<size_t>(tokens * width), 0.0f);
  if (is_sdxl() && !prompt) {
    out.pooled.assign(static_cast<size_t>(encoders[1].config().projection_dim), 0.0f);
    return out;
  }
  const std::string text = prompt.value_or("");
  int64_t offset = 0;
  for (size_t i = 0; i < encoders.size(); ++i) {
    const ClipTokenizer& tok = parts_->tokenizers[i];
    const ClipTokenizer::Padded ids = tok.encode_padded(text, tokens);
    if (ids.truncated && warnings && i == 0)
      warnings->push_back(fmt::format("the prompt was truncated to {} tokens", tokens));
    const ClipTextOutput enc = encoders[i].encode(ids.ids);
    // SD 1.x/2.x condition on the final-norm states; SDXL on each encoder's penultimate layer.
    const Tensor& states = is_sdxl() ? enc.penultimate : enc.last_hidden;
    const int64_t d = encoders[i].config().hidden_size;
    const float* s = states.data<float>();
    for (int64_t t = 0; t < tokens; ++t) std::copy_n(s + t * d, d, out.context.data() + t * width + offset);
    offset += d;
    if (i == 1) out.pooled.assign(enc.pooled.data<float>(), enc.pooled.data<float>() + enc.pooled.numel());
  }
  return out;
}

ImageResult DiffusionPipeline::generate(const ImageRequest& r,
                                        const std::function<void(int64_t, int64_t)>& progress) const {
  validate(r);
  const Parts& p = *parts_;
  ImageResult result;
  result.width = r.width ? r.width : native_size();
  result.height = r.height ? r.height : native_size();
  result.steps = r.steps;
  result.seed = r.seed;
  const SamplerKind kind = r.sampler.value_or(p.default_sampler);
  result.sampler = sampler_name(kind);
  result.guidance = r.guidance.value_or(is_sdxl() ? 5.0f : 7.5f);
  const bool guided = result.guidance > 1.0f;
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
  auto phase = Clock::now();

  const PromptEmbeddings cond = encode_prompt(r.prompt, &result.warnings);
  std::optional<std::string> negative = r.negative_prompt;
  if (!negative && !(is_sdxl() && p.force_zeros_for_empty_prompt)) negative = std::string();
  const PromptEmbeddings uncond = guided ? encode_prompt(negative, nullptr) : PromptEmbeddings();

  result.text_seconds = seconds_since(phase);
  phase = Clock::now();
  // A pixel-space model draws at about its native size and the image is upscaled to the request.
  const int64_t upscale = upscale_factor(result.width, result.height);
  const int64_t f = vae_scale_factor() * upscale;
  const int64_t lh = result.height / f, lw = result.width / f;
  if (upscale > 1)
    result.warnings.push_back(fmt::format("drawn at {}x{}, this model's native scale, and upscaled {}x to {}x{}", lw,
                                          lh, upscale, result.width, result.height));
  const int64_t channels = p.unet->config().in_channels;
  Rng rng(r.seed);
  FeatureMap latents(channels, lh, lw);
  if (r.init_latents) {
    latents = *r.init_latents;
  } else {
    for (float& v : latents.data) v = static_cast<float>(rng.normal());
  }
  NoiseFn noise = r.noise ? r.noise : NoiseFn([&rng](float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(rng.normal());
  });

  // "dpmpp_2m" is DPM++ 2M with Karras sigmas, whatever the pipeline's own scheduler used.
  SchedulerConfig sched_config = p.scheduler;
  if (kind == SamplerKind::DpmppTwoM) sched_config.use_karras_sigmas = true;
  auto scheduler = make_scheduler(kind, sched_config);
  scheduler->set_timesteps(r.steps);
  const float sigma0 = scheduler->init_noise_sigma();
  for (float& v : latents.data) v *= sigma0;
  const int64_t n = static_cast<int64_t>(latents.data.size());
  const float h = static_cast<float>(result.height), w = static_cast<float>(result.width);  // SDXL's time ids
  const float time_ids[6] = {h, w, 0.0f, 0.0f, h, w};
  const auto& timesteps = scheduler->timesteps();
  const int64_t total = static_cast<int64_t>(timesteps.size());
  for (int64_t i = 0; i < total; ++i) {
    FeatureMap input = latents;
    scheduler->scale_model_input(input.data.data(), n, static_cast<size_t>(i));
    const float t = static_cast<float>(timesteps[i]);
    auto predict = [&](const PromptEmbeddings& e) {
      return p.unet->forward(input, t, e.context.data(), e.tokens, is_sdxl() ? e.pooled.data() : nullptr,
                             is_sdxl() ? time_ids : nullptr);
    };
    FeatureMap eps = predict(cond);
    if (guided) {
      const FeatureMap eps_uncond = predict(uncond);
      for (int64_t j = 0; j < n; ++j)
        eps.data[j] = eps_uncond.data[j] + result.guidance * (eps.data[j] - eps_uncond.data[j]);
    }
    scheduler->step(eps.data.data(), latents.data.data(), n, static_cast<size_t>(i), noise);
    if (progress) progress(i + 1, total);
  }

  result.denoise_seconds = seconds_since(phase);
  phase = Clock::now();
  FeatureMap image;
  if (p.vae) {
    const auto& vc = p.vae->config();
    for (float& v : latents.data) v = v / vc.scaling_factor + vc.shift_factor.value_or(0.0f);
    const int64_t tile = std::max<int64_t>(8, vc.sample_size / f);
    image = r.vae_tiling && (lh > tile || lw > tile) ? p.vae->decode_tiled(latents, tile) : p.vae->decode(latents);
  } else {
    image = upscale > 1 ? upscale_bilinear(latents, upscale) : std::move(latents);
  }
  result.vae_seconds = seconds_since(phase);
  const int64_t pixels = image.pixels();
  result.pixels.resize(static_cast<size_t>(pixels * 3));
  result.rgb.resize(result.pixels.size());
  for (int64_t c = 0; c < 3; ++c) {
    const float* plane = image.data.data() + std::min<int64_t>(c, image.channels - 1) * pixels;
    for (int64_t i = 0; i < pixels; ++i) {
      const float v = std::clamp(plane[i] / 2.0f + 0.5f, 0.0f, 1.0f);
      result.pixels[i * 3 + c] = v;
      result.rgb[i * 3 + c] = static_cast<uint8_t>(std::nearbyint(v * 255.0f));
    }
  }
  return result;
}

std::vector<std::pair<std::string, std::string>> image_metadata(const ImageRequest& r, const ImageResult& result) {
  std::vector<std::pair<std::string, std::string>> text{{"prompt", r.prompt}};
  if (r.negative_prompt) text.emplace_back("negative_prompt", *r.negative_prompt);
  text.emplace_back("seed", std::to_string(result.seed));
  text.emplace_back("steps", std::to_string(result.steps));
  text.emplace_back("sampler", result.sampler);
  text.emplace_back("guidance", fmt::format("{:g}", result.guidance));
  text.emplace_back("size", fmt::format("{}x{}", result.width, result.height));
  text.emplace_back("Software", "tessera");
  return text;
}

PngImage image_png(const ImageRequest& request, const ImageResult& result) {
  PngImage png;
  png.width = result.width;
  png.height = result.height;
  png.channels = 3;
  png.pixels = result.rgb;
  png.text = image_metadata(request, result);
  return png;
}

}  // namespace tessera::diffusion
