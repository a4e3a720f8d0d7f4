#pragma once
// The playground (web/): its files are compiled into the binary so `tessera serve` needs nothing
// beside itself, and the page works offline.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::server {

// One embedded file, by its path under web/ ("index.html", "chat.js").
struct WebAsset {
  const char* path;
  const unsigned char* data;
  size_t size;
};

// The bytes of web/<path>, or nothing when there is no such file.
std::optional<std::string_view> web_asset(std::string_view path);
// Every embedded path, sorted.
std::vector<std::string> web_asset_paths();
// The Content-Type for a file name, by its extension; application/octet-stream when unknown.
std::string content_type_for(std::string_view path);

}  // namespace tessera::server
