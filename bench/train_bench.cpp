// Training throughput of the DBRX training engine: full optimizer steps (forward, backward,
// clipping, AdamW) on random tokens, for bench/train_vs_torch.py to compare with PyTorch.
//   build/train_bench --config CONFIG.json [--threads N] [--batch B] [--seq T] [--steps S] [--warmup W]
// Prints one JSON line: {"tokens_per_second": ..., "seconds_per_step": [...], "loss": [...]}.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "training/dbrx_training_model.h"
#include "training/optimizer.h"

using namespace tessera;

int main(int argc, char** argv) {
  std::string config_path;
  int64_t threads = 0, batch = 8, seq = 256, steps = 5, warmup = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--config") config_path = value;
    else if (key == "--threads") threads = std::stoll(value);
    else if (key == "--batch") batch = std::stoll(value);
    else if (key == "--seq") seq = std::stoll(value);
    else if (key == "--steps") steps = std::stoll(value);
    else if (key == "--warmup") warmup = std::stoll(value);
    else {
      fmt::print(stderr, "unknown option {}\n", key);
      return 2;
    }
  }
  try {
    if (config_path.empty()) fail("--config CONFIG.json is required");
    if (threads > 0) ThreadPool::set_global_threads(static_cast<size_t>(threads));
    training::keep_freed_memory_for_reuse();
    training::DbrxTrainingModel model(DbrxConfig::load(config_path), 1, 0.02f);
    training::AdamW opt(model.values().size(), {});
    Rng rng(7);
    std::vector<int32_t> inputs(static_cast<size_t>(batch * seq)), targets(inputs.size());
    nlohmann::json out = {{"seconds_per_step", nlohmann::json::array()}, {"loss", nlohmann::json::array()}};
    double timed = 0;
    for (int64_t s = 0; s < warmup + steps; ++s) {
      for (auto& t : inputs) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(model.config().vocab_size)));
      for (size_t i = 0; i + 1 < inputs.size(); ++i) targets[i] = inputs[i + 1];
      targets.back() = inputs.front();
      const auto t0 = std::chrono::steady_clock::now();
      model.zero_grad();
      const auto loss = model.forward_backward({inputs.data(), targets.data(), batch, seq},
                                               1.0f / static_cast<float>(batch * seq), 1.0f, nullptr);
      const double norm = training::grad_norm(model.grads());
      opt.step(model.values(), model.grads(), model.parameters(), 1e-4, training::clip_factor(norm, 1.0));
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (s >= warmup) {
        timed += sec;
        out["seconds_per_step"].push_back(sec);
        out["loss"].push_back(loss.ce_mean());
      }
    }
    out["tokens_per_second"] = static_cast<double>(steps * batch * seq) / timed;
    out["parameters"] = model.config().parameter_count();
    fmt::print("{}\n", out.dump());
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  }
  return 0;
}
