#include "models/diffusion/component_weights.h"

#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/safetensors.h"

namespace tessera::diffusion {

namespace fs = std::filesystem;

ComponentWeights ComponentWeights::from_folder(const fs::path& dir) {
  if (!fs::is_directory(dir)) fail("{}: component folder not found", dir.string());
  ComponentWeights weights(dir.string());
  std::vector<fs::path> files;
  for (const char* base : {"diffusion_pytorch_model", "model"}) {
    for (const char* variant : {"", ".fp16"}) {
      const fs::path single = dir / (std::string(base) + variant + ".safetensors");
      const fs::path index = dir / (std::string(base) + variant + ".safetensors.index.json");
      if (fs::exists(single)) {
        files.push_back(single);
      } else if (fs::exists(index)) {
        nlohmann::json j;
        try {
          std::ifstream in(index);
          j = nlohmann::json::parse(in);
        } catch (const std::exception& e) {
          fail("{}: not valid JSON ({})", index.string(), e.what());
        }
        if (!j.contains("weight_map") || !j["weight_map"].is_object())
          fail("{}: no \"weight_map\" object", index.string());
        std::set<std::string> shards;
        for (const auto& [name, file] : j["weight_map"].items()) {
          if (!file.is_string()) fail("{}: weight_map entry '{}' is not a file name", index.string(), name);
          shards.insert(file.get<std::string>());
        }
        for (const auto& shard : shards) {
          if (shard.find('/') != std::string::npos || shard.find("..") != std::string::npos)
            fail("{}: shard name '{}' leaves the folder", index.string(), shard);
          files.push_back(dir / shard);
        }
      }
      if (!files.empty()) break;
    }
    if (!files.empty()) break;
  }
  if (files.empty())
    fail("{}: no weights (expected diffusion_pytorch_model.safetensors or model.safetensors)", dir.string());
  for (const auto& path : files) {
    auto file = std::make_shared<SafetensorsFile>(path);
    for (const auto& name : file->names()) weights.add(name, file->get(name));
    weights.keep_alive(file);
  }
  return weights;
}

std::vector<std::string> ComponentWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [name, t] : tensors_) out.push_back(name);
  return out;
}

Tensor ComponentWeights::get(const std::string& name, const Shape& shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("{}: weight '{}' is missing", origin_, name);
  const Tensor& t = it->second;
  if (t.shape() != shape)
    fail("{}: weight '{}' has shape {}, expected {} from the component's config", origin_, name, shape_str(t.shape()),
         shape_str(shape));
  if (t.dtype() != DType::F32 && t.dtype() != DType::F16 && t.dtype() != DType::BF16)
    fail("{}: weight '{}' has dtype {}; expected f32, f16 or bf16", origin_, name, dtype_name(t.dtype()));
  Tensor out = t.to(DType::F32).contiguous();
  if (out.storage() == t.storage()) out = out.clone();  // own the memory: mappings can go
  return out;
}

Tensor ComponentWeights::get_matrix(const std::string& name, int64_t out, int64_t in) const {
  auto it = tensors_.find(name);
  if (it != tensors_.end() && it->second.ndim() == 4) return get(name, {out, in, 1, 1}).view({out, in});
  return get(name, {out, in});
}

}  // namespace tessera::diffusion
