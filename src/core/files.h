#pragma once
// Small file helpers shared by the writers of checkpoints, adapters and configs.
#include <filesystem>
#include <string_view>

namespace tessera {

// Writes `bytes` to path.tmp and renames it over `path`, so a reader (or a process killed half
// way) sees the old file or the new one, never a mix. Errors name the file.
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);

}  // namespace tessera
