// The MLflow REST client against a real tracking server (`mlflow server` from the dev venv, on
// loopback, with a SQLite backend and a proxied artifact store in a temporary folder), checked
// through the server's own REST API; and its requests, auth and errors against a stand-in
// server written here.
#include <gtest/gtest.h>

#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <fcntl.h>
#include <glob.h>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "training/mlflow_client.h"

using namespace tessera;
using namespace tessera::testing;
using tessera::training::MlflowAuth;
using tessera::training::MlflowClient;
using tessera::training::MlflowMetric;
using json = nlohmann::json;

namespace {

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

std::filesystem::path venv_python() { return source_dir() / ".venv" / "bin" / "python"; }

// Whether the venv has the mlflow package, without the seconds that importing it takes.
bool venv_has_mlflow() {
  glob_t g{};
  const std::string pattern = (source_dir() / ".venv" / "lib" / "python3*" / "site-packages" / "mlflow" / "__init__.py").string();
  const bool found = glob(pattern.c_str(), 0, nullptr, &g) == 0 && g.gl_pathc > 0;
  globfree(&g);
  return found && std::filesystem::exists(venv_python());
}

// One tracking server for the whole suite: starting it takes longer than all the tests.
class MlflowServer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!venv_has_mlflow()) {
      skip_reason_ = "no mlflow in " + venv_python().string() + " (scripts/setup installs requirements-dev.txt)";
      return;
    }
    tmp_ = new TempDir();
    port_ = free_port();
    uri_ = "http://127.0.0.1:" + std::to_string(port_);
    const std::string python = venv_python().string();
    const std::string backend = "sqlite:///" + (tmp_->path() / "mlflow.db").string();
    const std::string artifacts = (tmp_->path() / "artifacts").string();
    const std::string log = (tmp_->path() / "server.log").string();
    const std::string port = std::to_string(port_);
    pid_ = fork();
    if (pid_ == 0) {
      // Its own process group, so that the workers it starts go down with it.
      setsid();
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      if (chdir(tmp_->path().c_str()) != 0) _exit(126);
      execl(python.c_str(), python.c_str(), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", port.c_str(),
            "--workers", "1", "--backend-store-uri", backend.c_str(), "--artifacts-destination", artifacts.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    httplib::Client probe("127.0.0.1", port_);
    probe.set_connection_timeout(1, 0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto r = probe.Get("/health"); r && r->status == 200) return;
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    failure_ = "the MLflow server did not come up; its log:\n" + read_file(tmp_->path() / "server.log");
  }

  static void TearDownTestSuite() {
    if (pid_ > 0) {
      kill(-pid_, SIGTERM);
      int status = 0;
      for (int i = 0; i < 100 && waitpid(pid_, &status, WNOHANG) == 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      kill(-pid_, SIGKILL);
      waitpid(pid_, &status, WNOHANG);
      pid_ = -1;
    }
    delete tmp_;
    tmp_ = nullptr;
  }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(failure_.empty()) << failure_;
  }

  // A GET straight to the server, not through the client under test.
  static json raw_get(const std::string& path) {
    httplib::Client c("127.0.0.1", port_);
    auto r = c.Get(path);
    if (!r) return json{{"transport_error", httplib::to_string(r.error())}};
    if (r->status != 200) return json{{"status", r->status}, {"body", r->body}};
    return json::parse(r->body);
  }

  static std::string raw_get_bytes(const std::string& path) {
    httplib::Client c("127.0.0.1", port_);
    auto r = c.Get(path);
    return r && r->status == 200 ? r->body : "<HTTP " + (r ? std::to_string(r->status) : "error") + ">";
  }

  // The parts of the one test below: one test, so that ctest starts one server, not one per part.
  void ExperimentRunParamsMetricsAndTermination();
  void ArtifactFolderUploadAndModelRegistration();
  void ErrorsNameTheRequestAndTheServersMessage();

  static inline TempDir* tmp_ = nullptr;
  static inline pid_t pid_ = -1;
  static inline int port_ = 0;
  static inline std::string uri_, skip_reason_, failure_;
};

}  // namespace

