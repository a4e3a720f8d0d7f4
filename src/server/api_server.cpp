#include "server/api_server.h"

#include <openssl/rand.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <fstream>
#include <mutex>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/paths.h"
#include "core/thread_pool.h"
#include "models/diffusion/pipeline.h"
#include "models/llm/quantize.h"
#include "server/finetune_api.h"
#include "server/openai_api.h"
#include "server/web_assets.h"
#include "serving/chat_format.h"
#include "serving/generate.h"
#include "serving/image_service.h"
#include "serving/scheduler.h"
#include "store/database.h"
#include "store/model_registry.h"
#include "store/time_spec.h"
#include "store/token_store.h"
#include "store/usage_store.h"

namespace tessera::server {

extern const char kOpenApiYaml[];  // src/server/openapi.yaml, embedded at build time

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

int64_t unix_now() { return static_cast<int64_t>(std::time(nullptr)); }
int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string random_hex(size_t bytes) {
  std::vector<unsigned char> buf(bytes);
  if (RAND_bytes(buf.data(), static_cast<int>(buf.size())) != 1) fail("no randomness available");
  std::string out;
  for (unsigned char c : buf) out += fmt::format("{:02x}", c);
  return out;
}

std::string base64(const std::vector<uint8_t>& data) {
  static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    const uint32_t v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    out += table[v >> 18];
    out += table[(v >> 12) & 63];
    out += table[(v >> 6) & 63];
    out += table[v & 63];
  }
  if (i < data.size()) {
    const uint32_t v = (data[i] << 16) | (i + 1 < data.size() ? data[i + 1] << 8 : 0);
    out += table[v >> 18];
    out += table[(v >> 12) & 63];
    out += i + 1 < data.size() ? table[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// start_time/end_time: milliseconds since the epoch, or what `tessera usage --since` takes
// (ISO dates and times, "1h", "7d").
int64_t parse_time_ms(const std::string& text, const std::string& param) {
  if (!text.empty() && text.size() <= 15 && text.find_first_not_of("0123456789") == std::string::npos) return std::stoll(text);
  try {
    return parse_time_spec(text, unix_ms(), param);
  } catch (const Error& e) {
    throw bad_param(param, e.what());
  }
}

// A language model shared by the endpoints that name it, with its batching scheduler.
struct LlmBackend {
  std::string name;  // the first endpoint it serves, the label of its metrics
  std::shared_ptr<LanguageModel> model;
  Tokenizer tokenizer;
  ChatFormat format;
  std::unique_ptr<BatchScheduler> scheduler;
  // When the model came from the registry: which version (created_ms tells a version number
  // that was deleted and taken again apart from the one before).
  std::string registered_name;
  std::optional<int64_t> version;
  int64_t registered_ms = 0;
};

// An endpoint serving a registered model.
struct RegistrySource {
  std::string name;                 // catalog.schema.model
  std::optional<int64_t> pinned;    // nullopt: follows the latest version
  Clock::time_point next_check;
  // The version that last failed to load (version, created_ms): not tried again until the
  // registry changes.
  std::optional<std::pair<int64_t, int64_t>> failed;
};

struct Endpoint {
  EndpointConfig config;
  // Swapped when a newer registered version is loaded: read and written under
  // State::llm_mutex. A request takes its own reference at the start and keeps the model it
  // started with until it ends; the old model is freed when its last request is done.
  std::shared_ptr<LlmBackend> llm;
  std::shared_ptr<ImageService> images;
  std::shared_ptr<ThroughputReservation> reservation;
  std::optional<RegistrySource> registry;
};

// Who made a request, for metering.
struct Caller {
  std::optional<ApiToken> token;
};

}  // namespace

struct ApiServer::State {
  ServerConfig config;
  std::function<void(const std::string&)> log;
  std::filesystem::path data_dir;
  std::shared_ptr<Database> db;
  std::unique_ptr<TokenStore> tokens;
  std::unique_ptr<UsageStore> usage;
  Metrics metrics;
  std::map<std::string, Endpoint> endpoints;
  std::vector<std::shared_ptr<LlmBackend>> backends;  // under llm_mutex
  std::vector<std::weak_ptr<LlmBackend>> retired;     // swapped out, maybe still finishing requests
  std::mutex llm_mutex;
  std::unique_ptr<ModelRegistry> registry;
  std::unique_ptr<FinetuneApi> finetune;

  // Endpoints that follow a registered model's latest version are checked by this thread.
  std::mutex reload_mutex;  // one load at a time (the watcher or POST .../reload)
  std::mutex watch_mutex;
  std::condition_variable watch_cv;
  bool watch_stopping = false;
  std::thread watcher;
  httplib::Server http;
  int64_t started = unix_now();
  std::string fingerprint = "fp_tessera_" + random_hex(4);

  // Images kept for response_format=url, deleted after the configured time.
  std::filesystem::path image_dir;
  std::mutex janitor_mutex;
  std::condition_variable janitor_cv;
  bool stopping = false;
  std::thread janitor;

  void load_endpoints();
  std::shared_ptr<LlmBackend> load_backend(const EndpointConfig& ec, const std::filesystem::path& path);
  std::shared_ptr<LlmBackend> llm_of(const Endpoint& ep);
  // Loads a newer registered version for `ep` if there is one and swaps it in; true if it did.
  bool refresh(Endpoint& ep);
  void watch_registry();
  void setup_routes();
  void setup_metrics();
  void clean_images();
  int bind();  // the configured port, or any free one for port 0

  Caller authenticate(const httplib::Request& req);
  Endpoint& endpoint(const std::string& name);
  json parse_body(const httplib::Request& req);

  void handle_llm(const httplib::Request& req, httplib::Response& res, const Caller& caller, json body, bool chat);
  void handle_image(const httplib::Request& req, httplib::Response& res, const Caller& caller, const json& body);
  json image_data(const ImageJob& job, const ImageCall& call, const std::string& host);
  void meter(const Caller& caller, const Endpoint& ep, const std::string& request_id, int64_t prompt_tokens,
             int64_t completion_tokens, int64_t images, Clock::time_point start, int status);
};

namespace {

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, e.body());
  if (e.status == 429) res.set_header("Retry-After", "1");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
std::shared_ptr<LlmBackend> ApiServer::State::load_backend(const EndpointConfig& ec, const std::filesystem::path& path) {
  auto backend = std::make_shared<LlmBackend>(LlmBackend{ec.name, nullptr, load_model_tokenizer(path), {}, nullptr, "", std::nullopt, 0});
  std::shared_ptr<LanguageModel> model = load_language_model(path);
  if (!ec.quantize.empty()) {
    const auto target = dtype_from_name(ec.quantize);
    if (!target || (*target != DType::Q8_0 && *target != DType::Q4_0 && *target != DType::Q4_1))
      fail("endpoint '{}': quantize '{}' is not one of q8_0, q4_0, q4_1", ec.name, ec.quantize);
    model = quantize_model(*model, *target);
  }
  backend->model = model;
  backend->format = ChatFormat::from_template(load_chat_template(path));
  SchedulerOptions options;
  options.max_batch = ec.max_batch;
  options.max_queue = ec.max_queue;
  options.kv_memory_bytes = static_cast<size_t>(ec.kv_memory_mb) << 20;
  backend->scheduler = std::make_unique<BatchScheduler>(model, backend->tokenizer, options);
  return backend;
}

std::shared_ptr<LlmBackend> ApiServer::State::llm_of(const Endpoint& ep) {
  std::lock_guard lock(llm_mutex);
  return ep.llm;
}

void ApiServer::State::load_endpoints() {
  std::map<std::string, std::shared_ptr<LlmBackend>> by_model;
  for (const auto& ec : config.endpoints) {
    Endpoint ep;
    ep.config = ec;
    std::filesystem::path path;
    std::optional<RegisteredModel> registered;
    if (const auto reference = registry_reference(ec.model)) {
      const auto [name, pinned] = parse_model_reference(*reference);
      if (ec.wait_for_registration && !pinned && ec.kind != EndpointKind::Image && !registry->get(name)) {
        // Not registered yet (a fine-tuning run will): the endpoint answers 503 until the first
        // version appears and is loaded like any newer version.
        log(fmt::format("endpoint '{}' waits for the first version of {}", ec.name, name));
        ep.registry = RegistrySource{name, std::nullopt, Clock::now(), std::nullopt};
        endpoints.emplace(ec.name, std::move(ep));
        continue;
      }
      try {
        registered = registry->resolve(*reference);
      } catch (const Error& e) {
        if (!ec.model.starts_with("registry:"))
          fail("endpoint '{}': model '{}' is not a file, a folder, an installed model or a registered model ({})",
               ec.name, ec.model, e.what());
        fail("endpoint '{}': {}", ec.name, e.what());
      }
      ep.registry = RegistrySource{name, pinned, Clock::now() + std::chrono::milliseconds(
                                                     static_cast<int64_t>(ec.reload_interval_s * 1000)), std::nullopt};
      path = registered->path;
      if (!std::filesystem::exists(path))
        fail("endpoint '{}': {} is registered at {}, which is missing", ec.name, registered->reference(), path.string());
    } else {
      path = resolve_model_path(ec.model);
      if (!std::filesystem::exists(path))
        fail("endpoint '{}': model '{}' is not a file, a folder or an installed model{}", ec.name, ec.model,
             path.is_relative() && !ec.model.empty() && ec.model.find('/') == std::string::npos ? " (scripts/setup installs the defaults)" : "");
    }
    if (ec.kind == EndpointKind::Image) {
      log(fmt::format("loading image model {} for {}", path.string(), ec.name));
      std::shared_ptr<diffusion::DiffusionPipeline> pipeline = diffusion::DiffusionPipeline::load(path);
      ep.images = std::make_shared<ImageService>(pipeline, static_cast<size_t>(ec.image_queue));
    } else {
      // Endpoints naming the same model with the same batching settings share one scheduler
      // (and so their decode steps); different settings get a scheduler of their own. An
      // endpoint that follows the registry's latest version swaps its model on its own, so it
      // shares with nobody.
      const bool follows = ep.registry && !ep.registry->pinned;
      const std::string key = fmt::format("{}|{}|{}|{}|{}", follows ? "follow:" + ec.name : std::filesystem::weakly_canonical(path).string(),
                                          ec.quantize, ec.max_batch, ec.max_queue, ec.kv_memory_mb);
      auto& backend = by_model[key];
      if (!backend) {
        log(fmt::format("loading {} for {}", registered ? registered->reference() + " (" + path.string() + ")" : path.string(), ec.name));
        backend = load_backend(ec, path);
        if (registered) {
          backend->registered_name = registered->name;
          backend->version = registered->version;
          backend->registered_ms = registered->created_ms;
        }
        backends.push_back(backend);
      }
      ep.llm = backend;
    }
    if (ec.provisioned_tokens_per_second) ep.reservation = std::make_shared<ThroughputReservation>(*ec.provisioned_tokens_per_second);
    endpoints.emplace(ec.name, std::move(ep));
  }
}

bool ApiServer::State::refresh(Endpoint& ep) {
  if (!ep.registry || ep.registry->pinned) return false;
  std::lock_guard guard(reload_mutex);
  RegistrySource& source = *ep.registry;
  const auto latest = registry->get(source.name);
  // Every version deleted: keep serving what is loaded rather than failing requests.
  if (!latest) return false;
  const auto current = llm_of(ep);
  if (current && current->version == latest->version && current->registered_ms == latest->created_ms) return false;
  const std::pair<int64_t, int64_t> identity{latest->version, latest->created_ms};
  if (source.failed == identity) return false;
  std::shared_ptr<LlmBackend> fresh;
  try {
    log(fmt::format("loading {} ({}) for {}", latest->reference(), latest->path, ep.config.name));
    fresh = load_backend(ep.config, latest->path);
  } catch (const std::exception& e) {
    source.failed = identity;
    log(fmt::format("endpoint '{}': cannot load {}, {}: {}", ep.config.name, latest->reference(),
                    current ? fmt::format("still serving version {}", current->version.value_or(0)) : "not serving yet",
                    e.what()));
    return false;
  }
  fresh->registered_name = latest->name;
  fresh->version = latest->version;
  fresh->registered_ms = latest->created_ms;
  std::shared_ptr<LlmBackend> old;
  {
    std::lock_guard lock(llm_mutex);
    old = ep.llm;
    ep.llm = fresh;
    for (auto& b : backends)
      if (b == old) b = fresh;
    if (!old) backends.push_back(fresh);
    std::erase_if(retired, [](const std::weak_ptr<LlmBackend>& w) { return w.expired(); });
    retired.push_back(old);
  }
  log(fmt::format("endpoint '{}' now serves {}", ep.config.name, latest->reference()));
  // Requests that started on the old model keep it alive until they finish; if none is left,
  // it (and its scheduler thread) ends here, outside the locks.
  old.reset();
  return true;
}

void ApiServer::State::watch_registry() {
  std::unique_lock lock(watch_mutex);
  while (!watch_stopping) {
    auto next = Clock::now() + std::chrono::hours(1);
    for (auto& [name, ep] : endpoints) {
      if (!ep.registry || ep.registry->pinned || ep.config.reload_interval_s <= 0) continue;
      if (Clock::now() >= ep.registry->next_check) {
        lock.unlock();
        try {
          refresh(ep);
        } catch (const std::exception& e) {
          log(fmt::format("endpoint '{}': checking the registry failed: {}", name, e.what()));
        }
        lock.lock();
        if (watch_stopping) return;
        ep.registry->next_check =
            Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(ep.config.reload_interval_s * 1000));
      }
      next = std::min(next, ep.registry->next_check);
    }
    watch_cv.wait_until(lock, next);
  }
}

void ApiServer::State::setup_metrics() {
  metrics.describe("tessera_http_requests_total", "counter", "HTTP requests answered, by route and status");
  metrics.describe("tessera_request_duration_seconds", "histogram", "Time from request to the last byte of the answer");
  metrics.describe("tessera_time_to_first_token_seconds", "histogram", "Time from request to the first generated token");
  metrics.describe("tessera_prompt_tokens_total", "counter", "Prompt tokens metered");
  metrics.describe("tessera_completion_tokens_total", "counter", "Generated tokens metered");
  metrics.describe("tessera_images_total", "counter", "Images generated");
  metrics.describe("tessera_kv_blocks_used", "gauge", "KV cache blocks held by live sequences");
  metrics.describe("tessera_kv_blocks_cached", "gauge", "Free KV blocks kept for prefix reuse");
  metrics.describe("tessera_kv_blocks_total", "gauge", "KV cache blocks of the pool");
  metrics.describe("tessera_sequences_running", "gauge", "Sequences in the decode batch");
  metrics.describe("tessera_sequences_waiting", "gauge", "Sequences queued for the batch");
  metrics.describe("tessera_sequences_cancelled", "gauge", "Sequences cancelled since start (client gone or stopped)");
  metrics.describe("tessera_sequences_preempted", "gauge", "Sequences preempted since start to free KV memory");
  metrics.describe("tessera_prefix_reused_tokens", "gauge", "Prompt tokens whose KV came from the prefix cache, since start");
  metrics.describe("tessera_batch_steps", "gauge", "Batched forward steps since start");
  metrics.describe("tessera_images_queued", "gauge", "Images waiting or being generated");
  struct Field {
    const char* name;
    int64_t SchedulerStats::*member;
  };
  static const Field fields[] = {{"tessera_kv_blocks_used", &SchedulerStats::kv_blocks_used},
                                 {"tessera_kv_blocks_cached", &SchedulerStats::kv_blocks_cached},
                                 {"tessera_kv_blocks_total", &SchedulerStats::kv_blocks_total},
                                 {"tessera_sequences_running", &SchedulerStats::running},
                                 {"tessera_sequences_waiting", &SchedulerStats::waiting},
                                 {"tessera_sequences_cancelled", &SchedulerStats::cancelled},
                                 {"tessera_sequences_preempted", &SchedulerStats::preempted},
                                 {"tessera_prefix_reused_tokens", &SchedulerStats::prefix_reused_tokens},
                                 {"tessera_batch_steps", &SchedulerStats::steps}};
  for (const auto& field : fields) {
    metrics.gauge(field.name, [this, member = field.member] {
      std::vector<std::pair<Labels, double>> out;
      std::lock_guard lock(llm_mutex);
      for (const auto& b : backends)
        out.push_back({{{"endpoint", b->name}}, static_cast<double>(b->scheduler->stats().*member)});
      return out;
    });
  }
  metrics.gauge("tessera_images_queued", [this] {
    std::vector<std::pair<Labels, double>> out;
    for (const auto& [name, ep] : endpoints)
      if (ep.images) out.push_back({{{"endpoint", name}}, static_cast<double>(ep.images->queued_images())});
    return out;
  });
}

Caller ApiServer::State::authenticate(const httplib::Request& req) {
  const std::string header = req.get_header_value("Authorization");
  if (header.empty())
    throw ApiError(401,
                   "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                   "Bearer auth (i.e. Authorization: Bearer YOUR_KEY). Create one with `tessera tokens create NAME`.",
                   "invalid_request_error", std::nullopt, "missing_api_key");
  std::string secret;
  if (header.size() > 7 && strncasecmp(header.c_str(), "bearer ", 7) == 0) secret = header.substr(7);
  while (!secret.empty() && secret.front() == ' ') secret.erase(0, 1);
  auto token = secret.empty() ? std::nullopt : tokens->verify(secret);
  if (!token) {
    const std::string shown = secret.size() > 8 ? secret.substr(0, 8) + "***" : std::string("***");
    throw ApiError(401, fmt::format("Incorrect or revoked API key provided: {}.", shown), "invalid_request_error",
                   std::nullopt, "invalid_api_key");
  }
  return Caller{token};
}

Endpoint& ApiServer::State::endpoint(const std::string& name) {
  auto it = endpoints.find(name);
  if (it == endpoints.end())
    throw ApiError(404, fmt::format("The model '{}' does not exist or you do not have access to it.", name),
                   "invalid_request_error", "model", "model_not_found");
  return it->second;
}

json ApiServer::State::parse_body(const httplib::Request& req) {
  json body;
  try {
    body = json::parse(req.body);
  } catch (const json::exception&) {
    throw ApiError(400,
                   "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                   "HTTP library correctly. The OpenAI API expects a JSON payload.)",
                   "invalid_request_error");
  }
  if (!body.is_object()) throw ApiError(400, "The request body must be a JSON object.", "invalid_request_error");
  return body;
}

