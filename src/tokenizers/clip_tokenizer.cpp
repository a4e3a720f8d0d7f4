#include "tokenizers/clip_tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <fstream>
#include <limits>
#include <optional>
#include <queue>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizers/pcre2_regex.h"
#include "tokenizers/unicode_normalize.h"
#include "tokenizers/utf8.h"

namespace tessera {

using json = nlohmann::json;

namespace {

constexpr std::string_view kStartOfText = "<|startoftext|>";
constexpr std::string_view kEndOfText = "<|endoftext|>";
constexpr std::string_view kWordEnd = "</w>";
constexpr int64_t kDefaultMaxLength = 77;
// open_clip keeps this many merges of bpe_simple_vocab_16e6.txt.gz: a 49152-token vocab less
// the 256 byte symbols and the two special tokens.
constexpr size_t kOpenClipMerges = 49152 - 256 - 2;
// Ids above this in a vocab.json are taken for corruption rather than allocated.
constexpr int64_t kMaxVocabId = 1 << 24;

// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the others are moved to
// U+0100 and up, in byte order. byte_alphabet()[i] lists (byte, code point) in the order CLIP
// builds its vocab: the printable ones first.
const std::array<std::pair<uint8_t, char32_t>, 256>& byte_alphabet() {
  static const auto table = [] {
    std::array<std::pair<uint8_t, char32_t>, 256> t{};
    std::array<bool, 256> printable{};
    size_t n = 0;
    for (int b = 0; b < 256; ++b) {
      if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
        printable[static_cast<size_t>(b)] = true;
        t[n++] = {static_cast<uint8_t>(b), static_cast<char32_t>(b)};
      }
    }
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      if (!printable[static_cast<size_t>(b)]) t[n++] = {static_cast<uint8_t>(b), next++};
    }
    return t;
  }();
  return table;
}

std::string utf8_of(char32_t c) {
  std::string s;
  utf8::append(s, c);
  return s;
}

// Bytes that are not valid UTF-8 become U+FFFD, one for each maximal subpart of an invalid
// sequence (a lead byte and the continuation bytes that could still have completed it), as
// Python's bytes.decode("utf-8", "replace") and Rust's String::from_utf8_lossy do.
std::string replace_invalid_utf8(std::string_view s) {
  const size_t valid = utf8::valid_prefix_length(s);
  if (valid == s.size()) return std::string(s);
  std::string out(s.substr(0, valid));
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = valid;
  while (i < s.size()) {
    const int len = utf8::valid_sequence_at(p + i, s.size() - i);
    if (len > 0) {
      out.append(s.substr(i, static_cast<size_t>(len)));
      i += static_cast<size_t>(len);
      continue;
    }
    const int want = utf8::sequence_length(p[i]);
    size_t take = 1;
    if (want > 1 && i + 1 < s.size() && utf8::valid_second_byte(p[i], p[i + 1])) {
      take = 2;
      while (take < static_cast<size_t>(want) && i + take < s.size() && (p[i + take] & 0xC0) == 0x80) ++take;
    }
    out += "\xEF\xBF\xBD";
    i += take;
  }
  return out;
}

std::u32string to_code_points(std::string_view s) {  // s is valid UTF-8
  std::u32string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    const int len = utf8::sequence_length(p[i]);
    out += utf8::decode_at(p + i, len);
    i += static_cast<size_t>(len);
  }
  return out;
}

std::string to_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8::append(out, c);
  return out;
}

// The reference normalizer: NFC, each run of white space to one space, lowercase.
std::string normalize(std::string_view text) {
  const bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  if (ascii) {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      const char c = text[i];
      if (utf8::is_unicode_whitespace(static_cast<unsigned char>(c))) {
        out += ' ';
        while (i + 1 < text.size() && utf8::is_unicode_whitespace(static_cast<unsigned char>(text[i + 1]))) ++i;
      } else {
        out += (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
      }
    }
    return out;
  }
  const std::u32string composed = unicode::nfc(to_code_points(text));
  std::u32string spaced;
  spaced.reserve(composed.size());
  for (size_t i = 0; i < composed.size(); ++i) {
    if (utf8::is_unicode_whitespace(composed[i])) {
      spaced += U' ';
      while (i + 1 < composed.size() && utf8::is_unicode_whitespace(composed[i + 1])) ++i;
    } else {
      spaced += composed[i];
    }
  }
  return to_utf8(unicode::lowercase(spaced));
}

