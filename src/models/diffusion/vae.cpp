#include "models/diffusion/vae.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "models/diffusion/model_config.h"

namespace tessera::diffusion {

namespace {
constexpr float kVaeEps = 1e-6f;
}

VaeConfig VaeConfig::load(const std::filesystem::path& path) {
  const JsonConfig j(path);
  const std::string& o = j.origin();
  VaeConfig c;
  c.in_channels = j.positive("in_channels", c.in_channels);
  c.out_channels = j.positive("out_channels", c.out_channels);
  c.latent_channels = j.positive("latent_channels", c.latent_channels);
  if (j.has("block_out_channels")) c.block_out_channels = j.int_list("block_out_channels", 0, 0);
  if (c.block_out_channels.empty() || c.block_out_channels.size() > 8)
    fail("{}: \"block_out_channels\" must have 1 to 8 entries", o);
  c.layers_per_block = j.positive("layers_per_block", c.layers_per_block);
  c.norm_num_groups = j.positive("norm_num_groups", c.norm_num_groups);
  c.scaling_factor = static_cast<float>(j.number("scaling_factor", c.scaling_factor));
  if (!(c.scaling_factor > 0)) fail("{}: \"scaling_factor\" must be positive", o);
  if (j.has("shift_factor")) c.shift_factor = static_cast<float>(j.number("shift_factor", 0));
  c.use_quant_conv = j.boolean("use_quant_conv", true);
  c.use_post_quant_conv = j.boolean("use_post_quant_conv", true);
  c.mid_block_add_attention = j.boolean("mid_block_add_attention", true);
  c.sample_size = j.has("sample_size") && j.json()["sample_size"].is_array() ? c.sample_size
                                                                              : j.positive("sample_size", c.sample_size);
  for (const auto& t : j.string_list("down_block_types"))
    if (t != "DownEncoderBlock2D") fail("{}: down block type '{}' is not supported (DownEncoderBlock2D)", o, t);
  for (const auto& t : j.string_list("up_block_types"))
    if (t != "UpDecoderBlock2D") fail("{}: up block type '{}' is not supported (UpDecoderBlock2D)", o, t);
  if (j.string("act_fn", "silu") != "silu") fail("{}: act_fn other than 'silu' is not supported", o);
  if (j.has("latents_mean") || j.has("latents_std")) fail("{}: latents_mean/latents_std are not supported", o);
  for (int64_t ch : c.block_out_channels)
    if (ch % c.norm_num_groups != 0)
      fail("{}: block_out_channels {} is not a multiple of norm_num_groups {}", o, ch, c.norm_num_groups);
  return c;
}

void Vae::Middle::load(const ComponentWeights& w, const std::string& p, int64_t ch, int64_t groups, bool attn) {
  resnet1.load(w, p + ".resnets.0", ch, ch, 0, groups, kVaeEps);
  has_attention = attn;
  if (attn) attention.load(w, p + ".attentions.0", ch, groups, kVaeEps);
  resnet2.load(w, p + ".resnets.1", ch, ch, 0, groups, kVaeEps);
}

void Vae::Middle::apply(FeatureMap& x) const {
  x = resnet1.apply(x, nullptr);
  if (has_attention) attention.apply(x);
  x = resnet2.apply(x, nullptr);
}

Vae::Vae(VaeConfig config, const ComponentWeights& w) : config_(std::move(config)) {
  const auto& c = config_;
  const int64_t blocks = static_cast<int64_t>(c.block_out_channels.size());
  const int64_t groups = c.norm_num_groups;
  const int64_t top = c.block_out_channels.back();
  // Decoder.
  if (c.use_post_quant_conv) post_quant_conv_.load(w, "post_quant_conv", c.latent_channels, c.latent_channels, 1);
  dec_conv_in_.load(w, "decoder.conv_in", c.latent_channels, top, 3);
  dec_mid_.load(w, "decoder.mid_block", top, groups, c.mid_block_add_attention);
  std::vector<int64_t> rev(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  int64_t out_ch = rev[0];
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t prev = out_ch;
    out_ch = rev[i];
    Stage s;
    for (int64_t j = 0; j < c.layers_per_block + 1; ++j) {
      ResnetBlock r;
      r.load(w, fmt::format("decoder.up_blocks.{}.resnets.{}", i, j), j == 0 ? prev : out_ch, out_ch, 0, groups,
             kVaeEps);
      s.resnets.push_back(std::move(r));
    }
    if (i + 1 < blocks) {
      s.resample.load(w, fmt::format("decoder.up_blocks.{}.upsamplers.0.conv", i), out_ch, out_ch, 3);
      s.has_resample = true;
    }
    dec_up_.push_back(std::move(s));
  }
  dec_norm_out_.load(w, "decoder.conv_norm_out", c.block_out_channels[0], groups, kVaeEps);
  dec_conv_out_.load(w, "decoder.conv_out", c.block_out_channels[0], c.out_channels, 3);

  // Encoder, when the weights carry one (decoder-only exports exist).
  has_encoder_ = w.contains("encoder.conv_in.weight");
  if (!has_encoder_) return;
  enc_conv_in_.load(w, "encoder.conv_in", c.in_channels, c.block_out_channels[0], 3);
  out_ch = c.block_out_channels[0];
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t in_ch = out_ch;
    out_ch = c.block_out_channels[i];
    Stage s;
    for (int64_t j = 0; j < c.layers_per_block; ++j) {
      ResnetBlock r;
      r.load(w, fmt::format("encoder.down_blocks.{}.resnets.{}", i, j), j == 0 ? in_ch : out_ch, out_ch, 0, groups,
             kVaeEps);
      s.resnets.push_back(std::move(r));
    }
    if (i + 1 < blocks) {
      // Padded by one pixel on the right and bottom only, then a stride-2 convolution.
      s.resample.load(w, fmt::format("encoder.down_blocks.{}.downsamplers.0.conv", i), out_ch, out_ch, 3, 2, 0);
      s.resample.shape.pad_bottom = s.resample.shape.pad_right = 1;
      s.has_resample = true;
    }
    enc_down_.push_back(std::move(s));
  }
  enc_mid_.load(w, "encoder.mid_block", top, groups, c.mid_block_add_attention);
  enc_norm_out_.load(w, "encoder.conv_norm_out", top, groups, kVaeEps);
  enc_conv_out_.load(w, "encoder.conv_out", top, 2 * c.latent_channels, 3);
  if (c.use_quant_conv) quant_conv_.load(w, "quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1);
}

std::unique_ptr<Vae> Vae::load(const std::filesystem::path& dir) {
  return std::make_unique<Vae>(VaeConfig::load(dir / "config.json"), ComponentWeights::from_folder(dir));
}

FeatureMap Vae::decode(const FeatureMap& latents) const {
  if (latents.channels != config_.latent_channels)
    fail("VAE expects {} latent channels, got {}", config_.latent_channels, latents.channels);
  FeatureMap h = config_.use_post_quant_conv ? post_quant_conv_.apply(latents) : latents;
  h = dec_conv_in_.apply(h);
  dec_mid_.apply(h);
  for (const auto& s : dec_up_) {
    for (const auto& r : s.resnets) h = r.apply(h, nullptr);
    if (s.has_resample) h = upsample(s.resample, h, h.height * 2, h.width * 2);
  }
  dec_norm_out_.apply(h, /*silu=*/true);
  return dec_conv_out_.apply(h);
}

FeatureMap Vae::decode_tiled(const FeatureMap& z, int64_t tile) const {
  const int64_t f = config_.scale_factor();
  const int64_t sample_tile = tile * f;
  const int64_t overlap = static_cast<int64_t>(static_cast<double>(tile) * 0.75);
  const int64_t blend = static_cast<int64_t>(static_cast<double>(sample_tile) * 0.25);
  const int64_t keep = sample_tile - blend;
  if (overlap <= 0) fail("VAE tile of {} latent pixels is too small", tile);
  std::vector<std::vector<FeatureMap>> rows;
  for (int64_t i = 0; i < z.height; i += overlap) {
    std::vector<FeatureMap> row;
    for (int64_t j = 0; j < z.width; j += overlap) {
      const int64_t th = std::min(tile, z.height - i), tw = std::min(tile, z.width - j);
      FeatureMap part(z.channels, th, tw);
      for (int64_t c = 0; c < z.channels; ++c)
        for (int64_t y = 0; y < th; ++y)
          std::copy_n(z.data.data() + (c * z.height + i + y) * z.width + j, tw, part.plane(c) + y * tw);
      row.push_back(decode(part));
    }
    rows.push_back(std::move(row));
  }
  // Blend each tile with the one above and the one to the left, keep its top-left part.
  const int64_t out_h = z.height * f, out_w = z.width * f;
  FeatureMap out(config_.out_channels, out_h, out_w);
  int64_t oy = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    int64_t ox = 0, kept_h = 0;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      FeatureMap& t = rows[i][j];
      if (i > 0) {
        const FeatureMap& a = rows[i - 1][j];
        const int64_t e = std::min({a.height, t.height, blend});
        for (int64_t c = 0; c < t.channels; ++c)
          for (int64_t y = 0; y < e; ++y)
            for (int64_t x = 0; x < t.width; ++x) {
              const float wa = 1.0f - static_cast<float>(y) / e, wb = static_cast<float>(y) / e;
              float& dst = t.plane(c)[y * t.width + x];
              dst = a.data[(c * a.height + a.height - e + y) * a.width + x] * wa + dst * wb;
            }
      }
      if (j > 0) {
        const FeatureMap& a = rows[i][j - 1];
        const int64_t e = std::min({a.width, t.width, blend});
        for (int64_t c = 0; c < t.channels; ++c)
          for (int64_t y = 0; y < t.height; ++y)
            for (int64_t x = 0; x < e; ++x) {
              const float wa = 1.0f - static_cast<float>(x) / e, wb = static_cast<float>(x) / e;
              float& dst = t.plane(c)[y * t.width + x];
              dst = a.data[(c * a.height + y) * a.width + a.width - e + x] * wa + dst * wb;
            }
      }
      const int64_t h = std::min(keep, t.height), w = std::min(keep, t.width);
      for (int64_t c = 0; c < t.channels; ++c)
        for (int64_t y = 0; y < h && oy + y < out_h; ++y)
          std::copy_n(t.plane(c) + y * t.width, std::min(w, out_w - ox), out.plane(c) + (oy + y) * out_w + ox);
      ox += w;
      kept_h = h;
    }
    oy += kept_h;
  }
  return out;
}

FeatureMap Vae::encode_mean(const FeatureMap& image) const {
  if (!has_encoder_) fail("this VAE has no encoder weights");
  if (image.channels != config_.in_channels)
    fail("VAE encoder expects {} image channels, got {}", config_.in_channels, image.channels);
  FeatureMap h = enc_conv_in_.apply(image);
  for (const auto& s : enc_down_) {
    for (const auto& r : s.resnets) h = r.apply(h, nullptr);
    if (s.has_resample) h = s.resample.apply(h);
  }
  enc_mid_.apply(h);
  enc_norm_out_.apply(h, /*silu=*/true);
  h = enc_conv_out_.apply(h);
  if (config_.use_quant_conv) h = quant_conv_.apply(h);
  h.channels = config_.latent_channels;
  h.data.resize(static_cast<size_t>(h.channels * h.pixels()));  // the mean; the log-variance is dropped
  return h;
}

}  // namespace tessera::diffusion
