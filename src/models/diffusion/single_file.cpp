#include "models/diffusion/single_file.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <set>

#include "core/error.h"
#include "formats/safetensors.h"
#include "models/diffusion/model_config.h"

namespace tessera::diffusion {

namespace fs = std::filesystem;

namespace {

const std::string kUnet = "model.diffusion_model.";
const std::string kVae = "first_stage_model.";
const std::string kSd1Text = "cond_stage_model.transformer.";
const std::string kSd2Text = "cond_stage_model.model.";
const std::string kSdxlText = "conditioner.embedders.0.transformer.";
const std::string kSdxlText2 = "conditioner.embedders.1.model.";
const std::string kSdxlRefinerText = "conditioner.embedders.0.model.";

// The checkpoint file, with lookups whose errors name it and the key.
class Checkpoint {
 public:
  explicit Checkpoint(const fs::path& path) : file_(std::make_shared<SafetensorsFile>(path)), origin_(path.string()) {
    for (const auto& name : file_->names()) names_.insert(name);
  }
  const std::string& origin() const { return origin_; }
  const std::shared_ptr<SafetensorsFile>& file() const { return file_; }
  const std::set<std::string>& names() const { return names_; }

  bool has(const std::string& key) const { return names_.count(key) != 0; }
  bool has_prefix(const std::string& prefix) const {
    auto it = names_.lower_bound(prefix);
    return it != names_.end() && it->starts_with(prefix);
  }
  const Shape& shape(const std::string& key) const {
    if (!has(key)) fail("{}: key '{}' is missing", origin_, key);
    return file_->entry(key).shape;
  }
  int64_t dim(const std::string& key, size_t i) const {
    const Shape& s = shape(key);
    if (i >= s.size())
      fail("{}: key '{}' has shape {}; expected at least {} dimensions", origin_, key, shape_str(s), i + 1);
    return s[i];
  }
  // How many consecutive indices n = 0, 1, ... have a key `before` n `after`.
  int64_t count(const std::string& before, const std::string& after) const {
    int64_t n = 0;
    while (has(before + std::to_string(n) + after)) ++n;
    return n;
  }

 private:
  std::shared_ptr<SafetensorsFile> file_;
  std::string origin_;
  std::set<std::string> names_;
};

// Fills one component's ComponentWeights from original keys (relative to `prefix`), checking
// each shape against the config, and remembers which keys it used.
class Renamer {
 public:
  Renamer(const Checkpoint& ckpt, ComponentWeights& out, std::string component, std::string prefix)
      : ckpt_(ckpt), out_(out), component_(std::move(component)), prefix_(std::move(prefix)) {}

  void set_prefix(std::string prefix) { prefix_ = std::move(prefix); }
  const std::set<std::string>& used() const { return used_; }

  void tensor(const std::string& name, const std::string& key, const Shape& shape) {
    out_.add(name, take(name, key, {shape}));
  }
  void linear(const std::string& name, const std::string& key, int64_t in, int64_t out, bool bias = true) {
    tensor(name + ".weight", key + ".weight", {out, in});
    if (bias) tensor(name + ".bias", key + ".bias", {out});
  }
  void conv(const std::string& name, const std::string& key, int64_t in, int64_t out, int64_t kernel) {
    tensor(name + ".weight", key + ".weight", {out, in, kernel, kernel});
    tensor(name + ".bias", key + ".bias", {out});
  }
  void norm(const std::string& name, const std::string& key, int64_t channels) {
    tensor(name + ".weight", key + ".weight", {channels});
    tensor(name + ".bias", key + ".bias", {channels});
  }
  // A projection stored as a 1x1 convolution [out, in, 1, 1] or a linear [out, in]; kept as
  // stored (diffusers keeps the UNet's proj_in/proj_out that way).
  void projection(const std::string& name, const std::string& key, int64_t out, int64_t in) {
    out_.add(name + ".weight", take(name + ".weight", key + ".weight", {{out, in}, {out, in, 1, 1}}));
    tensor(name + ".bias", key + ".bias", {out});
  }
  // The same, always handed out as [out, in] (diffusers' VAE attention is linear).
  void linear_from_conv(const std::string& name, const std::string& key, int64_t out, int64_t in) {
    out_.add(name + ".weight", take(name + ".weight", key + ".weight", {{out, in}, {out, in, 1, 1}}).view({out, in}));
    tensor(name + ".bias", key + ".bias", {out});
  }
  // Rows [begin, end) of `key` (shape `shape`), as a view.
  void rows(const std::string& name, const std::string& key, const Shape& shape, int64_t begin, int64_t end) {
    out_.add(name, take(name, key, {shape}).slice(0, begin, end));
  }
  // `key` stored as [a, b], handed out as the [b, a] view.
  void transposed(const std::string& name, const std::string& key, int64_t a, int64_t b) {
    out_.add(name, take(name, key, {{a, b}}).transpose(0, 1));
  }