void ApiServer::State::meter(const Caller& caller, const Endpoint& ep, const std::string& request_id, int64_t prompt_tokens,
                             int64_t completion_tokens, int64_t images, Clock::time_point start, int status) {
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  UsageRecord r;
  r.timestamp_ms = unix_ms();
  if (caller.token) r.token_id = caller.token->id;
  r.endpoint = ep.config.name;
  r.kind = kind_name(ep.config.kind);
  r.prompt_tokens = prompt_tokens;
  r.completion_tokens = completion_tokens;
  r.images = images;
  r.latency_ms = seconds * 1000;
  r.cost_usd = request_cost(ep.config.prices, prompt_tokens, completion_tokens, images);
  r.status = status;
  r.request_id = request_id;
  usage->record(r);
  const Labels labels = {{"endpoint", ep.config.name}};
  metrics.observe("tessera_request_duration_seconds", labels, seconds);
  if (prompt_tokens) metrics.add("tessera_prompt_tokens_total", labels, static_cast<double>(prompt_tokens));
  if (completion_tokens) metrics.add("tessera_completion_tokens_total", labels, static_cast<double>(completion_tokens));
  if (images) metrics.add("tessera_images_total", labels, static_cast<double>(images));
}

// ---------------------------------------------------------------------------------------------
// Chat completions and completions: one handler, two response shapes.
void ApiServer::State::handle_llm(const httplib::Request& req, httplib::Response& res, const Caller& caller, json body,
                                  bool chat) {
  const auto start = Clock::now();
  Endpoint& ep = endpoint(requested_model(body));
  const std::shared_ptr<LlmBackend> llm_ptr = llm_of(ep);
  if (!llm_ptr && ep.registry)
    throw ApiError(503, fmt::format("'{}' serves {}, which has no registered version yet.", ep.config.name, ep.registry->name),
                   "server_error", std::nullopt, "model_not_ready");
  if (!llm_ptr)
    throw bad_param("model", fmt::format("'{}' is an image endpoint; use /images/generations", ep.config.name), "wrong_endpoint_kind");
  if (chat && ep.config.kind != EndpointKind::Chat)
    throw bad_param("model", fmt::format("'{}' is a completion endpoint; use /completions", ep.config.name), "wrong_endpoint_kind");
  LlmBackend& llm = *llm_ptr;
  LlmCall call = chat ? parse_chat(body, llm.tokenizer, llm.format, ep.config.default_max_tokens)
                      : parse_completion(body, llm.tokenizer, ep.config.default_max_tokens);
  if (call.echo && call.logprobs) throw bad_param("echo", "echo together with logprobs is not supported");
  if (!call.request.sampling.ignore_eos) call.request.stop_token_ids = default_stop_tokens(llm.tokenizer);
  call.request.endpoint = ep.config.name;
  const int64_t context = llm.model->info().max_seq_len;
  int64_t prompt_tokens = 0;
  for (const auto& p : call.prompts) {
    if (static_cast<int64_t>(p.size()) >= context)
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, your {} resulted in {} tokens. "
                                 "Please reduce the length of the {}.",
                                 context, chat ? "messages" : "prompt", p.size(), chat ? "messages" : "prompt"),
                     "invalid_request_error", chat ? "messages" : "prompt", "context_length_exceeded");
    prompt_tokens += static_cast<int64_t>(p.size());
  }

  std::vector<std::shared_ptr<RequestStream>> streams;
  try {
    for (const auto& p : call.prompts) {
      SequenceRequest request = call.request;
      request.prompt = p;
      streams.push_back(llm.scheduler->submit(std::move(request), ep.reservation));
    }
  } catch (const QueueFull&) {
    for (auto& s : streams) s->cancel();
    throw ApiError(429, fmt::format("'{}' is at capacity: too many queued requests. Retry after a moment.", ep.config.name),
                   "rate_limit_error", std::nullopt, "rate_limit_exceeded");
  } catch (const Error& e) {
    for (auto& s : streams) s->cancel();
    throw ApiError(400, e.what(), "invalid_request_error");
  }

  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + random_hex(12);
  const int64_t created = unix_now();
  const std::string model_name = ep.config.name;
  const int n = call.request.n;
  res.set_header("X-Request-Id", id);
  auto completion_tokens = [streams] {
    int64_t total = 0;
    for (const auto& s : streams) total += s->completion_tokens();
    return total;
  };
  auto first_token = [streams]() -> std::optional<double> {
    std::optional<double> best;
    for (const auto& s : streams)
      if (auto t = s->time_to_first_token(); t && (!best || *t < *best)) best = t;
    return best;
  };
  const Tokenizer tokenizer = llm.tokenizer;
  auto usage_json = [prompt_tokens](int64_t completion) {
    return json{{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion}, {"total_tokens", prompt_tokens + completion}};
  };
  // Legacy completions logprobs for a run of tokens.
  auto completion_logprobs = [tokenizer](const std::vector<TokenLogprob>& lps, size_t& offset) {
    json out = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()}, {"text_offset", json::array()}};
    for (const auto& lp : lps) {
      const std::string text = token_text(tokenizer, lp.token);
      out["tokens"].push_back(text);
      out["token_logprobs"].push_back(lp.logprob);
      json top = json::object();
      for (const auto& [tid, v] : lp.top) top[token_text(tokenizer, tid)] = v;
      out["top_logprobs"].push_back(top);
      out["text_offset"].push_back(offset);
      offset += text.size();
    }
    return out;
  };

  if (!call.stream) {
    struct Choice {
      std::string text;
      std::vector<TokenLogprob> logprobs;
      std::string finish_reason = "length";
    };
    std::vector<Choice> choices(streams.size() * static_cast<size_t>(n));
    std::string error;
    for (size_t p = 0; p < streams.size(); ++p) {
      std::vector<ChoiceEvent> events;
      while (streams[p]->next(events, std::chrono::milliseconds(500))) {
        for (auto& ev : events) {
          Choice& c = choices[p * static_cast<size_t>(n) + static_cast<size_t>(ev.choice)];
          c.text += ev.text;
          for (auto& lp : ev.logprobs) c.logprobs.push_back(std::move(lp));
          if (ev.finish_reason) c.finish_reason = *ev.finish_reason;
        }
        events.clear();
      }
      if (error.empty()) error = streams[p]->error();
    }
    const int64_t completion = completion_tokens();
    if (auto t = first_token()) metrics.observe("tessera_time_to_first_token_seconds", {{"endpoint", model_name}}, *t);
    if (!error.empty()) {
      meter(caller, ep, id, prompt_tokens, completion, 0, start, 500);
      throw ApiError(500, "The model failed: " + error, "server_error");
    }
    json out_choices = json::array();
    for (size_t i = 0; i < choices.size(); ++i) {
      const Choice& c = choices[i];
      if (chat) {
        json lp = nullptr;
        if (call.logprobs) {
          lp = {{"content", json::array()}, {"refusal", nullptr}};
          for (const auto& t : c.logprobs) lp["content"].push_back(chat_logprob(tokenizer, t));
        }
        out_choices.push_back({{"index", i},
                               {"message", {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}}},
                               {"logprobs", lp},
                               {"finish_reason", c.finish_reason}});
      } else {
        size_t offset = 0;
        std::string text = c.text;
        if (call.echo) text = call.prompt_texts[i / static_cast<size_t>(n)] + text;
        out_choices.push_back({{"index", i},
                               {"text", text},
                               {"logprobs", call.logprobs ? completion_logprobs(c.logprobs, offset) : json(nullptr)},
                               {"finish_reason", c.finish_reason}});
      }
    }
    json out = {{"id", id},
                {"object", chat ? "chat.completion" : "text_completion"},
                {"created", created},
                {"model", model_name},
                {"system_fingerprint", fingerprint},
                {"choices", out_choices},
                {"usage", usage_json(completion)}};
    meter(caller, ep, id, prompt_tokens, completion, 0, start, 200);
    send_json(res, 200, out);
    return;
  }

  // Streaming: server-sent events, one chunk per step's text per choice, then usage if asked.
  struct StreamState {
    std::vector<std::shared_ptr<RequestStream>> streams;
    bool started = false;
    bool finished = false;
    std::vector<size_t> offsets;
    Clock::time_point last_write = Clock::now();
  };
  auto st = std::make_shared<StreamState>();
  st->streams = streams;
  st->offsets.assign(streams.size() * static_cast<size_t>(n), 0);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  const bool include_usage = call.include_usage, logprobs = call.logprobs, echo = call.echo;
  const auto prompt_texts = call.prompt_texts;
  const std::string fp = fingerprint;
  auto chunk = [id, created, model_name, fp, chat, include_usage](json choices) {
    json c = {{"id", id},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", model_name},
              {"system_fingerprint", fp},
              {"choices", std::move(choices)}};
    if (include_usage) c["usage"] = nullptr;
    return "data: " + dump_json(c) + "\n\n";
  };
  Endpoint* ep_ptr = &ep;
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, llm_ptr, st, chunk, n, chat, logprobs, echo, prompt_texts, tokenizer, completion_logprobs, usage_json, completion_tokens,
       first_token, caller, ep_ptr, id, start, prompt_tokens, model_name, include_usage, created,
       fp](size_t, httplib::DataSink& sink) {
        auto write = [&](const std::string& data) {
          st->last_write = Clock::now();
          return sink.write(data.data(), data.size());
        };
        auto cancel_all = [&] {
          for (auto& s : st->streams) s->cancel();
          meter(caller, *ep_ptr, id, prompt_tokens, completion_tokens(), 0, start, 499);
          return false;
        };
        if (!st->started) {
          st->started = true;
          std::string out;
          for (size_t i = 0; i < st->offsets.size(); ++i) {
            if (chat)
              out += chunk(json::array({{{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}}}));
            else if (echo)
              out += chunk(json::array({{{"index", i}, {"text", prompt_texts[i / static_cast<size_t>(n)]}, {"logprobs", nullptr}, {"finish_reason", nullptr}}}));
          }
          if (!out.empty() && !write(out)) return cancel_all();
        }
        // Gather what every prompt's choices produced since the last call.
        std::string out;
        bool all_done = true;
        std::string error;
        for (size_t p = 0; p < st->streams.size(); ++p) {
          std::vector<ChoiceEvent> events;
          const bool more = st->streams[p]->next(events, std::chrono::milliseconds(p == 0 ? 100 : 0));
          if (more) all_done = false;
          for (auto& ev : events) {
            const size_t index = p * static_cast<size_t>(n) + static_cast<size_t>(ev.choice);
            if (!ev.text.empty() || !ev.logprobs.empty()) {
              json lp = nullptr;
              if (logprobs) {
                if (chat) {
                  lp = {{"content", json::array()}, {"refusal", nullptr}};
                  for (const auto& t : ev.logprobs) lp["content"].push_back(chat_logprob(tokenizer, t));
                } else {
                  lp = completion_logprobs(ev.logprobs, st->offsets[index]);
                }
              }
              if (chat)
                out += chunk(json::array({{{"index", index}, {"delta", {{"content", ev.text}}}, {"logprobs", lp}, {"finish_reason", nullptr}}}));
              else
                out += chunk(json::array({{{"index", index}, {"text", ev.text}, {"logprobs", lp}, {"finish_reason", nullptr}}}));
            }
            if (ev.finish_reason && *ev.finish_reason != "error" && *ev.finish_reason != "cancelled") {
              if (chat)
                out += chunk(json::array({{{"index", index}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", *ev.finish_reason}}}));
              else
                out += chunk(json::array({{{"index", index}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", *ev.finish_reason}}}));
            }
          }
          if (error.empty()) error = st->streams[p]->error();
        }
        if (!out.empty() && !write(out)) return cancel_all();
        if (!all_done) {
          // Silence (a long prompt, a full queue): a comment line keeps proxies from timing out
          // and finds out whether the client is still there.
          if (Clock::now() - st->last_write > std::chrono::seconds(2) && !write(": keep-alive\n\n")) return cancel_all();
          return true;
        }
        const int64_t completion = completion_tokens();
        if (auto t = first_token()) metrics.observe("tessera_time_to_first_token_seconds", {{"endpoint", model_name}}, *t);
        std::string tail;
        if (!error.empty()) {
          tail += "data: " + dump_json(ApiError(500, "The model failed: " + error, "server_error").body()) + "\n\n";
        } else if (include_usage) {
          json u = {{"id", id},
                    {"object", chat ? "chat.completion.chunk" : "text_completion"},
                    {"created", created},
                    {"model", model_name},
                    {"system_fingerprint", fp},
                    {"choices", json::array()},
                    {"usage", usage_json(completion)}};
          tail += "data: " + dump_json(u) + "\n\n";
        }
        tail += "data: [DONE]\n\n";
        meter(caller, *ep_ptr, id, prompt_tokens, completion, 0, start, error.empty() ? 200 : 500);
        write(tail);
        sink.done();
        return true;
      });
}

// ---------------------------------------------------------------------------------------------
void ApiServer::State::handle_image(const httplib::Request& req, httplib::Response& res, const Caller& caller,
                                    const json& body) {
  const auto start = Clock::now();
  Endpoint& ep = endpoint(requested_model(body));
  if (!ep.images)
    throw bad_param("model", fmt::format("'{}' is a language model endpoint; use /chat/completions", ep.config.name),
                    "wrong_endpoint_kind");
  const ImageCall call = parse_image(body, ep.config);
  diffusion::ImageRequest request;
  request.prompt = call.prompt;
  request.negative_prompt = call.negative_prompt;
  request.width = call.size.width;
  request.height = call.size.height;
  request.steps = call.steps.value_or(ep.config.steps);
  request.guidance = call.guidance ? call.guidance : ep.config.guidance_scale;
  if (call.seed) {
    request.seed = *call.seed;
  } else {
    uint64_t seed = 0;
    RAND_bytes(reinterpret_cast<unsigned char*>(&seed), sizeof seed);
    request.seed = seed >> 12;  // small enough to type back in
  }
  std::shared_ptr<ImageJob> job;
  try {
    job = ep.images->submit(request, call.n);
  } catch (const QueueFull&) {
    throw ApiError(429, fmt::format("'{}' is at capacity: too many queued images. Retry after a moment.", ep.config.name),
                   "rate_limit_error", std::nullopt, "rate_limit_exceeded");
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "invalid_request_error");
  }
  const std::string id = "img-" + random_hex(12);
  res.set_header("X-Request-Id", id);
  const std::string host = req.get_header_value("Host");
  if (!call.stream) {
    while (!job->wait(std::chrono::milliseconds(1000))) {
    }
    if (!job->error().empty()) {
      meter(caller, ep, id, 0, 0, 0, start, 500);
      throw ApiError(500, "Image generation failed: " + job->error(), "server_error");
    }
    json data = image_data(*job, call, host);
    meter(caller, ep, id, 0, 0, static_cast<int64_t>(data.size()), start, 200);
    send_json(res, 200, {{"created", unix_now()}, {"data", data}});
    return;
  }

  // Streaming: a progress event whenever a denoising step finishes, then the usual response as
  // a "result" event. A client that goes away cancels the job at its next step.
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  auto last_step = std::make_shared<int64_t>(-1);
  Endpoint* ep_ptr = &ep;
  res.set_chunked_content_provider(
      "text/event-stream", [this, job, call, host, caller, ep_ptr, id, start, last_step](size_t, httplib::DataSink& sink) {
        auto write = [&](const std::string& data) { return sink.write(data.data(), data.size()); };
        const bool finished = job->wait(std::chrono::milliseconds(100));
        const auto [step, total] = job->progress();
        if (step != *last_step) {
          *last_step = step;
          if (!write("data: " + dump_json({{"type", "progress"}, {"step", step}, {"total", total}}) + "\n\n")) {
            job->cancel();
            meter(caller, *ep_ptr, id, 0, 0, 0, start, 499);
            return false;
          }
        }
        if (!finished) return true;
        std::string tail;
        if (!job->error().empty()) {
          meter(caller, *ep_ptr, id, 0, 0, 0, start, 500);
          json error = ApiError(500, "Image generation failed: " + job->error(), "server_error").body();
          error["type"] = "error";
          tail = "data: " + dump_json(error) + "\n\n";
        } else {
          json data;
          try {
            data = image_data(*job, call, host);
          } catch (const std::exception& e) {
            json error = ApiError(500, e.what(), "server_error").body();
            error["type"] = "error";
            write("data: " + dump_json(error) + "\n\ndata: [DONE]\n\n");
            sink.done();
            return true;
          }
          meter(caller, *ep_ptr, id, 0, 0, static_cast<int64_t>(data.size()), start, 200);
          tail = "data: " + dump_json({{"type", "result"}, {"created", unix_now()}, {"data", data}}) + "\n\n";
        }
        tail += "data: [DONE]\n\n";
        write(tail);
        sink.done();
        return true;
      });
}

json ApiServer::State::image_data(const ImageJob& job, const ImageCall& call, const std::string& host) {
  json data = json::array();
  for (const auto& image : job.images()) {
    json item = {{"revised_prompt", call.prompt}, {"seed", image.seed}};
    if (call.b64) {
      item["b64_json"] = base64(image.png);
    } else {
      const std::string file = random_hex(16) + ".png";
      const auto tmp = image_dir / (file + ".tmp");
      {
        std::ofstream out(tmp, std::ios::binary);
        out.write(reinterpret_cast<const char*>(image.png.data()), static_cast<std::streamsize>(image.png.size()));
        if (!out) throw ApiError(500, "could not store the image", "server_error");
      }
      std::filesystem::rename(tmp, image_dir / file);
      item["url"] = fmt::format("http://{}/v1/images/files/{}", host.empty() ? config.host + ":" + std::to_string(config.port) : host, file);
    }
    data.push_back(std::move(item));
  }
  return data;
}

void ApiServer::State::clean_images() {
  std::unique_lock lock(janitor_mutex);
  while (!stopping) {
    const auto cutoff = std::filesystem::file_time_type::clock::now() - std::chrono::minutes(config.image_url_ttl_minutes);
    std::error_code ec;
    for (const auto& item : std::filesystem::directory_iterator(image_dir, ec)) {
      std::error_code ignored;
      if (item.last_write_time(ignored) < cutoff) std::filesystem::remove(item.path(), ignored);
    }
    janitor_cv.wait_for(lock, std::chrono::seconds(30));
  }
}

void ApiServer::State::setup_routes() {
  using Handler = std::function<void(const httplib::Request&, httplib::Response&, const Caller&)>;
  // Every route answers errors in OpenAI's shape and is counted; `open` routes need no token.
  auto route = [this](const std::string& name, Handler handler, bool open = false) {
    return [this, name, handler, open](const httplib::Request& req, httplib::Response& res) {
      try {
        const Caller caller = open ? Caller{} : authenticate(req);
        handler(req, res, caller);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const Error& e) {
        send_error(res, ApiError(400, e.what()));
      } catch (const std::bad_alloc&) {
        send_error(res, ApiError(503, "The server is out of memory; try a smaller request.", "server_error"));
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, fmt::format("Internal error: {}", e.what()), "server_error"));
      }
      metrics.add("tessera_http_requests_total", {{"route", name}, {"status", std::to_string(res.status)}});
    };
  };

  auto models_list = [this](const httplib::Request&, httplib::Response& res, const Caller&) {
    json data = json::array();
    for (const auto& [name, ep] : endpoints) {
      const auto llm = llm_of(ep);
      json entry = {{"id", name}, {"object", "model"}, {"created", started}, {"owned_by", "tessera"},
                    {"kind", kind_name(ep.config.kind)}, {"served_model", llm ? llm->model->info().name : ep.config.model}};
      if (llm && llm->version) {
        entry["registered_model"] = llm->registered_name;
        entry["version"] = *llm->version;
      }
      // Beyond OpenAI's fields, what a client (the playground) needs to offer the right choices.
      const Prices& p = ep.config.prices;
      if (ep.images) {
        entry["pricing"] = {{"per_image", p.per_image}};
        json sizes = json::array();
        for (const auto& size : ep.config.sizes) sizes.push_back(size.str());
        entry["sizes"] = sizes;
        entry["steps"] = ep.config.steps;
        entry["max_steps"] = ep.config.max_steps;
        entry["max_images"] = ep.config.max_images;
        if (ep.config.guidance_scale) entry["guidance_scale"] = *ep.config.guidance_scale;
      } else {
        entry["pricing"] = {{"input_per_million", p.input_per_million}, {"output_per_million", p.output_per_million}};
        entry["max_tokens"] = ep.config.default_max_tokens;
      }
      data.push_back(std::move(entry));
    }
    send_json(res, 200, {{"object", "list"}, {"data", data}});
  };
  auto model_get = [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
    const std::string name = req.matches[1];
    const Endpoint& ep = endpoint(name);
    json entry = {{"id", name}, {"object", "model"}, {"created", started}, {"owned_by", "tessera"},
                  {"kind", kind_name(ep.config.kind)}};
    if (const auto llm = llm_of(ep); llm && llm->version) {
      entry["registered_model"] = llm->registered_name;
      entry["version"] = *llm->version;
    }
    send_json(res, 200, entry);
  };
  auto chat = [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
    handle_llm(req, res, c, parse_body(req), true);
  };
  auto completions = [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
    handle_llm(req, res, c, parse_body(req), false);
  };
  auto images = [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
    handle_image(req, res, c, parse_body(req));
  };
  for (const std::string prefix : {"/v1", "/serving-endpoints"}) {
    http.Post(prefix + "/chat/completions", route("chat/completions", chat));
    http.Post(prefix + "/completions", route("completions", completions));
    http.Post(prefix + "/images/generations", route("images/generations", images));
    http.Get(prefix + "/models", route("models", models_list));
    http.Get(prefix + R"(/models/([^/]+))", route("models", model_get));
  }
  // Databricks-style: the endpoint in the path, the body as for its kind.
  http.Post(R"(/serving-endpoints/([^/]+)/invocations)",
            route("invocations", [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
              const std::string name = req.matches[1];
              Endpoint& ep = endpoint(name);
              json body = parse_body(req);
              body["model"] = name;
              if (ep.images)
                handle_image(req, res, c, body);
              else
                handle_llm(req, res, c, std::move(body), ep.config.kind == EndpointKind::Chat && body.contains("messages"));
            }));
  // Looks for a newer registered version now instead of at the next interval.
  http.Post(R"(/serving-endpoints/([^/]+)/reload)",
            route("reload", [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
              const std::string name = req.matches[1];
              Endpoint& ep = endpoint(name);
              if (!ep.registry)
                throw ApiError(400, fmt::format("'{}' does not serve a registered model; restart the server to change it.", name),
                               "invalid_request_error", std::nullopt, "not_from_registry");
              const bool reloaded = refresh(ep);
              const auto llm = llm_of(ep);
              send_json(res, 200, {{"id", name},
                                   {"registered_model", llm ? llm->registered_name : ep.registry->name},
                                   {"version", llm && llm->version ? json(*llm->version) : json(nullptr)},
                                   {"follows_latest", !ep.registry->pinned},
                                   {"reloaded", reloaded}});
            }));
  http.Get(R"(/v1/images/files/([0-9a-f]{32}\.png))",
           route("images/files", [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
             const auto path = image_dir / std::string(req.matches[1]);
             std::ifstream in(path, std::ios::binary);
             if (!in) throw ApiError(404, "This image does not exist or has expired.", "invalid_request_error", std::nullopt, "not_found");
             std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
             res.set_content(bytes, "image/png");
           }, true));
  // The playground: its files need no token (the page asks for one and sends it with each call).
  auto web_file = [](const std::string& path, httplib::Response& res) {
    const auto bytes = web_asset(path);
    if (!bytes) throw ApiError(404, fmt::format("There is no playground file '{}'.", path), "invalid_request_error", std::nullopt, "not_found");
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_content(std::string(*bytes), content_type_for(path));
  };
  http.Get("/", route("playground", [web_file](const httplib::Request&, httplib::Response& res, const Caller&) {
             web_file("index.html", res);
           }, true));
  http.Get(R"(/web/([A-Za-z0-9._/-]+))", route("playground", [web_file](const httplib::Request& req, httplib::Response& res, const Caller&) {
             web_file(req.matches[1], res);
           }, true));
  http.Get("/health", route("health", [this](const httplib::Request&, httplib::Response& res, const Caller&) {
             json eps = json::object();
             for (const auto& [name, ep] : endpoints) eps[name] = ep.images || llm_of(ep) ? "ready" : "waiting";
             send_json(res, 200, {{"status", "ok"}, {"endpoints", eps}});
           }, true));
  http.Get("/metrics", route("metrics", [this](const httplib::Request&, httplib::Response& res, const Caller&) {
             res.set_content(metrics.render(), "text/plain; version=0.0.4");
           }));
  http.Get("/openapi.yaml", route("openapi", [](const httplib::Request&, httplib::Response& res, const Caller&) {
             res.set_content(kOpenApiYaml, "application/yaml");
           }));
  http.Get("/api/2.0/usage", route("usage", [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
             std::optional<int64_t> from, to, token_id;
             std::optional<std::string> endpoint_filter;
             if (req.has_param("start_time")) from = parse_time_ms(req.get_param_value("start_time"), "start_time");
             if (req.has_param("end_time")) to = parse_time_ms(req.get_param_value("end_time"), "end_time");
             if (req.has_param("token_id")) {
               const std::string t = req.get_param_value("token_id");
               if (t.empty() || t.size() > 18 || t.find_first_not_of("0123456789") != std::string::npos)
                 throw bad_param("token_id", fmt::format("'{}' is not a token id", t));
               token_id = std::stoll(t);
             }
             if (req.has_param("endpoint")) endpoint_filter = req.get_param_value("endpoint");
             usage->flush();
             json rows = json::array();
             for (const auto& s : usage->summarize(from, to, token_id, endpoint_filter))
               rows.push_back({{"token_id", s.token_id ? json(*s.token_id) : json(nullptr)},
                               {"token_name", s.token_name},
                               {"endpoint", s.endpoint},
                               {"requests", s.requests},
                               {"prompt_tokens", s.prompt_tokens},
                               {"completion_tokens", s.completion_tokens},
                               {"images", s.images},
                               {"cost_usd", s.cost_usd}});
             send_json(res, 200, {{"start_time", from ? json(*from) : json(nullptr)},
                                  {"end_time", to ? json(*to) : json(nullptr)},
                                  {"usage", rows}});
           }));

  // Fine-tuning runs (see finetune_api.h): the caller's token decides which runs it sees.
  const std::string runs = "/api/2.0/fine-tuning/runs";
  const std::string run_id = R"(/([A-Za-z0-9._-]{1,200}))";
  http.Post(runs, route("fine-tuning", [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
              send_json(res, 200, finetune->create(parse_body(req), *c.token));
            }));
  http.Get(runs, route("fine-tuning", [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
             std::optional<int64_t> limit;
             if (req.has_param("limit")) {
               const std::string t = req.get_param_value("limit");
               if (t.empty() || t.size() > 9 || t.find_first_not_of("0123456789") != std::string::npos)
                 throw bad_param("limit", fmt::format("'{}' is not a number of runs", t));
               limit = std::stoll(t);
             }
             send_json(res, 200, finetune->list(*c.token, limit));
           }));
  http.Get(runs + run_id, route("fine-tuning", [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
             send_json(res, 200, finetune->get(req.matches[1], *c.token));
           }));
  http.Get(runs + run_id + "/metrics",
           route("fine-tuning", [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
             send_json(res, 200, finetune->metrics(req.matches[1], *c.token));
           }));
  http.Post(runs + run_id + "/cancel",
            route("fine-tuning", [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
              send_json(res, 200, finetune->cancel(req.matches[1], *c.token));
            }));

  // Errors httplib answers itself (no route, body too large, bad request line) get a body too.
  http.set_error_handler([this](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string message = "The request failed.";
    std::string code = "invalid_request";
    if (res.status == 404) message = "Unknown route.", code = "unknown_url";
    if (res.status == 405) message = "Method not allowed.", code = "method_not_allowed";
    if (res.status == 413)
      message = fmt::format("The request body is larger than the limit of {} bytes.", config.max_body_bytes), code = "request_too_large";
    if (res.status == 400) message = "The request could not be read.";
    res.set_content(dump_json(ApiError(res.status, message, "invalid_request_error", std::nullopt, code).body()),
                    "application/json");
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, ApiError(500, "Internal error.", "server_error"));
  });
}

// ---------------------------------------------------------------------------------------------
ApiServer::ApiServer(ServerConfig config, std::function<void(const std::string&)> log) : state_(std::make_unique<State>()) {
  config.validate();
  auto& s = *state_;
  s.config = std::move(config);
  s.log = log ? std::move(log) : [](const std::string&) {};
  s.data_dir = s.config.data_dir.value_or(data_dir());
  s.db = std::make_shared<Database>(s.data_dir / "tessera.db");
  s.tokens = std::make_unique<TokenStore>(s.db);
  s.usage = std::make_unique<UsageStore>(s.db);
  s.image_dir = s.data_dir / "images";
  std::filesystem::create_directories(s.image_dir);
  s.registry = std::make_unique<ModelRegistry>(s.db);
  s.finetune = std::make_unique<FinetuneApi>(s.db, s.data_dir);
  if (s.config.threads > 0) ThreadPool::set_global_threads(static_cast<size_t>(s.config.threads));
  s.load_endpoints();
  s.setup_metrics();
  s.setup_routes();
  s.http.set_payload_max_length(s.config.max_body_bytes);
  s.http.set_keep_alive_max_count(1000);
  const int threads = s.config.http_threads;
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  s.janitor = std::thread([&s] { s.clean_images(); });
  for (const auto& [name, ep] : s.endpoints)
    if (ep.registry && !ep.registry->pinned && ep.config.reload_interval_s > 0) {
      s.watcher = std::thread([&s] { s.watch_registry(); });
      break;
    }
}

ApiServer::~ApiServer() {
  stop();
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard lock(state_->janitor_mutex);
    state_->stopping = true;
  }
  state_->janitor_cv.notify_all();
  if (state_->janitor.joinable()) state_->janitor.join();
  {
    std::lock_guard lock(state_->watch_mutex);
    state_->watch_stopping = true;
  }
  state_->watch_cv.notify_all();
  if (state_->watcher.joinable()) state_->watcher.join();
  // Streams still open hold the schedulers' results; stopping the schedulers ends them.
  for (auto& b : state_->backends) b->scheduler.reset();
  for (auto& weak : state_->retired)
    if (auto b = weak.lock()) b->scheduler.reset();
  state_->usage->flush();
}

int ApiServer::State::bind() {
  // httplib listens with a backlog of 5: a burst of new connections overflows it and clients
  // time out connecting. Listening again on the bound socket raises the backlog.
  int socket_fd = -1;
  http.set_socket_options([&socket_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    socket_fd = sock;
  });
  int port = config.port;
  if (port == 0) {
    port = http.bind_to_any_port(config.host);
    if (port < 0) fail("cannot listen on {}", config.host);
  } else if (!http.bind_to_port(config.host, port)) {
    fail("cannot listen on {}:{} (in use, or not an address of this machine)", config.host, port);
  }
  if (socket_fd >= 0) ::listen(socket_fd, 1024);
  config.port = port;
  return port;
}

void ApiServer::run() {
  port_ = state_->bind();
  state_->http.listen_after_bind();
}

int ApiServer::start() {
  port_ = state_->bind();
  thread_ = std::thread([this] { state_->http.listen_after_bind(); });
  return port_;
}

void ApiServer::stop() {
  // No new model loads once shutting down.
  {
    std::lock_guard lock(state_->watch_mutex);
    state_->watch_stopping = true;
  }
  state_->watch_cv.notify_all();
  state_->http.stop();
}

}  // namespace tessera::server
