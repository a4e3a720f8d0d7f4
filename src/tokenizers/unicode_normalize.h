#pragma once
// The text normalizers of the Hugging Face `tokenizers` library (NFC, Lowercase), reproduced
// with tables measured on that library (tools/golden/make_unicode_tables.py). The reference
// mixes Unicode versions — its NFC is an old Unicode release, its lowercase and its regex
// letter classes Unicode 16 — so plain Unicode data of any one version would not match it.
//
// Inputs are code point sequences; callers turn UTF-8 into code points (and replace invalid
// bytes) first.
#include <string>
#include <string_view>

namespace tessera::unicode {

// Canonical composition (decompose, reorder marks, recompose), as the reference's NFC.
std::u32string nfc(std::u32string_view text);

// Per code point lowercase (Rust's char::to_lowercase: U+0130 becomes two code points, a
// capital sigma always becomes U+03C3).
std::u32string lowercase(std::u32string_view text);

// The canonical combining class the reference's NFC uses (0 for marks it does not know).
int combining_class(char32_t c);

// PCRE2 character-class items (e.g. "\x{1C89}-\x{1C8A}") for the code points that the
// reference's regex engine counts as \p{L} / \p{N} but Unicode 14 (Debian 12's PCRE2) leaves
// unassigned. Appending them inside [...] next to \p{L} / \p{N} makes PCRE2 classify text
// as the reference does.
const std::string& extra_letter_class_items();
const std::string& extra_number_class_items();

}  // namespace tessera::unicode
