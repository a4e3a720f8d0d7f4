// Single-file checkpoints in the original Stable Diffusion layout, against the diffusers
// folders they were written from by tools/golden/make_single_file_golden.py (which also checks
// each file with diffusers' own from_single_file): the renamed weights equal the folder's,
// name for name, and the networks built from them reproduce the reference outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "formats/safetensors.h"
#include "models/diffusion/clip_text_model.h"
#include "models/diffusion/model_config.h"
#include "models/diffusion/single_file.h"
#include "models/diffusion/unet.h"
#include "models/diffusion/vae.h"
#include "diffusion_test_util.h"
#include "test_util.h"

namespace tessera::diffusion {
namespace {

namespace fs = std::filesystem;
using tessera::testing::error_of;
using testing::feature_map;
using testing::ids_of;
using testing::max_diff;

fs::path single_dir() { return tessera::testing::fixtures() / "diffusion_single"; }
fs::path single_file(const std::string& name) { return single_dir() / (name + ".safetensors"); }
// The diffusers folder each file was written from.
fs::path config_dir(const std::string& name) {
  return name == "sd2" ? single_dir() / "sd2" : tessera::testing::fixtures() / "diffusion" / name;
}

fs::path weights_file(const fs::path& dir) {
  for (const char* f : {"diffusion_pytorch_model.safetensors", "model.safetensors"})
    if (fs::exists(dir / f)) return dir / f;
  return {};
}




class SingleFile : public ::testing::TestWithParam<std::string> {
 protected:
  static SafetensorsFile& golden() {
    static SafetensorsFile file(single_dir() / "golden.safetensors");
    return file;
  }
  Tensor g(const std::string& name) const { return golden().get(GetParam() + "." + name); }
  std::vector<std::string> encoders() const {
    std::vector<std::string> out{"text_encoder"};
    if (GetParam() == "sdxl") out.push_back("text_encoder_2");
    return out;
  }
  static const ComponentWeights& part(const SingleFileCheckpoint& c, const std::string& name) {
    if (name == "unet") return c.unet;
    if (name == "vae") return c.vae;
    if (name == "text_encoder") return c.text_encoder;
    return *c.text_encoder_2;
  }
};

TEST_P(SingleFile, EveryWeightEqualsTheDiffusersFolders) {
  const SingleFileCheckpoint ckpt = load_single_file(single_file(GetParam()), config_dir(GetParam()));
  std::vector<std::string> components{"unet", "vae"};
  for (const auto& e : encoders()) components.push_back(e);
  ASSERT_EQ(ckpt.text_encoder_2.has_value(), GetParam() == "sdxl");
  size_t compared = 0;
  for (const auto& name : components) {
    const SafetensorsFile folder(weights_file(config_dir(GetParam()) / name));
    const ComponentWeights& got = part(ckpt, name);
    const std::vector<std::string> want_names = folder.names(), got_names = got.names();
    EXPECT_EQ(std::set<std::string>(got_names.begin(), got_names.end()),
              std::set<std::string>(want_names.begin(), want_names.end()))
        << name;
    for (const auto& w : want_names) {
      if (!got.contains(w)) continue;
      // The single files store f16: the reference is the folder's weight rounded the same way.
      const Tensor want = folder.get(w).to(DType::F16).to(DType::F32);
      const Tensor have = got.get(w, want.shape());
      ASSERT_EQ(0, std::memcmp(have.data<float>(), want.data<float>(), want.nbytes())) << name << " " << w;
      ++compared;
    }
  }
  EXPECT_GT(compared, 300u);
}

TEST_P(SingleFile, ConfigsAndSchedulerComeFromTheConfigFolder) {
  const SingleFileCheckpoint ckpt = load_single_file(single_file(GetParam()), config_dir(GetParam()));
  const fs::path dir = config_dir(GetParam());
  const UNetConfig unet = UNetConfig::load(dir / "unet" / "config.json");
  EXPECT_EQ(ckpt.unet_config.block_out_channels, unet.block_out_channels);
  EXPECT_EQ(ckpt.unet_config.attention_heads, unet.attention_heads);
  EXPECT_EQ(ckpt.vae_config.scaling_factor, VaeConfig::load(dir / "vae" / "config.json").scaling_factor);
  EXPECT_EQ(ckpt.text_config.hidden_act, ClipTextConfig::load(dir / "text_encoder" / "config.json").hidden_act);
  EXPECT_EQ(ckpt.scheduler_config, JsonConfig(dir / "scheduler" / "scheduler_config.json").json());
}

TEST_P(SingleFile, TextEncodersMatchTransformers) {
  const SingleFileCheckpoint ckpt = load_single_file(single_file(GetParam()), config_dir(GetParam()));
  for (size_t e = 0; e < encoders().size(); ++e) {
    const ClipTextModel model = e == 0 ? ClipTextModel(ckpt.text_config, ckpt.text_encoder)
                                       : ClipTextModel(*ckpt.text_config_2, *ckpt.text_encoder_2);
    const std::string p = "te" + std::to_string(e) + ".";
    const ClipTextOutput out = model.encode(ids_of(g(p + "ids")));
    EXPECT_LT(max_diff(out.last_hidden.data<float>(), g(p + "hidden")), 1e-4) << encoders()[e];
    EXPECT_LT(max_diff(out.penultimate.data<float>(), g(p + "penultimate")), 1e-4) << encoders()[e];
    EXPECT_LT(max_diff(out.pooled.data<float>(), g(p + "pooled")), 1e-4) << encoders()[e];
  }
}

TEST_P(SingleFile, UNetMatchesDiffusers) {
  const SingleFileCheckpoint ckpt = load_single_file(single_file(GetParam()), config_dir(GetParam()));
  const UNet unet(ckpt.unet_config, ckpt.unet);
  const Tensor ctx = g("unet.context").contiguous();
  const bool sdxl = GetParam() == "sdxl";
  const Tensor text = sdxl ? g("unet.text_embeds").contiguous() : Tensor();
  const Tensor time_ids = sdxl ? g("unet.time_ids").contiguous() : Tensor();
  const FeatureMap out =
      unet.forward(feature_map(g("unet.latents")), g("unet.t").to_vector()[0], ctx.data<float>(), ctx.dim(0),
                   sdxl ? text.data<float>() : nullptr, sdxl ? time_ids.data<float>() : nullptr);
  ASSERT_EQ(static_cast<int64_t>(out.data.size()), g("unet.out").numel());
  EXPECT_LT(max_diff(out.data.data(), g("unet.out")), 1e-4);
}

TEST_P(SingleFile, VaeDecodesAndEncodesLikeDiffusers) {
  const SingleFileCheckpoint ckpt = load_single_file(single_file(GetParam()), config_dir(GetParam()));
  const Vae vae(ckpt.vae_config, ckpt.vae);
  const FeatureMap decoded = vae.decode(feature_map(g("vae.latents")));
  ASSERT_EQ(static_cast<int64_t>(decoded.data.size()), g("vae.decoded").numel());
  EXPECT_LT(max_diff(decoded.data.data(), g("vae.decoded")), 1e-3);
  ASSERT_TRUE(vae.has_encoder());
  const FeatureMap mean = vae.encode_mean(feature_map(g("vae.image")));
  EXPECT_LT(max_diff(mean.data.data(), g("vae.encoded_mean")), 1e-3);
}

TEST_P(SingleFile, WeightsOutliveTheLoader) {
  ComponentWeights vae("vae");
  {
    SingleFileCheckpoint ckpt = load_single_file(single_file(GetParam()), config_dir(GetParam()));
    vae = std::move(ckpt.vae);
  }
  const SafetensorsFile folder(weights_file(config_dir(GetParam()) / "vae"));
  const Tensor want = folder.get("decoder.conv_in.weight").to(DType::F16).to(DType::F32);
  const Tensor have = vae.get("decoder.conv_in.weight", want.shape());
  EXPECT_EQ(have.to_vector(), want.to_vector());
}

TEST_P(SingleFile, LayoutInferredFromShapesMatchesTheFolder) {
  const SingleFileLayout l = infer_single_file_layout(single_file(GetParam()));
  const fs::path dir = config_dir(GetParam());
  EXPECT_EQ(l.kind, GetParam() == "sd"    ? CheckpointKind::Sd1
                    : GetParam() == "sd2" ? CheckpointKind::Sd2
                                          : CheckpointKind::Sdxl);
  const UNetConfig u = UNetConfig::load(dir / "unet" / "config.json");
  EXPECT_EQ(l.unet.in_channels, u.in_channels);
  EXPECT_EQ(l.unet.out_channels, u.out_channels);
  EXPECT_EQ(l.unet.block_out_channels, u.block_out_channels);
  EXPECT_EQ(l.unet.down_block_types, u.down_block_types);
  EXPECT_EQ(l.unet.up_block_types, u.up_block_types);
  EXPECT_EQ(l.unet.layers_per_block, u.layers_per_block);
  EXPECT_EQ(l.unet.transformer_layers_per_block, u.transformer_layers_per_block);
  EXPECT_EQ(l.unet.cross_attention_dim, u.cross_attention_dim);
  EXPECT_EQ(l.unet.text_time_embedding, u.text_time_embedding);
  EXPECT_EQ(l.unet.addition_time_embed_dim, u.addition_time_embed_dim);
  EXPECT_EQ(l.unet.projection_class_embeddings_input_dim, u.projection_class_embeddings_input_dim);
  const VaeConfig v = VaeConfig::load(dir / "vae" / "config.json");
  EXPECT_EQ(l.vae.block_out_channels, v.block_out_channels);
  EXPECT_EQ(l.vae.layers_per_block, v.layers_per_block);
  EXPECT_EQ(l.vae.latent_channels, v.latent_channels);
  EXPECT_EQ(l.vae.in_channels, v.in_channels);
  EXPECT_EQ(l.vae.out_channels, v.out_channels);
  EXPECT_EQ(l.vae.mid_block_add_attention, v.mid_block_add_attention);
  EXPECT_FLOAT_EQ(l.vae.scaling_factor, GetParam() == "sdxl" ? 0.13025f : 0.18215f);
  ASSERT_EQ(l.text_2.has_value(), GetParam() == "sdxl");
  for (size_t e = 0; e < encoders().size(); ++e) {
    const ClipTextConfig want = ClipTextConfig::load(dir / encoders()[e] / "config.json");
    const ClipTextConfig& got = e == 0 ? l.text : *l.text_2;
    EXPECT_EQ(got.vocab_size, want.vocab_size) << encoders()[e];
    EXPECT_EQ(got.hidden_size, want.hidden_size) << encoders()[e];
    EXPECT_EQ(got.intermediate_size, want.intermediate_size) << encoders()[e];
    EXPECT_EQ(got.num_layers, want.num_layers) << encoders()[e];  // sd2: one resblock fewer than the file
    EXPECT_EQ(got.max_positions, want.max_positions) << encoders()[e];
    EXPECT_EQ(got.projection_dim, want.projection_dim) << encoders()[e];
    EXPECT_EQ(got.hidden_act, want.hidden_act) << encoders()[e];
  }
}

TEST_P(SingleFile, WithoutConfigFolderTinyWidthsAskForOne) {
  // The test models are narrower than any standard config can split into attention heads.
  const std::string err = error_of([&] { load_single_file(single_file(GetParam())); });
  EXPECT_NE(err.find(single_file(GetParam()).string()), std::string::npos) << err;
  EXPECT_NE(err.find("config folder"), std::string::npos) << err;
}

TEST_P(SingleFile, IsRecognisedAsSingleFile) {
  EXPECT_TRUE(looks_like_single_file_checkpoint(single_file(GetParam())));
  EXPECT_FALSE(looks_like_single_file_checkpoint(weights_file(config_dir(GetParam()) / "unet")));
}

INSTANTIATE_TEST_SUITE_P(Pipelines, SingleFile, ::testing::Values("sd", "sdxl", "sd2"));

TEST(SingleFileScheduler, DefaultsFollowDiffusersFromSingleFile) {
  const auto sd1 = default_scheduler_config(CheckpointKind::Sd1);
  EXPECT_EQ(sd1["_class_name"], "DDIMScheduler");
  EXPECT_EQ(sd1["prediction_type"], "epsilon");
  EXPECT_EQ(sd1["beta_schedule"], "scaled_linear");
  EXPECT_DOUBLE_EQ(sd1["beta_start"].get<double>(), 0.00085);
  EXPECT_DOUBLE_EQ(sd1["beta_end"].get<double>(), 0.012);
  EXPECT_EQ(sd1["steps_offset"], 1);
  EXPECT_EQ(sd1["set_alpha_to_one"], false);
  EXPECT_EQ(default_scheduler_config(CheckpointKind::Sd2)["prediction_type"], "v_prediction");
  EXPECT_EQ(default_scheduler_config(CheckpointKind::Sd2, 875000)["prediction_type"], "epsilon");
  const auto xl = default_scheduler_config(CheckpointKind::Sdxl);
  EXPECT_EQ(xl["_class_name"], "EulerDiscreteScheduler");
  EXPECT_EQ(xl["prediction_type"], "epsilon");
  EXPECT_EQ(xl["timestep_spacing"], "leading");
  EXPECT_EQ(checkpoint_kind_name(CheckpointKind::Sd2), std::string("sd2"));
}

// A minimal SD 1.x checkpoint whose widths the standard config can split (32-channel UNet and
// VAE levels, a 64-wide text encoder), written key by key in the original layout: without a
// config folder the kind, the configs and the scheduler come from the file alone.
std::vector<std::pair<std::string, Tensor>> standard_width_sd1() {
  std::vector<std::pair<std::string, Tensor>> t;
  float seed = 0.0f;
  auto add = [&](const std::string& name, Shape shape) {
    std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
    for (auto& x : v) x = 0.05f * std::sin(seed += 0.7f);
    t.emplace_back(name, Tensor::from_vector(v, shape).to(DType::F16));
  };
  auto norm = [&](const std::string& p, int64_t c) {
    add(p + ".weight", {c});
    add(p + ".bias", {c});
  };
  auto linear = [&](const std::string& p, int64_t in, int64_t out) {
    add(p + ".weight", {out, in});
    add(p + ".bias", {out});
  };
  auto conv = [&](const std::string& p, int64_t in, int64_t out, int64_t k) {
    add(p + ".weight", {out, in, k, k});
    add(p + ".bias", {out});
  };
  const std::string u = "model.diffusion_model.";
  auto resnet = [&](const std::string& p, int64_t in, int64_t out) {
    norm(p + ".in_layers.0", in);
    conv(p + ".in_layers.2", in, out, 3);
    linear(p + ".emb_layers.1", 128, out);
    norm(p + ".out_layers.0", out);
    conv(p + ".out_layers.3", out, out, 3);
    if (in != out) conv(p + ".skip_connection", in, out, 1);
  };
  auto transformer = [&](const std::string& p) {
    norm(p + ".norm", 32);
    conv(p + ".proj_in", 32, 32, 1);
    conv(p + ".proj_out", 32, 32, 1);
    const std::string b = p + ".transformer_blocks.0.";
    for (const char* n : {"norm1", "norm2", "norm3"}) norm(b + n, 32);
    for (const char* a : {"attn1.", "attn2."}) {
      const int64_t kv = std::string(a) == "attn1." ? 32 : 64;
      add(b + a + "to_q.weight", {32, 32});
      add(b + a + "to_k.weight", {32, kv});
      add(b + a + "to_v.weight", {32, kv});
      linear(b + a + "to_out.0", 32, 32);
    }
    linear(b + "ff.net.0.proj", 32, 256);
    linear(b + "ff.net.2", 128, 32);
  };
  linear(u + "time_embed.0", 32, 128);
  linear(u + "time_embed.2", 128, 128);
  conv(u + "input_blocks.0.0", 4, 32, 3);
  resnet(u + "input_blocks.1.0", 32, 32);
  transformer(u + "input_blocks.1.1");
  resnet(u + "middle_block.0", 32, 32);
  transformer(u + "middle_block.1");
  resnet(u + "middle_block.2", 32, 32);
  for (const char* o : {"output_blocks.0", "output_blocks.1"}) {
    resnet(u + o + ".0", 64, 32);
    transformer(u + o + ".1");
  }
  norm(u + "out.0", 32);
  conv(u + "out.2", 32, 4, 3);

  const std::string v = "first_stage_model.";
  auto vres = [&](const std::string& p) {
    norm(p + ".norm1", 32);
    conv(p + ".conv1", 32, 32, 3);
    norm(p + ".norm2", 32);
    conv(p + ".conv2", 32, 32, 3);
  };
  for (const std::string side : {"encoder", "decoder"}) {
    vres(v + side + ".mid.block_1");
    vres(v + side + ".mid.block_2");
    norm(v + side + ".mid.attn_1.norm", 32);
    for (const char* q : {".q", ".k", ".v", ".proj_out"}) conv(v + side + ".mid.attn_1" + q, 32, 32, 1);
    norm(v + side + ".norm_out", 32);
  }
  conv(v + "encoder.conv_in", 3, 32, 3);
  vres(v + "encoder.down.0.block.0");
  conv(v + "encoder.conv_out", 32, 8, 3);
  conv(v + "quant_conv", 8, 8, 1);
  conv(v + "post_quant_conv", 4, 4, 1);
  conv(v + "decoder.conv_in", 4, 32, 3);
  vres(v + "decoder.up.0.block.0");
  vres(v + "decoder.up.0.block.1");
  conv(v + "decoder.conv_out", 32, 3, 3);

  const std::string c = "cond_stage_model.transformer.text_model.";
  add(c + "embeddings.token_embedding.weight", {10, 64});
  add(c + "embeddings.position_embedding.weight", {77, 64});
  t.emplace_back(c + "embeddings.position_ids", Tensor::zeros({1, 77}, DType::I64));
  const std::string l = c + "encoder.layers.0.";
  norm(l + "layer_norm1", 64);
  norm(l + "layer_norm2", 64);
  linear(l + "mlp.fc1", 64, 256), linear(l + "mlp.fc2", 256, 64);
  for (const char* p : {"q_proj", "k_proj", "v_proj", "out_proj"}) linear(l + "self_attn." + p, 64, 64);
  norm(c + "final_layer_norm", 64);
  return t;
}

TEST(SingleFileStandardConfig, LoadsWithoutConfigFolder) {
  tessera::testing::TempDir tmp;
  const fs::path file = tmp / "tiny-sd15.safetensors";
  write_safetensors(file, standard_width_sd1());
  ASSERT_TRUE(looks_like_single_file_checkpoint(file));
  const SingleFileCheckpoint ckpt = load_single_file(file);
  EXPECT_EQ(ckpt.kind, CheckpointKind::Sd1);
  EXPECT_EQ(ckpt.unet_config.block_out_channels, std::vector<int64_t>{32});
  EXPECT_EQ(ckpt.unet_config.attention_heads, std::vector<int64_t>{8});
  EXPECT_EQ(ckpt.unet_config.down_block_types, std::vector<std::string>{"CrossAttnDownBlock2D"});
  EXPECT_EQ(ckpt.unet_config.up_block_types, std::vector<std::string>{"CrossAttnUpBlock2D"});
  EXPECT_EQ(ckpt.unet_config.cross_attention_dim, 64);
  EXPECT_EQ(ckpt.vae_config.block_out_channels, std::vector<int64_t>{32});
  EXPECT_FLOAT_EQ(ckpt.vae_config.scaling_factor, 0.18215f);
  EXPECT_EQ(ckpt.text_config.num_heads, 1);
  EXPECT_EQ(ckpt.text_config.vocab_size, 10);
  EXPECT_EQ(ckpt.text_config.hidden_act, "quick_gelu");
  EXPECT_FALSE(ckpt.text_encoder_2.has_value());
  EXPECT_EQ(ckpt.scheduler_config, default_scheduler_config(CheckpointKind::Sd1));
  EXPECT_FALSE(ckpt.text_encoder.contains("embeddings.position_ids"));
  EXPECT_TRUE(ckpt.text_encoder.contains("encoder.layers.0.self_attn.q_proj.weight"));

  // The components build and run.
  const ClipTextModel text(ckpt.text_config, ckpt.text_encoder);
  const ClipTextOutput encoded = text.encode({8, 1, 2, 9});
  const UNet unet(ckpt.unet_config, ckpt.unet);
  const FeatureMap noise = unet.forward(FeatureMap(4, 2, 2), 10.0f, encoded.last_hidden.data<float>(), 4);
  EXPECT_EQ(noise.channels, 4);
  const Vae vae(ckpt.vae_config, ckpt.vae);
  EXPECT_EQ(vae.decode(FeatureMap(4, 2, 3)).width, 3);
  for (float x : noise.data) ASSERT_TRUE(std::isfinite(x));
}

// ---------------------------------------------------------------------------------------------
// Broken inputs: one line naming the file and the key.

class SingleFileErrors : public ::testing::Test {
 protected:
  using Tensors = std::vector<std::pair<std::string, Tensor>>;
  static Tensors read(const std::string& name) {
    SafetensorsFile file(single_file(name));
    Tensors out;
    for (const auto& n : file.names()) out.emplace_back(n, file.get(n).clone());
    return out;
  }
  fs::path write(const Tensors& tensors) const {
    const fs::path path = tmp_ / "model.safetensors";
    write_safetensors(path, tensors);
    return path;
  }
  static void erase(Tensors& t, const std::string& name) {
    const auto before = t.size();
    t.erase(std::remove_if(t.begin(), t.end(), [&](const auto& p) { return p.first == name; }), t.end());
    ASSERT_EQ(t.size() + 1, before) << name;
  }
  static void replace(Tensors& t, const std::string& name, Tensor value) {
    for (auto& p : t)
      if (p.first == name) {
        p.second = std::move(value);
        return;
      }
    FAIL() << name;
  }
  // Loading fails with one line that names the file and each of `parts`.
  void expect_error(const fs::path& file, const std::optional<fs::path>& config,
                    const std::vector<std::string>& parts) const {
    const std::string err = error_of([&] { load_single_file(file, config); });
    ASSERT_FALSE(err.empty());
    EXPECT_EQ(err.find('\n'), std::string::npos) << err;
    EXPECT_NE(err.find(file.string()), std::string::npos) << err;
    for (const auto& p : parts) EXPECT_NE(err.find(p), std::string::npos) << "'" << p << "' not in: " << err;
  }
  tessera::testing::TempDir tmp_;
};

TEST_F(SingleFileErrors, MissingKey) {
  Tensors t = read("sd");
  erase(t, "model.diffusion_model.input_blocks.1.0.in_layers.2.weight");
  expect_error(write(t), config_dir("sd"), {"model.diffusion_model.input_blocks.1.0.in_layers.2.weight", "missing"});
}

TEST_F(SingleFileErrors, MissingKeyWithoutConfigFolder) {
  Tensors t = read("sdxl");
  erase(t, "model.diffusion_model.label_emb.0.0.weight");
  const std::string err = error_of([&] { infer_single_file_layout(write(t)); });
  EXPECT_NE(err.find("model.diffusion_model.label_emb.0.0.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("missing"), std::string::npos) << err;
}

TEST_F(SingleFileErrors, WrongShapes) {
  {
    Tensors t = read("sd");
    replace(t, "first_stage_model.decoder.mid.attn_1.q.weight", Tensor::zeros({16, 15, 1, 1}, DType::F16));
    expect_error(write(t), config_dir("sd"), {"first_stage_model.decoder.mid.attn_1.q.weight", "[16, 15, 1, 1]"});
  }
  {
    Tensors t = read("sdxl");
    const std::string key = "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight";
    replace(t, key, Tensor::zeros({95, 32}, DType::F16));
    expect_error(write(t), config_dir("sdxl"), {key, "[95, 32]", "[96, 32]"});
  }
  {
    Tensors t = read("sd2");
    replace(t, "cond_stage_model.model.positional_embedding", Tensor::zeros({76, 16}, DType::F16));
    expect_error(write(t), config_dir("sd2"), {"cond_stage_model.model.positional_embedding", "[76, 16]"});
  }
}

TEST_F(SingleFileErrors, NonFloatWeight) {
  Tensors t = read("sd");
  replace(t, "model.diffusion_model.out.2.bias", Tensor::zeros({4}, DType::I32));
  expect_error(write(t), config_dir("sd"), {"model.diffusion_model.out.2.bias", "dtype"});
}

TEST_F(SingleFileErrors, KeysTheConfigDoesNotExplain) {
  Tensors t = read("sd");
  t.emplace_back("model.diffusion_model.input_blocks.1.1.transformer_blocks.1.norm1.weight",
                 Tensor::zeros({16}, DType::F16));
  expect_error(write(t), config_dir("sd"),
               {"input_blocks.1.1.transformer_blocks.1.norm1.weight", "not part of the unet"});
}

TEST_F(SingleFileErrors, ConfigFolderOfAnotherModel) {
  // An SDXL file with an SD 1.x folder: no second text encoder config.
  expect_error(single_file("sdxl"), config_dir("sd"), {"text_encoder_2"});
  // An SD 1.x file with the SDXL folder: the UNet's shapes disagree at the first weight.
  expect_error(single_file("sd"), config_dir("sdxl"), {"model.diffusion_model."});
}

TEST_F(SingleFileErrors, NotAStableDiffusionCheckpoint) {
  // A diffusers component file.
  const fs::path unet = weights_file(config_dir("sd") / "unet");
  expect_error(unet, std::nullopt, {"not a single-file Stable Diffusion checkpoint", "diffusers folder"});
  // Some other safetensors file.
  const fs::path other = write({{"encoder.weight", Tensor::zeros({2, 2})}});
  expect_error(other, std::nullopt, {"not a Stable Diffusion checkpoint"});
  EXPECT_FALSE(looks_like_single_file_checkpoint(other));
  // Not safetensors at all, and no file.
  tessera::testing::write_file(tmp_ / "junk.safetensors", "this is not a safetensors file");
  EXPECT_FALSE(error_of([&] { load_single_file(tmp_ / "junk.safetensors"); }).empty());
  EXPECT_FALSE(looks_like_single_file_checkpoint(tmp_ / "junk.safetensors"));
  EXPECT_FALSE(error_of([&] { load_single_file(tmp_ / "absent.safetensors"); }).empty());
  EXPECT_FALSE(looks_like_single_file_checkpoint(tmp_ / "absent.safetensors"));
  EXPECT_FALSE(looks_like_single_file_checkpoint(single_dir() / "golden.json"));
}

TEST_F(SingleFileErrors, UnknownLayouts) {
  Tensors t = read("sd");
  t.erase(std::remove_if(t.begin(), t.end(), [](const auto& p) { return p.first.starts_with("cond_stage_model."); }),
          t.end());
  expect_error(write(t), config_dir("sd"), {"unknown layout", "text encoder"});

  Tensors no_vae = read("sd");
  no_vae.erase(std::remove_if(no_vae.begin(), no_vae.end(),
                              [](const auto& p) { return p.first.starts_with("first_stage_model."); }),
               no_vae.end());
  expect_error(write(no_vae), config_dir("sd"), {"no VAE"});

  // An SDXL refiner: OpenCLIP as the only conditioner.
  Tensors refiner = read("sdxl");
  std::vector<std::pair<std::string, Tensor>> renamed;
  for (auto& [name, tensor] : refiner) {
    if (name.starts_with("conditioner.embedders.0.")) continue;
    std::string n = name;
    if (n.starts_with("conditioner.embedders.1.")) n.replace(0, 24, "conditioner.embedders.0.");
    renamed.emplace_back(n, tensor);
  }
  expect_error(write(renamed), config_dir("sdxl"), {"refiner"});
}

TEST_F(SingleFileErrors, MissingConfigFolder) {
  const std::string err = error_of([&] { load_single_file(single_file("sd"), tmp_ / "nowhere"); });
  EXPECT_NE(err.find("nowhere"), std::string::npos) << err;
}

}  // namespace
}  // namespace tessera::diffusion
