#pragma once
// Turning a conversation into a prompt for a model: ChatML (DBRX, SmolLM2 and most instruct
// models tessera runs), with the default system prompt the model's own template inserts when
// the conversation has none.
#include <optional>
#include <string>
#include <vector>

#include "tokenizers/chat_template.h"

namespace tessera {

struct ChatFormat {
  std::optional<std::string> default_system;

  // Reads what tessera needs from a Jinja chat template (tokenizer_config.json or GGUF):
  // the literal system prompt it adds when the first message is not a system message.
  static ChatFormat from_template(const std::optional<std::string>& jinja);

  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
    return apply_chatml(messages, add_generation_prompt, default_system);
  }
};

}  // namespace tessera
