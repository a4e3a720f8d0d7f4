#include "serving/chat_format.h"

namespace tessera {

ChatFormat ChatFormat::from_template(const std::optional<std::string>& jinja) {
  ChatFormat format;
  if (!jinja) return format;
  // The pattern both SmolLM2 and Qwen-style templates use:
  //   {% if ... != 'system' %}{{ '<|im_start|>system\nTEXT<|im_end|>\n' }}{% endif %}
  const std::string open = "'<|im_start|>system\n";
  const size_t guard = jinja->find("!= 'system'");
  if (guard == std::string::npos) return format;
  const size_t start = jinja->find(open, guard);
  if (start == std::string::npos || jinja->substr(guard, start - guard).find("{%") == std::string::npos) return format;
  const size_t text = start + open.size();
  const size_t end = jinja->find("<|im_end|>", text);
  if (end == std::string::npos) return format;
  const std::string prompt = jinja->substr(text, end - text);
  // A literal only: templates that build the prompt from variables are left alone.
  if (prompt.find('\'') != std::string::npos || prompt.find("{{") != std::string::npos) return format;
  format.default_system = prompt;
  return format;
}

}  // namespace tessera