// The CLIP pre-tokenizer pattern. Letters and numbers are widened to what the reference's
// regex engine (Unicode 16) counts as such, and white space is Unicode White_Space.
const Pcre2Regex& clip_pattern() {
  static const Pcre2Regex regex = [] {
    const std::string letters = "\\p{L}" + unicode::extra_letter_class_items();
    const std::string numbers = "\\p{N}" + unicode::extra_number_class_items();
    // PCRE2's \s also takes U+180E (White_Space before Unicode 6.3); the reference's does not.
    const std::string space = "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
    const std::string pattern = "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[" + letters +
                                "]+|[" + numbers + "]|[^" + space + letters + numbers + "]+";
    return Pcre2Regex(pattern, "CLIP pre-tokenizer");
  }();
  return regex;
}

std::string read_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail("{}: file not found", path.string());
  if (std::filesystem::is_directory(path, ec)) fail("{}: is a directory, expected a file", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: read error", path.string());
  return data;
}

json parse_json(const std::string& text, const std::filesystem::path& path) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON (at byte {})", path.string(), e.byte);
  }
}

std::string gunzip(const std::string& data, const std::filesystem::path& path) {
  if (data.size() < 2 || static_cast<unsigned char>(data[0]) != 0x1F || static_cast<unsigned char>(data[1]) != 0x8B) {
    fail("{}: not a gzip file", path.string());
  }
  if (data.size() > (size_t{1} << 30)) fail("{}: larger than 1 GiB, not a BPE merges file", path.string());
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) fail("{}: zlib could not start", path.string());
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  std::string out;
  std::array<char, 1 << 16> buffer{};
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(buffer.data());
    zs.avail_out = static_cast<uInt>(buffer.size());
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      const std::string why = rc == Z_BUF_ERROR ? "truncated" : (zs.msg ? zs.msg : "corrupt");
      inflateEnd(&zs);
      fail("{}: bad gzip data: {}", path.string(), why);
    }
    out.append(buffer.data(), buffer.size() - zs.avail_out);
    if (out.size() > (size_t{1} << 30)) {
      inflateEnd(&zs);
      fail("{}: unpacks to more than 1 GiB, not a BPE merges file", path.string());
    }
  }
  inflateEnd(&zs);
  return out;
}

struct Merge {
  uint32_t rank;
  int32_t merged;
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct SpecialToken {
  std::string content;  // as matched: normalized when `normalized` is set
  int32_t id = -1;
  bool normalized = false;
};

// The flags a special token gets from the folder's config files.
struct SpecialSpec {
  std::string content;
  bool normalized = false;
};

}  // namespace

struct ClipTokenizer::Impl {
  std::string source;
  std::vector<std::string> tokens;       // id -> token text ("" for an id with no token)
  std::vector<std::string> token_bytes;  // id -> the bytes decode gives for it
  std::vector<uint8_t> has_token;
  std::unordered_map<std::string, int32_t> ids;
  std::array<int32_t, 256> byte_id{};      // the token of a lone byte symbol, -1 if none
  std::array<int32_t, 256> byte_end_id{};  // the same followed by </w>
  std::unordered_map<uint64_t, Merge> merges;
  std::vector<SpecialToken> specials;
  std::array<bool, 256> special_first_byte{};
  int32_t bos = -1, eos = -1, pad = -1, unk = -1;
  int64_t model_max_length = kDefaultMaxLength;

  std::optional<int32_t> find(std::string_view token) const {
    const auto it = ids.find(std::string(token));
    if (it == ids.end()) return std::nullopt;
    return it->second;
  }

  int32_t require(std::string_view token, std::string_view what, const std::string& where) const {
    const auto id = find(token);
    if (!id) fail("{}: the {} \"{}\" is not in the vocab", where, what, token);
    return *id;
  }

  void set_special(const std::string& content, bool normalized) {
    const int32_t id = require(content, "special token", source);
    const std::string matched = normalized ? normalize(content) : content;
    for (SpecialToken& s : specials) {
      if (s.id == id) {
        s.content = matched;
        s.normalized = normalized;
        refresh_first_bytes();
        return;
      }
    }
    specials.push_back({matched, id, normalized});
    refresh_first_bytes();
  }

