#pragma once
// PNG images through libpng: 8-bit RGB or RGBA pixels, row-major, plus text chunks (the
// generation parameters that go with an image).
//
// Text is UTF-8 on this side. A keyword must be 1-79 Latin-1 characters (printable, no leading,
// trailing or doubled spaces), as PNG requires; a value that is all Latin-1 is written as tEXt,
// anything else as uncompressed iTXt. Reading turns tEXt, zTXt and iTXt back into UTF-8.
// Encoding is deterministic: fixed compression settings and no tIME chunk, so the same image
// always gives the same bytes.
//
// libpng reports errors by longjmp; every call into it happens in a frame that owns no C++
// objects, and the error comes out as one tessera::Error line naming the file, after libpng's
// structures are freed.
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace tessera {

struct PngImage {
  int64_t width = 0, height = 0, channels = 3;  // channels: 3 (RGB) or 4 (RGBA)
  std::vector<uint8_t> pixels;                  // width * height * channels bytes
  std::vector<std::pair<std::string, std::string>> text;  // keyword, value (UTF-8), in order
};

std::vector<uint8_t> encode_png(const PngImage& image);

// Atomic: a temporary file in the same folder, flushed, then renamed over `path`. Errors name
// the path.
void write_png(const std::filesystem::path& path, const PngImage& image);

// Any valid PNG (gray, palette, 16-bit, interlaced, ...) comes back as 8-bit RGB, or RGBA when it
// has transparency. Corrupt or truncated data throws one tessera::Error line naming `origin`.
PngImage decode_png(std::span<const uint8_t> bytes, const std::string& origin);

PngImage read_png(const std::filesystem::path& path);

}  // namespace tessera
