// Decode throughput of forward_batch: B sequences, each decoding one token per step, all in one
// pass over the weights, against B = 1 in the same run.
//   build/batch_decode_bench [--model NAME|PATH] [--threads N] [--steps S] [--context C] [--repeats R] [B]...
// Each sequence first prefills C random tokens (its own), then S steps are timed; the best of
// R runs is reported. Prints one line per batch size: "batch B tok/s T ms/step M ratio X",
// X being tokens/s relative to the first batch size.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "models/llm/language_model.h"

using namespace tessera;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Tokens per second of `batch_size` sequences decoding `steps` tokens each.
double run(LanguageModel& model, int64_t batch_size, int64_t context, int64_t steps, uint64_t seed) {
  const auto& info = model.info();
  auto pool = model.new_block_pool(0);
  std::vector<KvCache> caches;
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(batch_size));
  Rng rng(seed);
  for (auto& p : prompts) {
    p.resize(static_cast<size_t>(context));
    for (auto& t : p) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(std::min<int64_t>(info.vocab_size, 1000))));
    caches.push_back(model.new_cache(pool));
  }
  for (auto& c : caches) c.reserve(context + steps + 1);
  std::vector<BatchSequence> batch;
  for (int64_t b = 0; b < batch_size; ++b) batch.push_back({prompts[b], &caches[b], false});
  Tensor logits = model.forward_batch(batch);

  std::vector<int32_t> next(static_cast<size_t>(batch_size));
  auto pick = [&] {
    for (int64_t b = 0; b < batch_size; ++b) {
      const float* row = logits.data<float>() + b * info.vocab_size;
      next[b] = static_cast<int32_t>(std::max_element(row, row + info.vocab_size) - row);
    }
  };
  pick();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t b = 0; b < batch_size; ++b) batch[b] = {std::span(&next[b], 1), &caches[b], false};
    logits = model.forward_batch(batch);
    pick();
  }
  return static_cast<double>(batch_size * steps) / seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_name = "smollm2-135m-instruct";
  int64_t steps = 32, context = 64, repeats = 3;
  std::vector<int64_t> sizes;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (arg == "--model") model_name = value();
    else if (arg == "--threads") ThreadPool::set_global_threads(static_cast<size_t>(std::stoul(value())));
    else if (arg == "--steps") steps = std::stoll(value());
    else if (arg == "--context") context = std::stoll(value());
    else if (arg == "--repeats") repeats = std::stoll(value());
    else sizes.push_back(std::stoll(arg));
  }
  if (sizes.empty()) sizes = {1, 8, 32};
  try {
    auto model = load_language_model(resolve_model_path(model_name));
    std::printf("%s: %zu threads, context %lld, %lld steps, best of %lld\n", model->info().name.c_str(),
                ThreadPool::global().size(), static_cast<long long>(context), static_cast<long long>(steps),
                static_cast<long long>(repeats));
    std::vector<double> best(sizes.size(), 0.0);
    // Rounds interleave the batch sizes, so that drift in the machine's load hits all of them.
    for (int64_t r = 0; r < repeats; ++r)
      for (size_t i = 0; i < sizes.size(); ++i)
        best[i] = std::max(best[i], run(*model, sizes[i], context, steps, 1 + static_cast<uint64_t>(r)));
    for (size_t i = 0; i < sizes.size(); ++i)
      std::printf("batch %lld tok/s %.1f ms/step %.2f ratio %.2f\n", static_cast<long long>(sizes[i]), best[i],
                  1000.0 * static_cast<double>(sizes[i]) / best[i], best[i] / best[0]);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
