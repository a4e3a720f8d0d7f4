#include "training/mlflow_client.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <system_error>

#include <fmt/format.h>

#include "core/error.h"

namespace tessera::training {

namespace {

constexpr int kConnectTimeoutS = 5;
constexpr int kReadTimeoutS = 30;
constexpr int kWriteTimeoutS = 30;
// The server's limits per runs/log-batch call.
constexpr size_t kMaxMetricsPerBatch = 1000;
constexpr size_t kMaxParamsPerBatch = 100;
// MLflow refuses longer param values (MAX_PARAM_VAL_LENGTH).
constexpr size_t kMaxParamValueBytes = 6000;

const std::string kApi = "/api/2.0/mlflow";
const std::string kArtifactsApi = "/api/2.0/mlflow-artifacts/artifacts";

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// Percent-encoding for a path segment or a query value: unreserved characters stay, and '/'
// stays where it separates path segments.
std::string percent_encode(std::string_view text, bool keep_slash) {
  std::string out;
  for (unsigned char c : text) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                       c == '_' || c == '.' || c == '~' || (keep_slash && c == '/');
    if (plain)
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

// One line from whatever the server sent: the JSON "message" when there is one, else the start
// of the body.
std::string server_message(const std::string& body) {
  std::string message;
  try {
    const auto j = nlohmann::json::parse(body);
    if (j.is_object() && j.contains("message") && j["message"].is_string()) message = j["message"].get<std::string>();
    if (message.empty() && j.is_object() && j.contains("error_code") && j["error_code"].is_string())
      message = j["error_code"].get<std::string>();
  } catch (const nlohmann::json::exception&) {
  }
  if (message.empty()) message = body.substr(0, 300);
  // A server's message can carry a whole SQL traceback; the first line says what happened.
  if (const size_t nl = message.find_first_of("\r\n"); nl != std::string::npos) message.resize(nl);
  while (!message.empty() && message.back() == ' ') message.pop_back();
  return message.empty() ? "(no message)" : message;
}

std::string error_code_of(const std::string& body) {
  try {
    const auto j = nlohmann::json::parse(body);
    if (j.is_object() && j.contains("error_code") && j["error_code"].is_string())
      return j["error_code"].get<std::string>();
  } catch (const nlohmann::json::exception&) {
  }
  return "";
}

// Cuts at a character boundary, so that a long UTF-8 value stays valid UTF-8.
std::string utf8_prefix(const std::string& text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t end = max_bytes;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return text.substr(0, end);
}

nlohmann::json metric_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return v;
}

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  std::string out = a;
  while (!out.empty() && out.back() == '/') out.pop_back();
  size_t start = 0;
  while (start < b.size() && b[start] == '/') ++start;
  return out + "/" + b.substr(start);
}

// "model/weights", "": no "..", no empty segment, no backslash, so that an artifact path cannot
// climb out of the run's artifact folder.
void check_artifact_path(const std::string& path) {
  if (path.empty()) return;
  if (path.front() == '/' || path.back() == '/' || path.find("//") != std::string::npos ||
      path.find('\\') != std::string::npos)
    fail("mlflow: artifact path '{}': expected relative segments like 'model/weights'", path);
  size_t start = 0;
  while (start <= path.size()) {
    const size_t end = std::min(path.find('/', start), path.size());
    const std::string segment = path.substr(start, end - start);
    if (segment == "." || segment == "..") fail("mlflow: artifact path '{}': '{}' is not allowed", path, segment);
    start = end + 1;
  }
}

MlflowRunInfo read_run_info(const nlohmann::json& info) {
  MlflowRunInfo r;
  r.run_id = info.value("run_id", info.value("run_uuid", ""));
  r.experiment_id = info.value("experiment_id", "");
  r.run_name = info.value("run_name", "");
  r.status = info.value("status", "");
  r.artifact_uri = info.value("artifact_uri", "");
  // Times are int64 in the protocol; some servers send them as strings.
  const auto time_of = [&](const char* key) -> std::optional<int64_t> {
    if (!info.contains(key)) return std::nullopt;
    const auto& v = info[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_string()) {
      try {
        return std::stoll(v.get<std::string>());
      } catch (const std::exception&) {
      }
    }
    return std::nullopt;
  };
  r.start_time_ms = time_of("start_time").value_or(0);
  r.end_time_ms = time_of("end_time");
  return r;
}

}  // namespace

