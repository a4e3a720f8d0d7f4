// Encoding and decoding for tessera::Tokenizer. Loading lives in tokenizer_files.cpp.
#include "tokenizers/bpe_tokenizer.h"

#include <algorithm>
#include <bit>
#include <cctype>

#include "core/error.h"
#include "tokenizers/bpe_tokenizer_impl.h"
#include "tokenizers/utf8.h"

namespace tessera {

// ---------------------------------------------------------------------------------------
// Tables

int32_t TokenIndex::build(const std::vector<std::string>& tokens, const std::vector<uint8_t>& is_regular) {
  tokens_ = &tokens;
  int32_t duplicate = -1;
  size_t count = 0;
  for (uint8_t r : is_regular) count += r ? 1 : 0;
  const size_t capacity = std::bit_ceil(std::max<size_t>(16, count * 2));
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (!is_regular[id]) continue;
    const uint64_t h = hash_bytes(tokens[id]);
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.id < 0) {
        slot = Slot{tag, static_cast<int32_t>(id)};
        break;
      }
      if (slot.tag == tag && tokens[static_cast<size_t>(slot.id)] == tokens[id]) {
        if (duplicate < 0) duplicate = static_cast<int32_t>(id);
        break;
      }
    }
  }
  return duplicate;
}

void PairMap::reserve(size_t count) {
  const size_t capacity = std::bit_ceil(std::max<size_t>(16, count * 2));
  if (capacity <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  shift_ = 64 - std::countr_zero(capacity);
  size_ = 0;
  for (const Slot& s : old) {
    if (s.key != kEmpty) {
      insert(static_cast<int32_t>(s.key >> 32), static_cast<int32_t>(s.key & 0xFFFFFFFFu), s.rank, s.merged);
    }
  }
}

void PairMap::grow() { reserve(std::max<size_t>(16, size_ * 2)); }

void PairMap::insert(int32_t left, int32_t right, uint32_t rank, int32_t merged) {
  if (left < 0 || right < 0) return;
  if ((size_ + 1) * 2 > slots_.size()) grow();
  const uint64_t key = (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
  for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
    Slot& slot = slots_[i];
    if (slot.key == key) {
      slot.rank = rank;
      slot.merged = merged;
      return;
    }
    if (slot.key == kEmpty) {
      slot = Slot{key, rank, merged};
      ++size_;
      return;
    }
  }
}

void Tokenizer::Impl::finish_tables() {
  std::vector<uint8_t> regular(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    regular[id] = kinds[id] == static_cast<uint8_t>(TokenKind::kRegular);
  }
  duplicate_token = index.build(tokens, regular);
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    byte_token[static_cast<size_t>(b)] = index.find(std::string_view(&c, 1));
  }
  std::stable_sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.content.size() > b.content.size();
  });
  for (auto& bucket : added_by_first_byte) bucket.clear();
  for (size_t i = 0; i < added.size(); ++i) {
    if (!added[i].content.empty()) {
      added_by_first_byte[static_cast<unsigned char>(added[i].content[0])].push_back(static_cast<uint32_t>(i));
    }
  }
}

// ---------------------------------------------------------------------------------------
// BPE merging

namespace {

// Pieces up to this many bytes use the simple quadratic merge (fast for short pieces);
// longer ones a heap over a linked list, O(n log n).
constexpr size_t kShortPiece = 64;

}  // namespace

void Tokenizer::Impl::push_byte(unsigned char byte, std::vector<int32_t>& out) const {
  const int32_t id = byte_token[byte];
  if (id >= 0) {
    out.push_back(id);
  } else if (unk_id >= 0 && !(fuse_unk && !out.empty() && out.back() == unk_id)) {
    out.push_back(unk_id);
  }
}

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (piece.size() == 1) {
    push_byte(static_cast<unsigned char>(piece[0]), out);
    return;
  }
  if (whole_piece_lookup) {
    const int32_t id = index.find(piece);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (piece.size() <= kShortPiece) {
    bpe_short(piece, out);
  } else {
    bpe_long(piece, out);
  }
}

