#include "training/image_trainer.h"

#include <fmt/format.h>
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "autograd/ops.h"
#include "core/error.h"
#include "core/files.h"
#include "core/rng.h"
#include "formats/png.h"
#include "models/diffusion/clip_text_model.h"
#include "models/diffusion/component_weights.h"
#include "tokenizers/clip_tokenizer.h"
#include "training/optimizer.h"
#include "training/unet_training_model.h"

namespace tessera::training {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int64_t kTrainTimesteps = 1000;
constexpr double kBetaStart = 1e-4, kBetaEnd = 0.02;  // DDPM's linear schedule, made for pixels
constexpr float kLayerNormEps = 1e-5f;

// One captioned picture, kept as bytes (RGB, HWC) until a batch needs it.
struct Picture {
  std::string file, caption, category;
  std::vector<uint8_t> rgb;
  std::vector<int32_t> ids;  // the caption padded to the tokenizer's length
};

std::vector<Picture> read_pictures(const ImageTrainOptions& o, const ClipTokenizer& tokenizer) {
  const fs::path list = o.data / "captions.jsonl";
  std::ifstream in(list);
  if (!in) fail("{}: cannot read (give --data the folder tools/image_model/make_data.py wrote)", list.string());
  std::vector<Picture> pictures;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto where = [&] { return fmt::format("{}:{}", list.string(), number); };
    json j = json::parse(line, nullptr, false);
    if (!j.is_object() || !j.contains("file") || !j["file"].is_string() || !j.contains("caption") ||
        !j["caption"].is_string())
      fail("{}: expected a JSON object with \"file\" and \"caption\" strings", where());
    Picture p;
    p.file = j["file"].get<std::string>();
    p.caption = j["caption"].get<std::string>();
    p.category = j.contains("category") && j["category"].is_string() ? j["category"].get<std::string>() : "other";
    pictures.push_back(std::move(p));
  }
  if (pictures.empty()) fail("{}: no pictures listed", list.string());
  if (o.limit > 0 && static_cast<int64_t>(pictures.size()) > o.limit) {
    Rng rng(o.seed ^ 0x11u);
    for (size_t i = pictures.size() - 1; i > 0; --i) std::swap(pictures[i], pictures[rng.below(i + 1)]);
    pictures.resize(static_cast<size_t>(o.limit));
    std::stable_sort(pictures.begin(), pictures.end(), [](const Picture& a, const Picture& b) { return a.file < b.file; });
  }
  for (auto& p : pictures) {
    const fs::path file = o.data / p.file;
    const PngImage png = read_png(file);
    if (png.width != o.size || png.height != o.size)
      fail("{}: {}x{} pixels; this training run takes {}x{} (see --size)", file.string(), png.width, png.height,
           o.size, o.size);
    p.rgb.resize(static_cast<size_t>(o.size * o.size * 3));
    for (int64_t i = 0; i < o.size * o.size; ++i)  // RGBA: composed on white, as make_data.py draws
      for (int64_t c = 0; c < 3; ++c) {
        const uint8_t v = png.pixels[i * png.channels + c];
        if (png.channels == 4) {
          const float a = png.pixels[i * 4 + 3] / 255.0f;
          p.rgb[i * 3 + c] = static_cast<uint8_t>(std::lround(v * a + 255.0f * (1.0f - a)));
        } else {
          p.rgb[i * 3 + c] = v;
        }
      }
    p.ids = tokenizer.encode_padded(p.caption, tokenizer.max_length()).ids;
  }
  return pictures;
}

}  // namespace

