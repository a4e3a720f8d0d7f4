#include "server/web_assets.h"

#include <algorithm>
#include <cctype>

namespace tessera::server {

// Made by CMakeLists.txt from the files under web/.
extern const WebAsset kWebAssets[];
extern const size_t kWebAssetCount;

std::optional<std::string_view> web_asset(std::string_view path) {
  for (size_t i = 0; i < kWebAssetCount; ++i)
    if (path == kWebAssets[i].path) return std::string_view(reinterpret_cast<const char*>(kWebAssets[i].data), kWebAssets[i].size);
  return std::nullopt;
}

std::vector<std::string> web_asset_paths() {
  std::vector<std::string> out;
  for (size_t i = 0; i < kWebAssetCount; ++i) out.emplace_back(kWebAssets[i].path);
  std::sort(out.begin(), out.end());
  return out;
}

std::string content_type_for(std::string_view path) {
  const auto dot = path.rfind('.');
  if (dot == std::string_view::npos || path.find('/', dot) != std::string_view::npos) return "application/octet-stream";
  std::string ext(path.substr(dot + 1));
  for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // Browsers refuse module scripts served with a non-JavaScript type, so .js and .mjs matter most.
  static const std::pair<const char*, const char*> types[] = {
      {"html", "text/html; charset=utf-8"},      {"htm", "text/html; charset=utf-8"},
      {"js", "text/javascript; charset=utf-8"},  {"mjs", "text/javascript; charset=utf-8"},
      {"css", "text/css; charset=utf-8"},        {"json", "application/json"},
      {"svg", "image/svg+xml"},                  {"png", "image/png"},
      {"jpg", "image/jpeg"},                     {"jpeg", "image/jpeg"},
      {"ico", "image/x-icon"},                   {"webp", "image/webp"},
      {"txt", "text/plain; charset=utf-8"},      {"woff2", "font/woff2"}};
  for (const auto& [e, type] : types)
    if (ext == e) return type;
  return "application/octet-stream";
}

}  // namespace tessera::server
