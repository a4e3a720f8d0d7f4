// Any request body reaches the OpenAI request parsers as JSON: a chat, completion or image
// request either parses or raises ApiError with a 400 naming a field; nothing else escapes. A
// parsed chat request's prompt decodes back to the text it was made from.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/paths.h"
#include "core/error.h"
#include "server/openai_api.h"

using namespace tessera;
using namespace tessera::server;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizer tokenizer =
      Tokenizer::load_for_model(tessera::source_tree_dir() / "tests/fixtures/dbrx/e4_top2_d64_clip_f32");
  static const ChatFormat format;
  static const EndpointConfig image_endpoint;
  nlohmann::json body;
  try {
    body = nlohmann::json::parse(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  if (!body.is_object()) return 0;
  const int which = size % 3;
  try {
    if (which == 0) {
      const LlmCall call = parse_chat(body, tokenizer, format, 16);
      if (call.prompts.size() != 1 || tokenizer.decode(call.prompts[0]) != call.prompt_texts[0]) __builtin_trap();
    } else if (which == 1) {
      const LlmCall call = parse_completion(body, tokenizer, 16);
      if (call.prompts.empty() || call.prompts.size() != call.prompt_texts.size()) __builtin_trap();
      for (const auto& p : call.prompts)
        if (p.empty()) __builtin_trap();
    } else {
      const ImageCall call = parse_image(body, image_endpoint);
      if (call.prompt.empty() || call.n < 1) __builtin_trap();
    }
  } catch (const ApiError& e) {
    if (e.status != 400) __builtin_trap();
  }
  return 0;
}
