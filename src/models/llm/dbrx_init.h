#pragma once
// Writes a randomly initialised DBRX checkpoint in the Hugging Face layout (config.json,
// model.safetensors, tokenizer files), streaming tensor by tensor so any size fits in memory.
#include <cstdint>
#include <filesystem>

#include "core/dtype.h"
#include "models/llm/dbrx_config.h"

namespace tessera {

struct DbrxInitOptions {
  uint64_t seed = 0;
  DType dtype = DType::F32;
  float init_std = 0.02f;
  bool progress = true;
};

void write_random_dbrx(const DbrxConfig& config, const std::filesystem::path& dir, const DbrxInitOptions& options);

// tokenizer_config.json with DBRX's special tokens (cl100k ids), and a copy of the installed
// cl100k_base.tiktoken when it exists.
void write_dbrx_tokenizer_files(const std::filesystem::path& dir);

}  // namespace tessera
