#pragma once
// The fine-tuning REST API, served beside the inference API with the same tokens:
//
//   POST /api/2.0/fine-tuning/runs               create (validate_only: check and plan only)
//   GET  /api/2.0/fine-tuning/runs               list (newest first; ?limit=N)
//   GET  /api/2.0/fine-tuning/runs/{id}          one run, with its events
//   GET  /api/2.0/fine-tuning/runs/{id}/metrics  its metric series (loss, lr, eval_loss, ...)
//   POST /api/2.0/fine-tuning/runs/{id}/cancel   stop it (it saves a checkpoint first)
//
// A run is visible to the token that created it and to admin tokens; to anyone else it does
// not exist (404). Runs started on the command line have no owner and are visible to admin
// tokens only. Data paths are read by the server, so they must be absolute paths on its machine.
// A create whose data has problems answers 400 with every problem (file, line, message) and
// starts nothing.
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "store/database.h"
#include "store/token_store.h"

namespace tessera::server {

class FinetuneApi {
 public:
  // home: the data folder whose database `db` is; runs keep their logs and checkpoints there and
  // their trainers are started with it as TESSERA_HOME.
  FinetuneApi(std::shared_ptr<Database> db, std::filesystem::path home);

  nlohmann::json create(const nlohmann::json& body, const ApiToken& caller);
  nlohmann::json list(const ApiToken& caller, std::optional<int64_t> limit);
  nlohmann::json get(const std::string& id, const ApiToken& caller);
  nlohmann::json metrics(const std::string& id, const ApiToken& caller);
  nlohmann::json cancel(const std::string& id, const ApiToken& caller);

 private:
  std::shared_ptr<Database> db_;
  std::filesystem::path home_;
};

}  // namespace tessera::server
