#pragma once
// The tables behind tessera::Tokenizer, shared by the loaders (tokenizer_files.cpp) and the
// encoder (bpe_tokenizer.cpp). Not part of the public interface.
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizers/bpe_tokenizer.h"
#include "tokenizers/pcre2_regex.h"

namespace tessera {

inline uint64_t hash_bytes(std::string_view s) {
  // Multiply-xorshift over 8-byte words; tokens are short, so this is mostly one round.
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xC2B2AE3D27D4EB4Full);
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  h *= 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 29);
}

// Token bytes -> id, open addressing over ids; the bytes live in the tokenizer's table.
class TokenIndex {
 public:
  // Returns the first id whose bytes repeat an earlier id's (-1 if none); the earlier id
  // keeps the bytes.
  int32_t build(const std::vector<std::string>& tokens, const std::vector<uint8_t>& is_regular);
  int32_t find(std::string_view bytes) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash_bytes(bytes);
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id < 0) return -1;
      if (slot.tag == tag && (*tokens_)[static_cast<size_t>(slot.id)] == bytes) return slot.id;
    }
  }

 private:
  struct Slot {
    uint32_t tag = 0;
    int32_t id = -1;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  const std::vector<std::string>* tokens_ = nullptr;
};

// (left id, right id) -> (merge rank, merged id), open addressing.
class PairMap {
 public:
  static constexpr uint32_t kNoRank = 0xFFFFFFFFu;
  void reserve(size_t count);
  // A pair inserted again takes the new value (as Hugging Face's merge map does).
  void insert(int32_t left, int32_t right, uint32_t rank, int32_t merged);
  // Returns kNoRank when the pair does not merge.
  uint32_t find(int32_t left, int32_t right, int32_t& merged) const {
    if (left < 0 || right < 0 || slots_.empty()) return kNoRank;
    const uint64_t key = (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.key == kEmpty) return kNoRank;
      if (slot.key == key) {
        merged = slot.merged;
        return slot.rank;
      }
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    uint32_t rank = 0;
    int32_t merged = 0;
  };
  size_t slot_of(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  void grow();
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 64;
  size_t size_ = 0;
};

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = true;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

// One pre-tokenizer step. Every step splits each incoming piece; the pieces that come out of
// the last step are BPE-merged.
struct PreTokenizeStep {
  enum class Kind { kSplit, kByteLevel };
  Kind kind = Kind::kSplit;
  std::shared_ptr<const Pcre2Regex> regex;  // kByteLevel: the GPT-2 regex when use_regex
  // Split: Isolated keeps matches and the text between them; Removed keeps only the text
  // between matches; invert swaps the roles (so Removed+invert keeps only the matches,
  // which is what tiktoken does).
  bool removed = false;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel
};

// The raw bytes a GPT-2 byte-level vocab string stands for ("\u0120the" -> " the");
// nullopt when it is not byte-level text.
std::optional<std::string> byte_level_decode(std::string_view s);
// The other way: the vocab string for raw bytes (" the" -> "\u0120the").
std::string byte_level_encode(std::string_view bytes);
// The code point standing for one byte (' ' -> U+0120). Trainers order the base alphabet by it.
char32_t byte_level_char(unsigned char byte);

// A short, printable excerpt of untrusted text for an error message: at most 40 bytes, anything
// outside printable ASCII as '?', and "..." when cut.
inline std::string excerpt(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 40)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7F) ? c : '?';
  }
  if (s.size() > 40) out += "...";
  return out;
}

enum class TokenKind : uint8_t { kNone = 0, kRegular = 1, kAdded = 2, kSpecial = 3 };

struct Tokenizer::Impl {
  std::string source;                 // the file, for messages
  std::vector<std::string> tokens;    // id -> bytes
  std::vector<uint8_t> kinds;         // id -> TokenKind
  TokenIndex index;                   // regular token bytes -> id
  PairMap pairs;
  std::array<int32_t, 256> byte_token{};  // -1 where a byte has no token
  std::vector<AddedToken> added;      // longest first
  std::array<std::vector<uint32_t>, 256> added_by_first_byte;  // indices into `added`
  int32_t duplicate_token = -1;       // see TokenIndex::build
  std::vector<PreTokenizeStep> steps;
  bool whole_piece_lookup = false;    // tiktoken; tokenizer.json with ignore_merges
  int32_t unk_id = -1;
  bool fuse_unk = false;
  std::optional<int32_t> bos, eos, pad;
  std::optional<int32_t> unk_token, eot;  // reported ids only (unk_id above drives encoding)

  // Builds index, byte_token and the added-token lookup once tokens/kinds/added are set.
  void finish_tables();

  void encode_segment(std::string_view text, std::vector<int32_t>& out) const;
  void encode_valid_utf8(std::string_view text, std::vector<int32_t>& out) const;
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe_short(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe_long(std::string_view piece, std::vector<int32_t>& out) const;
  void push_byte(unsigned char byte, std::vector<int32_t>& out) const;
};

}  // namespace tessera
