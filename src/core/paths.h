#pragma once
#include <filesystem>

namespace tessera {

// The folder that holds installed models and tokenizer data (filled by scripts/setup, not git):
// $TESSERA_MODELS if set, else <binary>/../models or <binary>/../../models when that exists,
// else the source tree's models/.
std::filesystem::path models_dir();

// The folder that holds tessera's own state (tessera.db: API tokens, usage, runs, the model
// registry): $TESSERA_HOME if set, else $TESSERA_DATA,
// else $XDG_DATA_HOME/tessera, else $HOME/.local/share/tessera. Not created here: whoever writes
// into it creates it, so asking for the path never touches the disk.
std::filesystem::path data_dir();

// The source tree this binary was built from (tests and fixtures live there).
std::filesystem::path source_tree_dir();

}  // namespace tessera