 private:
  Tensor take(const std::string& name, const std::string& relative, const std::vector<Shape>& shapes) {
    const std::string key = prefix_ + relative;
    if (!ckpt_.has(key))
      fail("{}: key '{}' is missing (the {} config needs it for '{}')", ckpt_.origin(), key, component_, name);
    const SafetensorsEntry& e = ckpt_.file()->entry(key);
    bool fits = false;
    for (const auto& s : shapes) fits |= e.shape == s;
    if (!fits)
      fail("{}: key '{}' has shape {}, expected {} from the {} config", ckpt_.origin(), key, shape_str(e.shape),
           shape_str(shapes.front()), component_);
    if (e.dtype != DType::F32 && e.dtype != DType::F16 && e.dtype != DType::BF16)
      fail("{}: key '{}' has dtype {}; expected f32, f16 or bf16", ckpt_.origin(), key, dtype_name(e.dtype));
    used_.insert(key);
    return ckpt_.file()->get(key);
  }

  const Checkpoint& ckpt_;
  ComponentWeights& out_;
  std::string component_;
  std::string prefix_;
  std::set<std::string> used_;
};

// Every key under `prefix` must have been used, unless `ignorable` says the layout carries it
// without any component needing it; anything else means the config and the file disagree.
void check_all_used(const Checkpoint& ckpt, const Renamer& renamer, const std::string& prefix,
                    const std::string& component, const std::function<bool(const std::string&)>& ignorable) {
  for (auto it = ckpt.names().lower_bound(prefix); it != ckpt.names().end() && it->starts_with(prefix); ++it) {
    if (renamer.used().count(*it) || ignorable(it->substr(prefix.size()))) continue;
    fail(
        "{}: key '{}' is not part of the {} its config describes (an unsupported layout, or a config that does "
        "not match the file)",
        ckpt.origin(), *it, component);
  }
}

// The number after `marker` in `key` ("encoder.layers." in "encoder.layers.12.mlp..."), if any.
std::optional<int64_t> index_after(const std::string& key, const std::string& marker) {
  const size_t at = key.find(marker);
  if (at == std::string::npos) return std::nullopt;
  size_t i = at + marker.size(), end = i;
  while (end < key.size() && key[end] >= '0' && key[end] <= '9') ++end;
  if (end == i || end - i > 9) return std::nullopt;
  return std::stoll(key.substr(i, end - i));
}

// ---------------------------------------------------------------------------------------------
// UNet: input_blocks / middle_block / output_blocks -> down_blocks / mid_block / up_blocks.

void map_unet(const Checkpoint& ckpt, const UNetConfig& c, ComponentWeights& w) {
  Renamer r(ckpt, w, "unet", kUnet);
  const int64_t blocks = static_cast<int64_t>(c.block_out_channels.size());
  const int64_t temb = c.time_embed_dim();
  const int64_t ctx = c.cross_attention_dim;
  r.linear("time_embedding.linear_1", "time_embed.0", c.block_out_channels[0], temb);
  r.linear("time_embedding.linear_2", "time_embed.2", temb, temb);
  if (c.text_time_embedding) {
    r.linear("add_embedding.linear_1", "label_emb.0.0", c.projection_class_embeddings_input_dim, temb);
    r.linear("add_embedding.linear_2", "label_emb.0.2", temb, temb);
  }
  r.conv("conv_in", "input_blocks.0.0", c.in_channels, c.block_out_channels[0], 3);

  auto resnet = [&](const std::string& name, const std::string& key, int64_t in, int64_t out) {
    r.norm(name + ".norm1", key + ".in_layers.0", in);
    r.conv(name + ".conv1", key + ".in_layers.2", in, out, 3);
    r.linear(name + ".time_emb_proj", key + ".emb_layers.1", temb, out);
    r.norm(name + ".norm2", key + ".out_layers.0", out);
    r.conv(name + ".conv2", key + ".out_layers.3", out, out, 3);
    if (in != out) r.conv(name + ".conv_shortcut", key + ".skip_connection", in, out, 1);
  };
  // Inside a spatial transformer both layouts use the same names.
  auto transformer = [&](const std::string& name, const std::string& key, int64_t ch, int64_t depth) {
    r.norm(name + ".norm", key + ".norm", ch);
    r.projection(name + ".proj_in", key + ".proj_in", ch, ch);
    for (int64_t b = 0; b < depth; ++b) {
      const std::string n = fmt::format("{}.transformer_blocks.{}", name, b);
      const std::string k = fmt::format("{}.transformer_blocks.{}", key, b);
      for (const char* norm : {".norm1", ".norm2", ".norm3"}) r.norm(n + norm, k + norm, ch);
      for (const char* attn : {".attn1", ".attn2"}) {
        const int64_t kv = std::string(attn) == ".attn1" ? ch : ctx;
        r.linear(n + attn + ".to_q", k + attn + ".to_q", ch, ch, false);
        r.linear(n + attn + ".to_k", k + attn + ".to_k", kv, ch, false);
        r.linear(n + attn + ".to_v", k + attn + ".to_v", kv, ch, false);
        r.linear(n + attn + ".to_out.0", k + attn + ".to_out.0", ch, ch);
      }
      r.linear(n + ".ff.net.0.proj", k + ".ff.net.0.proj", ch, ch * 8);
      r.linear(n + ".ff.net.2", k + ".ff.net.2", ch * 4, ch);
    }
    r.projection(name + ".proj_out", key + ".proj_out", ch, ch);
  };

  int64_t index = 1;  // input_blocks.0 is conv_in
  int64_t out_ch = c.block_out_channels[0];
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t in_ch = out_ch;
    out_ch = c.block_out_channels[i];
    const bool attn = c.down_block_types[i] == "CrossAttnDownBlock2D";
    for (int64_t j = 0; j < c.layers_per_block[i]; ++j, ++index) {
      const std::string key = fmt::format("input_blocks.{}", index);
      resnet(fmt::format("down_blocks.{}.resnets.{}", i, j), key + ".0", j == 0 ? in_ch : out_ch, out_ch);
      if (attn)
        transformer(fmt::format("down_blocks.{}.attentions.{}", i, j), key + ".1", out_ch,
                    c.transformer_layers_per_block[i]);
    }
    if (i + 1 < blocks) {
      r.conv(fmt::format("down_blocks.{}.downsamplers.0.conv", i), fmt::format("input_blocks.{}.0.op", index), out_ch,
             out_ch, 3);
      ++index;
    }
  }

