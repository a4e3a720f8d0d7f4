#pragma once
// UNet2DConditionModel, configured from diffusers' unet/config.json: SD 1.x/2.x and SDXL
// layouts (CrossAttnDownBlock2D/DownBlock2D, UNetMidBlock2DCrossAttn,
// CrossAttnUpBlock2D/UpBlock2D, conv or linear projections, SDXL's "text_time" added
// embedding). Predicts the noise (or v) in one latent image.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "models/diffusion/blocks.h"

namespace tessera::diffusion {

struct UNetConfig {
  int64_t in_channels = 4, out_channels = 4;
  std::vector<int64_t> block_out_channels{320, 640, 1280, 1280};
  std::vector<std::string> down_block_types, up_block_types;
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<int64_t> layers_per_block;              // per down block
  std::vector<int64_t> transformer_layers_per_block;  // per down block
  std::vector<int64_t> attention_heads;               // per down block
  int64_t cross_attention_dim = 768;
  int64_t norm_num_groups = 32;
  float norm_eps = 1e-5f;
  bool flip_sin_to_cos = true;
  float freq_shift = 0.0f;
  bool text_time_embedding = false;  // addition_embed_type == "text_time" (SDXL)
  int64_t addition_time_embed_dim = 0;
  int64_t projection_class_embeddings_input_dim = 0;
  int64_t sample_size = 64;

  int64_t time_embed_dim() const { return block_out_channels[0] * 4; }
  static UNetConfig load(const std::filesystem::path& config_json);
};

class UNet {
 public:
  UNet(UNetConfig config, const ComponentWeights& weights);
  static std::unique_ptr<UNet> load(const std::filesystem::path& dir);

  const UNetConfig& config() const { return config_; }

  // sample[in_channels, h, w] at timestep t, context[m, cross_attention_dim]; for SDXL also
  // text_embeds[projection dim] and time_ids[6]. Returns [out_channels, h, w].
  FeatureMap forward(const FeatureMap& sample, float timestep, const float* context, int64_t context_len,
                     const float* text_embeds = nullptr, const float* time_ids = nullptr) const;

 private:
  struct Level {
    std::vector<ResnetBlock> resnets;
    std::vector<SpatialTransformer> attentions;  // empty for blocks without attention
    Conv2d resample;                              // downsampler or upsampler conv
    bool has_resample = false;
  };
  UNetConfig config_;
  Linear time_linear1_, time_linear2_, add_linear1_, add_linear2_;
  Conv2d conv_in_, conv_out_;
  GroupNorm norm_out_;
  std::vector<Level> down_, up_;
  ResnetBlock mid_resnet1_, mid_resnet2_;
  SpatialTransformer mid_attention_;
};

}  // namespace tessera::diffusion
