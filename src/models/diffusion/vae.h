#pragma once
// AutoencoderKL from diffusers' vae/config.json: the decoder turns latents into an image and
// the encoder (for img2img and training) turns an image into the latent distribution's mean.
// Decoding large images can run in overlapping tiles blended at their seams, as diffusers'
// enable_tiling does, so memory stays bounded.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/diffusion/blocks.h"

namespace tessera::diffusion {

struct VaeConfig {
  int64_t in_channels = 3, out_channels = 3, latent_channels = 4;
  std::vector<int64_t> block_out_channels{128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  float scaling_factor = 0.18215f;
  std::optional<float> shift_factor;
  bool use_quant_conv = true, use_post_quant_conv = true, mid_block_add_attention = true;
  int64_t sample_size = 512;

  int64_t scale_factor() const { return int64_t{1} << (block_out_channels.size() - 1); }
  static VaeConfig load(const std::filesystem::path& config_json);
};

class Vae {
 public:
  Vae(VaeConfig config, const ComponentWeights& weights);
  static std::unique_ptr<Vae> load(const std::filesystem::path& dir);

  const VaeConfig& config() const { return config_; }
  bool has_encoder() const { return has_encoder_; }

  // latents[latent_channels, h, w] (already divided by the scaling factor) -> image
  // [out_channels, h * f, w * f] in about [-1, 1].
  FeatureMap decode(const FeatureMap& latents) const;
  // The same, in tiles of `tile` latent pixels overlapping by a quarter, blended linearly.
  FeatureMap decode_tiled(const FeatureMap& latents, int64_t tile) const;
  // image[in_channels, H, W] in [-1, 1] -> mean of the latent distribution (unscaled).
  FeatureMap encode_mean(const FeatureMap& image) const;

 private:
  struct Stage {
    std::vector<ResnetBlock> resnets;
    Conv2d resample;
    bool has_resample = false;
  };
  struct Middle {
    ResnetBlock resnet1, resnet2;
    VaeAttention attention;
    bool has_attention = true;
    void load(const ComponentWeights& w, const std::string& prefix, int64_t ch, int64_t groups, bool attn);
    void apply(FeatureMap& x) const;
  };
  VaeConfig config_;
  bool has_encoder_ = false;
  Conv2d post_quant_conv_, dec_conv_in_, dec_conv_out_;
  GroupNorm dec_norm_out_;
  Middle dec_mid_;
  std::vector<Stage> dec_up_;
  Conv2d quant_conv_, enc_conv_in_, enc_conv_out_;
  GroupNorm enc_norm_out_;
  Middle enc_mid_;
  std::vector<Stage> enc_down_;
};

}  // namespace tessera::diffusion
