#include "models/diffusion/unet.h"

#include <fmt/format.h>

#include "core/error.h"
#include "kernels/cpu/nn.h"
#include "models/diffusion/model_config.h"

namespace tessera::diffusion {

namespace k = tessera::kernels;

UNetConfig UNetConfig::load(const std::filesystem::path& path) {
  const JsonConfig j(path);
  const std::string& o = j.origin();
  UNetConfig c;
  c.in_channels = j.positive("in_channels", c.in_channels);
  c.out_channels = j.positive("out_channels", c.out_channels);
  if (j.has("block_out_channels")) c.block_out_channels = j.int_list("block_out_channels", 0, 0);
  const size_t blocks = c.block_out_channels.size();
  if (blocks == 0) fail("{}: \"block_out_channels\" is empty", o);
  c.down_block_types = j.string_list("down_block_types");
  c.up_block_types = j.string_list("up_block_types");
  if (c.down_block_types.empty()) {
    c.down_block_types.assign(blocks, "CrossAttnDownBlock2D");
    c.down_block_types.back() = "DownBlock2D";
  }
  if (c.up_block_types.empty()) {
    c.up_block_types.assign(blocks, "CrossAttnUpBlock2D");
    c.up_block_types.front() = "UpBlock2D";
  }
  if (c.down_block_types.size() != blocks || c.up_block_types.size() != blocks)
    fail("{}: down_block_types, up_block_types and block_out_channels must have the same length", o);
  for (const auto& t : c.down_block_types)
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D")
      fail("{}: down block type '{}' is not supported (CrossAttnDownBlock2D, DownBlock2D)", o, t);
  for (const auto& t : c.up_block_types)
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D")
      fail("{}: up block type '{}' is not supported (CrossAttnUpBlock2D, UpBlock2D)", o, t);
  c.mid_block_type = j.string("mid_block_type", c.mid_block_type);
  if (c.mid_block_type != "UNetMidBlock2DCrossAttn")
    fail("{}: mid block type '{}' is not supported (UNetMidBlock2DCrossAttn)", o, c.mid_block_type);
  c.layers_per_block = j.int_list("layers_per_block", blocks, 2);
  if (j.has("transformer_layers_per_block") && j.json()["transformer_layers_per_block"].is_array() &&
      !j.json()["transformer_layers_per_block"].empty() && j.json()["transformer_layers_per_block"][0].is_array())
    fail("{}: per-layer lists in \"transformer_layers_per_block\" are not supported", o);
  c.transformer_layers_per_block = j.int_list("transformer_layers_per_block", blocks, 1);
  // diffusers' historical naming: "attention_head_dim" holds the number of heads unless
  // "num_attention_heads" is given.
  c.attention_heads = j.has("num_attention_heads") ? j.int_list("num_attention_heads", blocks, 8)
                                                   : j.int_list("attention_head_dim", blocks, 8);
  if (j.has("cross_attention_dim") && !j.json()["cross_attention_dim"].is_number_integer())
    fail("{}: \"cross_attention_dim\" must be one integer", o);
  c.cross_attention_dim = j.positive("cross_attention_dim", c.cross_attention_dim);
  c.norm_num_groups = j.positive("norm_num_groups", c.norm_num_groups);
  c.norm_eps = static_cast<float>(j.number("norm_eps", c.norm_eps));
  c.flip_sin_to_cos = j.boolean("flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = static_cast<float>(j.number("freq_shift", c.freq_shift));
  c.sample_size = j.positive("sample_size", c.sample_size);
  const std::string add = j.string("addition_embed_type", "");
  if (!add.empty() && add != "text_time") fail("{}: addition_embed_type '{}' is not supported (text_time)", o, add);
  c.text_time_embedding = add == "text_time";
  if (c.text_time_embedding) {
    c.addition_time_embed_dim = j.positive("addition_time_embed_dim", 256);
    c.projection_class_embeddings_input_dim = j.positive("projection_class_embeddings_input_dim", 2816);
    if (c.projection_class_embeddings_input_dim <= 6 * c.addition_time_embed_dim)
      fail("{}: projection_class_embeddings_input_dim must exceed 6 * addition_time_embed_dim", o);
  }
  // Options this engine does not implement are refused rather than silently ignored.
  for (const char* key : {"class_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim",
                          "reverse_transformer_layers_per_block", "timestep_post_act", "time_embedding_act_fn"})
    if (j.has(key)) fail("{}: \"{}\" is not supported", o, key);
  if (j.boolean("only_cross_attention", false) || j.boolean("dual_cross_attention", false) ||
      j.boolean("center_input_sample", false))
    fail("{}: only_cross_attention, dual_cross_attention and center_input_sample are not supported", o);
  if (j.string("resnet_time_scale_shift", "default") != "default")
    fail("{}: resnet_time_scale_shift other than 'default' is not supported", o);
  if (j.string("time_embedding_type", "positional") != "positional")
    fail("{}: time_embedding_type other than 'positional' is not supported", o);
  if (j.string("act_fn", "silu") != "silu") fail("{}: act_fn other than 'silu' is not supported", o);
  if (j.integer("conv_in_kernel", 3) != 3 || j.integer("conv_out_kernel", 3) != 3)
    fail("{}: conv_in_kernel and conv_out_kernel must be 3", o);
  if (j.string("attention_type", "default") != "default") fail("{}: attention_type must be 'default'", o);
  for (int64_t ch : c.block_out_channels)
    if (ch % c.norm_num_groups != 0)
      fail("{}: block_out_channels {} is not a multiple of norm_num_groups {}", o, ch, c.norm_num_groups);
  return c;
}

UNet::UNet(UNetConfig config, const ComponentWeights& w) : config_(std::move(config)) {
  const auto& c = config_;
  const int64_t blocks = static_cast<int64_t>(c.block_out_channels.size());
  const int64_t temb = c.time_embed_dim();
  const int64_t groups = c.norm_num_groups;
  const float eps = c.norm_eps;
  time_linear1_.load(w, "time_embedding.linear_1", c.block_out_channels[0], temb, true);
  time_linear2_.load(w, "time_embedding.linear_2", temb, temb, true);
  if (c.text_time_embedding) {
    add_linear1_.load(w, "add_embedding.linear_1", c.projection_class_embeddings_input_dim, temb, true);
    add_linear2_.load(w, "add_embedding.linear_2", temb, temb, true);
  }
  conv_in_.load(w, "conv_in", c.in_channels, c.block_out_channels[0], 3);

  int64_t out_ch = c.block_out_channels[0];
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t in_ch = out_ch;
    out_ch = c.block_out_channels[i];
    Level level;
    const bool attn = c.down_block_types[i] == "CrossAttnDownBlock2D";
    for (int64_t j = 0; j < c.layers_per_block[i]; ++j) {
      const std::string p = fmt::format("down_blocks.{}", i);
      ResnetBlock r;
      r.load(w, fmt::format("{}.resnets.{}", p, j), j == 0 ? in_ch : out_ch, out_ch, temb, groups, eps);
      level.resnets.push_back(std::move(r));
      if (attn) {
        SpatialTransformer t;
        t.load(w, fmt::format("{}.attentions.{}", p, j), out_ch, c.cross_attention_dim, c.attention_heads[i],
               c.transformer_layers_per_block[i], groups);
        level.attentions.push_back(std::move(t));
      }
    }
    if (i + 1 < blocks) {
      level.resample.load(w, fmt::format("down_blocks.{}.downsamplers.0.conv", i), out_ch, out_ch, 3, 2, 1);
      level.has_resample = true;
    }
    down_.push_back(std::move(level));
  }

  const int64_t mid_ch = c.block_out_channels.back();
  mid_resnet1_.load(w, "mid_block.resnets.0", mid_ch, mid_ch, temb, groups, eps);
  mid_attention_.load(w, "mid_block.attentions.0", mid_ch, c.cross_attention_dim, c.attention_heads.back(),
                      c.transformer_layers_per_block.back(), groups);
  mid_resnet2_.load(w, "mid_block.resnets.1", mid_ch, mid_ch, temb, groups, eps);

  std::vector<int64_t> rev(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  out_ch = rev[0];
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t prev_out = out_ch;
    out_ch = rev[i];
    const int64_t in_ch = rev[std::min(i + 1, blocks - 1)];
    const int64_t down_index = blocks - 1 - i;  // the down block this level mirrors
    const int64_t layers = c.layers_per_block[down_index] + 1;
    const bool attn = c.up_block_types[i] == "CrossAttnUpBlock2D";
    Level level;
    for (int64_t j = 0; j < layers; ++j) {
      const int64_t skip = j == layers - 1 ? in_ch : out_ch;
      const int64_t res_in = j == 0 ? prev_out : out_ch;
      ResnetBlock r;
      r.load(w, fmt::format("up_blocks.{}.resnets.{}", i, j), res_in + skip, out_ch, temb, groups, eps);
      level.resnets.push_back(std::move(r));
      if (attn) {
        SpatialTransformer t;
        t.load(w, fmt::format("up_blocks.{}.attentions.{}", i, j), out_ch, c.cross_attention_dim,
               c.attention_heads[down_index], c.transformer_layers_per_block[down_index], groups);
        level.attentions.push_back(std::move(t));
      }
    }
    if (i + 1 < blocks) {
      level.resample.load(w, fmt::format("up_blocks.{}.upsamplers.0.conv", i), out_ch, out_ch, 3);
      level.has_resample = true;
    }
    up_.push_back(std::move(level));
  }
  norm_out_.load(w, "conv_norm_out", c.block_out_channels[0], groups, eps);
  conv_out_.load(w, "conv_out", c.block_out_channels[0], c.out_channels, 3);
}

std::unique_ptr<UNet> UNet::load(const std::filesystem::path& dir) {
  return std::make_unique<UNet>(UNetConfig::load(dir / "config.json"), ComponentWeights::from_folder(dir));
}

FeatureMap UNet::forward(const FeatureMap& sample, float timestep, const float* context, int64_t context_len,
                         const float* text_embeds, const float* time_ids) const {
  const auto& c = config_;
  if (sample.channels != c.in_channels)
    fail("UNet expects {} latent channels, got {}", c.in_channels, sample.channels);
  if (c.text_time_embedding && (!text_embeds || !time_ids))
    fail("this UNet (SDXL-style) needs pooled text embeddings and time ids");
  // Time embedding, SiLU applied once for every ResNet's projection.
  const int64_t temb_dim = c.time_embed_dim();
  std::vector<float> tproj(static_cast<size_t>(c.block_out_channels[0])), hidden(static_cast<size_t>(temb_dim)),
      temb(static_cast<size_t>(temb_dim));
  k::timestep_embedding(timestep, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift, tproj.data());
  time_linear1_.apply(tproj.data(), 1, hidden.data());
  k::silu_inplace(hidden.data(), temb_dim);
  time_linear2_.apply(hidden.data(), 1, temb.data());
  if (c.text_time_embedding) {
    const int64_t dt = c.addition_time_embed_dim;
    const int64_t text_dim = c.projection_class_embeddings_input_dim - 6 * dt;
    std::vector<float> add(static_cast<size_t>(c.projection_class_embeddings_input_dim)), aug(temb.size());
    std::copy(text_embeds, text_embeds + text_dim, add.begin());
    for (int64_t i = 0; i < 6; ++i)
      k::timestep_embedding(time_ids[i], dt, c.flip_sin_to_cos, c.freq_shift, add.data() + text_dim + i * dt);
    add_linear1_.apply(add.data(), 1, hidden.data());
    k::silu_inplace(hidden.data(), temb_dim);
    add_linear2_.apply(hidden.data(), 1, aug.data());
    for (int64_t i = 0; i < temb_dim; ++i) temb[i] += aug[i];
  }
  k::silu_inplace(temb.data(), temb_dim);
  const float* st = temb.data();

  FeatureMap h = conv_in_.apply(sample);
  std::vector<FeatureMap> skips{h};
  for (const auto& level : down_) {
    for (size_t j = 0; j < level.resnets.size(); ++j) {
      h = level.resnets[j].apply(h, st);
      if (!level.attentions.empty()) level.attentions[j].apply(h, context, context_len);
      skips.push_back(h);
    }
    if (level.has_resample) {
      h = level.resample.apply(h);
      skips.push_back(h);
    }
  }
  h = mid_resnet1_.apply(h, st);
  mid_attention_.apply(h, context, context_len);
  h = mid_resnet2_.apply(h, st);
  for (const auto& level : up_) {
    for (size_t j = 0; j < level.resnets.size(); ++j) {
      h = level.resnets[j].apply(concat_channels(h, skips.back()), st);
      skips.pop_back();
      if (!level.attentions.empty()) level.attentions[j].apply(h, context, context_len);
    }
    // Upsample to the size of the skip the next level consumes (twice the size, unless the
    // latent was not divisible by the total downsampling factor).
    if (level.has_resample) h = upsample(level.resample, h, skips.back().height, skips.back().width);
  }
  norm_out_.apply(h, /*silu=*/true);
  return conv_out_.apply(h);
}

}  // namespace tessera::diffusion
