#include "models/diffusion/model_config.h"

#include <fstream>

#include "core/error.h"

namespace tessera::diffusion {

JsonConfig::JsonConfig(const std::filesystem::path& path) : origin_(path.string()) {
  std::ifstream in(path);
  if (!in) fail("{}: file not found", origin_);
  try {
    json_ = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    fail("{}: not valid JSON ({})", origin_, e.what());
  }
  if (!json_.is_object()) fail("{}: expected a JSON object", origin_);
}

int64_t JsonConfig::integer(const std::string& key, int64_t fallback) const {
  if (!has(key)) return fallback;
  const auto& v = json_[key];
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float() && v.get<double>() == static_cast<double>(static_cast<int64_t>(v.get<double>())))
    return static_cast<int64_t>(v.get<double>());
  fail("{}: \"{}\" must be an integer", origin_, key);
}

int64_t JsonConfig::positive(const std::string& key, int64_t fallback) const {
  const int64_t v = integer(key, fallback);
  if (v <= 0 || v > (int64_t{1} << 24)) fail("{}: \"{}\" must be a positive integer (got {})", origin_, key, v);
  return v;
}

double JsonConfig::number(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  if (!json_[key].is_number()) fail("{}: \"{}\" must be a number", origin_, key);
  return json_[key].get<double>();
}

bool JsonConfig::boolean(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  if (!json_[key].is_boolean()) fail("{}: \"{}\" must be true or false", origin_, key);
  return json_[key].get<bool>();
}

std::string JsonConfig::string(const std::string& key, const std::string& fallback) const {
  if (!has(key)) return fallback;
  if (!json_[key].is_string()) fail("{}: \"{}\" must be a string", origin_, key);
  return json_[key].get<std::string>();
}

std::vector<std::string> JsonConfig::string_list(const std::string& key) const {
  std::vector<std::string> out;
  if (!has(key)) return out;
  if (!json_[key].is_array()) fail("{}: \"{}\" must be a list of strings", origin_, key);
  for (const auto& v : json_[key]) {
    if (!v.is_string()) fail("{}: \"{}\" must be a list of strings", origin_, key);
    out.push_back(v.get<std::string>());
  }
  return out;
}

std::vector<int64_t> JsonConfig::int_list(const std::string& key, size_t count, int64_t fallback) const {
  if (!has(key)) return std::vector<int64_t>(count, fallback);
  const auto& v = json_[key];
  if (v.is_number_integer()) {
    if (v.get<int64_t>() <= 0) fail("{}: \"{}\" must be positive", origin_, key);
    return std::vector<int64_t>(count, v.get<int64_t>());
  }
  if (!v.is_array()) fail("{}: \"{}\" must be an integer or a list of integers", origin_, key);
  std::vector<int64_t> out;
  for (const auto& e : v) {
    if (!e.is_number_integer() || e.get<int64_t>() <= 0 || e.get<int64_t>() > (int64_t{1} << 24))
      fail("{}: \"{}\" must hold positive integers", origin_, key);
    out.push_back(e.get<int64_t>());
  }
  if (count && out.size() != count)
    fail("{}: \"{}\" has {} entries, expected {} (one per block)", origin_, key, out.size(), count);
  return out;
}

}  // namespace tessera::diffusion
