// Any byte string given to the safetensors header parser either parses or raises
// tessera::Error; anything else (a crash, another exception, a sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto header = tessera::parse_safetensors_header(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size), "fuzz.safetensors");
    // Parsed entries must lie inside the input.
    for (const auto& entry : header.entries)
      if (header.data_start + entry.end > size) __builtin_trap();
  } catch (const tessera::Error&) {
  }
  return 0;
}
