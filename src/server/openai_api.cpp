#include "server/openai_api.h"

#include <fmt/format.h>

#include "core/error.h"

namespace tessera::server {

namespace {

using nlohmann::json;

const char* json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    default: return "a value";
  }
}

// Stop strings: a string or a list of up to 4.
std::vector<std::string> parse_stop(const json& body) {
  std::vector<std::string> stops;
  if (!body.contains("stop") || body["stop"].is_null()) return stops;
  const json& stop = body["stop"];
  if (stop.is_string()) {
    stops.push_back(stop.get<std::string>());
  } else if (stop.is_array()) {
    if (stop.size() > 4) throw bad_param("stop", "stop accepts at most 4 sequences");
    for (const auto& s : stop) {
      if (!s.is_string()) throw bad_param("stop", "Invalid type for 'stop': expected a string or an array of strings", "invalid_type");
      stops.push_back(s.get<std::string>());
    }
  } else {
    throw bad_param("stop", fmt::format("Invalid type for 'stop': expected a string or an array of strings, but got {} instead.",
                                        json_type_name(stop)),
                    "invalid_type");
  }
  for (const auto& s : stops)
    if (s.empty()) throw bad_param("stop", "stop sequences must not be empty");
  return stops;
}

// Fields chat and completions share: sampling, n, stop, seed, penalties.
void parse_sampling(const FieldReader& f, const json& body, int64_t default_max_tokens, LlmCall& call) {
  SamplingParams& s = call.request.sampling;
  s.temperature = static_cast<float>(f.number("temperature", 0, 2).value_or(1.0));
  s.top_p = static_cast<float>(f.number("top_p", 0, 1).value_or(1.0));
  if (s.top_p <= 0.0f) throw bad_param("top_p", "top_p must be greater than 0");
  s.top_k = f.integer("top_k", 0, 1'000'000).value_or(0);
  s.min_p = static_cast<float>(f.number("min_p", 0, 0.999999).value_or(0));
  s.repetition_penalty = static_cast<float>(f.number("repetition_penalty", 0.01, 10).value_or(1.0));
  s.presence_penalty = static_cast<float>(f.number("presence_penalty", -2, 2).value_or(0));
  s.frequency_penalty = static_cast<float>(f.number("frequency_penalty", -2, 2).value_or(0));
  auto max_tokens = f.integer("max_completion_tokens", 1, 1 << 24);
  if (!max_tokens) max_tokens = f.integer("max_tokens", 1, 1 << 24);
  s.max_tokens = max_tokens.value_or(default_max_tokens);
  if (auto seed = f.integer("seed", INT64_MIN, INT64_MAX)) s.seed = static_cast<uint64_t>(*seed);
  s.stop = parse_stop(body);
  s.ignore_eos = f.boolean("ignore_eos").value_or(false);
  call.request.n = static_cast<int>(f.integer("n", 1, 16).value_or(1));
  call.stream = f.boolean("stream").value_or(false);
  if (const json* options = f.object("stream_options")) {
    FieldReader o(*options, "stream_options");
    call.include_usage = o.boolean("include_usage").value_or(false);
  }
}

// Message content: a string, or a list of text parts.
std::string message_content(const json& message, size_t index) {
  const std::string param = fmt::format("messages[{}].content", index);
  if (!message.contains("content") || message["content"].is_null()) return {};
  const json& content = message["content"];
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    throw bad_param(param, fmt::format("Invalid type for '{}': expected a string or an array of content parts, but got {} instead.",
                                       param, json_type_name(content)),
                    "invalid_type");
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string at = fmt::format("{}[{}]", param, i);
    if (!part.is_object()) throw bad_param(at, fmt::format("'{}' must be an object with type and text", at), "invalid_type");
    FieldReader p(part, at);
    const auto type = p.string("type");
    if (type != "text")
      throw bad_param(at + ".type", fmt::format("content parts of type '{}' are not supported (only text)", type.value_or("")));
    text += p.string("text").value_or("");
  }
  return text;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
