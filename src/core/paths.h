#pragma once
#include <filesystem>

namespace tessera {

// The folder that holds installed models and tokenizer data (filled by scripts/setup, not git):
// $TESSERA_MODELS if set, else <binary>/../models or <binary>/../../models when that exists,
// else the source tree's models/.
std::filesystem::path models_dir();

}  // namespace tessera