void Tokenizer::Impl::bpe_short(std::string_view piece, std::vector<int32_t>& out) const {
  int32_t ids[kShortPiece];
  uint32_t ranks[kShortPiece];
  int32_t merged[kShortPiece];
  size_t m = 0;
  for (char c : piece) {
    const int32_t id = byte_token[static_cast<unsigned char>(c)];
    if (id >= 0 || unk_id >= 0) ids[m++] = id >= 0 ? id : unk_id;  // no token, no unk: skipped
  }
  for (size_t i = 0; i + 1 < m; ++i) ranks[i] = pairs.find(ids[i], ids[i + 1], merged[i]);
  while (m > 1) {
    uint32_t best = PairMap::kNoRank;
    size_t at = 0;
    for (size_t i = 0; i + 1 < m; ++i) {
      if (ranks[i] < best) {
        best = ranks[i];
        at = i;
      }
    }
    if (best == PairMap::kNoRank) break;
    ids[at] = merged[at];
    for (size_t k = at + 1; k + 1 < m; ++k) ids[k] = ids[k + 1];
    for (size_t k = at + 1; k + 2 < m; ++k) {
      ranks[k] = ranks[k + 1];
      merged[k] = merged[k + 1];
    }
    --m;
    if (at + 1 < m) ranks[at] = pairs.find(ids[at], ids[at + 1], merged[at]);
    if (at > 0) ranks[at - 1] = pairs.find(ids[at - 1], ids[at], merged[at - 1]);
  }
  bool previous_unk = false;
  for (size_t i = 0; i < m; ++i) {
    if (ids[i] == unk_id && fuse_unk && previous_unk) continue;
    previous_unk = ids[i] == unk_id;
    out.push_back(ids[i]);
  }
}

void Tokenizer::Impl::bpe_long(std::string_view piece, std::vector<int32_t>& out) const {
  constexpr int32_t kDead = -2;
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
  };
  struct Candidate {
    uint32_t rank;
    int32_t left;  // index of the left symbol (its first byte): ties go to the leftmost
    int32_t right;
    int32_t left_id;
    int32_t right_id;
    int32_t merged;
  };
  // std heap is a max-heap: "greater" puts the lowest (rank, position) on top.
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  };

  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  for (char c : piece) {
    const int32_t id = byte_token[static_cast<unsigned char>(c)];
    if (id < 0 && unk_id < 0) continue;  // no token, no unk: skipped
    const auto i = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id >= 0 ? id : unk_id, i - 1, i + 1});
  }
  const auto n = static_cast<int32_t>(symbols.size());
  if (n == 0) return;
  symbols.back().next = -1;
  std::vector<Candidate> heap;
  heap.reserve(static_cast<size_t>(n));
  const auto consider = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t left_id = symbols[static_cast<size_t>(left)].id;
    const int32_t right_id = symbols[static_cast<size_t>(right)].id;
    int32_t merged = 0;
    const uint32_t rank = pairs.find(left_id, right_id, merged);
    if (rank == PairMap::kNoRank) return;
    heap.push_back(Candidate{rank, left, right, left_id, right_id, merged});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i, i + 1);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& left = symbols[static_cast<size_t>(c.left)];
    if (left.id != c.left_id || left.next != c.right) continue;  // stale
    Symbol& right = symbols[static_cast<size_t>(c.right)];
    if (right.id != c.right_id) continue;
    left.id = c.merged;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = c.left;
    right.id = kDead;
    consider(left.prev, c.left);
    consider(c.left, left.next);
  }
  bool previous_unk = false;
  for (int32_t i = 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    const int32_t id = symbols[static_cast<size_t>(i)].id;
    if (id < 0) continue;
    if (id == unk_id && fuse_unk && previous_unk) continue;
    previous_unk = id == unk_id;
    out.push_back(id);
  }
}

// ---------------------------------------------------------------------------------------
// Pre-tokenizing

namespace {

template <typename Sink>
void run_steps(const std::vector<PreTokenizeStep>& steps, size_t k, std::string_view piece, Sink& sink) {
  if (piece.empty()) return;
  if (k == steps.size()) {
    sink(piece);
    return;
  }
  const PreTokenizeStep& step = steps[k];
  std::string prefixed;
  if (step.kind == PreTokenizeStep::Kind::kByteLevel) {
    if (step.add_prefix_space && piece.front() != ' ') {
      prefixed.reserve(piece.size() + 1);
      prefixed += ' ';
      prefixed += piece;
      piece = prefixed;
    }
    if (!step.regex) {
      run_steps(steps, k + 1, piece, sink);
      return;
    }
  }
  // Matches are "delimiters"; invert makes the text between matches the delimiters.
  const bool keep_matches = !(step.removed && !step.invert);
  const bool keep_gaps = !(step.removed && step.invert);
  size_t previous = 0;
  step.regex->for_each_match(piece, [&](size_t start, size_t end) {
    if (keep_gaps && start > previous) run_steps(steps, k + 1, piece.substr(previous, start - previous), sink);
    if (keep_matches) run_steps(steps, k + 1, piece.substr(start, end - start), sink);
    previous = end;
  });
  if (keep_gaps && previous < piece.size()) run_steps(steps, k + 1, piece.substr(previous), sink);
}

bool is_word_char_before(std::string_view text, size_t pos) {
  if (pos == 0) return false;
  const auto c = static_cast<unsigned char>(text[pos - 1]);
  return c >= 0x80 || std::isalnum(c) || c == '_';
}

bool is_word_char_at(std::string_view text, size_t pos) {
  if (pos >= text.size()) return false;
  const auto c = static_cast<unsigned char>(text[pos]);
  return c >= 0x80 || std::isalnum(c) || c == '_';
}

// Byte length of the whitespace character that ends at `end` (0 if none).
size_t whitespace_before(std::string_view text, size_t begin, size_t end) {
  for (size_t len = 1; len <= 4 && len <= end - begin; ++len) {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data() + end - len);
    if ((p[0] & 0xC0) == 0x80) continue;
    const int n = utf8::valid_sequence_at(p, len);
    if (n != static_cast<int>(len)) return 0;
    return utf8::is_unicode_whitespace(utf8::decode_at(p, n)) ? len : 0;
  }
  return 0;
}