FieldReader::FieldReader(const json& object, std::string path) : object_(object), path_(std::move(path)) {}

const json* FieldReader::field(const char* key) const {
  auto it = object_.find(key);
  if (it == object_.end() || it->is_null()) return nullptr;
  return &*it;
}

bool FieldReader::has(const char* key) const { return field(key) != nullptr; }

void FieldReader::wrong_type(const char* key, const char* expected) const {
  throw bad_param(name(key),
                  fmt::format("Invalid type for '{}': expected {}, but got {} instead.", name(key), expected,
                              json_type_name(*field(key))),
                  "invalid_type");
}

std::optional<std::string> FieldReader::string(const char* key) const {
  const json* v = field(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) wrong_type(key, "a string");
  return v->get<std::string>();
}

std::optional<double> FieldReader::number(const char* key, double lo, double hi) const {
  const json* v = field(key);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(key, "a number");
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi))
    throw bad_param(name(key), fmt::format("Invalid value for '{}': {} is not between {} and {}.", name(key), x, lo, hi));
  return x;
}

std::optional<int64_t> FieldReader::integer(const char* key, int64_t lo, int64_t hi) const {
  const json* v = field(key);
  if (!v) return std::nullopt;
  // 3.0 is an integer too; 3.5 is not.
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (d != std::floor(d) || !(d >= -9.2e18 && d <= 9.2e18)) wrong_type(key, "an integer");
  } else if (!v->is_number_integer()) {
    wrong_type(key, "an integer");
  }
  int64_t x;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    x = u > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(u);
  } else {
    x = v->is_number_float() ? static_cast<int64_t>(v->get<double>()) : v->get<int64_t>();
  }
  if (x < lo || x > hi)
    throw bad_param(name(key), fmt::format("Invalid value for '{}': {} is not between {} and {}.", name(key), x, lo, hi));
  return x;
}

std::optional<bool> FieldReader::boolean(const char* key) const {
  const json* v = field(key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(key, "a boolean");
  return v->get<bool>();
}

const json* FieldReader::object(const char* key) const {
  const json* v = field(key);
  if (v && !v->is_object()) wrong_type(key, "an object");
  return v;
}

const json* FieldReader::array(const char* key) const {
  const json* v = field(key);
  if (v && !v->is_array()) wrong_type(key, "an array");
  return v;
}

// ---------------------------------------------------------------------------------------------
std::string requested_model(const json& body) {
  FieldReader f(body);
  auto model = f.string("model");
  if (!model || model->empty()) throw bad_param("model", "you must provide a model parameter", "missing_required_parameter");
  return *model;
}

LlmCall parse_chat(const json& body, const Tokenizer& tokenizer, const ChatFormat& format, int64_t default_max_tokens) {
  FieldReader f(body);
  LlmCall call;
  parse_sampling(f, body, default_max_tokens, call);
  call.logprobs = f.boolean("logprobs").value_or(false);
  if (auto top = f.integer("top_logprobs", 0, 20)) {
    if (!call.logprobs) throw bad_param("top_logprobs", "top_logprobs requires logprobs to be true");
    call.top_logprobs = static_cast<int>(*top);
  }
  call.request.top_logprobs = call.logprobs ? call.top_logprobs : -1;
  if (const json* tools = f.array("tools"); tools && !tools->empty())
    throw bad_param("tools", "tools (function calling) are not supported by this server");

  const json* messages = f.array("messages");
  if (!messages) throw bad_param("messages", "you must provide a messages parameter", "missing_required_parameter");
  if (messages->empty()) throw bad_param("messages", "messages must contain at least one message", "empty_array");
  std::vector<ChatMessage> chat;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string at = fmt::format("messages[{}]", i);
    if (!m.is_object()) throw bad_param(at, fmt::format("Invalid type for '{}': expected an object", at), "invalid_type");
    FieldReader mf(m, at);
    const auto role = mf.string("role");
    if (!role) throw bad_param(at + ".role", fmt::format("'{}.role' is required", at), "missing_required_parameter");
    std::string r = *role;
    if (r == "developer") r = "system";
    if (r != "system" && r != "user" && r != "assistant")
      throw bad_param(at + ".role",
                      fmt::format("Invalid value for '{}.role': '{}' (supported: system, developer, user, assistant)", at, *role));
    chat.push_back({r, message_content(m, i)});
  }

  if (const json* rf = f.object("response_format")) {
    FieldReader r(*rf, "response_format");
    const auto type = r.string("type").value_or("text");
    if (type == "json_object") {
      call.request.json = JsonConstraint::any_object();
    } else if (type == "json_schema") {
      const json* spec = r.object("json_schema");
      if (!spec) throw bad_param("response_format.json_schema", "response_format json_schema needs a json_schema object",
                                 "missing_required_parameter");
      FieldReader s(*spec, "response_format.json_schema");
      const json* schema = s.object("schema");
      try {
        call.request.json = schema ? JsonConstraint::from_schema(*schema) : JsonConstraint::any_object();
      } catch (const Error& e) {
        throw bad_param("response_format.json_schema.schema", e.what());
      }
    } else if (type != "text") {
      throw bad_param("response_format.type", fmt::format("Invalid value for 'response_format.type': '{}' (text, json_object or json_schema)", type));
    }
  }

  const std::string prompt = format.render(chat, true);
  call.prompts.push_back(tokenizer.encode(prompt));
  call.prompt_texts.push_back(prompt);
  return call;
}

