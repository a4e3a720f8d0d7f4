#pragma once
// AdamW with decoupled weight decay (torch.optim.AdamW's update), the learning-rate schedule
// (linear warmup, then cosine, linear or constant), and global-norm gradient clipping, all over
// the model's flat parameter and gradient buffers.
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "training/dbrx_training_model.h"

namespace tessera::training {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(size_t size, AdamWOptions options) : options_(options), m_(size, 0.0f), v_(size, 0.0f) {}

  // One update at learning rate lr, with the gradients multiplied by grad_scale (clipping folded
  // into the same pass). Parameters whose `decay` is false (norm weights) skip the weight decay.
  void step(std::span<float> values, std::span<const float> grads, const std::vector<Parameter>& params, double lr,
            float grad_scale = 1.0f);
  int64_t steps() const { return steps_; }

  // The moments and the step count, as optimizer.safetensors in a checkpoint folder.
  void save(const std::filesystem::path& file) const;
  void load(const std::filesystem::path& file);

 private:
  AdamWOptions options_;
  std::vector<float> m_, v_;
  int64_t steps_ = 0;
};

// How the learning rate decays after warmup.
enum class LrSchedule { Cosine, Linear, Constant };

// The learning rate for optimizer step `step` (1-based) of `total`: lr * step / warmup during
// warmup, then from lr down to lr * min_ratio at the last step.
double learning_rate(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio, LrSchedule schedule);

// The global L2 norm of the gradients (summed in fixed chunks, so the same on every run).
double grad_norm(std::span<const float> grads);
// The factor that brings a gradient of norm `norm` down to max_norm (1 when it is within, or
// max_norm is 0: no clipping).
float clip_factor(double norm, double max_norm);
// Scales the gradients so that their global L2 norm is at most max_norm (0: no clipping);
// returns the norm before clipping.
double clip_grad_norm(std::span<float> grads, double max_norm);

}  // namespace tessera::training