size_t whitespace_at(std::string_view text, size_t pos) {
  if (pos >= text.size()) return 0;
  const auto* p = reinterpret_cast<const unsigned char*>(text.data() + pos);
  const int n = utf8::valid_sequence_at(p, text.size() - pos);
  if (n == 0) return 0;
  return utf8::is_unicode_whitespace(utf8::decode_at(p, n)) ? static_cast<size_t>(n) : 0;
}

}  // namespace

void Tokenizer::Impl::encode_valid_utf8(std::string_view text, std::vector<int32_t>& out) const {
  auto sink = [&](std::string_view piece) { bpe(piece, out); };
  run_steps(steps, 0, text, sink);
}

void Tokenizer::Impl::encode_segment(std::string_view text, std::vector<int32_t>& out) const {
  size_t i = 0;
  while (i < text.size()) {
    const size_t valid = utf8::valid_prefix_length(text.substr(i));
    if (valid > 0) encode_valid_utf8(text.substr(i, valid), out);
    i += valid;
    if (i < text.size()) push_byte(static_cast<unsigned char>(text[i++]), out);
  }
}

// ---------------------------------------------------------------------------------------
// Public interface

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  const Impl& im = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  size_t pos = 0;  // start of the text not yet encoded
  while (true) {
    const AddedToken* token = nullptr;
    size_t at = text.size();
    if (!im.added.empty()) {
      for (size_t i = pos; i < text.size() && !token; ++i) {
        for (const uint32_t k : im.added_by_first_byte[static_cast<unsigned char>(text[i])]) {  // longest first
          const AddedToken& a = im.added[k];
          if (a.special && !allow_special) continue;
          if (a.content.size() > text.size() - i || text.compare(i, a.content.size(), a.content) != 0) continue;
          if (a.single_word && (is_word_char_before(text, i) || is_word_char_at(text, i + a.content.size())))
            continue;
          token = &a;
          at = i;
          break;
        }
      }
    }
    if (!token) {
      im.encode_segment(text.substr(pos), out);
      return out;
    }
    size_t segment_end = at;
    if (token->lstrip) {
      while (size_t n = whitespace_before(text, pos, segment_end)) segment_end -= n;
    }
    im.encode_segment(text.substr(pos, segment_end - pos), out);
    out.push_back(token->id);
    pos = at + token->content.size();
    if (token->rstrip) {
      while (size_t n = whitespace_at(text, pos)) pos += n;
    }
  }
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  const Impl& im = *impl_;
  if (id < 0 || static_cast<size_t>(id) >= im.tokens.size() ||
      im.kinds[static_cast<size_t>(id)] == static_cast<uint8_t>(TokenKind::kNone)) {
    fail("tokenizer {}: unknown token id {} (vocab size {})", im.source, id, im.tokens.size());
  }
  return im.tokens[static_cast<size_t>(id)];
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  size_t total = 0;
  for (int32_t id : ids) total += token_bytes(id).size();
  text.reserve(total);
  for (int32_t id : ids) text += impl_->tokens[static_cast<size_t>(id)];
  return text;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }

std::optional<int32_t> Tokenizer::token_id(std::string_view text) const {
  for (const AddedToken& a : impl_->added) {
    if (a.content == text) return a.id;
  }
  const int32_t id = impl_->index.find(text);
  if (id >= 0) return id;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->kinds.size() &&
         impl_->kinds[static_cast<size_t>(id)] == static_cast<uint8_t>(TokenKind::kSpecial);
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<int32_t> Tokenizer::pad_id() const { return impl_->pad; }
std::optional<int32_t> Tokenizer::unk_id() const {
  if (impl_->unk_token) return impl_->unk_token;
  if (impl_->unk_id >= 0) return impl_->unk_id;
  return std::nullopt;
}
std::optional<int32_t> Tokenizer::eot_id() const { return impl_->eot; }
const std::string& Tokenizer::source() const { return impl_->source; }

// ---------------------------------------------------------------------------------------
// Streaming decode

std::string StreamingDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_bytes(id);
  const size_t hold = utf8::incomplete_tail_length(pending_);
  std::string ready = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return ready;
}

std::string StreamingDecoder::flush() {
  std::string rest;
  rest.swap(pending_);
  return rest;
}

}  // namespace tessera
