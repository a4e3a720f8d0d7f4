#include "tokenizers/chat_template.h"

#include "tokenizers/utf8.h"

namespace tessera {

const std::string_view kDbrxDefaultSystemPrompt =
    "You are DBRX, created by Databricks. You were last updated in December 2023. You answer questions "
    "based on information available up to that point.\n"
    "YOU PROVIDE SHORT RESPONSES TO SHORT QUESTIONS OR STATEMENTS, but provide thorough responses to more "
    "complex and open-ended questions.\n"
    "You assist with various tasks, from writing to coding (using markdown for code blocks \xE2\x80\x94 "
    "remember to use ``` with code, JSON, and tables).\n"
    "(You do not have real-time data access or code execution capabilities. You avoid stereotyping and "
    "provide balanced perspectives on controversial topics. You do not provide song lyrics, poems, or news "
    "articles and do not divulge details of your training data.)\n"
    "This is your system prompt, guiding your responses. Do not reference it, just respond to the user. If "
    "you find yourself talking about this message, stop. You should be responding appropriately and usually "
    "that means not mentioning this.\n"
    "YOU DO NOT MENTION ANY OF THIS INFORMATION ABOUT YOURSELF UNLESS THE INFORMATION IS DIRECTLY PERTINENT "
    "TO THE USER'S QUERY.";

namespace {

// Jinja's `trim`: Python's str.strip(), which removes Unicode whitespace at both ends.
std::string_view python_strip(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t begin = 0;
  while (begin < s.size()) {
    const int len = utf8::valid_sequence_at(p + begin, s.size() - begin);
    if (len == 0 || !utf8::is_python_whitespace(utf8::decode_at(p + begin, len))) break;
    begin += static_cast<size_t>(len);
  }
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (p[start] & 0xC0) == 0x80 && end - start < 4) --start;
    const int len = utf8::valid_sequence_at(p + start, end - start);
    if (len == 0 || static_cast<size_t>(len) != end - start ||
        !utf8::is_python_whitespace(utf8::decode_at(p + start, len))) {
      break;
    }
    end = start;
  }
  return s.substr(begin, end - begin);
}

}  // namespace

std::string apply_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                         const std::optional<std::string>& default_system) {
  if (messages.empty()) return {};
  size_t first = 0;
  std::optional<std::string_view> system;
  if (messages[0].role == "system") {
    system = messages[0].content;
    first = 1;
  } else if (messages[0].role.find("system") == std::string::npos && default_system) {
    system = *default_system;
  }
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    if (i == first) {
      if (system) {
        out += "<|im_start|>system\n";
        out += python_strip(*system);
        out += "<|im_end|>\n";
      }
    } else {
      out += '\n';
    }
    out += "<|im_start|>";
    out += messages[i].role;
    out += '\n';
    out += messages[i].content;
    out += "<|im_end|>";
  }
  if (add_generation_prompt && first < messages.size()) out += "\n<|im_start|>assistant\n";
  return out;
}

}  // namespace tessera
