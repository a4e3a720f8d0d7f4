#pragma once
// Generated ids to text for streaming: never splits a UTF-8 character, never shows the
// beginning of a stop string that might still complete, and cuts the text before a stop string
// once one appears. Used by the single-sequence loop (generate.cpp) and the batching scheduler.
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizers/bpe_tokenizer.h"

namespace tessera {

class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop_strings)
      : decoder_(tokenizer), stops_(std::move(stop_strings)) {}

  // Adds one generated id; returns the text that may be shown now (possibly empty). After a
  // stop string has appeared, stopped() is true and the returned text ends just before it.
  std::string push(int32_t id);
  // At the end of generation: whatever was held back (nothing if a stop string was found).
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  StreamingDecoder decoder_;
  std::vector<std::string> stops_;
  std::string pending_;  // decoded but not yet shown: might be the start of a stop string
  bool stopped_ = false;
};

}  // namespace tessera
