// Any byte string given to the tokenizer.json loader either loads or raises tessera::Error;
// anything else (a crash, another exception, a sanitizer report, a hang) is a bug. A file that
// loads must also encode and decode a short text, which runs its regexes and merges.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "tokenizers/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const tessera::Tokenizer tokenizer = tessera::Tokenizer::from_tokenizer_json_text(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/tokenizer.json");
    for (const bool allow_special : {true, false}) {
      const auto ids = tokenizer.encode("Hi <|endoftext|> it's 42 \xF0\x9F\x98\x80 \xFF  x\n", allow_special);
      (void)tokenizer.decode(ids);
    }
  } catch (const tessera::Error&) {
  }
  return 0;
}
