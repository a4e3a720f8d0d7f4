#include "core/paths.h"

#include "core/error.h"

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

std::filesystem::path source_tree_dir() { return TESSERA_SOURCE_DIR; }

std::filesystem::path data_dir() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("TESSERA_HOME"); env && *env) return fs::path(env);
  if (const char* env = std::getenv("TESSERA_DATA"); env && *env) return fs::path(env);
  // The XDG spec says a relative $XDG_DATA_HOME is invalid and must be ignored.
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg && fs::path(xdg).is_absolute())
    return fs::path(xdg) / "tessera";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".local" / "share" / "tessera";
  fail("cannot find a data folder: set TESSERA_HOME (or HOME)");
}

}  // namespace tessera