LlmCall parse_completion(const json& body, const Tokenizer& tokenizer, int64_t default_max_tokens) {
  FieldReader f(body);
  LlmCall call;
  parse_sampling(f, body, default_max_tokens, call);
  if (f.has("max_tokens") == false && f.has("max_completion_tokens") == false) call.request.sampling.max_tokens = 16;
  call.echo = f.boolean("echo").value_or(false);
  if (auto lp = f.integer("logprobs", 0, 5)) {
    call.logprobs = true;
    call.top_logprobs = static_cast<int>(*lp);
    call.request.top_logprobs = call.top_logprobs;
  }
  if (f.has("suffix")) throw bad_param("suffix", "suffix (insertion) is not supported by this server");
  if (f.integer("best_of", 1, 16).value_or(1) != 1) throw bad_param("best_of", "best_of other than 1 is not supported");

  if (!body.contains("prompt") || body["prompt"].is_null())
    throw bad_param("prompt", "you must provide a prompt parameter", "missing_required_parameter");
  const json& prompt = body["prompt"];
  auto token_list = [&](const json& list, const std::string& at) {
    std::vector<int32_t> ids;
    for (const auto& v : list) {
      if (!v.is_number_integer()) throw bad_param("prompt", fmt::format("'{}' must hold token ids (integers)", at), "invalid_type");
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id >= tokenizer.vocab_size())
        throw bad_param("prompt", fmt::format("token id {} in '{}' is out of range (vocabulary of {})", id, at, tokenizer.vocab_size()));
      ids.push_back(static_cast<int32_t>(id));
    }
    return ids;
  };
  if (prompt.is_string()) {
    call.prompts.push_back(tokenizer.encode(prompt.get<std::string>()));
    call.prompt_texts.push_back(prompt.get<std::string>());
  } else if (prompt.is_array() && !prompt.empty() && prompt[0].is_number_integer()) {
    call.prompts.push_back(token_list(prompt, "prompt"));
    call.prompt_texts.push_back(tokenizer.decode(call.prompts.back()));
  } else if (prompt.is_array() && !prompt.empty()) {
    if (prompt.size() > 16) throw bad_param("prompt", "at most 16 prompts per request");
    for (size_t i = 0; i < prompt.size(); ++i) {
      const json& p = prompt[i];
      if (p.is_string()) {
        call.prompts.push_back(tokenizer.encode(p.get<std::string>()));
        call.prompt_texts.push_back(p.get<std::string>());
      } else if (p.is_array()) {
        call.prompts.push_back(token_list(p, fmt::format("prompt[{}]", i)));
        call.prompt_texts.push_back(tokenizer.decode(call.prompts.back()));
      } else {
        throw bad_param("prompt", "Invalid type for 'prompt': expected a string, an array of strings or token arrays", "invalid_type");
      }
    }
  } else {
    throw bad_param("prompt", fmt::format("Invalid type for 'prompt': expected a string, an array of strings or token arrays, but got {} instead.",
                                          prompt.is_array() ? "an empty array" : json_type_name(prompt)),
                    "invalid_type");
  }
  for (auto& p : call.prompts)
    if (p.empty()) {
      // An empty prompt still needs one token to start from: the beginning of text.
      if (auto bos = tokenizer.bos_id()) p.push_back(*bos);
      else if (auto eos = tokenizer.eos_id()) p.push_back(*eos);
      else throw bad_param("prompt", "the prompt is empty");
    }
  return call;
}