std::optional<std::string> resolve_tracking_uri(const std::string& configured) {
  if (!configured.empty()) return configured;
  const std::string env = env_or_empty("MLFLOW_TRACKING_URI");
  if (!env.empty()) return env;
  return std::nullopt;
}

MlflowAuth MlflowAuth::from_env() {
  MlflowAuth auth;
  auth.token = env_or_empty("MLFLOW_TRACKING_TOKEN");
  auth.username = env_or_empty("MLFLOW_TRACKING_USERNAME");
  auth.password = env_or_empty("MLFLOW_TRACKING_PASSWORD");
  return auth;
}

struct MlflowClient::Http {
  std::unique_ptr<httplib::Client> client;
  std::string origin;  // scheme://host[:port], for errors and for http artifact URIs

  struct Response {
    int status = 0;
    std::string body;
  };

  // Sends and returns whatever came back; throws only when nothing did.
  template <typename Send>
  Response send(const std::string& method, const std::string& path, Send&& send_request) {
    httplib::Result result = send_request();
    if (!result)
      fail("mlflow: {} {}: cannot reach {} ({})", method, path, origin, httplib::to_string(result.error()));
    return {result->status, result->body};
  }
};

MlflowClient::MlflowClient(const std::string& tracking_uri, MlflowAuth auth)
    : tracking_uri_(tracking_uri), auth_(std::move(auth)), http_(std::make_unique<Http>()) {
  const auto scheme_end = tracking_uri.find("://");
  const std::string scheme = scheme_end == std::string::npos ? "" : tracking_uri.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https")
    fail("mlflow: tracking URI '{}': expected an http:// or https:// URL of an MLflow tracking server", tracking_uri);
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
  if (scheme == "https")
    fail("mlflow: tracking URI '{}': this build has no TLS support; use an http:// URL", tracking_uri);
#endif
  const size_t host_start = scheme_end + 3;
  const size_t path_start = tracking_uri.find('/', host_start);
  const std::string authority = tracking_uri.substr(host_start, path_start - host_start);
  if (authority.empty() || authority.find('@') != std::string::npos || authority.find('?') != std::string::npos)
    fail("mlflow: tracking URI '{}': expected scheme://host[:port][/path]", tracking_uri);
  if (path_start != std::string::npos) base_path_ = tracking_uri.substr(path_start);
  while (!base_path_.empty() && base_path_.back() == '/') base_path_.pop_back();
  if (base_path_.find_first_of("?#") != std::string::npos)
    fail("mlflow: tracking URI '{}': a query or fragment is not allowed", tracking_uri);

  http_->origin = scheme + "://" + authority;
  http_->client = std::make_unique<httplib::Client>(http_->origin);
  if (!http_->client->is_valid()) fail("mlflow: tracking URI '{}': not a usable URL", tracking_uri);
  auto& c = *http_->client;
  c.set_connection_timeout(kConnectTimeoutS, 0);
  c.set_read_timeout(kReadTimeoutS, 0);
  c.set_write_timeout(kWriteTimeoutS, 0);
  c.set_keep_alive(true);
  // Paths are percent-encoded here, segment by segment; httplib must not encode them again.
  c.set_url_encode(false);
  if (!auth_.token.empty())
    c.set_bearer_token_auth(auth_.token);
  else if (!auth_.username.empty() || !auth_.password.empty())
    c.set_basic_auth(auth_.username, auth_.password);
}

MlflowClient::~MlflowClient() = default;

namespace {
[[noreturn]] void fail_http(const std::string& method, const std::string& path, int status, const std::string& body) {
  fail("mlflow: {} {}: HTTP {}: {}", method, path, status, server_message(body));
}

nlohmann::json parse_body(const std::string& method, const std::string& path, const std::string& body) {
  if (body.empty()) return nlohmann::json::object();
  try {
    return nlohmann::json::parse(body);
  } catch (const nlohmann::json::exception&) {
    fail("mlflow: {} {}: the reply is not JSON: {}", method, path, server_message(body));
  }
}
}  // namespace

