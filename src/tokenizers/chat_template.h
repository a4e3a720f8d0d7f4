#pragma once
// ChatML prompts exactly as dbrx-instruct's tokenizer_config.json chat_template renders them:
//
//   <|im_start|>system\n{system, trimmed}<|im_end|>\n      (first message only, see below)
//   <|im_start|>{role}\n{content}<|im_end|>              (messages joined by "\n")
//   \n<|im_start|>assistant\n                             (add_generation_prompt)
//
// There is no "\n" after the last <|im_end|> unless the generation prompt follows. A leading
// "system" message supplies the system prompt; otherwise, when the first role does not contain
// "system" and default_system is given, that is used. Content is not trimmed; the system
// prompt is (Jinja's `trim`). As in the template, everything is emitted inside the loop over
// the non-system messages, so a conversation of only a system message renders as "".
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tessera {

struct ChatMessage {
  std::string role, content;
};

// DBRX's default system prompt, from the same chat_template.
extern const std::string_view kDbrxDefaultSystemPrompt;

std::string apply_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                         const std::optional<std::string>& default_system);

}  // namespace tessera
