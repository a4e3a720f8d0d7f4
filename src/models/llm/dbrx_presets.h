#pragma once
// Named DBRX sizes: the released dbrx-132b shape, a family of smaller ones, and tiny ones for
// tests and demos.
#include <optional>
#include <string>
#include <vector>

#include "models/llm/dbrx_config.h"

namespace tessera {

struct DbrxPreset {
  std::string name;
  std::string description;
  DbrxConfig config;
};

const std::vector<DbrxPreset>& dbrx_presets();
std::optional<DbrxPreset> find_dbrx_preset(const std::string& name);

}  // namespace tessera