nlohmann::json MlflowClient::get(const std::string& path,
                                 const std::vector<std::pair<std::string, std::string>>& query) {
  std::string target = base_path_ + percent_encode(path, true);
  for (size_t i = 0; i < query.size(); ++i) {
    target += i == 0 ? '?' : '&';
    target += percent_encode(query[i].first, false);
    target += '=';
    target += percent_encode(query[i].second, false);
  }
  const auto r = http_->send("GET", path, [&] { return http_->client->Get(target); });
  if (r.status < 200 || r.status >= 300) fail_http("GET", path, r.status, r.body);
  return parse_body("GET", path, r.body);
}

nlohmann::json MlflowClient::post(const std::string& path, const nlohmann::json& body) {
  const std::string target = base_path_ + percent_encode(path, true);
  const std::string text = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const auto r = http_->send("POST", path, [&] { return http_->client->Post(target, text, "application/json"); });
  if (r.status < 200 || r.status >= 300) fail_http("POST", path, r.status, r.body);
  return parse_body("POST", path, r.body);
}

std::optional<std::string> MlflowClient::find_experiment(const std::string& name) {
  const std::string path = kApi + "/experiments/get-by-name";
  const std::string target = base_path_ + path + "?experiment_name=" + percent_encode(name, false);
  const auto r = http_->send("GET", path, [&] { return http_->client->Get(target); });
  if (r.status == 404 && error_code_of(r.body) == "RESOURCE_DOES_NOT_EXIST") return std::nullopt;
  if (r.status < 200 || r.status >= 300) fail_http("GET", path, r.status, r.body);
  const auto j = parse_body("GET", path, r.body);
  const auto& experiment = j.value("experiment", nlohmann::json::object());
  const std::string id = experiment.value("experiment_id", "");
  if (id.empty()) fail("mlflow: GET {}: the reply names no experiment_id", path);
  if (experiment.value("lifecycle_stage", "") == "deleted")
    fail("mlflow: experiment '{}' (id {}) is deleted; restore it or choose another experiment_path", name, id);
  return id;
}

std::string MlflowClient::get_or_create_experiment(const std::string& name) {
  if (name.empty()) fail("mlflow: the experiment name must not be empty");
  if (auto id = find_experiment(name)) return *id;
  const std::string path = kApi + "/experiments/create";
  const std::string text = nlohmann::json{{"name", name}}.dump();
  const auto r = http_->send("POST", path, [&] {
    return http_->client->Post(base_path_ + path, text, "application/json");
  });
  // Someone else created it between the lookup and the create.
  if (error_code_of(r.body) == "RESOURCE_ALREADY_EXISTS")
    if (auto id = find_experiment(name)) return *id;
  if (r.status < 200 || r.status >= 300) fail_http("POST", path, r.status, r.body);
  const auto j = parse_body("POST", path, r.body);
  const std::string id = j.value("experiment_id", "");
  if (id.empty()) fail("mlflow: POST {}: the reply names no experiment_id", path);
  return id;
}

MlflowRunInfo MlflowClient::create_run(const std::string& experiment_id, const std::string& run_name,
                                       int64_t start_time_ms, const std::map<std::string, std::string>& tags) {
  std::map<std::string, std::string> all = tags;
  all.emplace("mlflow.runName", run_name);
  all.emplace("mlflow.source.name", "tessera");
  all.emplace("mlflow.source.type", "LOCAL");
  nlohmann::json tag_list = nlohmann::json::array();
  for (const auto& [k, v] : all) tag_list.push_back({{"key", k}, {"value", v}});
  const auto j = post(kApi + "/runs/create", {{"experiment_id", experiment_id},
                                              {"run_name", run_name},
                                              {"start_time", start_time_ms},
                                              {"tags", tag_list}});
  if (!j.contains("run") || !j["run"].contains("info"))
    fail("mlflow: POST {}/runs/create: the reply has no run.info", kApi);
  return read_run_info(j["run"]["info"]);
}

