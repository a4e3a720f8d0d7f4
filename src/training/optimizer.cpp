#include "training/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>
#include <numbers>

#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/safetensors.h"

namespace tessera::training {

void AdamW::step(std::span<float> values, std::span<const float> grads, const std::vector<Parameter>& params,
                 double lr, float grad_scale) {
  if (values.size() != m_.size() || grads.size() != m_.size()) fail("optimizer state does not fit the model");
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const float bias1 = static_cast<float>(1.0 - std::pow(b1, static_cast<double>(steps_)));
  const float bias2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(b2, static_cast<double>(steps_))));
  const float step_size = static_cast<float>(lr) / bias1;
  const float eps = static_cast<float>(options_.eps);
  const float fb1 = static_cast<float>(b1), fb2 = static_cast<float>(b2);
  for (const auto& p : params) {
    const float decay = p.decay ? static_cast<float>(1.0 - lr * options_.weight_decay) : 1.0f;
    parallel_for(p.size, 1 << 14, [&](size_t begin, size_t end) {
      float* x = values.data() + p.offset;
      const float* g = grads.data() + p.offset;
      float* m = m_.data() + p.offset;
      float* v = v_.data() + p.offset;
      for (size_t i = begin; i < end; ++i) {
        const float gi = g[i] * grad_scale;
        m[i] = fb1 * m[i] + (1.0f - fb1) * gi;
        v[i] = fb2 * v[i] + (1.0f - fb2) * gi * gi;
        x[i] *= decay;
        x[i] -= step_size * m[i] / (std::sqrt(v[i]) / bias2_sqrt + eps);
      }
    });
  }
}

void AdamW::save(const std::filesystem::path& file) const {
  auto as_tensor = [](const std::vector<float>& v) {
    Tensor t = Tensor::empty({static_cast<int64_t>(v.size())});
    std::copy(v.begin(), v.end(), t.data<float>());
    return t;
  };
  write_safetensors(file, {{"exp_avg", as_tensor(m_)}, {"exp_avg_sq", as_tensor(v_)}},
                    {{"step", std::to_string(steps_)}});
}

void AdamW::load(const std::filesystem::path& file) {
  SafetensorsFile f(file);
  for (auto [name, target] : {std::pair{"exp_avg", &m_}, std::pair{"exp_avg_sq", &v_}}) {
    if (!f.contains(name)) fail("{}: no tensor '{}'", file.string(), name);
    const Tensor t = f.get(name);
    if (t.dtype() != DType::F32 || t.numel() != static_cast<int64_t>(target->size()))
      fail("{}: '{}' does not fit the model ({} values, expected {})", file.string(), name, t.numel(), target->size());
    std::copy_n(t.data<float>(), target->size(), target->begin());
  }
  const auto& meta = f.header().metadata;
  auto it = meta.find("step");
  if (it == meta.end()) fail("{}: no step count in its metadata", file.string());
  try {
    steps_ = std::stoll(it->second);
  } catch (const std::exception&) {
    fail("{}: bad step count '{}'", file.string(), it->second);
  }
}

double learning_rate(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio, LrSchedule schedule) {
  if (warmup > 0 && step <= warmup) return lr * static_cast<double>(step) / static_cast<double>(warmup);
  if (schedule == LrSchedule::Constant || total <= warmup) return lr;
  const double progress =
      std::clamp(static_cast<double>(step - warmup) / static_cast<double>(total - warmup), 0.0, 1.0);
  const double floor = lr * min_ratio;
  if (schedule == LrSchedule::Linear) return lr - (lr - floor) * progress;
  return floor + (lr - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

double grad_norm(std::span<const float> grads) {
  constexpr size_t kChunk = 1 << 16;
  const size_t chunks = (grads.size() + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
  parallel_for(chunks, 1, [&](size_t begin, size_t end) {
    for (size_t c = begin; c < end; ++c) {
      double sum = 0;
      const size_t stop = std::min(grads.size(), (c + 1) * kChunk);
      for (size_t i = c * kChunk; i < stop; ++i) sum += static_cast<double>(grads[i]) * grads[i];
      partial[c] = sum;
    }
  });
  double sum = 0;
  for (double p : partial) sum += p;
  return std::sqrt(sum);
}

float clip_factor(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm ? static_cast<float>(max_norm / (norm + 1e-6)) : 1.0f;
}

double clip_grad_norm(std::span<float> grads, double max_norm) {
  const double norm = grad_norm(grads);
  const float scale = clip_factor(norm, max_norm);
  if (scale != 1.0f)
    parallel_for(grads.size(), 1 << 16, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) grads[i] *= scale;
    });
  return norm;
}

}  // namespace tessera::training