TextEmbeddingEncoder::TextEmbeddingEncoder(int64_t vocab, int64_t positions, int64_t dim, uint64_t seed)
    : vocab_(vocab), positions_(positions), dim_(dim) {
  const auto add = [this](std::string name, Shape shape, bool decay) {
    Parameter p;
    p.name = std::move(name);
    p.size = static_cast<size_t>(std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>()));
    p.shape = std::move(shape);
    p.offset = size_;
    p.decay = decay;
    size_ += p.size;
    params_.push_back(std::move(p));
  };
  add("embeddings.token_embedding.weight", {vocab, dim}, true);
  add("embeddings.position_embedding.weight", {positions, dim}, true);
  add("final_layer_norm.weight", {dim}, false);
  add("final_layer_norm.bias", {dim}, false);
  values_.assign(size_, 0.0f);
  grads_.assign(size_, 0.0f);
  Rng rng(seed);
  // transformers' CLIP initialisation: embeddings N(0, 0.02) and N(0, 0.01); LayerNorm 1, 0.
  for (size_t i = 0; i < params_[0].size; ++i) values_[i] = static_cast<float>(rng.normal() * 0.02);
  for (size_t i = 0; i < params_[1].size; ++i) values_[params_[1].offset + i] = static_cast<float>(rng.normal() * 0.01);
  std::fill_n(values_.begin() + static_cast<std::ptrdiff_t>(params_[2].offset), dim, 1.0f);
}

TextEmbeddingEncoder TextEmbeddingEncoder::load(const fs::path& dir) {
  const diffusion::ClipTextConfig c = diffusion::ClipTextConfig::load(dir / "config.json");
  if (c.num_layers != 0 || c.projection_dim != 0)
    fail("{}: only a CLIPTextModel without layers or projection can be trained here", dir.string());
  TextEmbeddingEncoder e(c.vocab_size, c.max_positions, c.hidden_size, 0);
  const auto weights = diffusion::ComponentWeights::from_folder(dir);
  for (const auto& p : e.params_) {
    const Tensor t = weights.get(p.name, p.shape);
    std::copy_n(t.data<float>(), p.size, e.values_.data() + p.offset);
  }
  return e;
}

void TextEmbeddingEncoder::forward(const int32_t* ids, int64_t batch, float* context) {
  const int64_t rows = batch * positions_;
  for (int64_t r = 0; r < rows; ++r)
    if (ids[r] < 0 || ids[r] >= vocab_) fail("text encoder: token id {} is outside the vocabulary of {}", ids[r], vocab_);
  ids_.assign(ids, ids + rows);
  x_.resize(static_cast<size_t>(rows * dim_));
  mean_.resize(static_cast<size_t>(rows));
  rstd_.resize(static_cast<size_t>(rows));
  const float* tok = values_.data() + params_[0].offset;
  const float* pos = values_.data() + params_[1].offset;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < dim_; ++i) x_[r * dim_ + i] = tok[ids[r] * dim_ + i] + pos[(r % positions_) * dim_ + i];
  autograd::layer_norm_forward(x_.data(), rows, dim_, values_.data() + params_[2].offset, kLayerNormEps, context,
                               mean_.data(), rstd_.data(), values_.data() + params_[3].offset);
}

void TextEmbeddingEncoder::backward(const float* dcontext) {
  const int64_t rows = static_cast<int64_t>(ids_.size());
  std::vector<float> dx(x_.size(), 0.0f);
  autograd::layer_norm_backward(dcontext, x_.data(), rows, dim_, values_.data() + params_[2].offset, mean_.data(),
                                rstd_.data(), dx.data(), grads_.data() + params_[2].offset);
  float* dbias = grads_.data() + params_[3].offset;
  float* dtok = grads_.data() + params_[0].offset;
  float* dpos = grads_.data() + params_[1].offset;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < dim_; ++i) {
      dbias[i] += dcontext[r * dim_ + i];
      dtok[ids_[r] * dim_ + i] += dx[r * dim_ + i];
      dpos[(r % positions_) * dim_ + i] += dx[r * dim_ + i];
    }
}

void TextEmbeddingEncoder::zero_grad() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