MlflowRunInfo MlflowClient::get_run(const std::string& run_id) {
  const auto j = get(kApi + "/runs/get", {{"run_id", run_id}});
  if (!j.contains("run") || !j["run"].contains("info")) fail("mlflow: GET {}/runs/get: the reply has no run.info", kApi);
  return read_run_info(j["run"]["info"]);
}

void MlflowClient::log_params(const std::string& run_id, const std::vector<std::pair<std::string, std::string>>& params) {
  for (size_t start = 0; start < params.size(); start += kMaxParamsPerBatch) {
    nlohmann::json batch = nlohmann::json::array();
    for (size_t i = start; i < std::min(params.size(), start + kMaxParamsPerBatch); ++i)
      batch.push_back({{"key", params[i].first}, {"value", utf8_prefix(params[i].second, kMaxParamValueBytes)}});
    post(kApi + "/runs/log-batch", {{"run_id", run_id}, {"params", batch}});
  }
}

void MlflowClient::log_metrics(const std::string& run_id, const std::vector<MlflowMetric>& metrics) {
  for (size_t start = 0; start < metrics.size(); start += kMaxMetricsPerBatch) {
    nlohmann::json batch = nlohmann::json::array();
    for (size_t i = start; i < std::min(metrics.size(), start + kMaxMetricsPerBatch); ++i) {
      const auto& m = metrics[i];
      batch.push_back({{"key", m.key}, {"value", metric_value(m.value)}, {"timestamp", m.timestamp_ms}, {"step", m.step}});
    }
    post(kApi + "/runs/log-batch", {{"run_id", run_id}, {"metrics", batch}});
  }
}

void MlflowClient::set_tag(const std::string& run_id, const std::string& key, const std::string& value) {
  post(kApi + "/runs/set-tag", {{"run_id", run_id}, {"key", key}, {"value", value}});
}

void MlflowClient::set_terminated(const std::string& run_id, const std::string& status, int64_t end_time_ms) {
  if (status != "FINISHED" && status != "FAILED" && status != "KILLED")
    fail("mlflow: run status '{}': expected FINISHED, FAILED or KILLED", status);
  post(kApi + "/runs/update", {{"run_id", run_id}, {"status", status}, {"end_time", end_time_ms}});
}

void MlflowClient::put_file(const std::string& path, const std::filesystem::path& file) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(file, ec);
  if (ec) fail("{}: cannot read: {}", file.string(), ec.message());
  auto in = std::make_shared<std::ifstream>(file, std::ios::binary);
  if (!*in) fail("{}: cannot open for reading", file.string());
  const std::string target = base_path_ + percent_encode(path, true);
  // Streamed from the file: checkpoints can be far larger than memory should hold twice.
  const auto r = http_->send("PUT", path, [&] {
    return http_->client->Put(
        target, static_cast<size_t>(size),
        [in](size_t offset, size_t length, httplib::DataSink& sink) {
          char buffer[1 << 16];
          in->seekg(static_cast<std::streamoff>(offset));
          const size_t n = std::min(length, sizeof buffer);
          in->read(buffer, static_cast<std::streamsize>(n));
          if (in->gcount() <= 0) return false;
          return sink.write(buffer, static_cast<size_t>(in->gcount()));
        },
        "application/octet-stream");
  });
  if (r.status < 200 || r.status >= 300) fail_http("PUT", path, r.status, r.body);
}

