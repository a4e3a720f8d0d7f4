#include "models/llm/language_model.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "models/llm/dbrx_model.h"

namespace tessera {

KvCache::KvCache(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t max_len)
    : kv_heads_(kv_heads), head_dim_(head_dim), max_len_(max_len), keys_(layers), values_(layers) {}

void KvCache::reserve(int64_t tokens) {
  if (tokens <= capacity_) return;
  tokens = std::min(tokens, max_len_);
  for (auto& k : keys_) k.resize(static_cast<size_t>(tokens * row_size()));
  for (auto& v : values_) v.resize(static_cast<size_t>(tokens * row_size()));
  capacity_ = tokens;
}

void KvCache::truncate(int64_t tokens) { length_ = std::clamp<int64_t>(tokens, 0, length_); }

size_t KvCache::bytes() const {
  size_t total = 0;
  for (const auto& k : keys_) total += k.capacity() * sizeof(float);
  for (const auto& v : values_) total += v.capacity() * sizeof(float);
  return total;
}

std::unique_ptr<LanguageModel> load_language_model(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) fail("{}: no such model folder", path.string());
  if (!fs::is_directory(path)) fail("{}: not a model folder (expected a folder with config.json)", path.string());
  const fs::path config_path = path / "config.json";
  std::ifstream in(config_path);
  if (!in) fail("{}: config.json is missing", path.string());
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", config_path.string(), e.what());
  }
  if (!config.is_object()) fail("{}: not a JSON object", config_path.string());
  const std::string type = config.value("model_type", std::string());
  if (type == "dbrx") return DbrxModel::load(path);
  if (type.empty()) fail("{}: model_type is missing", config_path.string());
  fail("{}: unknown model_type '{}' (supported: dbrx)", config_path.string(), type);
}

}  // namespace tessera
