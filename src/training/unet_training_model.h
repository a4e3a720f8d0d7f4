#pragma once
// A UNet2DConditionModel that can be trained: f32 weights in one flat buffer with a gradient
// buffer of the same layout (as DbrxTrainingModel), and a forward pass over a batch of images
// that records its backward on a tape. Parameter names and shapes are diffusers' state dict, so a
// saved folder loads in diffusers and in the inference UNet (diffusion::UNet::load) unchanged.
//
// One step computes, as diffusers' UNet2DConditionModel in training:
//   pred = unet(noisy sample, timesteps, text context);  loss = mean((pred - target)^2)
// and its backward adds scale * d loss / d parameter into grads() (and, when asked, the gradient
// of the context, for training a text encoder through it).
//
// The supported layout is the Stable-Diffusion 1.x/2.x one: CrossAttnDownBlock2D / DownBlock2D,
// UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D / UpBlock2D, 1x1-convolution or linear
// projections in the transformers, no added (SDXL) or class embeddings. Any other option is
// refused with one line naming the config field.
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "models/diffusion/unet.h"
#include "training/dbrx_training_model.h"  // Parameter

namespace tessera::training {

struct UnetTrainingConfig {
  diffusion::UNetConfig unet;
  // diffusers' use_linear_projection: proj_in/proj_out stored as linear [C, C] weights rather
  // than 1x1 convolutions [C, C, 1, 1]. The function is the same, only the shapes differ.
  bool linear_projection = false;

  // Reads a diffusers unet/config.json, refusing what the training model does not implement.
  static UnetTrainingConfig load(const std::filesystem::path& config_json);
  // Fails (one line naming the field) on a layout the training model does not implement.
  void validate(const std::string& origin) const;
};

// One micro-batch: `batch` noisy latents [batch, in_channels, height, width], their timesteps
// [batch], the text encoder's states [batch, context_len, cross_attention_dim] and the target
// the prediction is regressed on (the noise, or v), shaped as the sample.
struct UnetBatch {
  const float* sample = nullptr;
  const float* timesteps = nullptr;
  const float* context = nullptr;
  const float* target = nullptr;
  int64_t batch = 0, height = 0, width = 0, context_len = 0;
};

class UnetTrainingModel {
 public:
  // Weights from a normal(0, init_std), norm weights 1 and biases 0, seeded.
  UnetTrainingModel(UnetTrainingConfig config, uint64_t seed, float init_std = 0.02f);
  // A diffusers unet folder (config.json and diffusion_pytorch_model.safetensors in f32, bf16 or
  // f16, or what else diffusion::ComponentWeights reads).
  static UnetTrainingModel load(const std::filesystem::path& dir);
  // config.json and diffusion_pytorch_model.safetensors (f32), each written atomically.
  void save(const std::filesystem::path& dir) const;

  const UnetTrainingConfig& config() const { return config_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  const Parameter& parameter(const std::string& name) const;
  std::span<float> values() { return values_; }
  std::span<const float> values() const { return values_; }
  std::span<float> grads() { return grads_; }
  std::span<const float> grads() const { return grads_; }
  void zero_grad();

  // The mean squared error of the prediction against batch.target. With backward, adds
  // loss_scale * its gradient into grads() and, when dcontext is given, into dcontext (shaped as
  // batch.context). With pred, the prediction is copied there ([batch, out_channels, h, w]).
  double loss(const UnetBatch& batch, bool backward, float loss_scale = 1.0f, float* dcontext = nullptr,
              float* pred = nullptr);
  // The prediction alone, no gradients: [batch, out_channels, h, w] (batch.target is not read).
  std::vector<float> predict(const UnetBatch& batch);

 private:
  struct Unset {};  // weights left at zero, for load()
  UnetTrainingModel(UnetTrainingConfig config, Unset);
  void layout();
  double run(const UnetBatch& batch, bool backward, float loss_scale, float* dcontext, float* pred);

  UnetTrainingConfig config_;
  std::vector<Parameter> params_;
  std::vector<float> values_, grads_;
};

}  // namespace tessera::training
