#include "server/server_config.h"

#include <set>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "core/paths.h"
#include "models/llm/language_model.h"
#include "store/model_registry.h"

namespace tessera::server {

namespace {

// The default chat model scripts/setup installs and the folder an image model is installed to.
constexpr const char* kDefaultChatModel = "smollm2-135m-instruct";
constexpr const char* kDefaultImageModel = "imageai";
// tessera's own tiny models (tools/chat_model, tools/image_model), committed under models/.
constexpr const char* kOwnChatModel = "tessera-dbrx-tiny-instruct";
constexpr const char* kOwnImageModel = "tessera-imageai-tiny";

struct Reader {
  std::string file;

  [[noreturn]] void bad(const std::string& where, const std::string& what) const { fail("{}: {}: {}", file, where, what); }

  template <typename T>
  T get(const YAML::Node& node, const std::string& where, const char* type_name) const {
    try {
      return node.as<T>();
    } catch (const YAML::Exception&) {
      bad(where, fmt::format("expected {}", type_name));
    }
  }
  std::string str(const YAML::Node& n, const std::string& w) const {
    if (!n.IsScalar()) bad(w, "expected a string");
    return get<std::string>(n, w, "a string");
  }
  int64_t integer(const YAML::Node& n, const std::string& w, int64_t lo, int64_t hi) const {
    if (!n.IsScalar()) bad(w, "expected an integer");
    const auto v = get<int64_t>(n, w, "an integer");
    if (v < lo || v > hi) bad(w, fmt::format("must be between {} and {}, got {}", lo, hi, v));
    return v;
  }
  double number(const YAML::Node& n, const std::string& w, double lo, double hi) const {
    if (!n.IsScalar()) bad(w, "expected a number");
    const auto v = get<double>(n, w, "a number");
    if (!(v >= lo && v <= hi)) bad(w, fmt::format("must be between {} and {}, got {}", lo, hi, v));
    return v;
  }
  void only(const YAML::Node& map, const std::string& where, const std::set<std::string>& keys) const {
    for (const auto& item : map) {
      const auto key = item.first.as<std::string>();
      if (!keys.count(key)) {
        std::string known;
        for (const auto& k : keys) known += (known.empty() ? "" : ", ") + k;
        bad(where.empty() ? key : where + "." + key, fmt::format("unknown key (known: {})", known));
      }
    }
  }
};

EndpointKind parse_kind(const Reader& r, const std::string& where, const std::string& text) {
  if (text == "chat") return EndpointKind::Chat;
  if (text == "completion" || text == "completions") return EndpointKind::Completion;
  if (text == "image" || text == "images") return EndpointKind::Image;
  r.bad(where, fmt::format("unknown kind '{}' (chat, completion or image)", text));
}

EndpointConfig parse_endpoint(const Reader& r, const YAML::Node& node, const std::string& where) {
  if (!node.IsMap()) r.bad(where, "expected a mapping with name, kind and model");
  EndpointConfig e;
  if (!node["name"]) r.bad(where, "name is missing");
  e.name = r.str(node["name"], where + ".name");
  const std::string at = fmt::format("endpoints.{}", e.name);
  r.only(node, at,
         {"name", "kind", "model", "quantize", "prices", "max_batch", "max_queue", "kv_memory_mb",
          "provisioned_tokens_per_second", "max_tokens", "reload_interval_s", "wait_for_registration", "sizes", "steps", "max_steps", "guidance_scale", "max_images",
          "image_queue"});
  if (!node["kind"]) r.bad(at, "kind is missing (chat, completion or image)");
  e.kind = parse_kind(r, at + ".kind", r.str(node["kind"], at + ".kind"));
  if (!node["model"]) r.bad(at, "model is missing");
  e.model = r.str(node["model"], at + ".model");
  if (node["quantize"]) e.quantize = r.str(node["quantize"], at + ".quantize");
  if (e.kind == EndpointKind::Image) e.prices.input_per_million = e.prices.output_per_million = 0;
  if (const auto p = node["prices"]) {
    if (!p.IsMap()) r.bad(at + ".prices", "expected a mapping");
    r.only(p, at + ".prices", {"input_per_million", "output_per_million", "per_image"});
    if (p["input_per_million"]) e.prices.input_per_million = r.number(p["input_per_million"], at + ".prices.input_per_million", 0, 1e6);
    if (p["output_per_million"])
      e.prices.output_per_million = r.number(p["output_per_million"], at + ".prices.output_per_million", 0, 1e6);
    if (p["per_image"]) e.prices.per_image = r.number(p["per_image"], at + ".prices.per_image", 0, 1e6);
  }
  if (node["max_batch"]) e.max_batch = r.integer(node["max_batch"], at + ".max_batch", 1, 1024);
  if (node["max_queue"]) e.max_queue = r.integer(node["max_queue"], at + ".max_queue", 1, 1 << 20);
  if (node["kv_memory_mb"]) e.kv_memory_mb = r.integer(node["kv_memory_mb"], at + ".kv_memory_mb", 1, 1 << 24);
  if (node["provisioned_tokens_per_second"])
    e.provisioned_tokens_per_second =
        r.number(node["provisioned_tokens_per_second"], at + ".provisioned_tokens_per_second", 1e-3, 1e9);
  if (node["max_tokens"]) e.default_max_tokens = r.integer(node["max_tokens"], at + ".max_tokens", 1, 1 << 24);
  if (node["reload_interval_s"])
    e.reload_interval_s = r.number(node["reload_interval_s"], at + ".reload_interval_s", 0, 86400);
  if (node["wait_for_registration"]) {
    if (!node["wait_for_registration"].IsScalar()) r.bad(at + ".wait_for_registration", "expected true or false");
    e.wait_for_registration = r.get<bool>(node["wait_for_registration"], at + ".wait_for_registration", "true or false");
    if (e.wait_for_registration && !e.model.starts_with("registry:"))
      r.bad(at + ".wait_for_registration", "only for a model named registry:catalog.schema.model");
  }
  if (const auto s = node["sizes"]) {
    if (!s.IsSequence() || s.size() == 0) r.bad(at + ".sizes", "expected a list of sizes such as 1024x1024");
    e.sizes.clear();
    for (size_t i = 0; i < s.size(); ++i) {
      try {
        e.sizes.push_back(parse_image_size(r.str(s[i], at + ".sizes")));
      } catch (const Error& err) {
        r.bad(fmt::format("{}.sizes[{}]", at, i), err.what());
      }
    }
  }
  if (node["max_steps"]) e.max_steps = r.integer(node["max_steps"], at + ".max_steps", 1, 1000);
  if (node["steps"]) e.steps = r.integer(node["steps"], at + ".steps", 1, e.max_steps);
  if (node["guidance_scale"]) e.guidance_scale = static_cast<float>(r.number(node["guidance_scale"], at + ".guidance_scale", 0, 100));
  if (node["max_images"]) e.max_images = r.integer(node["max_images"], at + ".max_images", 1, 64);
  if (node["image_queue"]) e.image_queue = r.integer(node["image_queue"], at + ".image_queue", 1, 1 << 16);
  return e;
}

}  // namespace

std::string kind_name(EndpointKind kind) {
  switch (kind) {
    case EndpointKind::Chat: return "chat";
    case EndpointKind::Completion: return "completion";
    case EndpointKind::Image: return "image";
  }
  return "?";
}

std::string ImageSize::str() const { return fmt::format("{}x{}", width, height); }

std::optional<std::string> registry_reference(const std::string& model) {
  constexpr std::string_view kPrefix = "registry:";
  if (model.starts_with(kPrefix)) return model.substr(kPrefix.size());
  if (model.find('.') == std::string::npos || std::filesystem::exists(resolve_model_path(model))) return std::nullopt;
  try {
    parse_model_reference(model);
  } catch (const Error&) {
    return std::nullopt;
  }
  return model;
}

ImageSize parse_image_size(const std::string& text) {
  const auto x = text.find('x');
  auto number = [&](const std::string& part) -> int64_t {
    if (part.empty() || part.size() > 5 || part.find_first_not_of("0123456789") != std::string::npos)
      fail("'{}' is not a size like 1024x1024", text);
    return std::stoll(part);
  };
  if (x == std::string::npos) fail("'{}' is not a size like 1024x1024", text);
  ImageSize size{number(text.substr(0, x)), number(text.substr(x + 1))};
  if (size.width < 8 || size.height < 8 || size.width > 4096 || size.height > 4096)
    fail("size {} is out of range (8 to 4096 pixels a side)", text);
  return size;
}

ServerConfig ServerConfig::load(const std::filesystem::path& file) {
  Reader r{file.string()};
  YAML::Node root;
  try {
    root = YAML::LoadFile(file.string());
  } catch (const YAML::BadFile&) {
    fail("{}: cannot read the file", file.string());
  } catch (const YAML::Exception& e) {
    fail("{}: not valid YAML (line {}: {})", file.string(), e.mark.line + 1, e.msg);
  }
  if (!root.IsMap()) fail("{}: expected a mapping with an endpoints list", file.string());
  r.only(root, "", {"host", "port", "threads", "data_dir", "max_body_mb", "http_threads", "image_url_ttl_minutes", "endpoints"});
  ServerConfig c;
  if (root["host"]) c.host = r.str(root["host"], "host");
  if (root["port"]) c.port = static_cast<int>(r.integer(root["port"], "port", 0, 65535));
  if (root["threads"]) c.threads = static_cast<int>(r.integer(root["threads"], "threads", 0, 1024));
  if (root["data_dir"]) c.data_dir = r.str(root["data_dir"], "data_dir");
  if (root["max_body_mb"]) c.max_body_bytes = static_cast<size_t>(r.integer(root["max_body_mb"], "max_body_mb", 1, 4096)) << 20;
  if (root["http_threads"]) c.http_threads = static_cast<int>(r.integer(root["http_threads"], "http_threads", 4, 4096));
  if (root["image_url_ttl_minutes"])
    c.image_url_ttl_minutes = static_cast<int>(r.integer(root["image_url_ttl_minutes"], "image_url_ttl_minutes", 1, 1 << 20));
  const auto eps = root["endpoints"];
  if (!eps || !eps.IsSequence() || eps.size() == 0) fail("{}: endpoints: expected a non-empty list", file.string());
  for (size_t i = 0; i < eps.size(); ++i) c.endpoints.push_back(parse_endpoint(r, eps[i], fmt::format("endpoints[{}]", i)));
  try {
    c.validate();
  } catch (const Error& e) {
    fail("{}: {}", file.string(), e.what());
  }
  return c;
}

ServerConfig ServerConfig::defaults() {
  ServerConfig c;
  EndpointConfig chat;
  chat.name = "databricks-dbrx-instruct";
  chat.kind = EndpointKind::Chat;
  chat.model = kDefaultChatModel;
  c.endpoints.push_back(chat);
  if (std::filesystem::exists(models_dir() / kOwnChatModel)) {
    EndpointConfig own;
    own.name = kOwnChatModel;
    own.kind = EndpointKind::Chat;
    own.model = kOwnChatModel;
    own.default_max_tokens = 96;
    c.endpoints.push_back(own);
  }
  if (std::filesystem::exists(models_dir() / kDefaultImageModel)) {
    EndpointConfig image;
    image.name = "databricks-shutterstock-imageai";
    image.kind = EndpointKind::Image;
    image.model = kDefaultImageModel;
    image.prices.input_per_million = image.prices.output_per_million = 0;
    c.endpoints.push_back(image);
  }
  if (std::filesystem::exists(models_dir() / kOwnImageModel)) {
    EndpointConfig own;
    own.name = kOwnImageModel;
    own.kind = EndpointKind::Image;
    own.model = kOwnImageModel;
    own.prices.input_per_million = own.prices.output_per_million = 0;
    c.endpoints.push_back(own);
  }
  return c;
}

void ServerConfig::validate() const {
  if (endpoints.empty()) fail("no endpoints to serve");
  std::set<std::string> names;
  for (const auto& e : endpoints) {
    if (e.name.empty() || e.name.size() > 128 || e.name.find_first_of("/ \t\n?#") != std::string::npos)
      fail("endpoint name '{}' must be 1 to 128 characters without '/', '?', '#' or spaces", e.name);
    if (!names.insert(e.name).second) fail("endpoint '{}' is listed twice", e.name);
    if (e.model.empty()) fail("endpoint '{}': model is empty", e.name);
    if (e.model.starts_with("registry:")) {
      if (e.kind == EndpointKind::Image)
        fail("endpoint '{}': model: the registry holds language models, not image pipelines", e.name);
      try {
        parse_model_reference(e.model.substr(9));
      } catch (const Error& err) {
        fail("endpoint '{}': model: {}", e.name, err.what());
      }
    }
  }
}

}  // namespace tessera::server
