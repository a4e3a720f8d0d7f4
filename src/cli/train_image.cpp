// tessera train-image: trains a small pixel-space text-to-image model from captioned pictures
// and writes a diffusers pipeline folder that `tessera image` and `tessera serve` load.
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "training/image_trainer.h"

namespace tessera::cli {

namespace {

std::vector<int64_t> parse_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      fail("{} '{}': expected comma-separated integers, e.g. 32,64,128", option, text);
    }
  }
  if (out.empty()) fail("{}: empty list", option);
  return out;
}

}  // namespace

void register_train_image(CLI::App& app) {
  struct Options {
    training::ImageTrainOptions train;
    std::string data, tokenizer, out, channels = "32,64,128", attention = "0,1,1";
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "train-image", "Train a small pixel-space text-to-image model from captioned pictures (tools/image_model)");
  auto& t = o->train;
  cmd->add_option("--data", o->data, "Folder with captions.jsonl and the pictures it names")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "CLIP tokenizer folder (vocab.json, merges.txt)")->required();
  cmd->add_option("-o,--output", o->out, "Pipeline folder to write")->required();
  cmd->add_option("--size", t.size, "Picture side in pixels (all pictures must have it)")->capture_default_str();
  cmd->add_option("--channels", o->channels, "UNet channels per level")->capture_default_str();
  cmd->add_option("--attention", o->attention, "Cross-attention per level (1 or 0)")->capture_default_str();
  cmd->add_option("--layers-per-block", t.layers_per_block, "Resnets per UNet level")->capture_default_str();
  cmd->add_option("--head-channels", t.head_channels, "Channels per attention head")->capture_default_str();
  cmd->add_option("--norm-groups", t.norm_groups, "GroupNorm groups")->capture_default_str();
  cmd->add_option("--text-dim", t.text_dim, "Text encoder width (the UNet's cross_attention_dim)")->capture_default_str();
  cmd->add_option("--steps", t.steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--batch", t.batch, "Pictures per step")->capture_default_str();
  cmd->add_option("--warmup", t.warmup, "Linear warmup steps, then cosine decay")->capture_default_str();
  cmd->add_option("--lr", t.lr, "Peak learning rate (AdamW)")->capture_default_str();
  cmd->add_option("--min-lr-ratio", t.min_lr_ratio, "Final learning rate as a share of --lr")->capture_default_str();
  cmd->add_option("--weight-decay", t.weight_decay, "AdamW weight decay")->capture_default_str();
  cmd->add_option("--max-grad-norm", t.max_grad_norm, "Gradient clipping (0: none)")->capture_default_str();
  cmd->add_option("--prediction", t.prediction, "What the UNet predicts: epsilon (the noise) or v")
      ->capture_default_str();
  cmd->add_option("--caption-dropout", t.caption_dropout, "Share of captions trained as empty (for guidance)")
      ->capture_default_str();
  cmd->add_option("--ema-decay", t.ema_decay, "Decay of the weight average that is saved")->capture_default_str();
  cmd->add_option("--category-balance", t.category_balance,
                  "Sampling weight (images in the category)^-this; 0: uniform")->capture_default_str();
  cmd->add_option("--heldout-per-category", t.heldout_per_category, "Pictures held out per category")
      ->capture_default_str();
  cmd->add_option("--heldout-timesteps", t.heldout_timesteps, "Timesteps the held-out loss is measured at")
      ->capture_default_str();
  cmd->add_option("--eval-every", t.eval_every, "Steps between held-out evaluations and saves")->capture_default_str();
  cmd->add_option("--log-every", t.log_every, "Steps between progress lines")->capture_default_str();
  cmd->add_option("--seed", t.seed, "Seed of initialisation, sampling and noise")->capture_default_str();
  cmd->add_option("--limit", t.limit, "Use at most this many pictures (0: all)")->capture_default_str();
  cmd->callback([o] {
    auto& t = o->train;
    t.data = o->data;
    t.tokenizer = o->tokenizer;
    t.out = o->out;
    t.channels = parse_list(o->channels, "--channels");
    const auto attention = parse_list(o->attention, "--attention");
    t.attention.assign(attention.begin(), attention.end());
    for (int64_t a : attention)
      if (a != 0 && a != 1) fail("--attention '{}': each entry is 1 or 0", o->attention);
    training::train_image_model(t);
  });
}

}  // namespace tessera::cli