  void refresh_first_bytes() {
    special_first_byte.fill(false);
    for (const SpecialToken& s : specials) {
      if (!s.content.empty()) special_first_byte[static_cast<unsigned char>(s.content[0])] = true;
    }
    // Longest first, so the first token that matches at a position is the longest there.
    std::stable_sort(specials.begin(), specials.end(),
                     [](const SpecialToken& a, const SpecialToken& b) { return a.content.size() > b.content.size(); });
  }

  // Calls on_text(piece) for the stretches between special tokens of the given kind and
  // on_special(id) for each of those tokens, leftmost first, longest first.
  template <typename OnText, typename OnSpecial>
  void split_specials(std::string_view text, bool normalized, OnText&& on_text, OnSpecial&& on_special) const {
    size_t start = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      if (!special_first_byte[static_cast<unsigned char>(text[i])]) continue;
      for (const SpecialToken& s : specials) {
        if (s.normalized != normalized || s.content.empty()) continue;
        if (text.compare(i, s.content.size(), s.content) == 0) {
          if (i > start) on_text(text.substr(start, i - start));
          on_special(s.id);
          start = i + s.content.size();
          i = start - 1;
          break;
        }
      }
    }
    if (start < text.size()) on_text(text.substr(start));
  }

  void encode_text(std::string_view raw, std::vector<int32_t>& out) const {
    split_specials(
        raw, false,
        [&](std::string_view stretch) {
          const std::string normalized = normalize(stretch);
          split_specials(
              normalized, true, [&](std::string_view piece) { pre_tokenize(piece, out); },
              [&](int32_t id) { out.push_back(id); });
        },
        [&](int32_t id) { out.push_back(id); });
  }

  void pre_tokenize(std::string_view text, std::vector<int32_t>& out) const {
    clip_pattern().for_each_match(text, [&](size_t start, size_t end) {
      const std::string_view piece = text.substr(start, end - start);
      if (piece == kStartOfText || piece == kEndOfText) {
        // Special-token text that was not matched as a special token: the reference's
        // byte-level pre-tokenizer (GPT-2 pattern) splits it into "<|", letters, "|>". It
        // leaves every other CLIP piece whole (none holds a space, and each is one class).
        bpe(piece.substr(0, 2), out);
        bpe(piece.substr(2, piece.size() - 4), out);
        bpe(piece.substr(piece.size() - 2), out);
      } else {
        bpe(piece, out);
      }
    });
  }

  void bpe(std::string_view piece, std::vector<int32_t>& out) const {
    const size_t n = piece.size();
    if (n == 0) return;
    auto symbol = [&](size_t i) {
      const auto b = static_cast<unsigned char>(piece[i]);
      const int32_t id = i + 1 == n ? byte_end_id[b] : byte_id[b];
      return id >= 0 ? id : unk;
    };
    if (n == 1) {
      out.push_back(symbol(0));
      return;
    }

    struct Symbol {
      int32_t id;
      int32_t next;  // -1 at the end
      int32_t prev;  // -1 at the start
    };
    struct Candidate {
      uint32_t rank;
      int32_t left;  // position of the left symbol: ties go to the leftmost pair
      int32_t left_id;
      int32_t right_id;
      int32_t merged;
    };
    const auto later = [](const Candidate& a, const Candidate& b) {
      return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
    };
    std::vector<Symbol> symbols(n);
    for (size_t i = 0; i < n; ++i) {
      symbols[i] = {symbol(i), i + 1 < n ? static_cast<int32_t>(i + 1) : -1, static_cast<int32_t>(i) - 1};
    }
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
    auto consider = [&](int32_t left) {
      if (left < 0) return;
      const int32_t right = symbols[static_cast<size_t>(left)].next;
      if (right < 0) return;
      const int32_t a = symbols[static_cast<size_t>(left)].id, b = symbols[static_cast<size_t>(right)].id;
      const auto it = merges.find(pair_key(a, b));
      if (it != merges.end()) queue.push({it->second.rank, left, a, b, it->second.merged});
    };
    for (size_t i = 0; i + 1 < n; ++i) consider(static_cast<int32_t>(i));
    constexpr int32_t kGone = std::numeric_limits<int32_t>::min();
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      Symbol& left = symbols[static_cast<size_t>(c.left)];
      if (left.id != c.left_id || left.next < 0) continue;  // merged away or changed since
      Symbol& right = symbols[static_cast<size_t>(left.next)];
      if (right.id != c.right_id) continue;
      left.id = c.merged;
      right.id = kGone;
      left.next = right.next;
      if (left.next >= 0) symbols[static_cast<size_t>(left.next)].prev = c.left;
      consider(left.prev);
      consider(c.left);
    }
    for (int32_t i = 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) out.push_back(symbols[static_cast<size_t>(i)].id);
  }
};