ImageCall parse_image(const json& body, const EndpointConfig& endpoint) {
  FieldReader f(body);
  ImageCall call;
  const auto prompt = f.string("prompt");
  if (!prompt) throw bad_param("prompt", "you must provide a prompt parameter", "missing_required_parameter");
  if (prompt->empty()) throw bad_param("prompt", "prompt must not be empty");
  if (prompt->size() > 32000) throw bad_param("prompt", "prompt is longer than 32000 characters");
  call.prompt = *prompt;
  call.negative_prompt = f.string("negative_prompt");
  call.n = static_cast<int>(f.integer("n", 1, endpoint.max_images).value_or(1));
  call.size = endpoint.sizes.front();
  if (auto size = f.string("size")) {
    bool found = false;
    for (const auto& s : endpoint.sizes)
      if (s.str() == *size) {
        call.size = s;
        found = true;
      }
    if (!found) {
      std::string allowed;
      for (const auto& s : endpoint.sizes) allowed += (allowed.empty() ? "'" : ", '") + s.str() + "'";
      throw bad_param("size", fmt::format("Invalid value for 'size': '{}'. Supported values are: {}.", *size, allowed));
    }
  }
  const auto format = f.string("response_format").value_or("url");
  if (format != "url" && format != "b64_json")
    throw bad_param("response_format", fmt::format("Invalid value for 'response_format': '{}' (url or b64_json)", format));
  call.b64 = format == "b64_json";
  if (auto of = f.string("output_format"); of && *of != "png")
    throw bad_param("output_format", fmt::format("Invalid value for 'output_format': '{}' (only png)", *of));
  if (auto seed = f.integer("seed", 0, INT64_MAX)) call.seed = static_cast<uint64_t>(*seed);
  call.steps = f.integer("steps", 1, endpoint.max_steps);
  if (!call.steps) call.steps = f.integer("num_inference_steps", 1, endpoint.max_steps);
  if (auto g = f.number("guidance_scale", 0, 30)) call.guidance = static_cast<float>(*g);
  call.stream = f.boolean("stream").value_or(false);
  return call;
}

std::string token_text(const Tokenizer& tokenizer, int32_t id) {
  try {
    return tokenizer.token_bytes(id);
  } catch (const Error&) {
    return {};
  }
}

json chat_logprob(const Tokenizer& tokenizer, const TokenLogprob& lp) {
  auto entry = [&](int32_t id, float logprob) {
    const std::string bytes = token_text(tokenizer, id);
    json b = json::array();
    for (unsigned char c : bytes) b.push_back(static_cast<int>(c));
    return json{{"token", bytes}, {"logprob", logprob}, {"bytes", b}};
  };
  json item = entry(lp.token, lp.logprob);
  item["top_logprobs"] = json::array();
  for (const auto& [id, logprob] : lp.top) item["top_logprobs"].push_back(entry(id, logprob));
  return item;
}

std::string dump_json(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace tessera::server