void MlflowServer::ExperimentRunParamsMetricsAndTermination() {
  MlflowClient client(uri_, MlflowAuth{});
  EXPECT_FALSE(client.find_experiment("/Users/me/missing"));
  const std::string exp = client.get_or_create_experiment("/Users/me/my_experiment");
  EXPECT_FALSE(exp.empty());
  EXPECT_EQ(client.get_or_create_experiment("/Users/me/my_experiment"), exp) << "found, not created twice";

  const int64_t start = 1'790'000'000'000;
  const auto run = client.create_run(exp, "pretrain-dbrx-tiny-abc123", start, {{"tessera.run_id", "pretrain-dbrx-tiny-abc123"}});
  EXPECT_EQ(run.experiment_id, exp);
  EXPECT_EQ(run.status, "RUNNING");
  EXPECT_EQ(run.start_time_ms, start);
  EXPECT_TRUE(run.artifact_uri.starts_with("mlflow-artifacts:")) << run.artifact_uri;

  // 150 params: two batches (the server takes 100 per call); one value longer than MLflow keeps.
  std::vector<std::pair<std::string, std::string>> params;
  for (int i = 0; i < 149; ++i) params.emplace_back(fmt::format("p{}", i), std::to_string(i * 3));
  params.emplace_back("long", std::string(7000, 'x'));
  client.log_params(run.run_id, params);

  // 2500 points: three log-batch calls of at most 1000.
  std::vector<MlflowMetric> metrics;
  for (int step = 0; step < 1250; ++step) {
    metrics.push_back({"loss", 5.0 - step * 0.001, start + step, step});
    metrics.push_back({"lr", 1e-3 * (step + 1) / 1250.0, start + step, step});
  }
  metrics.push_back({"grad_norm", std::nan(""), start, 0});
  metrics.push_back({"grad_norm", INFINITY, start + 1, 1});
  client.log_metrics(run.run_id, metrics);
  client.set_terminated(run.run_id, "FINISHED", start + 60'000);

  // Checked through MLflow itself.
  const json got = raw_get("/api/2.0/mlflow/runs/get?run_id=" + run.run_id);
  ASSERT_TRUE(got.contains("run")) << got.dump();
  EXPECT_EQ(got["run"]["info"]["status"], "FINISHED");
  EXPECT_EQ(got["run"]["info"]["end_time"], start + 60'000);
  std::map<std::string, std::string> tags, got_params;
  for (const auto& t : got["run"]["data"]["tags"]) tags[t["key"]] = t["value"];
  for (const auto& p : got["run"]["data"]["params"]) got_params[p["key"]] = p["value"];
  EXPECT_EQ(tags["mlflow.runName"], "pretrain-dbrx-tiny-abc123");
  EXPECT_EQ(tags["mlflow.source.name"], "tessera");
  EXPECT_EQ(tags["tessera.run_id"], "pretrain-dbrx-tiny-abc123");
  EXPECT_EQ(got_params.size(), 150u);
  EXPECT_EQ(got_params["p148"], "444");
  EXPECT_EQ(got_params["long"].size(), 6000u);

  const json history = raw_get("/api/2.0/mlflow/metrics/get-history?run_id=" + run.run_id + "&metric_key=loss&max_results=5000");
  ASSERT_TRUE(history.contains("metrics")) << history.dump().substr(0, 500);
  ASSERT_EQ(history["metrics"].size(), 1250u);
  std::map<int64_t, double> by_step;
  for (const auto& m : history["metrics"]) by_step[m["step"].get<int64_t>()] = m["value"].get<double>();
  EXPECT_DOUBLE_EQ(by_step[0], 5.0);
  EXPECT_DOUBLE_EQ(by_step[1249], 5.0 - 1249 * 0.001);
  const json lr = raw_get("/api/2.0/mlflow/metrics/get-history?run_id=" + run.run_id + "&metric_key=lr&max_results=5000");
  EXPECT_EQ(lr["metrics"].size(), 1250u);
  const json grad = raw_get("/api/2.0/mlflow/metrics/get-history?run_id=" + run.run_id + "&metric_key=grad_norm");
  ASSERT_EQ(grad["metrics"].size(), 2u) << grad.dump();

  // The client reads back what it wrote, too.
  const auto info = client.get_run(run.run_id);
  EXPECT_EQ(info.status, "FINISHED");
  EXPECT_EQ(info.end_time_ms, start + 60'000);
}

void MlflowServer::ArtifactFolderUploadAndModelRegistration() {
  MlflowClient client(uri_, MlflowAuth{});
  const std::string exp = client.get_or_create_experiment("/Users/me/artifacts");
  const auto run = client.create_run(exp, "with-artifacts", 1'790'000'000'000);

  TempDir model;
  std::string weights;
  for (int i = 0; i < 300'000; ++i) weights += static_cast<char>((i * 131) % 256);  // binary, with zero bytes
  write_file(model / "config.json", R"({"model_type": "dbrx"})");
  write_file(model / "model.safetensors", weights);
  std::filesystem::create_directories(model / "tokenizer files");
  write_file(model / "tokenizer files" / "tokenizer_config.json", "{}");
  const std::string uri = client.log_artifacts(run.run_id, model.path(), "model");
  EXPECT_EQ(uri, run.artifact_uri + "/model");
  client.log_artifact(run.run_id, model / "config.json", "extra/copy");

  // Listed and downloaded through MLflow's API, byte for byte.
  const json listing = raw_get("/api/2.0/mlflow/artifacts/list?run_id=" + run.run_id + "&path=model");
  std::set<std::string> listed;
  for (const auto& f : listing.value("files", json::array())) listed.insert(f["path"].get<std::string>());
  EXPECT_EQ(listed, (std::set<std::string>{"model/config.json", "model/model.safetensors", "model/tokenizer files"}))
      << listing.dump();
  std::string rest = run.artifact_uri.substr(std::string("mlflow-artifacts:/").size());
  const std::string base = "/api/2.0/mlflow-artifacts/artifacts/" + rest;
  EXPECT_EQ(raw_get_bytes(base + "/model/model.safetensors"), weights);
  EXPECT_EQ(raw_get_bytes(base + "/model/tokenizer%20files/tokenizer_config.json"), "{}");
  EXPECT_EQ(raw_get_bytes(base + "/extra/copy/config.json"), R"({"model_type": "dbrx"})");
  // And they are files in the server's artifact store.
  EXPECT_EQ(read_file(tmp_->path() / "artifacts" / rest / "model" / "model.safetensors"), weights);

  // Registered twice: the model is created once, with two versions.
  const auto v1 = client.register_model("main.default.tiny", uri, run.run_id, "first");
  const auto v2 = client.register_model("main.default.tiny", uri, run.run_id);
  EXPECT_EQ(v1.version, "1");
  EXPECT_EQ(v2.version, "2");
  const json registered = raw_get("/api/2.0/mlflow/registered-models/get?name=main.default.tiny");
  ASSERT_TRUE(registered.contains("registered_model")) << registered.dump();
  const json version = raw_get("/api/2.0/mlflow/model-versions/get?name=main.default.tiny&version=1");
  ASSERT_TRUE(version.contains("model_version")) << version.dump();
  EXPECT_EQ(version["model_version"]["source"], uri);
  EXPECT_EQ(version["model_version"]["run_id"], run.run_id);
  EXPECT_EQ(version["model_version"]["description"], "first");

  // Artifact paths cannot climb out of the run.
  EXPECT_NE(error_of([&] { client.log_artifacts(run.run_id, model.path(), "../x"); }).find("not allowed"),
            std::string::npos);
}

void MlflowServer::ErrorsNameTheRequestAndTheServersMessage() {
  MlflowClient client(uri_, MlflowAuth{});
  const std::string missing = error_of([&] { client.get_run("0123456789abcdef0123456789abcdef"); });
  EXPECT_TRUE(missing.starts_with("mlflow: GET /api/2.0/mlflow/runs/get: HTTP 404: ")) << missing;
  EXPECT_NE(missing.find("0123456789abcdef0123456789abcdef"), std::string::npos) << missing;
  EXPECT_EQ(missing.find('\n'), std::string::npos);
  const std::string bad_exp = error_of([&] { client.create_run("987654", "x", 1); });
  EXPECT_TRUE(bad_exp.starts_with("mlflow: POST /api/2.0/mlflow/runs/create: HTTP ")) << bad_exp;
  EXPECT_EQ(bad_exp.find('\n'), std::string::npos) << bad_exp;
  const std::string bad_status = error_of([&] { client.set_terminated("x", "DONE", 1); });
  EXPECT_NE(bad_status.find("FINISHED, FAILED or KILLED"), std::string::npos);
}

TEST_F(MlflowServer, TracksARunThroughTheRestApi) {
  {
    SCOPED_TRACE("experiment, run, params, metrics, termination");
    ExperimentRunParamsMetricsAndTermination();
  }
  {
    SCOPED_TRACE("artifact folder upload and model registration");
    ArtifactFolderUploadAndModelRegistration();
  }
  {
    SCOPED_TRACE("errors");
    ErrorsNameTheRequestAndTheServersMessage();
  }
}

// ---- against a stand-in server ---------------------------------------------------------------

namespace {
// An httplib server on a free loopback port that records what it is sent.
struct StandIn {
  httplib::Server server;
  int port = 0;
  std::thread thread;
  std::mutex mutex;
  std::vector<std::string> authorizations, targets;
  std::string local_artifacts;

  StandIn() {
    server.Get(".*", [this](const httplib::Request& req, httplib::Response& res) {
      record(req);
      if (req.path.ends_with("/experiments/get-by-name")) {
        res.set_content(json{{"experiment", {{"experiment_id", "42"}, {"lifecycle_stage", "active"}}}}.dump(),
                        "application/json");
      } else if (req.path.ends_with("/runs/get") && req.get_param_value("run_id") == "local") {
        // A run whose artifacts live in a local folder (a file: artifact root).
        res.set_content(json{{"run", {{"info", {{"run_id", "local"}, {"artifact_uri", "file://" + local_artifacts}}}}}}.dump(),
                        "application/json");
      } else if (req.path.ends_with("/runs/get") && req.get_param_value("run_id") == "s3") {
        res.set_content(json{{"run", {{"info", {{"run_id", "s3"}, {"artifact_uri", "s3://bucket/1/abc/artifacts"}}}}}}.dump(),
                        "application/json");
      } else if (req.path.ends_with("/runs/get")) {
        res.status = 500;
        res.set_content("{\"error_code\": \"INTERNAL_ERROR\", \"message\": \"database is locked\\nTraceback: ...\"}",
                        "application/json");
      } else {
        res.status = 502;
        res.set_content("<html>Bad Gateway</html>", "text/html");
      }
    });
    port = server.bind_to_any_port("127.0.0.1");
    thread = std::thread([this] { server.listen_after_bind(); });
    for (int i = 0; i < 500 && !server.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ~StandIn() {
    server.stop();
    thread.join();
  }
  void record(const httplib::Request& req) {
    std::lock_guard lock(mutex);
    authorizations.push_back(req.get_header_value("Authorization"));
    targets.push_back(req.target);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
};
}  // namespace

TEST(MlflowClient, AuthPrefixesAndErrorsAgainstAStandIn) {
  StandIn standin;
  {
    MlflowAuth auth;
    auth.token = "secret-token";
    MlflowClient client(standin.url() + "/mlflow/", auth);
    EXPECT_EQ(client.find_experiment("/Users/me/a b&c"), "42");
  }
  {
    MlflowAuth auth;
    auth.username = "alice";
    auth.password = "pw";
    MlflowClient client(standin.url(), auth);
    EXPECT_EQ(client.get_or_create_experiment("x"), "42");
  }
  ASSERT_EQ(standin.targets.size(), 2u);
  EXPECT_EQ(standin.authorizations[0], "Bearer secret-token");
  // The path prefix of the tracking URI is kept and the name is percent-encoded.
  EXPECT_EQ(standin.targets[0], "/mlflow/api/2.0/mlflow/experiments/get-by-name?experiment_name=%2FUsers%2Fme%2Fa%20b%26c");
  EXPECT_EQ(standin.authorizations[1], "Basic YWxpY2U6cHc=");

  MlflowClient client(standin.url(), MlflowAuth{});
  // The first line of the server's message, not the traceback after it; a non-JSON body as text.
  EXPECT_EQ(error_of([&] { client.get_run("r1"); }), "mlflow: GET /api/2.0/mlflow/runs/get: HTTP 500: database is locked");
  EXPECT_EQ(error_of([&] { client.get("/api/2.0/mlflow/other"); }),
            "mlflow: GET /api/2.0/mlflow/other: HTTP 502: <html>Bad Gateway</html>");

  // A file: artifact root is written by copying.
  TempDir tmp;
  standin.local_artifacts = (tmp / "store" / "1" / "local" / "artifacts").string();
  std::filesystem::create_directories(tmp / "model" / "sub");
  write_file(tmp / "model" / "config.json", "{}");
  write_file(tmp / "model" / "sub" / "w.bin", std::string("\0\1\2", 3));
  EXPECT_EQ(client.log_artifacts("local", tmp / "model", "model"), "file://" + standin.local_artifacts + "/model");
  EXPECT_EQ(read_file(std::filesystem::path(standin.local_artifacts) / "model" / "config.json"), "{}");
  EXPECT_EQ(read_file(std::filesystem::path(standin.local_artifacts) / "model" / "sub" / "w.bin"), std::string("\0\1\2", 3));
  const std::string s3 = error_of([&] { client.log_artifacts("s3", tmp / "model", "model"); });
  EXPECT_NE(s3.find("artifact store 's3://bucket/1/abc/artifacts' is not supported"), std::string::npos) << s3;

  // Environment variables are where the credentials come from by default.
  setenv("MLFLOW_TRACKING_TOKEN", "from-env", 1);
  const MlflowAuth env = MlflowAuth::from_env();
  unsetenv("MLFLOW_TRACKING_TOKEN");
  EXPECT_EQ(env.token, "from-env");
  unsetenv("MLFLOW_TRACKING_URI");
  EXPECT_FALSE(training::resolve_tracking_uri(""));
  EXPECT_EQ(training::resolve_tracking_uri("http://a:1"), "http://a:1");
  setenv("MLFLOW_TRACKING_URI", "http://b:2", 1);
  EXPECT_EQ(training::resolve_tracking_uri(""), "http://b:2");
  EXPECT_EQ(training::resolve_tracking_uri("http://a:1"), "http://a:1") << "the config wins";
  unsetenv("MLFLOW_TRACKING_URI");
}

TEST(MlflowClient, BadUrisAndUnreachableServersAreClearErrors) {
  for (const char* uri : {"databricks", "file:///tmp/mlruns", "sqlite:///x.db", "ftp://host", "http://"}) {
    const std::string message = error_of([&] { MlflowClient client(uri, MlflowAuth{}); });
    EXPECT_TRUE(message.starts_with("mlflow: tracking URI")) << uri << ": " << message;
  }
  MlflowClient closed("http://127.0.0.1:" + std::to_string(free_port()), MlflowAuth{});
  const auto start = std::chrono::steady_clock::now();
  const std::string message = error_of([&] { closed.get_or_create_experiment("x"); });
  EXPECT_TRUE(message.starts_with("mlflow: GET /api/2.0/mlflow/experiments/get-by-name: cannot reach http://127.0.0.1:"))
      << message;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
}