namespace {

using Impl = ClipTokenizer::Impl;

// Builds the tables from (token, id) pairs and merges in rank order.
std::shared_ptr<Impl> build(const std::vector<std::pair<std::string, int64_t>>& vocab,
                            const std::vector<std::pair<std::string, std::string>>& merges,
                            const std::vector<size_t>& merge_lines, const std::string& vocab_where,
                            const std::string& merges_where) {
  auto impl = std::make_shared<Impl>();
  impl->source = vocab_where;
  int64_t size = 0;
  for (const auto& [token, id] : vocab) {
    if (id < 0 || id >= kMaxVocabId) fail("{}: id {} of \"{}\" is out of range", vocab_where, id, token);
    size = std::max(size, id + 1);
  }
  impl->tokens.assign(static_cast<size_t>(size), {});
  impl->has_token.assign(static_cast<size_t>(size), 0);
  impl->ids.reserve(vocab.size() * 2);
  for (const auto& [token, id] : vocab) {
    const auto slot = static_cast<size_t>(id);
    if (impl->has_token[slot]) {
      fail("{}: id {} is given to both \"{}\" and \"{}\"", vocab_where, id, impl->tokens[slot], token);
    }
    if (!impl->ids.emplace(token, static_cast<int32_t>(id)).second) {
      fail("{}: the token \"{}\" appears twice", vocab_where, token);
    }
    impl->tokens[slot] = token;
    impl->has_token[slot] = 1;
  }

  // What decode makes of each token: its byte symbols turned back into bytes, or the token's
  // own text when a character is not a byte symbol.
  std::unordered_map<char32_t, uint8_t> byte_of;
  for (const auto& [byte, cp] : byte_alphabet()) byte_of[cp] = byte;
  impl->token_bytes.resize(impl->tokens.size());
  for (size_t id = 0; id < impl->tokens.size(); ++id) {
    const std::string& token = impl->tokens[id];
    if (!utf8::is_valid(token)) {
      impl->token_bytes[id] = token;
      continue;
    }
    std::string bytes;
    bool all = true;
    for (char32_t c : to_code_points(token)) {
      const auto it = byte_of.find(c);
      if (it == byte_of.end()) {
        all = false;
        break;
      }
      bytes += static_cast<char>(it->second);
    }
    impl->token_bytes[id] = all ? bytes : token;
  }

  for (const auto& [byte, cp] : byte_alphabet()) {
    const std::string s = utf8_of(cp);
    impl->byte_id[byte] = impl->find(s).value_or(-1);
    impl->byte_end_id[byte] = impl->find(s + std::string(kWordEnd)).value_or(-1);
  }

  impl->merges.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const size_t line = merge_lines[rank];
    const auto left = impl->find(a), right = impl->find(b), merged = impl->find(a + b);
    if (!left) fail("{}: line {}: \"{}\" is not in the vocab", merges_where, line, a);
    if (!right) fail("{}: line {}: \"{}\" is not in the vocab", merges_where, line, b);
    if (!merged) fail("{}: line {}: the merged token \"{}\" is not in the vocab", merges_where, line, a + b);
    impl->merges[pair_key(*left, *right)] = Merge{static_cast<uint32_t>(rank), *merged};
  }
  return impl;
}

// The specials of a bare vocab + merges: what CLIPTokenizer gets without config files.
void add_default_specials(Impl& impl, const std::string& where) {
  impl.bos = impl.require(kStartOfText, "BOS token", where);
  impl.eos = impl.require(kEndOfText, "EOS token", where);
  impl.unk = impl.eos;
  impl.pad = impl.eos;
  impl.set_special(std::string(kStartOfText), false);
  impl.set_special(std::string(kEndOfText), false);
}

