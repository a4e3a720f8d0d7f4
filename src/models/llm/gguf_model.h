#pragma once
// Language models stored as GGUF files (llama.cpp's format): architectures "llama" and "dbrx",
// with weights in f32/f16/bf16 or block-quantized (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K), used in place
// from the mapped file.
#include <filesystem>
#include <memory>

#include "models/llm/decoder.h"

namespace tessera {

std::unique_ptr<DecoderModel> load_gguf_model(const std::filesystem::path& file);

}  // namespace tessera