  const int64_t mid = c.block_out_channels.back();
  resnet("mid_block.resnets.0", "middle_block.0", mid, mid);
  transformer("mid_block.attentions.0", "middle_block.1", mid, c.transformer_layers_per_block.back());
  resnet("mid_block.resnets.1", "middle_block.2", mid, mid);

  const std::vector<int64_t> rev(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  index = 0;
  out_ch = rev[0];
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t prev_out = out_ch;
    out_ch = rev[i];
    const int64_t in_ch = rev[std::min(i + 1, blocks - 1)];
    const int64_t down_index = blocks - 1 - i;
    const int64_t layers = c.layers_per_block[down_index] + 1;
    const bool attn = c.up_block_types[i] == "CrossAttnUpBlock2D";
    for (int64_t j = 0; j < layers; ++j, ++index) {
      const std::string key = fmt::format("output_blocks.{}", index);
      const int64_t skip = j == layers - 1 ? in_ch : out_ch;
      const int64_t res_in = j == 0 ? prev_out : out_ch;
      resnet(fmt::format("up_blocks.{}.resnets.{}", i, j), key + ".0", res_in + skip, out_ch);
      if (attn)
        transformer(fmt::format("up_blocks.{}.attentions.{}", i, j), key + ".1", out_ch,
                    c.transformer_layers_per_block[down_index]);
      // The upsampler closes the level's last output block, after its attention if any.
      if (j == layers - 1 && i + 1 < blocks)
        r.conv(fmt::format("up_blocks.{}.upsamplers.0.conv", i), key + (attn ? ".2.conv" : ".1.conv"), out_ch, out_ch,
               3);
    }
  }
  r.norm("conv_norm_out", "out.0", c.block_out_channels[0]);
  r.conv("conv_out", "out.2", c.block_out_channels[0], c.out_channels, 3);
  check_all_used(ckpt, r, kUnet, "unet", [](const std::string&) { return false; });
}

// ---------------------------------------------------------------------------------------------
// VAE: encoder.down.i.block.j / decoder.up.i (counted from the bottom) / mid.block_1, attn_1.

void map_vae(const Checkpoint& ckpt, const VaeConfig& c, ComponentWeights& w) {
  Renamer r(ckpt, w, "vae", kVae);
  const int64_t blocks = static_cast<int64_t>(c.block_out_channels.size());
  const int64_t top = c.block_out_channels.back();
  auto resnet = [&](const std::string& name, const std::string& key, int64_t in, int64_t out) {
    r.norm(name + ".norm1", key + ".norm1", in);
    r.conv(name + ".conv1", key + ".conv1", in, out, 3);
    r.norm(name + ".norm2", key + ".norm2", out);
    r.conv(name + ".conv2", key + ".conv2", out, out, 3);
    if (in != out) r.conv(name + ".conv_shortcut", key + ".nin_shortcut", in, out, 1);
  };
  auto middle = [&](const std::string& side) {
    resnet(side + ".mid_block.resnets.0", side + ".mid.block_1", top, top);
    if (c.mid_block_add_attention) {
      const std::string n = side + ".mid_block.attentions.0", k = side + ".mid.attn_1";
      r.norm(n + ".group_norm", k + ".norm", top);
      r.linear_from_conv(n + ".to_q", k + ".q", top, top);
      r.linear_from_conv(n + ".to_k", k + ".k", top, top);
      r.linear_from_conv(n + ".to_v", k + ".v", top, top);
      r.linear_from_conv(n + ".to_out.0", k + ".proj_out", top, top);
    }
    resnet(side + ".mid_block.resnets.1", side + ".mid.block_2", top, top);
  };

  if (c.use_post_quant_conv) r.conv("post_quant_conv", "post_quant_conv", c.latent_channels, c.latent_channels, 1);
  r.conv("decoder.conv_in", "decoder.conv_in", c.latent_channels, top, 3);
  middle("decoder");
  int64_t out_ch = top;
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t prev = out_ch;
    out_ch = c.block_out_channels[blocks - 1 - i];
    const int64_t level = blocks - 1 - i;
    for (int64_t j = 0; j < c.layers_per_block + 1; ++j)
      resnet(fmt::format("decoder.up_blocks.{}.resnets.{}", i, j), fmt::format("decoder.up.{}.block.{}", level, j),
             j == 0 ? prev : out_ch, out_ch);
    if (i + 1 < blocks)
      r.conv(fmt::format("decoder.up_blocks.{}.upsamplers.0.conv", i),
             fmt::format("decoder.up.{}.upsample.conv", level), out_ch, out_ch, 3);
  }
  r.norm("decoder.conv_norm_out", "decoder.norm_out", c.block_out_channels[0]);
  r.conv("decoder.conv_out", "decoder.conv_out", c.block_out_channels[0], c.out_channels, 3);

