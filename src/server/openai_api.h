#pragma once
// The OpenAI request bodies tessera accepts (chat completions, completions, image generations)
// turned into scheduler and image requests, and the pieces of the responses. No HTTP here: the
// functions take and return JSON so tests can drive them directly.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "serving/chat_format.h"
#include "serving/scheduler.h"
#include "server/api_error.h"
#include "server/server_config.h"
#include "tokenizers/bpe_tokenizer.h"

namespace tessera::server {

// Typed access to a JSON object's fields; a field of the wrong type or out of range is a 400
// naming it ("Invalid type for 'temperature': expected a number, but got a string instead.").
class FieldReader {
 public:
  explicit FieldReader(const nlohmann::json& object, std::string path = "");
  bool has(const char* key) const;  // present and not null
  std::optional<std::string> string(const char* key) const;
  std::optional<double> number(const char* key, double lo, double hi) const;
  std::optional<int64_t> integer(const char* key, int64_t lo, int64_t hi) const;
  std::optional<bool> boolean(const char* key) const;
  const nlohmann::json* object(const char* key) const;
  const nlohmann::json* array(const char* key) const;
  std::string name(const char* key) const { return path_.empty() ? key : path_ + "." + key; }

 private:
  const nlohmann::json* field(const char* key) const;
  [[noreturn]] void wrong_type(const char* key, const char* expected) const;
  const nlohmann::json& object_;
  std::string path_;
};

// "model" of a request body, required.
std::string requested_model(const nlohmann::json& body);

// A chat or completion request, ready for the scheduler.
struct LlmCall {
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  int top_logprobs = 0;
  bool echo = false;                      // completions: the prompt text comes first
  std::vector<std::vector<int32_t>> prompts;  // completions may carry several prompts
  std::vector<std::string> prompt_texts;
  SequenceRequest request;                // sampling, n, stops, JSON constraint (prompt unset)
};

LlmCall parse_chat(const nlohmann::json& body, const Tokenizer& tokenizer, const ChatFormat& format,
                   int64_t default_max_tokens);
LlmCall parse_completion(const nlohmann::json& body, const Tokenizer& tokenizer, int64_t default_max_tokens);

struct ImageCall {
  std::string prompt;
  std::optional<std::string> negative_prompt;
  int n = 1;
  ImageSize size;
  bool b64 = false;  // response_format b64_json, else url
  std::optional<uint64_t> seed;
  std::optional<int64_t> steps;
  std::optional<float> guidance;
  bool stream = false;  // SSE: progress events over the denoising steps, then the result
};

ImageCall parse_image(const nlohmann::json& body, const EndpointConfig& endpoint);

// One sampled token in chat logprobs form: {"token", "logprob", "bytes", "top_logprobs"}.
nlohmann::json chat_logprob(const Tokenizer& tokenizer, const TokenLogprob& lp);
// The token's text as valid UTF-8 (bytes that are not are replaced) and its raw bytes.
std::string token_text(const Tokenizer& tokenizer, int32_t id);

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string dump_json(const nlohmann::json& value);

}  // namespace tessera::server
