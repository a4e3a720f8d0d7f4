#include "tokenizers/pcre2_regex.h"

#include <utility>

#include "core/error.h"

namespace tessera {
namespace {

// Per-thread match state: PCRE2 match data and JIT stacks must not be shared between threads.
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;

  MatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    // Possessive pre-tokenizer patterns need little stack, but a long run of one character
    // class (10k spaces) should never fail for lack of it.
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context && jit_stack) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchState() {
    if (jit_stack) pcre2_jit_stack_free(jit_stack);
    if (context) pcre2_match_context_free(context);
    if (data) pcre2_match_data_free(data);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
};

MatchState& match_state() {
  thread_local MatchState state;
  if (!state.data || !state.context) fail("tokenizer: out of memory for regex match data");
  return state;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(code, buffer, sizeof(buffer));
  if (n < 0) return "PCRE2 error " + std::to_string(code);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

}  // namespace

std::string adapt_whitespace_escapes(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 'Q') {  // \Q...\E is literal text
        const size_t end = p.find("\\E", i + 2);
        const size_t stop = end == std::string_view::npos ? p.size() : end + 2;
        out.append(p.substr(i, stop - i));
        i = stop;
        continue;
      }
      if (d == 's') {
        out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (d == 'S' && !in_class) {
        out += "[^\\s\\x{85}]";
      } else {
        out += c;
        out += d;
      }
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      const size_t end = p.find(":]", i + 2);
      const size_t stop = end == std::string_view::npos ? p.size() : end + 2;
      out.append(p.substr(i, stop - i));
      i = stop;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
    ++i;
  }
  return out;
}

Pcre2Regex::Pcre2Regex(std::string_view pattern, std::string_view where) {
  compile(adapt_whitespace_escapes(pattern), 0, where);
  pattern_ = std::string(pattern);
}

Pcre2Regex Pcre2Regex::literal(std::string_view text, std::string_view where) {
  Pcre2Regex regex;
  regex.compile(text, PCRE2_LITERAL, where);
  regex.pattern_ = std::string(text);
  return regex;
}

void Pcre2Regex::compile(std::string_view pattern, uint32_t options, std::string_view where) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                        options | PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (!code_) {
    fail("tokenizer: {}: bad pre-tokenizer regex (at offset {}): {}", where, error_offset,
         pcre2_message(error));
  }
  // Without JIT support (or on a platform it does not cover) the interpreter does the work.
  jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
}

Pcre2Regex::~Pcre2Regex() {
  if (code_) pcre2_code_free(code_);
}

Pcre2Regex::Pcre2Regex(Pcre2Regex&& other) noexcept
    : code_(std::exchange(other.code_, nullptr)), jit_(other.jit_), pattern_(std::move(other.pattern_)) {}

bool Pcre2Regex::find(std::string_view subject, size_t offset, size_t& match_start,
                      size_t& match_end) const {
  if (subject.empty()) return false;
  MatchState& state = match_state();
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  const int rc = jit_ ? pcre2_jit_match(code_, s, subject.size(), offset, 0, state.data, state.context)
                      : pcre2_match(code_, s, subject.size(), offset, PCRE2_NO_UTF_CHECK, state.data,
                                    state.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail("tokenizer: regex match failed: {}", pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
  match_start = ovector[0];
  match_end = ovector[1] < ovector[0] ? ovector[0] : ovector[1];  // \K can cross them
  return true;
}

}  // namespace tessera