void MlflowClient::store_artifact(const MlflowRunInfo& run, const std::filesystem::path& file,
                                  const std::string& relative) {
  const std::string& uri = run.artifact_uri;
  if (uri.empty()) fail("mlflow: run {} has no artifact_uri", run.run_id);
  if (uri.starts_with("mlflow-artifacts:")) {
    // "mlflow-artifacts:/1/<run>/artifacts", or with an authority, "mlflow-artifacts://host:port/1/...":
    // either way the proxy of the tracking server stores it under the path.
    std::string rest = uri.substr(std::string_view("mlflow-artifacts:").size());
    if (rest.starts_with("//")) {
      const size_t slash = rest.find('/', 2);
      rest = slash == std::string::npos ? "" : rest.substr(slash);
    }
    while (!rest.empty() && rest.front() == '/') rest.erase(0, 1);
    put_file(join_path(kArtifactsApi, join_path(rest, relative)), file);
    return;
  }
  if (uri.starts_with(http_->origin + "/")) {
    // An http artifact root on this same server (MLflow's HTTP artifact repository).
    std::string path = uri.substr(http_->origin.size());
    if (!base_path_.empty() && path.starts_with(base_path_)) path = path.substr(base_path_.size());
    put_file(join_path(path, relative), file);
    return;
  }
  std::string local;
  if (uri.starts_with("file://")) {
    local = uri.substr(7);
    // file://host/path: only the local host is meaningful here.
    if (!local.empty() && local.front() != '/') {
      const size_t slash = local.find('/');
      if (local.substr(0, slash) != "localhost")
        fail("mlflow: artifact URI '{}' is on another host; only local file: URIs can be written", uri);
      local = slash == std::string::npos ? "/" : local.substr(slash);
    }
  } else if (uri.find("://") == std::string::npos && uri.find(':') == std::string::npos) {
    local = uri;
  } else {
    fail("mlflow: artifact store '{}' is not supported (use the tracking server's artifact proxy, "
         "`mlflow server --serve-artifacts`, or a local file: store)",
         uri);
  }
  const std::filesystem::path target = std::filesystem::path(local) / relative;
  std::error_code ec;
  std::filesystem::create_directories(target.parent_path(), ec);
  if (ec) fail("{}: cannot create the folder: {}", target.parent_path().string(), ec.message());
  std::filesystem::copy_file(file, target, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) fail("{}: cannot copy to {}: {}", file.string(), target.string(), ec.message());
}

void MlflowClient::log_artifact(const std::string& run_id, const std::filesystem::path& file,
                                const std::string& artifact_path) {
  check_artifact_path(artifact_path);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) fail("{}: not a file", file.string());
  const MlflowRunInfo run = get_run(run_id);
  store_artifact(run, file, join_path(artifact_path, file.filename().string()));
}

std::string MlflowClient::log_artifacts(const std::string& run_id, const std::filesystem::path& folder,
                                        const std::string& artifact_path) {
  check_artifact_path(artifact_path);
  std::error_code ec;
  if (!std::filesystem::is_directory(folder, ec)) fail("{}: not a folder", folder.string());
  std::vector<std::filesystem::path> files;
  for (auto it = std::filesystem::recursive_directory_iterator(folder, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
    if (it->is_regular_file()) files.push_back(it->path());
  if (ec) fail("{}: cannot list: {}", folder.string(), ec.message());
  std::sort(files.begin(), files.end());
  const MlflowRunInfo run = get_run(run_id);
  for (const auto& file : files)
    store_artifact(run, file, join_path(artifact_path, file.lexically_relative(folder).generic_string()));
  return join_path(run.artifact_uri, artifact_path);
}

MlflowModelVersion MlflowClient::register_model(const std::string& name, const std::string& source,
                                                const std::string& run_id, const std::string& description) {
  const std::string create_path = kApi + "/registered-models/create";
  const std::string text = nlohmann::json{{"name", name}}.dump();
  const auto r = http_->send("POST", create_path, [&] {
    return http_->client->Post(base_path_ + create_path, text, "application/json");
  });
  const bool exists = error_code_of(r.body) == "RESOURCE_ALREADY_EXISTS";
  if (!exists && (r.status < 200 || r.status >= 300)) fail_http("POST", create_path, r.status, r.body);

  nlohmann::json body = {{"name", name}, {"source", source}};
  if (!run_id.empty()) body["run_id"] = run_id;
  if (!description.empty()) body["description"] = description;
  const auto j = post(kApi + "/model-versions/create", body);
  const auto& mv = j.value("model_version", nlohmann::json::object());
  MlflowModelVersion v;
  v.name = mv.value("name", name);
  v.version = mv.contains("version") ? (mv["version"].is_string() ? mv["version"].get<std::string>()
                                                                  : mv["version"].dump())
                                     : "";
  v.source = mv.value("source", source);
  v.run_id = mv.value("run_id", run_id);
  v.status = mv.value("status", "");
  if (v.version.empty()) fail("mlflow: POST {}/model-versions/create: the reply names no version", kApi);
  return v;
}

}  // namespace tessera::training
