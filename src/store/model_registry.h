#pragma once
// tessera's own model registry: named, versioned model folders in the shared SQLite file. A
// finished training run registers its checkpoint here; `tessera models list` shows them and the
// server (later) serves a registered name.
//
// Names have three levels, "catalog.schema.model", each part [A-Za-z0-9_-]+, as in Unity
// Catalog and MLflow. Versions count 1, 2, ... per name. A reference to one version is written
// "catalog.schema.model/3"; without "/N" it means the latest version.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/database.h"

namespace tessera {

struct RegisteredModel {
  std::string name;  // catalog.schema.model
  int64_t version = 0;
  std::string path;  // absolute folder with config.json and the weights
  std::string source_run_id;  // the run that made it, "" when registered by hand
  std::string description;
  int64_t created_ms = 0;  // unix milliseconds
  int64_t versions = 0;  // how many versions the name has (filled by list and get)

  // "catalog.schema.model/3"
  std::string reference() const;
};

// Errors naming the name and the rule it breaks.
void check_model_name(std::string_view name);

class ModelRegistry {
 public:
  explicit ModelRegistry(std::shared_ptr<Database> db, std::function<int64_t()> now_ms = {});

  // Adds the next version of `name` for the model folder `path` (made absolute; it must exist
  // and hold a config.json and *.safetensors or *.gguf weights). Returns the new entry.
  RegisteredModel register_model(const std::string& name, const std::filesystem::path& path,
                                 const std::string& source_run_id = "", const std::string& description = "");

  // By name: the latest version of each name, or every version with all_versions (newest first
  // within a name). Names sorted.
  std::vector<RegisteredModel> list(bool all_versions = false) const;

  // One version (the latest when none is given), or nullopt when there is no such name/version.
  std::optional<RegisteredModel> get(const std::string& name, std::optional<int64_t> version = std::nullopt) const;

  // "catalog.schema.model" (latest) or "catalog.schema.model/3". Errors name what is missing.
  RegisteredModel resolve(const std::string& reference) const;

 private:
  int64_t now() const;
  std::shared_ptr<Database> db_;
  std::function<int64_t()> now_ms_;
};

}  // namespace tessera