  // Decoder-only exports exist; an encoder, when present, must be whole.
  if (ckpt.has_prefix(kVae + "encoder.")) {
    r.conv("encoder.conv_in", "encoder.conv_in", c.in_channels, c.block_out_channels[0], 3);
    out_ch = c.block_out_channels[0];
    for (int64_t i = 0; i < blocks; ++i) {
      const int64_t in_ch = out_ch;
      out_ch = c.block_out_channels[i];
      for (int64_t j = 0; j < c.layers_per_block; ++j)
        resnet(fmt::format("encoder.down_blocks.{}.resnets.{}", i, j), fmt::format("encoder.down.{}.block.{}", i, j),
               j == 0 ? in_ch : out_ch, out_ch);
      if (i + 1 < blocks)
        r.conv(fmt::format("encoder.down_blocks.{}.downsamplers.0.conv", i),
               fmt::format("encoder.down.{}.downsample.conv", i), out_ch, out_ch, 3);
    }
    middle("encoder");
    r.norm("encoder.conv_norm_out", "encoder.norm_out", top);
    r.conv("encoder.conv_out", "encoder.conv_out", top, 2 * c.latent_channels, 3);
    if (c.use_quant_conv) r.conv("quant_conv", "quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1);
  }
  // Training-time extras (a discriminator's "loss.*") are not part of the autoencoder.
  check_all_used(ckpt, r, kVae, "vae", [](const std::string& key) { return key.starts_with("loss."); });
}

// ---------------------------------------------------------------------------------------------
// Text encoders.

// transformers' naming inside the file (SD 1.x, SDXL's first encoder), with or without the
// "text_model." level.
void map_clip(const Checkpoint& ckpt, const ClipTextConfig& c, const std::string& prefix, const std::string& component,
              ComponentWeights& w) {
  const std::string inner = ckpt.has(prefix + "text_model.embeddings.token_embedding.weight") ? "text_model." : "";
  const std::string out = c.projection_dim > 0 ? "text_model." : "";
  Renamer r(ckpt, w, component, prefix + inner);
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  r.tensor(out + "embeddings.token_embedding.weight", "embeddings.token_embedding.weight", {c.vocab_size, d});
  r.tensor(out + "embeddings.position_embedding.weight", "embeddings.position_embedding.weight", {c.max_positions, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string l = fmt::format("encoder.layers.{}.", i);
    r.norm(out + l + "layer_norm1", l + "layer_norm1", d);
    for (const char* p : {"q_proj", "k_proj", "v_proj", "out_proj"})
      r.linear(out + l + "self_attn." + p, l + "self_attn." + p, d, d);
    r.norm(out + l + "layer_norm2", l + "layer_norm2", d);
    r.linear(out + l + "mlp.fc1", l + "mlp.fc1", d, f);
    r.linear(out + l + "mlp.fc2", l + "mlp.fc2", f, d);
  }
  r.norm(out + "final_layer_norm", "final_layer_norm", d);
  if (c.projection_dim > 0) {
    r.set_prefix(prefix);
    r.tensor("text_projection.weight", "text_projection.weight", {c.projection_dim, d});
  }
  const int64_t layers = c.num_layers;
  const bool projection = c.projection_dim > 0;
  check_all_used(ckpt, r, prefix, component, [&](const std::string& key) {
    if (key.ends_with("position_ids") || key == "logit_scale") return true;
    if (!projection && key.starts_with("text_projection")) return true;
    const auto layer = index_after(key, "encoder.layers.");
    return layer && *layer >= layers;  // layers past the config's count are not used
  });
}

// OpenCLIP's naming (SD 2.x, SDXL's second encoder): one packed in_proj for q, k and v, and a
// text_projection applied as x @ P, i.e. the transpose of a linear layer's weight.
void map_open_clip(const Checkpoint& ckpt, const ClipTextConfig& c, const std::string& prefix,
                   const std::string& component, ComponentWeights& w) {
  const std::string out = c.projection_dim > 0 ? "text_model." : "";
  Renamer r(ckpt, w, component, prefix);
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  r.tensor(out + "embeddings.token_embedding.weight", "token_embedding.weight", {c.vocab_size, d});
  r.tensor(out + "embeddings.position_embedding.weight", "positional_embedding", {c.max_positions, d});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string n = fmt::format("{}encoder.layers.{}.", out, i);
    const std::string k = fmt::format("transformer.resblocks.{}.", i);
    r.norm(n + "layer_norm1", k + "ln_1", d);
    const char* qkv[3] = {"q_proj", "k_proj", "v_proj"};
    for (int64_t p = 0; p < 3; ++p) {
      r.rows(n + "self_attn." + qkv[p] + ".weight", k + "attn.in_proj_weight", {3 * d, d}, p * d, (p + 1) * d);
      r.rows(n + "self_attn." + qkv[p] + ".bias", k + "attn.in_proj_bias", {3 * d}, p * d, (p + 1) * d);
    }
    r.linear(n + "self_attn.out_proj", k + "attn.out_proj", d, d);
    r.norm(n + "layer_norm2", k + "ln_2", d);
    r.linear(n + "mlp.fc1", k + "mlp.c_fc", d, f);
    r.linear(n + "mlp.fc2", k + "mlp.c_proj", f, d);
  }
  r.norm(out + "final_layer_norm", "ln_final", d);
  if (c.projection_dim > 0) r.transposed("text_projection.weight", "text_projection", d, c.projection_dim);
  const int64_t layers = c.num_layers;
  const bool projection = c.projection_dim > 0;
  check_all_used(ckpt, r, prefix, component, [&](const std::string& key) {
    if (key == "logit_scale" || key == "attn_mask") return true;
    if (!projection && key == "text_projection") return true;
    // SD 2.x conditions on the penultimate block: the last one is in the file but never used.
    const auto layer = index_after(key, "transformer.resblocks.");
    return layer && *layer >= layers;
  });
}

// ---------------------------------------------------------------------------------------------
// Kind detection and configs inferred from shapes.

CheckpointKind detect_kind(const Checkpoint& ckpt) {
  const std::string& o = ckpt.origin();
  if (!ckpt.has_prefix(kUnet)) {
    if (ckpt.has("conv_in.weight") || ckpt.has_prefix("down_blocks."))
      fail(
          "{}: not a single-file Stable Diffusion checkpoint (no model.diffusion_model.* keys); it looks like one "
          "component of a diffusers folder, so load the folder instead",
          o);
    fail("{}: not a Stable Diffusion checkpoint (no model.diffusion_model.* keys)", o);
  }
  if (!ckpt.has_prefix(kVae))
    fail("{}: key '{}decoder.conv_in.weight' is missing: the checkpoint has no VAE (first_stage_model.*)", o, kVae);
  if (ckpt.has_prefix(kSdxlText2)) {
    if (!ckpt.has_prefix(kSdxlText))
      fail("{}: unknown layout: SDXL's second text encoder ({}*) without the first ({}*)", o, kSdxlText2, kSdxlText);
    return CheckpointKind::Sdxl;
  }
  if (ckpt.has_prefix(kSdxlRefinerText))
    fail("{}: SDXL refiner checkpoints ({}* only) are not supported", o, kSdxlRefinerText);
  if (ckpt.has_prefix(kSd2Text)) return CheckpointKind::Sd2;
  if (ckpt.has_prefix(kSd1Text)) return CheckpointKind::Sd1;
  fail(
      "{}: unknown layout: model.diffusion_model.* but no text encoder (cond_stage_model.transformer.*, "
      "cond_stage_model.model.* or conditioner.embedders.*)",
      o);
}

// Attention heads of the standard configs: SD 1.5 uses 8 everywhere, SD 2.1 and SDXL 64
// channels per head (attention_head_dim [5, 10, 20, 20] and [5, 10, 20]).
int64_t standard_unet_heads(CheckpointKind kind, int64_t channels) {
  if (kind == CheckpointKind::Sd1) return 8;
  return channels % 64 == 0 ? channels / 64 : 1;
}

UNetConfig infer_unet(const Checkpoint& ckpt, CheckpointKind kind, int64_t pooled_dim) {
  const std::string& o = ckpt.origin();
  UNetConfig c;
  const std::string conv_in = kUnet + "input_blocks.0.0.weight";
  if (ckpt.shape(conv_in).size() != 4)
    fail("{}: key '{}' has shape {}; expected a 3x3 convolution", o, conv_in, shape_str(ckpt.shape(conv_in)));
  c.in_channels = ckpt.dim(conv_in, 1);
  struct Level {
    int64_t channels = 0, layers = 0, depth = 1;
    bool attention = false;
  };
  std::vector<Level> levels;
  Level cur;
  for (int64_t index = 1;; ++index) {
    const std::string base = fmt::format("{}input_blocks.{}.", kUnet, index);
    if (ckpt.has(base + "0.op.weight")) {
      if (cur.layers == 0) fail("{}: key '{}0.op.weight': a downsampler with no resnet before it", o, base);
      levels.push_back(cur);
      cur = Level{};
      continue;
    }
    if (!ckpt.has(base + "0.in_layers.0.weight")) break;
    const bool attention = ckpt.has(base + "1.norm.weight");
    if (cur.layers > 0 && attention != cur.attention)
      fail("{}: key '{}1.norm.weight': attention in some resnets of a level but not in others", o, base);
    cur.attention = attention;
    cur.channels = ckpt.dim(base + "0.out_layers.3.weight", 0);
    if (attention) cur.depth = ckpt.count(base + "1.transformer_blocks.", ".norm1.weight");
    ++cur.layers;
  }
  if (cur.layers == 0)
    fail("{}: key '{}input_blocks.1.0.in_layers.0.weight' is missing (no UNet down blocks)", o, kUnet);
  levels.push_back(cur);

  const size_t n = levels.size();
  c.block_out_channels.clear();
  c.down_block_types.clear();
  c.up_block_types.assign(n, "UpBlock2D");
  c.layers_per_block.clear();
  c.transformer_layers_per_block.clear();
  c.attention_heads.clear();
  for (const Level& l : levels) {
    c.block_out_channels.push_back(l.channels);
    c.down_block_types.push_back(l.attention ? "CrossAttnDownBlock2D" : "DownBlock2D");
    c.layers_per_block.push_back(l.layers);
    c.transformer_layers_per_block.push_back(l.depth);
    c.attention_heads.push_back(standard_unet_heads(kind, l.channels));
  }
  // Each up level mirrors a down level with one more resnet; whether it attends is read from
  // its first output block.
  int64_t index = 0;
  for (size_t i = 0; i < n; ++i) {
    if (ckpt.has(fmt::format("{}output_blocks.{}.1.norm.weight", kUnet, index)))
      c.up_block_types[i] = "CrossAttnUpBlock2D";
    index += levels[n - 1 - i].layers + 1;
  }
  const std::string mid_attention = kUnet + "middle_block.1.transformer_blocks.0.attn2.to_k.weight";
  c.cross_attention_dim = ckpt.dim(mid_attention, 1);
  c.out_channels = ckpt.dim(kUnet + "out.2.weight", 0);
  c.sample_size = kind == CheckpointKind::Sdxl ? 128 : kind == CheckpointKind::Sd2 ? 96 : 64;

  const std::string label = kUnet + "label_emb.0.0.weight";
  if (kind == CheckpointKind::Sdxl) {
    // text_time: 6 sinusoidal time ids of addition_time_embed_dim each, then the pooled text.
    c.text_time_embedding = true;
    c.projection_class_embeddings_input_dim = ckpt.dim(label, 1);
    const int64_t times = c.projection_class_embeddings_input_dim - pooled_dim;
    if (times <= 0 || times % 6 != 0)
      fail("{}: key '{}' takes {} inputs, which is not 6 time embeddings plus the {} pooled text features", o, label,
           c.projection_class_embeddings_input_dim, pooled_dim);
    c.addition_time_embed_dim = times / 6;
  } else if (ckpt.has(label)) {
    fail("{}: key '{}': class-conditioned UNets (upscalers, unCLIP) are not supported", o, label);
  }
  return c;
}

VaeConfig infer_vae(const Checkpoint& ckpt, CheckpointKind kind) {
  const std::string& o = ckpt.origin();
  VaeConfig c;
  const int64_t levels = ckpt.count(kVae + "decoder.up.", ".block.0.conv1.weight");
  if (levels == 0) fail("{}: key '{}decoder.up.0.block.0.conv1.weight' is missing (no VAE decoder levels)", o, kVae);
  c.block_out_channels.clear();
  for (int64_t i = 0; i < levels; ++i)
    c.block_out_channels.push_back(ckpt.dim(fmt::format("{}decoder.up.{}.block.0.conv2.weight", kVae, i), 0));
  c.layers_per_block = ckpt.count(kVae + "decoder.up.0.block.", ".conv1.weight") - 1;
  if (c.layers_per_block < 1)
    fail(
        "{}: key '{}decoder.up.0.block.1.conv1.weight' is missing (a VAE decoder level has one more resnet than an "
        "encoder level)",
        o, kVae);
  c.latent_channels = ckpt.dim(kVae + "decoder.conv_in.weight", 1);
  c.out_channels = ckpt.dim(kVae + "decoder.conv_out.weight", 0);
  if (ckpt.has(kVae + "encoder.conv_in.weight")) c.in_channels = ckpt.dim(kVae + "encoder.conv_in.weight", 1);
  c.use_quant_conv = ckpt.has(kVae + "quant_conv.weight");
  c.use_post_quant_conv = ckpt.has(kVae + "post_quant_conv.weight");
  c.mid_block_add_attention = ckpt.has(kVae + "decoder.mid.attn_1.q.weight");
  c.scaling_factor = kind == CheckpointKind::Sdxl ? 0.13025f : 0.18215f;
  c.sample_size = kind == CheckpointKind::Sdxl ? 1024 : kind == CheckpointKind::Sd2 ? 768 : 512;
  return c;
}

int64_t standard_text_heads(int64_t hidden) { return hidden % 64 == 0 ? hidden / 64 : 1; }

ClipTextConfig infer_clip(const Checkpoint& ckpt, const std::string& prefix) {
  const std::string inner = ckpt.has(prefix + "text_model.embeddings.token_embedding.weight") ? "text_model." : "";
  const std::string p = prefix + inner;
  ClipTextConfig c;
  c.vocab_size = ckpt.dim(p + "embeddings.token_embedding.weight", 0);
  c.hidden_size = ckpt.dim(p + "embeddings.token_embedding.weight", 1);
  c.max_positions = ckpt.dim(p + "embeddings.position_embedding.weight", 0);
  c.num_layers = ckpt.count(p + "encoder.layers.", ".layer_norm1.weight");
  if (c.num_layers == 0) fail("{}: key '{}encoder.layers.0.layer_norm1.weight' is missing", ckpt.origin(), p);
  c.intermediate_size = ckpt.dim(p + "encoder.layers.0.mlp.fc1.weight", 0);
  c.num_heads = standard_text_heads(c.hidden_size);
  c.hidden_act = "quick_gelu";
  return c;
}

ClipTextConfig infer_open_clip(const Checkpoint& ckpt, const std::string& prefix, bool drop_last, bool projection) {
  ClipTextConfig c;
  c.vocab_size = ckpt.dim(prefix + "token_embedding.weight", 0);
  c.hidden_size = ckpt.dim(prefix + "token_embedding.weight", 1);
  c.max_positions = ckpt.dim(prefix + "positional_embedding", 0);
  const int64_t blocks = ckpt.count(prefix + "transformer.resblocks.", ".ln_1.weight");
  c.num_layers = blocks - (drop_last ? 1 : 0);
  if (c.num_layers < 1)
    fail("{}: key '{}transformer.resblocks.{}.ln_1.weight' is missing", ckpt.origin(), prefix, blocks);
  c.intermediate_size = ckpt.dim(prefix + "transformer.resblocks.0.mlp.c_fc.weight", 0);
  c.num_heads = standard_text_heads(c.hidden_size);
  c.hidden_act = "gelu";
  if (projection) c.projection_dim = ckpt.dim(prefix + "text_projection", 1);
  return c;
}

SingleFileLayout infer_layout(const Checkpoint& ckpt) {
  SingleFileLayout l;
  l.kind = detect_kind(ckpt);
  switch (l.kind) {
    case CheckpointKind::Sd1:
      l.text = infer_clip(ckpt, kSd1Text);
      break;
    case CheckpointKind::Sd2:
      l.text = infer_open_clip(ckpt, kSd2Text, /*drop_last=*/true, false);
      break;
    case CheckpointKind::Sdxl:
      l.text = infer_clip(ckpt, kSdxlText);
      l.text_2 = infer_open_clip(ckpt, kSdxlText2, false, /*projection=*/true);
      break;
  }
  l.unet = infer_unet(ckpt, l.kind, l.text_2 ? l.text_2->projection_dim : 0);
  l.vae = infer_vae(ckpt, l.kind);
  return l;
}

// The standard configs fix what the shapes cannot tell (head counts, group-norm groups); a
// width they do not divide means a non-standard model, which needs its own config folder.
void check_standard_splits(const Checkpoint& ckpt, const SingleFileLayout& l) {
  const std::string& o = ckpt.origin();
  const char* kind = checkpoint_kind_name(l.kind);
  for (size_t i = 0; i < l.unet.block_out_channels.size(); ++i) {
    const int64_t ch = l.unet.block_out_channels[i];
    const int64_t per_head = l.kind == CheckpointKind::Sd1 ? ch / 8 : 64;
    if (ch % l.unet.attention_heads[i] != 0 || ch / l.unet.attention_heads[i] != per_head ||
        ch % l.unet.norm_num_groups != 0)
      fail(
          "{}: UNet level {} is {} channels wide, which the standard {} config cannot split into its attention "
          "heads and {} norm groups; pass the model's diffusers config folder",
          o, i, ch, kind, l.unet.norm_num_groups);
  }
  for (int64_t ch : l.vae.block_out_channels)
    if (ch % l.vae.norm_num_groups != 0)
      fail(
          "{}: a VAE level is {} channels wide, not a multiple of the standard {} norm groups; pass the model's "
          "diffusers config folder",
          o, ch, l.vae.norm_num_groups);
  for (const ClipTextConfig* t : {&l.text, l.text_2 ? &*l.text_2 : nullptr})
    if (t && t->hidden_size % 64 != 0)
      fail(
          "{}: a text encoder is {} wide, which the standard {} config cannot split into 64-wide attention heads; "
          "pass the model's diffusers config folder",
          o, t->hidden_size, kind);
}

std::optional<int64_t> global_step(const Checkpoint& ckpt) {
  if (!ckpt.has("global_step")) return std::nullopt;
  const Tensor step = ckpt.file()->get("global_step");
  if (step.dtype() != DType::I64 || step.numel() != 1) return std::nullopt;
  return *step.data<int64_t>();
}

ComponentWeights component(const Checkpoint& ckpt, const std::string& name) {
  ComponentWeights w(fmt::format("{} ({})", ckpt.origin(), name));
  w.keep_alive(ckpt.file());
  return w;
}

}  // namespace

