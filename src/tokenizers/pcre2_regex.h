#pragma once
// A compiled PCRE2 pattern (UTF + UCP, JIT when the library has it) for pre-tokenizers.
// Matching is thread-safe: the per-call state (match data, JIT stack) is thread-local.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

namespace tessera {

class Pcre2Regex {
 public:
  // `where` names the file or field for error messages. The pattern is adapted so that \s
  // and \S agree with the Unicode White_Space set the reference tokenizers use (PCRE2's \s
  // leaves out U+0085).
  Pcre2Regex(std::string_view pattern, std::string_view where);
  // A literal string to split on (tokenizer.json Split with a "String" pattern).
  static Pcre2Regex literal(std::string_view text, std::string_view where);
  ~Pcre2Regex();
  Pcre2Regex(const Pcre2Regex&) = delete;
  Pcre2Regex& operator=(const Pcre2Regex&) = delete;
  Pcre2Regex(Pcre2Regex&& other) noexcept;
  Pcre2Regex& operator=(Pcre2Regex&&) = delete;

  bool jit() const { return jit_; }
  const std::string& pattern() const { return pattern_; }

  // Finds the first match at or after `offset` in `subject` (which must be valid UTF-8 — the
  // caller validates; PCRE2 is told not to re-check). Returns false when there is none.
  bool find(std::string_view subject, size_t offset, size_t& match_start, size_t& match_end) const;

  // Calls f(start, end) for each non-empty match, left to right.
  template <typename F>
  void for_each_match(std::string_view subject, F&& f) const {
    size_t offset = 0, start = 0, end = 0;
    while (offset <= subject.size() && find(subject, offset, start, end)) {
      if (end > start) {
        f(start, end);
        offset = end;
      } else {
        // An empty match: step over one character so the scan always advances.
        offset = start + 1;
        while (offset < subject.size() && (static_cast<unsigned char>(subject[offset]) & 0xC0) == 0x80)
          ++offset;
      }
    }
  }

 private:
  Pcre2Regex() = default;
  void compile(std::string_view pattern, uint32_t options, std::string_view where);

  pcre2_code* code_ = nullptr;
  bool jit_ = false;
  std::string pattern_;
};

// Rewrites \s and \S so that they also cover U+0085 (exposed for tests).
std::string adapt_whitespace_escapes(std::string_view pattern);

}  // namespace tessera
