// Any byte string given to the PNG decoder either decodes or raises tessera::Error; a decoded
// image always holds exactly width * height * channels bytes.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "formats/png.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const tessera::PngImage image = tessera::decode_png(std::span<const uint8_t>(data, size), "fuzz.png");
    if (image.channels != 3 && image.channels != 4) __builtin_trap();
    if (image.pixels.size() != static_cast<size_t>(image.width * image.height * image.channels)) __builtin_trap();
  } catch (const tessera::Error&) {
  }
  return 0;
}