std::vector<std::pair<std::string, int64_t>> read_vocab_json(const std::filesystem::path& path) {
  const json root = parse_json(read_file(path), path);
  if (!root.is_object()) fail("{}: expected a JSON object of token -> id", path.string());
  std::vector<std::pair<std::string, int64_t>> vocab;
  vocab.reserve(root.size());
  for (const auto& [token, id] : root.items()) {
    if (!id.is_number_integer()) fail("{}: the id of \"{}\" is not an integer", path.string(), token);
    vocab.emplace_back(token, id.get<int64_t>());
  }
  if (vocab.empty()) fail("{}: the vocab is empty", path.string());
  return vocab;
}

// merges.txt as the reference reads it: "#version" lines skipped, every other line exactly
// two tokens separated by one space (a blank line is an error there too).
void read_merges_txt(const std::filesystem::path& path, std::vector<std::pair<std::string, std::string>>& merges,
                     std::vector<size_t>& lines) {
  const std::string text = read_file(path);
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.starts_with("#version")) continue;
    const size_t space = line.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos) {
      fail("{}: line {}: expected two tokens separated by one space", path.string(), line_no);
    }
    merges.emplace_back(std::string(line.substr(0, space)), std::string(line.substr(space + 1)));
    lines.push_back(line_no);
  }
}

// A special-token entry of tokenizer_config.json or special_tokens_map.json: a string, or an
// AddedToken object with "content" (and "normalized").
std::optional<SpecialSpec> special_spec(const json& value, bool default_normalized, const std::string& where,
                                        const std::string& key) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) return SpecialSpec{value.get<std::string>(), false};
  if (value.is_object()) {
    const auto content = value.find("content");
    if (content == value.end() || !content->is_string()) fail("{}: {} has no \"content\" string", where, key);
    bool normalized = default_normalized;
    if (const auto special = value.find("special"); special != value.end() && special->is_boolean() && special->get<bool>()) {
      normalized = false;
    }
    if (const auto n = value.find("normalized"); n != value.end()) {
      if (!n->is_boolean()) fail("{}: {}.normalized is not true or false", where, key);
      normalized = n->get<bool>();
    }
    return SpecialSpec{content->get<std::string>(), normalized};
  }
  fail("{}: {} is neither a string nor a token object", where, key);
}

}  // namespace

ClipTokenizer ClipTokenizer::from_files(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt) {
  const auto vocab = read_vocab_json(vocab_json);
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<size_t> lines;
  read_merges_txt(merges_txt, merges, lines);
  auto impl = build(vocab, merges, lines, vocab_json.string(), merges_txt.string());
  add_default_specials(*impl, vocab_json.string());
  return ClipTokenizer(std::move(impl));
}

ClipTokenizer ClipTokenizer::from_bpe_gz(const std::filesystem::path& path) {
  const std::string text = gunzip(read_file(path), path);
  const std::string where = path.string();
  // Line 1 is a header; the merges follow, of which open_clip keeps the first 48894.
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<size_t> lines;
  size_t pos = text.find('\n');
  if (pos == std::string::npos) fail("{}: no merges after the header line", where);
  ++pos;
  for (size_t line_no = 2; merges.size() < kOpenClipMerges && pos < text.size(); ++line_no) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    std::vector<std::string_view> parts;
    for (size_t i = 0; i < line.size();) {
      while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
      const size_t start = i;
      while (i < line.size() && !std::isspace(static_cast<unsigned char>(line[i]))) ++i;
      if (i > start) parts.push_back(line.substr(start, i - start));
    }
    if (parts.size() != 2) fail("{}: line {}: expected two symbols", where, line_no);
    merges.emplace_back(parts[0], parts[1]);
    lines.push_back(line_no);
  }
  if (merges.empty()) fail("{}: no merges after the header line", where);

  std::vector<std::pair<std::string, int64_t>> vocab;
  vocab.reserve(512 + merges.size() + 2);
  for (const auto& entry : byte_alphabet()) vocab.emplace_back(utf8_of(entry.second), static_cast<int64_t>(vocab.size()));
  for (const auto& entry : byte_alphabet()) {
    vocab.emplace_back(utf8_of(entry.second) + std::string(kWordEnd), static_cast<int64_t>(vocab.size()));
  }
  for (const auto& [a, b] : merges) vocab.emplace_back(a + b, static_cast<int64_t>(vocab.size()));
  vocab.emplace_back(std::string(kStartOfText), static_cast<int64_t>(vocab.size()));
  vocab.emplace_back(std::string(kEndOfText), static_cast<int64_t>(vocab.size()));

  auto impl = build(vocab, merges, lines, where, where);
  add_default_specials(*impl, where);
  return ClipTokenizer(std::move(impl));
}

