#pragma once
// UTF-8 helpers for the tokenizers: validation with the same rules PCRE2 applies (RFC 3629:
// no overlongs, no surrogates, nothing above U+10FFFF), and the tail check the streaming
// decoder needs.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace tessera::utf8 {

// Length of the sequence a lead byte starts, 0 for a byte that cannot start one.
inline int sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xC2) return 0;  // continuation byte or overlong 2-byte lead
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  if (lead < 0xF5) return 4;
  return 0;
}

// Whether `byte` may follow `lead` as the first continuation byte (the ranges that rule out
// overlongs, surrogates and code points above U+10FFFF).
inline bool valid_second_byte(unsigned char lead, unsigned char byte) {
  switch (lead) {
    case 0xE0: return byte >= 0xA0 && byte <= 0xBF;
    case 0xED: return byte >= 0x80 && byte <= 0x9F;
    case 0xF0: return byte >= 0x90 && byte <= 0xBF;
    case 0xF4: return byte >= 0x80 && byte <= 0x8F;
    default: return byte >= 0x80 && byte <= 0xBF;
  }
}

// Length of the valid sequence starting at p[0] (n bytes available), 0 when invalid or cut.
inline int valid_sequence_at(const unsigned char* p, size_t n) {
  const int len = sequence_length(p[0]);
  if (len == 0 || static_cast<size_t>(len) > n) return 0;
  if (len == 1) return 1;
  if (!valid_second_byte(p[0], p[1])) return 0;
  for (int i = 2; i < len; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
  }
  return len;
}

// Number of leading bytes of s that form valid UTF-8.
inline size_t valid_prefix_length(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, p + i, 8);
      if (word & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const int len = valid_sequence_at(p + i, n - i);
    if (len == 0) return i;
    i += static_cast<size_t>(len);
  }
  return n;
}

inline bool is_valid(std::string_view s) { return valid_prefix_length(s) == s.size(); }

// How many trailing bytes of s are the unfinished beginning of a valid sequence (0..3): the
// bytes that a later chunk could still complete.
inline size_t incomplete_tail_length(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char b = p[n - back];
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const int len = sequence_length(b);
    if (len <= static_cast<int>(back)) return 0;  // complete, ASCII or not a lead at all
    if (back >= 2 && !valid_second_byte(b, p[n - back + 1])) return 0;
    return back;
  }
  return 0;
}

// Decodes the code point at p (which must be valid UTF-8 of `len` bytes).
inline char32_t decode_at(const unsigned char* p, int len) {
  switch (len) {
    case 1: return p[0];
    case 2: return (char32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    case 3: return (char32_t(p[0] & 0x0F) << 12) | (char32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    default:
      return (char32_t(p[0] & 0x07) << 18) | (char32_t(p[1] & 0x3F) << 12) |
             (char32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
  }
}

inline void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s accept).
inline bool is_unicode_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// Python's str.isspace() (what Jinja's `trim` strips): White_Space plus U+001C..U+001F.
inline bool is_python_whitespace(char32_t c) {
  return is_unicode_whitespace(c) || (c >= 0x1C && c <= 0x1F);
}

}  // namespace tessera::utf8
