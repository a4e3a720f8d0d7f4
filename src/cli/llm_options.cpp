#include "cli/llm_options.h"

#include <charconv>

#include "core/error.h"
#include "core/thread_pool.h"
#include "models/llm/quantize.h"

namespace tessera::cli {

void ModelOptions::add(CLI::App& cmd) {
  cmd.add_option("-m,--model", model,
                 "Model: a Hugging Face folder, a .gguf file, or the name of an installed model")
      ->capture_default_str();
  cmd.add_option("-q,--quantize", quantize, "Quantize the weights when loading: q8_0, q4_0 or q4_1");
  cmd.add_option("-t,--threads", threads, "Worker threads (default: all cores)")->check(CLI::NonNegativeNumber);
}

LoadedModel ModelOptions::load() const {
  const auto path = resolve_model_path(model);
  if (!std::filesystem::exists(path)) {
    if (model == kDefaultChatModel)
      fail("{}: the default model is not installed (run scripts/setup)", model);
    fail("{}: no such model file or folder", model);
  }
  std::optional<DType> target;
  if (!quantize.empty()) {
    target = dtype_from_name(quantize);
    if (!target || (*target != DType::Q8_0 && *target != DType::Q4_0 && *target != DType::Q4_1))
      fail("--quantize: '{}' is not one of q8_0, q4_0, q4_1", quantize);
  }
  LoadedModel loaded{path, load_language_model(path), load_model_tokenizer(path)};
  if (target) loaded.model = quantize_model(*loaded.model, *target);
  return loaded;
}

void ModelOptions::apply_threads() const {
  if (threads > 0) ThreadPool::set_global_threads(static_cast<size_t>(threads));
}

void SamplingOptions::add(CLI::App& cmd, float default_temperature, int64_t default_max_tokens) {
  params.temperature = default_temperature;
  params.max_tokens = default_max_tokens;
  cmd.add_option("-n,--max-tokens", params.max_tokens, "Most tokens to generate")->capture_default_str();
  cmd.add_option("--temperature", params.temperature, "Sampling temperature; 0 is greedy")->capture_default_str();
  cmd.add_option("--top-k", params.top_k, "Keep the k most likely tokens (0: off)");
  cmd.add_option("--top-p", params.top_p, "Nucleus sampling mass (1: off)");
  cmd.add_option("--min-p", params.min_p, "Drop tokens below min-p times the top probability (0: off)");
  cmd.add_option("--repetition-penalty", params.repetition_penalty, "Penalty for tokens already in the context (1: off)");
  cmd.add_option("--frequency-penalty", params.frequency_penalty, "Penalty per earlier occurrence in the output");
  cmd.add_option("--presence-penalty", params.presence_penalty, "Penalty for any earlier occurrence in the output");
  cmd.add_option("--seed", seed, "Random seed; the same seed repeats a run");
  cmd.add_option("--stop", params.stop, "Stop string (repeatable)");
  cmd.add_flag("--ignore-eos", params.ignore_eos, "Keep generating past end-of-text tokens");
}

SamplingParams SamplingOptions::get() const {
  SamplingParams p = params;
  if (seed >= 0) p.seed = static_cast<uint64_t>(seed);
  p.validate();
  return p;
}

std::vector<int32_t> parse_token_list(const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string item = text.substr(pos, comma - pos);
    const auto first = item.find_first_not_of(" \t\n");
    const auto last = item.find_last_not_of(" \t\n");
    item = first == std::string::npos ? "" : item.substr(first, last - first + 1);
    if (item.empty()) {
      if (comma == text.size() && !ids.empty() && pos == text.size()) break;
      fail("--tokens: empty item in '{}'", text);
    }
    int32_t id = 0;
    auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (ec != std::errc() || ptr != item.data() + item.size()) fail("--tokens: '{}' is not a token id", item);
    ids.push_back(id);
    pos = comma + 1;
  }
  if (ids.empty()) fail("--tokens: no token ids given");
  return ids;
}

}  // namespace tessera::cli
