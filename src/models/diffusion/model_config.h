#pragma once
// Typed reads of a component's config.json (diffusers or transformers), with defaults for
// absent or null keys and one error line naming the file and the key for wrong types.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::diffusion {

class JsonConfig {
 public:
  explicit JsonConfig(const std::filesystem::path& path);
  JsonConfig(nlohmann::json json, std::string origin) : json_(std::move(json)), origin_(std::move(origin)) {}

  const nlohmann::json& json() const { return json_; }
  const std::string& origin() const { return origin_; }
  bool has(const std::string& key) const { return json_.contains(key) && !json_[key].is_null(); }

  int64_t integer(const std::string& key, int64_t fallback) const;
  int64_t positive(const std::string& key, int64_t fallback) const;  // > 0
  double number(const std::string& key, double fallback) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  std::vector<std::string> string_list(const std::string& key) const;  // absent: empty
  // A list of integers, or a single integer repeated `count` times (diffusers allows both).
  std::vector<int64_t> int_list(const std::string& key, size_t count, int64_t fallback) const;

 private:
  nlohmann::json json_;
  std::string origin_;
};

}  // namespace tessera::diffusion