nlohmann::json default_scheduler_config(CheckpointKind kind, std::optional<int64_t> global_step) {
  nlohmann::json j = {
      {"beta_start", 0.00085},
      {"beta_end", 0.012},
      {"beta_schedule", "scaled_linear"},
      {"num_train_timesteps", 1000},
      {"steps_offset", 1},
      {"timestep_spacing", "leading"},
      {"trained_betas", nullptr},
      {"prediction_type", "epsilon"},
      {"clip_sample", false},
      {"set_alpha_to_one", false},
      {"sample_max_value", 1.0},
  };
  if (kind == CheckpointKind::Sdxl) {
    j["_class_name"] = "EulerDiscreteScheduler";
    j["interpolation_type"] = "linear";
    j["use_karras_sigmas"] = false;
    j["skip_prk_steps"] = true;
    return j;
  }
  j["_class_name"] = "DDIMScheduler";
  j["clip_sample_range"] = 1.0;
  j["thresholding"] = false;
  j["dynamic_thresholding_ratio"] = 0.995;
  j["rescale_betas_zero_snr"] = false;
  if (kind == CheckpointKind::Sd2) {
    // SD 2.x 768 models predict v; the 512 base model (trained to step 875000) predicts noise.
    // Only a stored global_step tells them apart, as in diffusers.
    j["prediction_type"] = global_step == 875000 ? "epsilon" : "v_prediction";
  }
  return j;
}

