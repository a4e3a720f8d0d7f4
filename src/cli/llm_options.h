#pragma once
// Flags shared by the commands that run a language model.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "models/llm/language_model.h"
#include "serving/sampling.h"
#include "tokenizers/bpe_tokenizer.h"

namespace tessera::cli {

// The default chat model that scripts/setup installs.
inline constexpr const char* kDefaultChatModel = "smollm2-135m-instruct";

struct LoadedModel {
  std::filesystem::path path;
  std::unique_ptr<LanguageModel> model;
  Tokenizer tokenizer;
};

struct ModelOptions {
  std::string model = kDefaultChatModel;
  std::string quantize;  // load-time quantization target, empty: as stored
  int threads = 0;
  void add(CLI::App& cmd);
  void apply_threads() const;  // before any parallel work
  LoadedModel load() const;    // resolves the name, loads model and tokenizer, quantizes
};

struct SamplingOptions {
  SamplingParams params;
  int64_t seed = -1;
  void add(CLI::App& cmd, float default_temperature, int64_t default_max_tokens);
  SamplingParams get() const;
};

// "1,2, 3" -> ids; throws tessera::Error naming the bad item.
std::vector<int32_t> parse_token_list(const std::string& text);

}  // namespace tessera::cli
