#include "core/paths.h"

#include <cstdlib>
#include <system_error>

namespace tessera {

std::filesystem::path models_dir() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("TESSERA_MODELS"); env && *env) return fs::path(env);
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fs::path& candidate : {exe.parent_path().parent_path() / "models",
                                      exe.parent_path().parent_path().parent_path() / "models"}) {
      if (fs::is_directory(candidate / "tokenizers", ec)) return candidate;
    }
  }
  return fs::path(TESSERA_SOURCE_DIR) / "models";
}

}  // namespace tessera