const char* checkpoint_kind_name(CheckpointKind kind) {
  switch (kind) {
    case CheckpointKind::Sd1:
      return "sd1";
    case CheckpointKind::Sd2:
      return "sd2";
    case CheckpointKind::Sdxl:
      return "sdxl";
  }
  return "?";
}

SingleFileLayout infer_single_file_layout(const fs::path& file) { return infer_layout(Checkpoint(file)); }

SingleFileCheckpoint load_single_file(const fs::path& file, const std::optional<fs::path>& config_dir) {
  const Checkpoint ckpt(file);
  SingleFileCheckpoint out;
  if (config_dir) {
    out.kind = detect_kind(ckpt);
    const fs::path& dir = *config_dir;
    if (!fs::is_directory(dir)) fail("{}: config folder not found", dir.string());
    out.unet_config = UNetConfig::load(dir / "unet" / "config.json");
    out.vae_config = VaeConfig::load(dir / "vae" / "config.json");
    out.text_config = ClipTextConfig::load(dir / "text_encoder" / "config.json");
    if (out.kind == CheckpointKind::Sdxl) {
      if (!fs::exists(dir / "text_encoder_2" / "config.json"))
        fail("{}: text_encoder_2/config.json not found, but {} is an SDXL checkpoint with two text encoders",
             dir.string(), file.string());
      out.text_config_2 = ClipTextConfig::load(dir / "text_encoder_2" / "config.json");
    }
    const fs::path scheduler = dir / "scheduler" / "scheduler_config.json";
    out.scheduler_config =
        fs::exists(scheduler) ? JsonConfig(scheduler).json() : default_scheduler_config(out.kind, global_step(ckpt));
  } else {
    const SingleFileLayout layout = infer_layout(ckpt);
    check_standard_splits(ckpt, layout);
    out.kind = layout.kind;
    out.unet_config = layout.unet;
    out.vae_config = layout.vae;
    out.text_config = layout.text;
    out.text_config_2 = layout.text_2;
    out.scheduler_config = default_scheduler_config(out.kind, global_step(ckpt));
  }

  out.unet = component(ckpt, "unet");
  map_unet(ckpt, out.unet_config, out.unet);
  out.vae = component(ckpt, "vae");
  map_vae(ckpt, out.vae_config, out.vae);
  out.text_encoder = component(ckpt, "text_encoder");
  switch (out.kind) {
    case CheckpointKind::Sd1:
      map_clip(ckpt, out.text_config, kSd1Text, "text_encoder", out.text_encoder);
      break;
    case CheckpointKind::Sd2:
      map_open_clip(ckpt, out.text_config, kSd2Text, "text_encoder", out.text_encoder);
      break;
    case CheckpointKind::Sdxl:
      map_clip(ckpt, out.text_config, kSdxlText, "text_encoder", out.text_encoder);
      out.text_encoder_2 = component(ckpt, "text_encoder_2");
      map_open_clip(ckpt, *out.text_config_2, kSdxlText2, "text_encoder_2", *out.text_encoder_2);
      break;
  }
  return out;
}

bool looks_like_single_file_checkpoint(const fs::path& path) {
  std::error_code ec;
  if (path.extension() != ".safetensors" || !fs::is_regular_file(path, ec)) return false;
  try {
    const SafetensorsFile file(path);
    for (const auto& entry : file.header().entries)
      if (entry.name.starts_with(kUnet)) return true;
  } catch (const std::exception&) {
  }
  return false;
}

}  // namespace tessera::diffusion
