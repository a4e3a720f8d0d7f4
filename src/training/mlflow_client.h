#pragma once
// A client for an MLflow tracking server's REST API (2.0): experiments, runs, params, metrics,
// artifacts and the model registry, enough for a training run to report itself. It speaks
// plain HTTP(S) through cpp-httplib; no Python and no MLflow library are involved.
//
// Every failure is one tessera::Error line that names the request and what the server said:
//   mlflow: POST /api/2.0/mlflow/runs/create: HTTP 404: No Experiment with id=7 exists
//
// Authentication comes from the same environment variables MLflow's own clients read:
// MLFLOW_TRACKING_TOKEN (sent as a Bearer token), else MLFLOW_TRACKING_USERNAME and
// MLFLOW_TRACKING_PASSWORD (HTTP Basic).
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::training {

struct MlflowAuth {
  std::string token;  // Bearer
  std::string username, password;  // Basic, when there is no token

  // From MLFLOW_TRACKING_TOKEN / MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
  static MlflowAuth from_env();
};

struct MlflowRunInfo {
  std::string run_id;
  std::string experiment_id;
  std::string run_name;
  std::string status;  // RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
  std::string artifact_uri;  // "mlflow-artifacts:/1/<run>/artifacts", "file:///...", ...
  int64_t start_time_ms = 0;
  std::optional<int64_t> end_time_ms;
};

struct MlflowMetric {
  std::string key;
  double value = 0;
  int64_t timestamp_ms = 0;
  int64_t step = 0;
};

struct MlflowModelVersion {
  std::string name;
  std::string version;  // MLflow returns versions as strings
  std::string source;
  std::string run_id;
  std::string status;
};

// The tracking server to use: `configured` (a config's tracking_uri) when it is set, else
// $MLFLOW_TRACKING_URI; nullopt when neither is.
std::optional<std::string> resolve_tracking_uri(const std::string& configured);

class MlflowClient {
 public:
  // tracking_uri: "http://host:port" or "https://...", optionally with a path prefix
  // ("http://host/mlflow"). Anything else (databricks, file:, sqlite:) is an error saying so.
  explicit MlflowClient(const std::string& tracking_uri, MlflowAuth auth = MlflowAuth::from_env());
  ~MlflowClient();
  MlflowClient(const MlflowClient&) = delete;
  MlflowClient& operator=(const MlflowClient&) = delete;

  const std::string& tracking_uri() const { return tracking_uri_; }

  // The id of the experiment with this name (e.g. "/Users/me/my_experiment"), created when
  // missing. Another client creating it at the same moment is tolerated.
  std::string get_or_create_experiment(const std::string& name);
  // nullopt when there is no such experiment.
  std::optional<std::string> find_experiment(const std::string& name);

  // A new run in RUNNING state. The tags mlflow.runName and mlflow.source.name=tessera are added
  // unless `tags` sets them.
  MlflowRunInfo create_run(const std::string& experiment_id, const std::string& run_name, int64_t start_time_ms,
                           const std::map<std::string, std::string>& tags = {});
  MlflowRunInfo get_run(const std::string& run_id);

  // In batches of 100 (the server's limit per call). Values longer than MLflow accepts are cut.
  void log_params(const std::string& run_id, const std::vector<std::pair<std::string, std::string>>& params);
  // In batches of 1000 (the server's limit per call). Non-finite values are sent as MLflow's
  // JSON spellings ("NaN", "Infinity", "-Infinity").
  void log_metrics(const std::string& run_id, const std::vector<MlflowMetric>& metrics);
  void set_tag(const std::string& run_id, const std::string& key, const std::string& value);
  // status: FINISHED, FAILED or KILLED.
  void set_terminated(const std::string& run_id, const std::string& status, int64_t end_time_ms);

  // Uploads one file to <artifact_uri>/<artifact_path>/<file name> (artifact_path may be "").
  // Through the server's artifact proxy for "mlflow-artifacts:" URIs; a copy for "file:" URIs
  // and plain paths. Other stores (s3:, gs:, ...) are an error.
  void log_artifact(const std::string& run_id, const std::filesystem::path& file, const std::string& artifact_path = "");
  // Every file under `folder`, keeping the layout, under <artifact_uri>/<artifact_path>/.
  // Returns the artifact URI of that folder, e.g. "mlflow-artifacts:/1/<run>/artifacts/model".
  std::string log_artifacts(const std::string& run_id, const std::filesystem::path& folder,
                            const std::string& artifact_path = "");

  // Creates the registered model when missing (RESOURCE_ALREADY_EXISTS is fine) and adds a version
  // whose source is `source` (an artifact URI) made by `run_id`.
  MlflowModelVersion register_model(const std::string& name, const std::string& source, const std::string& run_id,
                                    const std::string& description = "");

  // Raw calls under the tracking URI, e.g. get("/api/2.0/mlflow/runs/get", {{"run_id", id}}).
  // The parsed JSON body on 2xx; an Error as described above otherwise.
  nlohmann::json get(const std::string& path, const std::vector<std::pair<std::string, std::string>>& query = {});
  nlohmann::json post(const std::string& path, const nlohmann::json& body);

 private:
  struct Http;
  void put_file(const std::string& path, const std::filesystem::path& file);
  // Writes `file` to <artifact_uri>/<relative> for any store this client supports.
  void store_artifact(const MlflowRunInfo& run, const std::filesystem::path& file, const std::string& relative);

  std::string tracking_uri_;
  std::string base_path_;  // the URI's path prefix without a trailing '/', often ""
  MlflowAuth auth_;
  std::unique_ptr<Http> http_;
};

}  // namespace tessera::training
