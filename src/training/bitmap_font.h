#pragma once
// A 5x7 pixel font for printable ASCII, for labels drawn into images (loss plots) without a font
// library. Each glyph sits in a 6x8 cell: one column and one row of spacing.
#include <array>
#include <cstdint>
#include <string_view>

namespace tessera::training {

inline constexpr int kGlyphWidth = 5, kGlyphHeight = 7;
inline constexpr int kCellWidth = 6, kCellHeight = 8;

// Seven rows, top first; bit 4 of a row is its leftmost pixel. Characters outside ' '..'~' get
// the glyph of '?'.
const std::array<uint8_t, kGlyphHeight>& glyph(char c);

// How many cells `text` takes: one per ASCII character, one per UTF-8 sequence otherwise.
int text_cells(std::string_view text);

}  // namespace tessera::training
