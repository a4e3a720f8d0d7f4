#pragma once
// What `tessera serve` serves: endpoints (a name clients put in "model", a kind, the model that
// answers, prices, batching and reservation settings), read from a YAML file or made from the
// models scripts/setup installs.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "store/usage_store.h"

namespace tessera::server {

enum class EndpointKind { Chat, Completion, Image };
std::string kind_name(EndpointKind kind);

struct ImageSize {
  int64_t width = 0, height = 0;
  std::string str() const;
};

struct EndpointConfig {
  std::string name;
  EndpointKind kind = EndpointKind::Chat;
  // A folder, a .gguf file, the name of an installed model, or a registered model:
  // "registry:catalog.schema.model" (follows the latest version), "registry:catalog.schema.model/3"
  // (pinned), or the bare "catalog.schema.model[/3]" when that is not also a path.
  std::string model;
  std::string quantize;              // LLM: load-time quantization (q8_0, q4_0), empty: as stored
  Prices prices;
  // LLM endpoints.
  int64_t max_batch = 32;
  int64_t max_queue = 256;
  int64_t kv_memory_mb = 1024;
  std::optional<double> provisioned_tokens_per_second;
  int64_t default_max_tokens = 512;
  // An endpoint following a registered model's latest version looks for a newer one this
  // often (0: only when asked, POST /serving-endpoints/{name}/reload).
  double reload_interval_s = 10;
  // A `registry:` model that has no version yet: wait for one (answering 503 until then) instead
  // of refusing to start, for an endpoint set up before its fine-tuning run registers it.
  bool wait_for_registration = false;
  // Image endpoints.
  std::vector<ImageSize> sizes = {{1024, 1024}, {1280, 768}, {768, 1280}};
  int64_t steps = 30;
  int64_t max_steps = 150;           // most steps a request may ask for
  std::optional<float> guidance_scale;
  int64_t max_images = 4;            // largest n per request
  int64_t image_queue = 16;          // images waiting before 429
};

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8080;
  int threads = 0;                   // compute threads, 0: all hardware threads
  std::optional<std::filesystem::path> data_dir;  // tokens, usage, generated images
  size_t max_body_bytes = size_t{4} << 20;
  int http_threads = 128;            // connections served at once (streams hold one each)
  int image_url_ttl_minutes = 60;
  std::vector<EndpointConfig> endpoints;

  // Reads a YAML file; every mistake is one line naming the file and the key.
  static ServerConfig load(const std::filesystem::path& file);
  // The installed default models: "databricks-dbrx-instruct" (chat), and when they are installed,
  // "tessera-dbrx-tiny-instruct" (tessera's own chat model) and "databricks-shutterstock-imageai".
  static ServerConfig defaults();
  void validate() const;
};

// The registry reference an endpoint's model names ("catalog.schema.model" or with "/N"), or
// nullopt for a file, folder or installed model. "registry:..." always names the registry; a
// bare three-part name does when no file or installed model has that name.
std::optional<std::string> registry_reference(const std::string& model);

// "1024x1024" -> {1024, 1024}; throws tessera::Error otherwise.
ImageSize parse_image_size(const std::string& text);

}  // namespace tessera::server
