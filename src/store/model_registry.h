#pragma once
// tessera's own model registry: named, versioned models in the shared SQLite file, with their
// files kept by the registry itself. A finished training run registers its checkpoint here,
// `tessera models ...` shows, registers and deletes them, and the server serves a registered
// name (the latest version, or a pinned one).
//
// Names have three levels, "catalog.schema.model", each part [A-Za-z0-9_-]+, as in Unity
// Catalog and MLflow. Versions count 1, 2, ... per name. A reference to one version is written
// "catalog.schema.model/3"; without "/N" it means the latest version.
//
// Storage: version N of catalog.schema.model lives in <root>/catalog/schema/model/N/, where the
// root is the "registry" folder next to the database file (data_dir()/registry by default).
// Registering copies the model's files there (hard links when on the same filesystem), so
// deleting the training folder, or replacing its files (checkpoints are written under a new
// name and renamed), cannot change a registered version. The files are
// assembled in a staging folder and renamed into place in the same transaction that adds the
// row: a crash leaves either the whole version or none (a leftover folder without a row is
// removed by the next registration of that name).
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "store/database.h"

namespace tessera {

// Where a version came from. Stored as a JSON object in the version's row with the keys
// "base_model", "task", "data_paths" (list), "data_sha256" (hash_data_files of data_paths),
// "hyperparameters" (object), "metrics" (object) and "run_id"; empty ones are left out.
struct ModelLineage {
  std::string base_model;  // "random init of dbrx-tiny", or the model a fine-tune started from
  std::string task;        // "pretrain", "chat-completion", "instruction", ...
  std::vector<std::string> data_paths;
  std::string data_sha256;
  nlohmann::json hyperparameters = nlohmann::json::object();
  nlohmann::json metrics = nlohmann::json::object();  // final values: {"train_loss": 2.1, ...}
  std::string run_id;

  nlohmann::json to_json() const;
  // Reads what to_json wrote; unknown keys are ignored, wrong types are errors naming the key.
  static ModelLineage from_json(const nlohmann::json& j);
  bool empty() const;
};

struct ModelFile {
  std::string name;  // relative to the version's folder
  int64_t bytes = 0;
};

struct RegisteredModel {
  std::string name;  // catalog.schema.model
  int64_t version = 0;
  std::string path;  // the registry's folder for this version (absolute)
  std::string source_run_id;  // the run that made it, "" when registered by hand
  std::string description;
  int64_t created_ms = 0;  // unix milliseconds
  int64_t versions = 0;  // how many versions the name has (filled by list and get)
  ModelLineage lineage;
  std::vector<ModelFile> files;  // what registration stored, sorted by name

  // "catalog.schema.model/3"
  std::string reference() const;
  int64_t total_bytes() const;
};

// Errors naming the name and the rule it breaks.
void check_model_name(std::string_view name);

// "catalog.schema.model" -> {name, nullopt}; "catalog.schema.model/3" -> {name, 3}. Errors name
// the reference and what is wrong with it.
std::pair<std::string, std::optional<int64_t>> parse_model_reference(const std::string& reference);

// The files of a model folder that registration stores: every regular file at its top level
// except training state (optimizer*.safetensors, trainer_state.json) and hidden or temporary
// files. Sorted by name.
std::vector<std::filesystem::path> registrable_files(const std::filesystem::path& folder);

class ModelRegistry {
 public:
  // storage_root: where versions' files go; empty: "registry" next to the database file.
  explicit ModelRegistry(std::shared_ptr<Database> db, std::function<int64_t()> now_ms = {},
                         std::filesystem::path storage_root = {});

  // Adds the next version of `name`, storing the files of the model folder `path` (which must
  // exist and hold a config.json, or an adapter_config.json for a separate LoRA adapter, and
  // *.safetensors or *.gguf weights). lineage.run_id defaults
  // to source_run_id and the other way round. Returns the new entry.
  RegisteredModel register_model(const std::string& name, const std::filesystem::path& path,
                                 const std::string& source_run_id = "", const std::string& description = "",
                                 ModelLineage lineage = {});

  // By name: the latest version of each name, or every version with all_versions (newest first
  // within a name). Names sorted.
  std::vector<RegisteredModel> list(bool all_versions = false) const;

  // One version (the latest when none is given), or nullopt when there is no such name/version.
  std::optional<RegisteredModel> get(const std::string& name, std::optional<int64_t> version = std::nullopt) const;

  // Every version of a name, newest first (empty when there is none).
  std::vector<RegisteredModel> versions(const std::string& name) const;

  // "catalog.schema.model" (latest) or "catalog.schema.model/3". Errors name what is missing.
  RegisteredModel resolve(const std::string& reference) const;

  // Deletes one version, or every version of the name, rows and files. Returns what was
  // deleted; errors when there is nothing to delete. Version numbers are not reused while a
  // newer version exists (the next one is always the highest so far + 1).
  std::vector<RegisteredModel> delete_model(const std::string& name, std::optional<int64_t> version = std::nullopt);

  const std::filesystem::path& storage_root() const { return root_; }
  // <root>/catalog/schema/model
  std::filesystem::path model_folder(const std::string& name) const;

 private:
  int64_t now() const;
  std::shared_ptr<Database> db_;
  std::function<int64_t()> now_ms_;
  std::filesystem::path root_;
};

}  // namespace tessera
