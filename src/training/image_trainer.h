#pragma once
// Trains a small text-to-image diffusion model from captioned pictures (the folder
// tools/image_model/make_data.py writes: captions.jsonl and images/*.png, all one square size)
// and writes it as a diffusers pipeline folder that DiffusionPipeline::load serves:
//
//   tokenizer/      the CLIP tokenizer given (copied)
//   text_encoder/   a CLIPTextModel without transformer layers: token + position embeddings and
//                   the final LayerNorm, trained with the UNet through its cross-attention
//   unet/           a UNet2DConditionModel working on the RGB pixels (no VAE), predicting the
//                   noise (epsilon) or v of DDPM's linear beta schedule
//   scheduler/      DDIM over the same schedule, clipping the predicted image to [-1, 1]
//   model_index.json (vae: [null, null]), training.json (settings, data, timings, held-out
//   losses) and train_log.jsonl (one line per logged step and per evaluation)
//
// A few images per category are held out: the held-out diffusion loss (at fixed timesteps and
// seeded noise, so evaluations compare) is measured on them and their captions are listed in
// heldout.jsonl. The shipped weights are an exponential moving average of the trained ones.
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "training/dbrx_training_model.h"  // Parameter

namespace tessera::training {

// The text encoder trained with the UNet: transformers' CLIPTextModel with no transformer
// layers, that is token and position embeddings and the final LayerNorm. Each token's state
// depends on the token and its position only; the UNet's cross-attention does the mixing.
class TextEmbeddingEncoder {
 public:
  // transformers' initialisation, seeded: embeddings N(0, 0.02) and N(0, 0.01), LayerNorm 1 and 0.
  TextEmbeddingEncoder(int64_t vocab, int64_t positions, int64_t dim, uint64_t seed);
  // A text_encoder/ folder of such a model (num_hidden_layers 0, no projection).
  static TextEmbeddingEncoder load(const std::filesystem::path& dir);
  // config.json and model.safetensors (f32), loadable by transformers and ClipTextModel.
  void save(const std::filesystem::path& dir, int64_t bos, int64_t eos, int64_t pad) const;

  // context[b, t, :] = LayerNorm(token[ids[b, t]] + position[t]), for batch rows of positions()
  // ids each. Remembers what backward needs.
  void forward(const int32_t* ids, int64_t batch, float* context);
  // Adds the parameters' gradients for the last forward, given d loss / d context.
  void backward(const float* dcontext);
  void zero_grad();

  int64_t positions() const { return positions_; }
  int64_t dim() const { return dim_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  std::span<float> values() { return values_; }
  std::span<float> grads() { return grads_; }
  std::span<const float> grads() const { return grads_; }

 private:
  nlohmann::json config(int64_t bos, int64_t eos, int64_t pad) const;

  int64_t vocab_, positions_, dim_;
  size_t size_ = 0;
  std::vector<Parameter> params_;
  std::vector<float> values_, grads_;
  std::vector<int32_t> ids_;
  std::vector<float> x_, mean_, rstd_;
};

struct ImageTrainOptions {
  std::filesystem::path data, tokenizer, out;
  int64_t size = 64;                        // image side, pixels
  std::vector<int64_t> channels{32, 64, 128};  // UNet block_out_channels
  std::vector<bool> attention{false, true, true};  // cross-attention blocks, per level
  int64_t layers_per_block = 1;
  int64_t head_channels = 32;  // attention heads = channels / head_channels
  int64_t norm_groups = 8;
  int64_t text_dim = 128;      // text encoder width = the UNet's cross_attention_dim
  int64_t steps = 3000, batch = 16, warmup = 200;
  double lr = 5e-4, min_lr_ratio = 0.1, weight_decay = 0.01, max_grad_norm = 1.0;
  std::string prediction = "epsilon";  // what the UNet predicts: "epsilon" (the noise) or "v"
  double caption_dropout = 0.1;  // share of captions replaced by "" (for classifier-free guidance)
  double ema_decay = 0.999;
  double category_balance = 0.5;  // sampling weight of an image: (images in its category)^-this
  int64_t heldout_per_category = 10, heldout_timesteps = 4;
  int64_t eval_every = 500, log_every = 25;
  uint64_t seed = 0;
  int64_t limit = 0;  // use at most this many images (0: all), a seeded sample
};

// Runs the training; progress goes to stderr. Fails with one line on bad data or options.
void train_image_model(const ImageTrainOptions& options);

}  // namespace tessera::training
