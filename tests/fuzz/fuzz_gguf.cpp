// Any byte string given to the GGUF parser either parses or raises tessera::Error; anything
// else (a crash, another exception, a sanitizer report, a huge allocation) is a bug.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto header = tessera::parse_gguf(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size), "fuzz.gguf");
    // Parsed tensors must lie inside the input, after the infos, and not overlap.
    if (header.data_start > size) __builtin_trap();
    for (const auto& t : header.tensors) {
      if (t.offset > size - header.data_start || t.nbytes > size - header.data_start - t.offset) __builtin_trap();
      if (t.ne.size() > 4 || t.shape.size() != t.ne.size()) __builtin_trap();
    }
  } catch (const tessera::Error&) {
  }
  return 0;
}
