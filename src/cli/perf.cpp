#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/llm_options.h"
#include "core/rng.h"
#include "core/thread_pool.h"

namespace tessera::cli {

// Times the model alone (no tokenizer, no sampling beyond argmax), the way llama-bench does:
// a prefill of N prompt tokens, then M single-token decode steps, repeated.
void register_perf(CLI::App& app) {
  struct Options {
    ModelOptions model;
    int64_t prompt_tokens = 512, gen_tokens = 128;
    int repeats = 3;
    bool json = false;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("perf", "Measure prefill and decode speed (tokens/s) of a model");
  opts->model.add(*cmd);
  cmd->add_option("-p,--prompt-tokens", opts->prompt_tokens, "Prompt length")->capture_default_str();
  cmd->add_option("-n,--gen-tokens", opts->gen_tokens, "Tokens to decode")->capture_default_str();
  cmd->add_option("-r,--repeats", opts->repeats, "Runs (the best is reported)")->capture_default_str();
  cmd->add_flag("--json", opts->json, "Print JSON");
  cmd->callback([opts] {
    opts->model.apply_threads();
    LoadedModel loaded = opts->model.load();
    auto& model = *loaded.model;
    const auto& info = model.info();
    Rng rng(1);
    std::vector<int32_t> prompt(static_cast<size_t>(opts->prompt_tokens));
    for (auto& t : prompt) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(std::min<int64_t>(info.vocab_size, 1000))));
    using Clock = std::chrono::steady_clock;
    double best_prefill = 0, best_decode = 0;
    std::vector<double> prefill_runs, decode_runs;
    for (int r = 0; r < opts->repeats; ++r) {
      KvCache cache = model.new_cache();
      cache.reserve(opts->prompt_tokens + opts->gen_tokens);
      auto t0 = Clock::now();
      Tensor logits = model.forward(prompt, cache, false);
      const double prefill = std::chrono::duration<double>(Clock::now() - t0).count();
      t0 = Clock::now();
      for (int64_t i = 0; i < opts->gen_tokens; ++i) {
        const float* row = logits.data<float>();
        const int32_t next = static_cast<int32_t>(std::max_element(row, row + info.vocab_size) - row);
        const int32_t one[1] = {next};
        logits = model.forward(one, cache, false);
      }
      const double decode = std::chrono::duration<double>(Clock::now() - t0).count();
      prefill_runs.push_back(opts->prompt_tokens / prefill);
      decode_runs.push_back(opts->gen_tokens / decode);
      best_prefill = std::max(best_prefill, prefill_runs.back());
      best_decode = std::max(best_decode, decode_runs.back());
    }
    if (opts->json) {
      nlohmann::json out = {{"model", info.name},
                            {"threads", ThreadPool::global().size()},
                            {"weight_bytes", model.weight_bytes()},
                            {"prompt_tokens", opts->prompt_tokens},
                            {"gen_tokens", opts->gen_tokens},
                            {"prefill_tok_s", best_prefill},
                            {"decode_tok_s", best_decode},
                            {"prefill_runs", prefill_runs},
                            {"decode_runs", decode_runs}};
      fmt::print("{}\n", out.dump());
    } else {
      fmt::print("{}: {} threads, {:.1f} MB of weights\n", info.name, ThreadPool::global().size(),
                 model.weight_bytes() / 1e6);
      fmt::print("prefill ({} tokens): {:.1f} tok/s\ndecode ({} tokens): {:.1f} tok/s\n", opts->prompt_tokens,
                 best_prefill, opts->gen_tokens, best_decode);
    }
  });
}

}  // namespace tessera::cli
