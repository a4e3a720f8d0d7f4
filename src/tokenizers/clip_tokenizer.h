#pragma once
// The CLIP BPE tokenizer of Stable Diffusion text encoders, matching what a diffusers
// pipeline gets from transformers' CLIPTokenizer.from_pretrained(<model>/tokenizer) (the
// `tokenizers`-backed CLIPTokenizer of transformers 5).
//
// Encoding, step by step as the reference does it:
//  1. Bytes that are not valid UTF-8 become U+FFFD, one per maximal invalid subpart (what
//     Python's bytes.decode("utf-8", "replace") gives, so the result equals the reference's
//     on the text a Python caller would have made of the same bytes).
//  2. Special tokens marked "not normalized" (by default all of them) are cut out of the raw
//     text, leftmost first, longest first.
//  3. Each remaining stretch is normalized: NFC, every run of Unicode white space becomes one
//     space, lowercase (unicode_normalize.h). Special tokens marked "normalized" (SD 1.x's
//     <|startoftext|> in its tokenizer_config.json) are then cut out of the normalized text.
//  4. The CLIP pattern keeps <|startoftext|>, <|endoftext|>, the contractions 's 't 're 've
//     'm 'll 'd, runs of letters, single digits and runs of other non-space characters, and
//     drops the spaces. A piece spelling a special token (it was not matched in step 2 or 3,
//     e.g. written in capitals) is split again as the reference's byte-level pre-tokenizer
//     does: "<|", the letters, "|>".
//  5. Each piece's UTF-8 bytes are mapped to the GPT-2 byte alphabet, "</w>" is appended to
//     its last symbol, and merges are applied lowest rank first (ties: leftmost). A symbol
//     that has no token becomes the unknown token (<|endoftext|>), as the reference does.
//
// A pad token (SD 2.x and SDXL's tokenizer_2 use "!") is a special token too: as in the
// reference, a "!" in the prompt then encodes to the pad id 0 instead of "!</w>" (256).
//
// A ClipTokenizer is immutable apart from set_pad_token; copies share the tables, and
// encode/decode may be called from many threads at once.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace tessera {

class ClipTokenizer {
 public:
  // A diffusers tokenizer/ folder: vocab.json + merges.txt, and when present
  // tokenizer_config.json / special_tokens_map.json for the special tokens (which of them are
  // matched on normalized text, the pad token) and model_max_length (77 when absent). A
  // tokenizer.json in the folder is not read.
  static ClipTokenizer load_dir(const std::filesystem::path& dir);
  // vocab.json + merges.txt alone: <|startoftext|>, <|endoftext|> (also pad and unknown),
  // model_max_length 77.
  static ClipTokenizer from_files(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt);
  // open-clip's bpe_simple_vocab_16e6.txt.gz: the vocab is built from the merges as
  // open_clip and CLIP do (the 256 byte symbols, the same with "</w>", the first 48894
  // merges joined, then <|startoftext|> and <|endoftext|>), which gives the ids of the
  // Hugging Face vocab.json (49406 and 49407 for the two special tokens).
  static ClipTokenizer from_bpe_gz(const std::filesystem::path& path);

  std::vector<int32_t> encode(const std::string& text) const;  // no BOS/EOS, no truncation

  struct Padded {
    std::vector<int32_t> ids;
    std::vector<int32_t> attention_mask;
    bool truncated = false;
    // The first position holding eos_id(), where the reference's text encoder pools. With
    // an <|endoftext|> in the prompt text this comes before the appended EOS, as it does
    // there.
    int64_t eos_index = 0;
  };
  // BOS + tokens + EOS, truncated to max_length (the last kept id is EOS) and padded with
  // pad_id to max_length: what a pipeline gets from tokenizer(prompt, padding="max_length",
  // max_length=..., truncation=True). The caller warns when truncated is set.
  Padded encode_padded(const std::string& text, int64_t max_length = 77) const;

  // The reference's decode (special tokens kept): the tokens' bytes joined, invalid UTF-8
  // replaced by U+FFFD, every "</w>" made a space, white space trimmed at both ends (Python's
  // str.strip). Ids without a token are skipped.
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t pad_id() const;
  int64_t vocab_size() const;   // largest id + 1
  int64_t max_length() const;   // model_max_length
  // Pads with `token` (which must be in the vocab) from now on, and matches it in text as a
  // special token, as the reference does with pad_token="!" (the previous pad token stops
  // being special unless it is also BOS, EOS or unknown).
  void set_pad_token(const std::string& token);

  struct Impl;

 private:
  explicit ClipTokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace tessera