ClipTokenizer ClipTokenizer::load_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) fail("{}: not a tokenizer folder", dir.string());
  const auto vocab_path = dir / "vocab.json", merges_path = dir / "merges.txt";
  const auto vocab = read_vocab_json(vocab_path);
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<size_t> lines;
  read_merges_txt(merges_path, merges, lines);
  auto impl = build(vocab, merges, lines, vocab_path.string(), merges_path.string());

  const auto config_path = dir / "tokenizer_config.json", map_path = dir / "special_tokens_map.json";
  json config = json::object(), map = json::object();
  if (std::filesystem::exists(config_path, ec)) config = parse_json(read_file(config_path), config_path);
  if (std::filesystem::exists(map_path, ec)) map = parse_json(read_file(map_path), map_path);
  if (!config.is_object()) fail("{}: expected a JSON object", config_path.string());
  if (!map.is_object()) fail("{}: expected a JSON object", map_path.string());

  // The special tokens as transformers resolves them: CLIPTokenizer's defaults, then
  // tokenizer_config.json, then special_tokens_map.json (read only when the config has no
  // added_tokens_decoder). A plain string takes the flags of the added_tokens_decoder entry
  // with that content, else counts as not normalized. The named tokens are registered in this
  // order, so when two share a content (SD 1.x: eos and pad), the later one's flags win.
  static constexpr std::array<std::string_view, 7> kNames = {"bos_token", "eos_token", "unk_token", "sep_token",
                                                             "pad_token", "cls_token", "mask_token"};
  std::array<std::optional<SpecialSpec>, 7> named;
  named[0] = SpecialSpec{std::string(kStartOfText), false};
  named[1] = SpecialSpec{std::string(kEndOfText), false};
  named[2] = SpecialSpec{std::string(kEndOfText), false};
  named[4] = SpecialSpec{std::string(kEndOfText), false};
  const std::string config_where = config_path.string(), map_where = map_path.string();
  for (size_t i = 0; i < kNames.size(); ++i) {
    const std::string key(kNames[i]);
    if (const auto it = config.find(key); it != config.end() && !it->is_null()) {
      named[i] = special_spec(*it, true, config_where, key);
    }
  }
  std::vector<std::pair<int64_t, SpecialSpec>> decoder;
  if (const auto it = config.find("added_tokens_decoder"); it != config.end() && !it->is_null()) {
    if (!it->is_object()) fail("{}: added_tokens_decoder is not an object", config_where);
    for (const auto& [id_text, entry] : it->items()) {
      const std::string key = "added_tokens_decoder." + id_text;
      auto spec = special_spec(entry, false, config_where, key);
      if (!spec) continue;
      int64_t id = -1;
      try {
        id = std::stoll(id_text);
      } catch (const std::exception&) {
        fail("{}: {}: the key is not a token id", config_where, key);
      }
      const auto vocab_id = impl->find(spec->content);
      if (!vocab_id || *vocab_id != id) {
        fail("{}: {}: \"{}\" does not have that id in the vocab", config_where, key, spec->content);
      }
      decoder.emplace_back(id, *spec);
    }
    std::sort(decoder.begin(), decoder.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& spec : named) {
      if (!spec) continue;
      for (const auto& [id, entry] : decoder) {
        if (entry.content == spec->content) spec->normalized = entry.normalized;
      }
    }
  } else {
    for (size_t i = 0; i < kNames.size(); ++i) {
      const std::string key(kNames[i]);
      if (const auto it = map.find(key); it != map.end() && !it->is_null()) {
        named[i] = special_spec(*it, false, map_where, key);
      }
    }
  }

  for (size_t i = 0; i < kNames.size(); ++i) {
    if (named[i]) impl->require(named[i]->content, kNames[i], impl->source);
  }
  for (const auto& [id, entry] : decoder) impl->set_special(entry.content, entry.normalized);
  for (size_t i = 0; i < kNames.size(); ++i) {
    if (named[i]) impl->set_special(named[i]->content, named[i]->normalized);
  }
  const std::string bos_name = named[0] ? named[0]->content : std::string(kStartOfText);
  const std::string eos_name = named[1] ? named[1]->content : std::string(kEndOfText);
  impl->bos = impl->require(bos_name, "bos_token", impl->source);
  impl->eos = impl->require(eos_name, "eos_token", impl->source);
  impl->unk = named[2] ? impl->require(named[2]->content, "unk_token", impl->source) : impl->eos;
  impl->pad = named[4] ? impl->require(named[4]->content, "pad_token", impl->source) : impl->eos;

  const std::string where = config_where;

  if (const auto it = config.find("model_max_length"); it != config.end() && !it->is_null()) {
    if (!it->is_number()) fail("{}: model_max_length is not a number", where);
    // transformers writes 1e30 for "no limit"; a pipeline then falls back to CLIP's 77.
    const double value = it->get<double>();
    if (it->is_number_integer() && value >= 2 && value <= (1 << 20)) {
      impl->model_max_length = it->get<int64_t>();
    } else if (value < 2) {
      fail("{}: model_max_length {} is below 2", where, it->dump());
    }
  }
  return ClipTokenizer(std::move(impl));
}

