#pragma once
// Flags shared by the commands that run a language model.
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "serving/sampling.h"

namespace tessera::cli {

struct ModelOptions {
  std::string model;
  int threads = 0;
  void add(CLI::App& cmd);
  void apply_threads() const;  // before any parallel work
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