nlohmann::json TextEmbeddingEncoder::config(int64_t bos, int64_t eos, int64_t pad) const {
  return {{"architectures", {"CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"vocab_size", vocab_},
          {"hidden_size", dim_},
          {"intermediate_size", dim_ * 4},
          {"num_hidden_layers", 0},
          {"num_attention_heads", std::max<int64_t>(1, dim_ / 64)},
          {"max_position_embeddings", positions_},
          {"hidden_act", "quick_gelu"},
          {"layer_norm_eps", kLayerNormEps},
          {"attention_dropout", 0.0},
          {"initializer_range", 0.02},
          {"initializer_factor", 1.0},
          {"projection_dim", dim_},
          {"bos_token_id", bos},
          {"eos_token_id", eos},
          {"pad_token_id", pad},
          {"dtype", "float32"}};
}

void TextEmbeddingEncoder::save(const fs::path& dir, int64_t bos, int64_t eos, int64_t pad) const {
  save_model_folder(dir, "model.safetensors", params_, values_, config(bos, eos, pad));
}

namespace {

json unet_config(const ImageTrainOptions& o) {
  json down = json::array(), up = json::array(), heads = json::array();
  const size_t levels = o.channels.size();
  for (size_t i = 0; i < levels; ++i) {
    down.push_back(o.attention[i] ? "CrossAttnDownBlock2D" : "DownBlock2D");
    up.push_back(o.attention[levels - 1 - i] ? "CrossAttnUpBlock2D" : "UpBlock2D");
    heads.push_back(std::max<int64_t>(1, o.channels[i] / o.head_channels));
  }
  return {{"_class_name", "UNet2DConditionModel"},
          {"sample_size", o.size},
          {"in_channels", 3},
          {"out_channels", 3},
          {"block_out_channels", o.channels},
          {"down_block_types", down},
          {"up_block_types", up},
          {"mid_block_type", "UNetMidBlock2DCrossAttn"},
          {"layers_per_block", o.layers_per_block},
          {"attention_head_dim", heads},
          {"cross_attention_dim", o.text_dim},
          {"norm_num_groups", o.norm_groups},
          {"norm_eps", 1e-5},
          {"act_fn", "silu"},
          {"flip_sin_to_cos", true},
          {"freq_shift", 0},
          {"downsample_padding", 1},
          {"transformer_layers_per_block", 1},
          {"use_linear_projection", false}};
}

json scheduler_config(const ImageTrainOptions& o) {
  return {{"_class_name", "DDIMScheduler"},
          {"num_train_timesteps", kTrainTimesteps},
          {"beta_start", kBetaStart},
          {"beta_end", kBetaEnd},
          {"beta_schedule", "linear"},
          {"prediction_type", o.prediction == "v" ? "v_prediction" : "epsilon"},
          {"clip_sample", true},
          {"clip_sample_range", 1.0},
          {"set_alpha_to_one", false},
          {"steps_offset", 0},
          {"timestep_spacing", "trailing"}};
}

void write_json(const fs::path& path, const json& j) { write_file_atomically(path, j.dump(2) + "\n"); }

// The pictures as the UNet sees them: [-1, 1], CHW.
void to_sample(const Picture& p, int64_t size, float* out) {
  const int64_t hw = size * size;
  for (int64_t i = 0; i < hw; ++i)
    for (int64_t c = 0; c < 3; ++c) out[c * hw + i] = p.rgb[i * 3 + c] / 127.5f - 1.0f;
}

std::string duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  return s >= 3600 ? fmt::format("{}h{:02}m", s / 3600, s / 60 % 60) : fmt::format("{}m{:02}s", s / 60, s % 60);
}

void check_options(const ImageTrainOptions& o) {
  if (o.channels.empty() || o.channels.size() != o.attention.size())
    fail("--channels and --attention need one entry per UNet level ({} and {} given)", o.channels.size(),
         o.attention.size());
  if (o.channels.size() > 6) fail("--channels: at most 6 UNet levels");
  for (int64_t c : o.channels)
    if (c < 1) fail("--channels: every level needs a positive number of channels");
  if (o.size < 8 || o.size % (int64_t{1} << (o.channels.size() - 1)) != 0)
    fail("--size {}: must be at least 8 and divisible by 2 per downsampling level", o.size);
  if (o.steps < 1 || o.batch < 1) fail("--steps and --batch must be positive");
  if (o.warmup < 0 || o.warmup >= o.steps) fail("--warmup must be between 0 and --steps - 1");
  if (!(o.lr > 0) || !(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1)) fail("--lr must be positive, --min-lr-ratio in [0, 1]");
  if (o.prediction != "epsilon" && o.prediction != "v") fail("--prediction '{}': epsilon or v", o.prediction);
  if (!(o.caption_dropout >= 0 && o.caption_dropout < 1)) fail("--caption-dropout must be in [0, 1)");
  if (!(o.ema_decay >= 0 && o.ema_decay < 1)) fail("--ema-decay must be in [0, 1)");
  if (o.text_dim < 8 || o.head_channels < 1 || o.layers_per_block < 1 || o.norm_groups < 1)
    fail("--text-dim must be at least 8; --head-channels, --layers-per-block and --norm-groups positive");
  if (o.heldout_per_category < 0 || o.heldout_timesteps < 1 || o.eval_every < 1 || o.log_every < 1)
    fail("--heldout-per-category must not be negative; --eval-every and --log-every must be positive");
}

}  // namespace

void train_image_model(const ImageTrainOptions& o) {
  check_options(o);
  // Every step allocates and frees the same large activation buffers; served from mmap, each
  // would be zeroed page by page by the kernel again (a fifth of the step time). Keep them in
  // the heap and let freed memory be reused.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  const auto seconds = [](Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); };

  const ClipTokenizer tokenizer = ClipTokenizer::load_dir(o.tokenizer);
  std::vector<Picture> pictures = read_pictures(o, tokenizer);
  const int64_t positions = tokenizer.max_length();
  const std::vector<int32_t> empty_ids = tokenizer.encode_padded("", positions).ids;

  // Held out: the first few of each category in a seeded order (at most half of it).
  std::map<std::string, std::vector<size_t>> by_category;
  for (size_t i = 0; i < pictures.size(); ++i) by_category[pictures[i].category].push_back(i);
  std::vector<size_t> heldout, train;
  std::vector<bool> is_heldout(pictures.size(), false);
  Rng split_rng(o.seed ^ 0x5b11u);
  for (auto& [category, members] : by_category) {
    std::vector<size_t> order = members;
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[split_rng.below(i)]);
    const size_t take = std::min<size_t>(static_cast<size_t>(o.heldout_per_category), order.size() / 2);
    for (size_t i = 0; i < take; ++i) is_heldout[order[i]] = true;
  }
  for (size_t i = 0; i < pictures.size(); ++i) (is_heldout[i] ? heldout : train).push_back(i);
  if (train.empty()) fail("{}: no pictures left to train on", o.data.string());

  // Sampling: an image's weight is (images in its category)^-balance, so small categories are
  // seen more often than their share.
  std::map<std::string, int64_t> train_counts;
  for (size_t i : train) ++train_counts[pictures[i].category];
  std::vector<double> cumulative;
  double total_weight = 0;
  for (size_t i : train) {
    total_weight += std::pow(static_cast<double>(train_counts[pictures[i].category]), -o.category_balance);
    cumulative.push_back(total_weight);
  }

  fs::create_directories(o.out / "unet");
  write_json(o.out / "unet" / "config.json", unet_config(o));
  UnetTrainingModel unet(UnetTrainingConfig::load(o.out / "unet" / "config.json"), o.seed);
  TextEmbeddingEncoder text(tokenizer.vocab_size(), positions, o.text_dim, o.seed ^ 0x7e47u);
  AdamWOptions adam;
  adam.beta2 = 0.999;
  adam.weight_decay = o.weight_decay;
  AdamW unet_opt(unet.values().size(), adam), text_opt(text.values().size(), adam);
  std::vector<float> unet_ema(unet.values().begin(), unet.values().end());
  std::vector<float> text_ema(text.values().begin(), text.values().end());

  // DDPM's forward process: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise.
  std::vector<double> alpha_bar(kTrainTimesteps);
  double product = 1.0;
  for (int64_t t = 0; t < kTrainTimesteps; ++t) {
    const double beta = kBetaStart + (kBetaEnd - kBetaStart) * static_cast<double>(t) / (kTrainTimesteps - 1);
    product *= 1.0 - beta;
    alpha_bar[t] = product;
  }

  const int64_t pixels = 3 * o.size * o.size, d = o.text_dim;
  const bool v_target = o.prediction == "v";
  std::vector<float> clean, noisy, noise, target, timesteps, context, dcontext;
  std::vector<int32_t> ids;
  // Fills the buffers for the pictures `which` at timesteps `ts`, noise drawn from `rng`.
  const auto make_batch = [&](const std::vector<size_t>& which, const std::vector<int64_t>& ts,
                              const std::vector<bool>& drop, Rng& rng) {
    const int64_t b = static_cast<int64_t>(which.size());
    clean.resize(static_cast<size_t>(b * pixels));
    noisy.resize(clean.size());
    noise.resize(clean.size());
    target.resize(clean.size());
    timesteps.resize(static_cast<size_t>(b));
    ids.resize(static_cast<size_t>(b * positions));
    for (int64_t i = 0; i < b; ++i) {
      const Picture& p = pictures[which[i]];
      to_sample(p, o.size, clean.data() + i * pixels);
      const double a = std::sqrt(alpha_bar[ts[i]]), s = std::sqrt(1.0 - alpha_bar[ts[i]]);
      for (int64_t j = 0; j < pixels; ++j) {
        const float n = static_cast<float>(rng.normal());
        noise[i * pixels + j] = n;
        noisy[i * pixels + j] = static_cast<float>(a * clean[i * pixels + j] + s * n);
        // v = sqrt(abar) noise - sqrt(1 - abar) x_0 (diffusers' v_prediction)
        target[i * pixels + j] = v_target ? static_cast<float>(a * n - s * clean[i * pixels + j]) : n;
      }
      timesteps[i] = static_cast<float>(ts[i]);
      const auto& src = drop[i] ? empty_ids : p.ids;
      std::copy(src.begin(), src.end(), ids.begin() + i * positions);
    }
    context.resize(static_cast<size_t>(b * positions * d));
    text.forward(ids.data(), b, context.data());
    UnetBatch batch;
    batch.sample = noisy.data();
    batch.timesteps = timesteps.data();
    batch.context = context.data();
    batch.target = target.data();
    batch.batch = b;
    batch.height = batch.width = o.size;
    batch.context_len = positions;
    return batch;
  };

  // Exchanges the trained weights with their average (twice: back as they were), for evaluating
  // and saving the average.
  const auto swap_average = [&] {
    std::swap_ranges(unet_ema.begin(), unet_ema.end(), unet.values().begin());
    std::swap_ranges(text_ema.begin(), text_ema.end(), text.values().begin());
  };

  // Held-out diffusion loss of the averaged weights: every held-out picture at the same spread of
  // timesteps with the same seeded noise on every evaluation; the mean and one per timestep.
  const auto evaluate = [&](json& per_timestep) {
    swap_average();
    Rng rng(o.seed ^ 0xe7a1u);
    double sum = 0;
    per_timestep = json::object();
    for (int64_t k = 0; k < o.heldout_timesteps; ++k) {
      const int64_t t = (2 * k + 1) * kTrainTimesteps / (2 * o.heldout_timesteps);
      double at_t = 0;
      for (size_t start = 0; start < heldout.size(); start += static_cast<size_t>(o.batch)) {
        const size_t end = std::min(heldout.size(), start + static_cast<size_t>(o.batch));
        std::vector<size_t> which(heldout.begin() + static_cast<std::ptrdiff_t>(start),
                                  heldout.begin() + static_cast<std::ptrdiff_t>(end));
        const UnetBatch batch = make_batch(which, std::vector<int64_t>(which.size(), t),
                                           std::vector<bool>(which.size(), false), rng);
        at_t += unet.loss(batch, false) * static_cast<double>(which.size());
      }
      at_t /= static_cast<double>(heldout.size());
      per_timestep[std::to_string(t)] = at_t;
      sum += at_t;
    }
    swap_average();
    return sum / static_cast<double>(o.heldout_timesteps);
  };

  const auto save = [&] {
    swap_average();
    unet.save(o.out / "unet");
    text.save(o.out / "text_encoder", tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id());
    swap_average();
  };

  // The folder around the weights, written first so a stopped run still leaves a loadable model.
  fs::create_directories(o.out / "tokenizer");
  fs::create_directories(o.out / "scheduler");
  for (const auto& entry : fs::directory_iterator(o.tokenizer))
    if (entry.is_regular_file()) fs::copy_file(entry.path(), o.out / "tokenizer" / entry.path().filename(),
                                               fs::copy_options::overwrite_existing);
  write_json(o.out / "scheduler" / "scheduler_config.json", scheduler_config(o));
  write_json(o.out / "model_index.json", {{"_class_name", "StableDiffusionPipeline"},
                                          {"unet", {"diffusers", "UNet2DConditionModel"}},
                                          {"text_encoder", {"transformers", "CLIPTextModel"}},
                                          {"tokenizer", {"transformers", "CLIPTokenizer"}},
                                          {"scheduler", {"diffusers", "DDIMScheduler"}},
                                          {"vae", {nullptr, nullptr}},
                                          {"safety_checker", {nullptr, nullptr}},
                                          {"feature_extractor", {nullptr, nullptr}},
                                          {"requires_safety_checker", false}});
  {
    std::string lines;
    for (size_t i : heldout)
      lines += json({{"file", pictures[i].file}, {"caption", pictures[i].caption}, {"category", pictures[i].category}})
                   .dump() +
               "\n";
    write_file_atomically(o.out / "heldout.jsonl", lines);
  }
  std::ofstream log(o.out / "train_log.jsonl", std::ios::trunc);

  int64_t unet_params = 0;
  for (const auto& p : unet.parameters()) unet_params += static_cast<int64_t>(p.size);
  fmt::print(stderr, "{} pictures ({} held out, {} categories), read in {:.1f} s; UNet {:.2f}M parameters, text "
             "encoder {:.2f}M\n",
             pictures.size(), heldout.size(), by_category.size(), seconds(started), unet_params / 1e6,
             text.values().size() / 1e6);

  json history = json::array();
  json per_timestep;
  const double first_heldout = heldout.empty() ? NAN : evaluate(per_timestep);
  if (!heldout.empty()) {
    fmt::print(stderr, "step 0: held-out loss {:.4f}\n", first_heldout);
    history.push_back({{"step", 0}, {"heldout_loss", first_heldout}, {"per_timestep", per_timestep}});
    log << json({{"step", 0}, {"heldout_loss", first_heldout}}).dump() << "\n" << std::flush;
  }

  Rng rng(o.seed);
  const auto train_started = Clock::now();
  double loss_sum = 0, first_loss = NAN, last_loss = NAN;
  int64_t loss_count = 0;
  for (int64_t step = 1; step <= o.steps; ++step) {
    std::vector<size_t> which(static_cast<size_t>(o.batch));
    std::vector<int64_t> ts(which.size());
    std::vector<bool> drop(which.size());
    for (size_t i = 0; i < which.size(); ++i) {
      const double r = rng.uniform() * total_weight;
      which[i] = train[static_cast<size_t>(std::upper_bound(cumulative.begin(), cumulative.end(), r) -
                                           cumulative.begin()) %
                       train.size()];
      ts[i] = static_cast<int64_t>(rng.below(kTrainTimesteps));
      drop[i] = rng.uniform() < o.caption_dropout;
    }
    const UnetBatch batch = make_batch(which, ts, drop, rng);
    dcontext.assign(context.size(), 0.0f);
    const double loss = unet.loss(batch, true, 1.0f, dcontext.data());
    if (!std::isfinite(loss)) fail("step {}: the loss is not finite ({}); try a lower --lr", step, loss);
    text.backward(dcontext.data());

    const double norm = std::hypot(grad_norm(unet.grads()), grad_norm(text.grads()));
    const float clip = clip_factor(norm, o.max_grad_norm);
    const double lr = learning_rate(step, o.steps, o.warmup, o.lr, o.min_lr_ratio, LrSchedule::Cosine);
    unet_opt.step(unet.values(), unet.grads(), unet.parameters(), lr, clip);
    text_opt.step(text.values(), text.grads(), text.parameters(), lr, clip);
    unet.zero_grad();
    text.zero_grad();
    const float decay = static_cast<float>(std::min(o.ema_decay, (1.0 + step) / (10.0 + step)));
    for (size_t i = 0; i < unet_ema.size(); ++i) unet_ema[i] = decay * unet_ema[i] + (1 - decay) * unet.values()[i];
    for (size_t i = 0; i < text_ema.size(); ++i) text_ema[i] = decay * text_ema[i] + (1 - decay) * text.values()[i];

    loss_sum += loss;
    ++loss_count;
    if (step % o.log_every == 0 || step == o.steps) {
      const double mean = loss_sum / static_cast<double>(loss_count);
      if (std::isnan(first_loss)) first_loss = mean;
      last_loss = mean;
      const double elapsed = seconds(train_started);
      const double rate = static_cast<double>(step * o.batch) / elapsed;
      fmt::print(stderr, "step {}/{}: loss {:.4f}, lr {:.2e}, grad norm {:.3f}, {:.1f} images/s, {} left\n", step,
                 o.steps, mean, lr, norm, rate, duration(elapsed / static_cast<double>(step) *
                                                         static_cast<double>(o.steps - step)));
      log << json({{"step", step}, {"loss", mean}, {"lr", lr}, {"grad_norm", norm}, {"seconds", elapsed}}).dump()
          << "\n"
          << std::flush;
      loss_sum = 0;
      loss_count = 0;
    }
    if (step % o.eval_every == 0 || step == o.steps) {
      if (!heldout.empty()) {
        const double h = evaluate(per_timestep);
        fmt::print(stderr, "step {}: held-out loss {:.4f}\n", step, h);
        history.push_back({{"step", step}, {"heldout_loss", h}, {"per_timestep", per_timestep}});
        log << json({{"step", step}, {"heldout_loss", h}}).dump() << "\n" << std::flush;
      }
      save();
    }
  }

  json categories = json::object();
  for (const auto& [category, members] : by_category)
    categories[category] = {{"images", members.size()}, {"trained", train_counts[category]}};
  json options = {{"data", o.data.string()},
                  {"size", o.size},
                  {"channels", o.channels},
                  {"attention", o.attention},
                  {"layers_per_block", o.layers_per_block},
                  {"head_channels", o.head_channels},
                  {"norm_groups", o.norm_groups},
                  {"text_dim", o.text_dim},
                  {"steps", o.steps},
                  {"batch", o.batch},
                  {"warmup", o.warmup},
                  {"lr", o.lr},
                  {"min_lr_ratio", o.min_lr_ratio},
                  {"weight_decay", o.weight_decay},
                  {"max_grad_norm", o.max_grad_norm},
                  {"caption_dropout", o.caption_dropout},
                  {"prediction", o.prediction},
                  {"ema_decay", o.ema_decay},
                  {"category_balance", o.category_balance},
                  {"heldout_per_category", o.heldout_per_category},
                  {"seed", o.seed},
                  {"limit", o.limit}};
  write_json(o.out / "training.json",
             {{"options", options},
              {"pictures", pictures.size()},
              {"heldout", heldout.size()},
              {"categories", categories},
              {"unet_parameters", unet_params},
              {"text_encoder_parameters", text.values().size()},
              {"train_seconds", seconds(train_started)},
              {"first_logged_loss", first_loss},
              {"last_logged_loss", last_loss},
              {"heldout_history", history}});
  fmt::print(stderr, "wrote {} ({} in all)\n", o.out.string(), duration(seconds(started)));
}

}  // namespace tessera::training
