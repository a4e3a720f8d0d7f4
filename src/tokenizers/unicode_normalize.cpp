#include "tokenizers/unicode_normalize.h"

#include <algorithm>
#include <cstdint>
#include <iterator>

#include <fmt/format.h>

namespace tessera::unicode {
namespace {

struct CombiningClassRange {
  char32_t first;
  char32_t last;
  uint8_t ccc;
};
struct Decomposition {
  char32_t code_point;
  uint16_t offset;  // into kDecompositionData
  uint8_t length;
};
struct Composition {
  char32_t first;
  char32_t second;
  char32_t composite;
};
struct LowercaseMapping {
  char32_t code_point;
  char32_t lower;
  char32_t second;  // 0 when the lowercase is a single code point
};
struct CodePointRange {
  char32_t first;
  char32_t last;
};

#include "tokenizers/unicode_tables.inc"

// Hangul syllables are composed and decomposed arithmetically (Unicode 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

bool is_hangul_syllable(char32_t c) { return c >= kSBase && c < kSBase + kSCount; }

const Decomposition* find_decomposition(char32_t c) {
  const auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), c,
                                   [](const Decomposition& d, char32_t v) { return d.code_point < v; });
  return it != std::end(kDecompositions) && it->code_point == c ? &*it : nullptr;
}

// The composite of a starter and a following character, or 0 when they do not compose.
char32_t compose_pair(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (is_hangul_syllable(a) && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto it = std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::pair{a, b},
                                   [](const Composition& c, const std::pair<char32_t, char32_t>& v) {
                                     return c.first != v.first ? c.first < v.first : c.second < v.second;
                                   });
  if (it != std::end(kCompositions) && it->first == a && it->second == b) return it->composite;
  return 0;
}

std::string class_items(const CodePointRange* begin, const CodePointRange* end) {
  std::string out;
  for (const CodePointRange* r = begin; r != end; ++r) {
    out += fmt::format("\\x{{{:X}}}", static_cast<uint32_t>(r->first));
    if (r->last != r->first) out += fmt::format("-\\x{{{:X}}}", static_cast<uint32_t>(r->last));
  }
  return out;
}

}  // namespace

int combining_class(char32_t c) {
  if (c < 0x300) return 0;  // nothing below U+0300 has a class
  const auto it = std::upper_bound(std::begin(kCombiningClasses), std::end(kCombiningClasses), c,
                                   [](char32_t v, const CombiningClassRange& r) { return v < r.first; });
  if (it == std::begin(kCombiningClasses)) return 0;
  const CombiningClassRange& r = *std::prev(it);
  return c <= r.last ? r.ccc : 0;
}

std::u32string nfc(std::u32string_view text) {
  // Fast path: text below U+00C0 is already in NFC (the first decomposition is U+00C0's, the
  // first character that joins a preceding one is U+0300).
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0xC0; })) {
    return std::u32string(text);
  }

  std::u32string out;
  out.reserve(text.size() + 8);
  for (char32_t c : text) {
    if (is_hangul_syllable(c)) {
      const char32_t i = c - kSBase;
      out += kLBase + i / kNCount;
      out += kVBase + (i % kNCount) / kTCount;
      if (i % kTCount != 0) out += kTBase + i % kTCount;
    } else if (const Decomposition* d = find_decomposition(c)) {
      out.append(kDecompositionData + d->offset, d->length);
    } else {
      out += c;
    }
  }

  // Canonical ordering: a stable insertion sort of each run of non-starters by class.
  for (size_t i = 1; i < out.size(); ++i) {
    const int k = combining_class(out[i]);
    if (k == 0) continue;
    for (size_t j = i; j > 0 && combining_class(out[j - 1]) > k; --j) std::swap(out[j - 1], out[j]);
  }
  if (out.empty()) return out;

  // Canonical composition: each character joins the last starter unless a character of the
  // same or a higher class stands between them.
  size_t kept = 1, starter = 0;
  int last = combining_class(out[0]);
  if (last != 0) last = 256;  // a leading non-starter never composes with what follows
  for (size_t i = 1; i < out.size(); ++i) {
    const char32_t c = out[i];
    const int k = combining_class(c);
    const char32_t composite = compose_pair(out[starter], c);
    if (composite != 0 && (last < k || last == 0)) {
      out[starter] = composite;
      continue;
    }
    if (k == 0) starter = kept;
    last = k;
    out[kept++] = c;
  }
  out.resize(kept);
  return out;
}

std::u32string lowercase(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c < 0x80) {
      out += (c >= 'A' && c <= 'Z') ? c + 32 : c;
      continue;
    }
    const auto it = std::lower_bound(std::begin(kLowercase), std::end(kLowercase), c,
                                     [](const LowercaseMapping& m, char32_t v) { return m.code_point < v; });
    if (it != std::end(kLowercase) && it->code_point == c) {
      out += it->lower;
      if (it->second != 0) out += it->second;
    } else {
      out += c;
    }
  }
  return out;
}

const std::string& extra_letter_class_items() {
  static const std::string items = class_items(std::begin(kExtraLetters), std::end(kExtraLetters));
  return items;
}

const std::string& extra_number_class_items() {
  static const std::string items = class_items(std::begin(kExtraNumbers), std::end(kExtraNumbers));
  return items;
}

}  // namespace tessera::unicode
