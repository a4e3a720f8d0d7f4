#include "models/llm/language_model.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/paths.h"
#include "formats/gguf.h"
#include "models/llm/dbrx_model.h"
#include "models/llm/gguf_model.h"

namespace tessera {

std::shared_ptr<KvBlockPool> LanguageModel::new_block_pool(int64_t max_blocks, int64_t block_tokens) const {
  const auto& i = info();
  return std::make_shared<KvBlockPool>(i.n_layers, i.kv_heads, i.head_dim, i.kv_dtype, block_tokens, max_blocks);
}

KvCache LanguageModel::new_cache(std::shared_ptr<KvBlockPool> pool) const {
  const auto& i = info();
  if (!pool) fail("{}: no KV block pool given", i.name);
  if (pool->layers() != i.n_layers || pool->kv_heads() != i.kv_heads || pool->head_dim() != i.head_dim)
    fail("{}: the KV block pool is for {} layers x {} heads x {} dims, the model has {} x {} x {}", i.name,
         pool->layers(), pool->kv_heads(), pool->head_dim(), i.n_layers, i.kv_heads, i.head_dim);
  return KvCache(std::move(pool), i.max_seq_len);
}

Tensor LanguageModel::forward(std::span<const int32_t> tokens, KvCache& cache, bool all_logits) {
  const BatchSequence one{tokens, &cache, all_logits};
  return forward_batch(std::span(&one, 1));
}

namespace {

namespace fs = std::filesystem;

// The .gguf file a path stands for, if any: the path itself, or the single .gguf in a folder
// that has no config.json.
std::optional<fs::path> gguf_file_of(const fs::path& path) {
  if (fs::is_regular_file(path)) {
    if (path.extension() == ".gguf") return path;
    return std::nullopt;
  }
  if (!fs::is_directory(path) || fs::exists(path / "config.json")) return std::nullopt;
  std::optional<fs::path> found;
  for (const auto& item : fs::directory_iterator(path)) {
    if (item.path().extension() != ".gguf") continue;
    if (found) fail("{}: more than one .gguf file; name the one to use", path.string());
    found = item.path();
  }
  return found;
}

bool has_tokenizer_files(const fs::path& dir) {
  if (!fs::is_directory(dir)) return false;
  if (fs::exists(dir / "tokenizer.json")) return true;
  for (const auto& item : fs::directory_iterator(dir))
    if (item.path().extension() == ".tiktoken") return true;
  return false;
}

}  // namespace

std::filesystem::path resolve_model_path(const std::string& name_or_path) {
  const fs::path given(name_or_path);
  if (fs::exists(given)) return given;
  if (given.is_relative() && !name_or_path.empty()) {
    const fs::path installed = models_dir() / given;
    if (fs::exists(installed)) return installed;
  }
  return given;
}

std::unique_ptr<LanguageModel> load_language_model(const std::filesystem::path& path) {
  if (!fs::exists(path)) fail("{}: no such model file or folder", path.string());
  if (auto gguf = gguf_file_of(path)) return load_gguf_model(*gguf);
  if (!fs::is_directory(path))
    fail("{}: not a model (expected a folder with config.json, or a .gguf file)", path.string());
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
  fail("{}: unknown model_type '{}' (supported: dbrx; llama models as GGUF)", config_path.string(), type);
}

Tokenizer load_model_tokenizer(const std::filesystem::path& path) {
  const fs::path dir = fs::is_directory(path) ? path : path.parent_path();
  if (!has_tokenizer_files(dir)) {
    if (auto gguf = gguf_file_of(path)) return Tokenizer::from_gguf(GgufFile(*gguf));
  }
  return Tokenizer::load_for_model(dir);
}

std::optional<std::string> load_chat_template(const std::filesystem::path& path) {
  const fs::path dir = fs::is_directory(path) ? path : path.parent_path();
  std::ifstream in(dir / "tokenizer_config.json");
  if (in) {
    try {
      auto config = nlohmann::json::parse(in);
      if (config.contains("chat_template") && config["chat_template"].is_string())
        return config["chat_template"].get<std::string>();
    } catch (const nlohmann::json::exception&) {
    }
  }
  if (auto gguf = gguf_file_of(path)) return GgufFile(*gguf).chat_template();
  return std::nullopt;
}

}  // namespace tessera