std::vector<int32_t> ClipTokenizer::encode(const std::string& text) const {
  std::vector<int32_t> out;
  impl_->encode_text(replace_invalid_utf8(text), out);
  return out;
}

ClipTokenizer::Padded ClipTokenizer::encode_padded(const std::string& text, int64_t max_length) const {
  if (max_length < 2) fail("CLIP tokenizer: max_length {} leaves no room for BOS and EOS", max_length);
  if (max_length > kMaxVocabId) fail("CLIP tokenizer: max_length {} is too large", max_length);
  const std::vector<int32_t> tokens = encode(text);
  const size_t room = static_cast<size_t>(max_length) - 2;
  const size_t kept = std::min(tokens.size(), room);
  Padded p;
  p.truncated = tokens.size() > room;
  p.ids.reserve(static_cast<size_t>(max_length));
  p.ids.push_back(impl_->bos);
  p.ids.insert(p.ids.end(), tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(kept));
  p.ids.push_back(impl_->eos);
  p.attention_mask.assign(p.ids.size(), 1);
  p.ids.resize(static_cast<size_t>(max_length), impl_->pad);
  p.attention_mask.resize(static_cast<size_t>(max_length), 0);
  p.eos_index = std::find(p.ids.begin(), p.ids.end(), impl_->eos) - p.ids.begin();
  return p;
}

std::string ClipTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= impl_->tokens.size() || !impl_->has_token[static_cast<size_t>(id)]) continue;
    bytes += impl_->token_bytes[static_cast<size_t>(id)];
  }
  const std::string text = replace_invalid_utf8(bytes);
  std::string spaced;
  spaced.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, kWordEnd.size(), kWordEnd) == 0) {
      spaced += ' ';
      i += kWordEnd.size();
    } else {
      spaced += text[i++];
    }
  }
  // Python's str.strip(): trim white space (U+001C..U+001F included) at both ends.
  const std::u32string cps = to_code_points(spaced);
  size_t begin = 0, end = cps.size();
  while (begin < end && utf8::is_python_whitespace(cps[begin])) ++begin;
  while (end > begin && utf8::is_python_whitespace(cps[end - 1])) --end;
  return to_utf8(std::u32string_view(cps).substr(begin, end - begin));
}

int32_t ClipTokenizer::bos_id() const { return impl_->bos; }
int32_t ClipTokenizer::eos_id() const { return impl_->eos; }
int32_t ClipTokenizer::pad_id() const { return impl_->pad; }
int64_t ClipTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->tokens.size()); }
int64_t ClipTokenizer::max_length() const { return impl_->model_max_length; }

void ClipTokenizer::set_pad_token(const std::string& token) {
  auto impl = std::make_shared<Impl>(*impl_);
  const int32_t id = impl->require(token, "pad token", impl->source);
  const int32_t old = impl->pad;
  if (old != id && old != impl->bos && old != impl->eos && old != impl->unk) {
    std::erase_if(impl->specials, [&](const SpecialToken& s) { return s.id == old; });
  }
  impl->pad = id;
  impl->set_special(token, false);
  impl_ = std::move(impl);
}

}  // namespace tessera
