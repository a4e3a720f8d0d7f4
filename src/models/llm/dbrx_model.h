#pragma once
// DBRX checkpoints in the Hugging Face layout (transformers' DbrxForCausalLM): config.json with
// model_type "dbrx" and safetensors weights with the fused Wqkv, stacked expert w1/v1/w2,
// router, norm_1/norm_2, norm_f and lm_head. Loaded into the shared decoder engine.
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/llm/dbrx_config.h"
#include "models/llm/decoder.h"

namespace tessera {

struct DbrxModel {
  // Reads config.json and the safetensors weights (mapped, not copied), checking every
  // tensor's presence, shape and dtype.
  static std::unique_ptr<DecoderModel> load(const std::filesystem::path& dir);

  // The Hugging Face name and expected shape of every weight.
  static std::vector<std::pair<std::string, Shape>> weight_shapes(const DbrxConfig& config);

  // The engine's view of a DBRX config.
  static DecoderConfig decoder_config(const DbrxConfig& config);
};

}  // namespace tessera
