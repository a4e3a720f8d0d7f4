// Loading tessera::Tokenizer from tiktoken rank files, Hugging Face tokenizer.json files and
// model folders (tokenizer_config.json for special tokens and bos/eos/pad).
#include <algorithm>
#include <charconv>
#include <fstream>
#include <iterator>
#include <system_error>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/paths.h"
#include "tokenizers/bpe_tokenizer.h"
#include "tokenizers/bpe_tokenizer_impl.h"
#include "tokenizers/utf8.h"

namespace tessera {
namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::pair<std::string, int32_t>> cl100k_special_tokens() {
  return {{"<|endoftext|>", 100257},
          {"<|fim_prefix|>", 100258},
          {"<|fim_middle|>", 100259},
          {"<|fim_suffix|>", 100260},
          {"<|endofprompt|>", 100276}};
}

namespace {

// Ids are table indices, so a file must not make us allocate for ids it never uses.
constexpr int64_t kMaxTokenId = int64_t{1} << 24;
constexpr int kMaxPreTokenizerDepth = 16;

std::string read_text_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("tokenizer: {} does not exist", path.string());
  if (fs::is_directory(path, ec)) fail("tokenizer: {} is a folder, not a file", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("tokenizer: cannot open {}", path.string());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("tokenizer: cannot read {}", path.string());
  return text;
}

// Collects (id, bytes, kind) entries and turns them into the id-indexed tables once the
// largest id is known to be sane.
struct TableBuilder {
  struct Entry {
    int64_t id;
    std::string bytes;
    TokenKind kind;
  };
  std::vector<Entry> entries;

  void add(int64_t id, std::string bytes, TokenKind kind, std::string_view where) {
    if (id < 0 || id >= kMaxTokenId) fail("tokenizer: {}: token id {} is out of range", where, id);
    entries.push_back(Entry{id, std::move(bytes), kind});
  }

  // Regular entries must have distinct ids; added/special entries may re-use a regular id
  // (Hugging Face lists added tokens in the vocab too) and then take it over.
  // With same_bytes_required, an added token that re-uses a regular id must have its bytes.
  void build(Tokenizer::Impl& im, std::string_view where, bool same_bytes_required) {
    int64_t max_id = -1;
    for (const Entry& e : entries) max_id = std::max(max_id, e.id);
    const auto count = static_cast<int64_t>(entries.size());
    if (max_id >= 4 * count + 65536) {
      fail("tokenizer: {}: token ids are too sparse ({} tokens, largest id {})", where, count, max_id);
    }
    im.tokens.assign(static_cast<size_t>(max_id + 1), std::string());
    im.kinds.assign(static_cast<size_t>(max_id + 1), static_cast<uint8_t>(TokenKind::kNone));
    for (Entry& e : entries) {
      const auto id = static_cast<size_t>(e.id);
      const auto existing = static_cast<TokenKind>(im.kinds[id]);
      if (existing == TokenKind::kRegular && e.kind == TokenKind::kRegular) {
        fail("tokenizer: {}: token id {} is given to two tokens", where, e.id);
      }
      if (existing != TokenKind::kNone && e.kind != TokenKind::kRegular &&
          existing != TokenKind::kRegular) {
        fail("tokenizer: {}: added token id {} is given twice", where, e.id);
      }
      if (existing != TokenKind::kNone && e.kind == TokenKind::kRegular) continue;  // added wins
      if (existing == TokenKind::kRegular && same_bytes_required && im.tokens[id] != e.bytes) {
        fail("tokenizer: {}: special token {} has id {}, which is already a different token", where,
             excerpt(e.bytes), e.id);
      }
      im.tokens[id] = std::move(e.bytes);
      im.kinds[id] = static_cast<uint8_t>(e.kind);
    }
    entries.clear();
  }
};

// ----------------------------------------------------------------------------------------
// tiktoken

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  if (in.empty() || in.size() % 4 != 0) return false;
  size_t padding = 0;
  if (in.back() == '=') padding = (in[in.size() - 2] == '=') ? 2 : 1;
  const size_t body = in.size() - padding;
  uint32_t accumulator = 0;
  int bits = 0;
  for (size_t i = 0; i < body; ++i) {
    const int v = base64_value(in[i]);
    if (v < 0) return false;
    accumulator = (accumulator << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((accumulator >> bits) & 0xFF);
    }
  }
  // Leftover bits must be zero padding (canonical encoding).
  return (accumulator & ((1u << bits) - 1)) == 0;
}

void require_all_bytes(const Tokenizer::Impl& im, std::string_view where) {
  for (int b = 0; b < 256; ++b) {
    if (im.byte_token[static_cast<size_t>(b)] < 0) {
      fail("tokenizer: {}: no token for the single byte 0x{:02X} (not a byte-level BPE rank file)", where, b);
    }
  }
}

// tiktoken merges any two adjacent tokens whose concatenation is a token, lowest rank of the
// result first. As pairs: every split of every token into two tokens.
void derive_tiktoken_pairs(Tokenizer::Impl& im) {
  size_t estimate = 0;
  for (size_t id = 0; id < im.tokens.size(); ++id) {
    if (im.kinds[id] == static_cast<uint8_t>(TokenKind::kRegular)) estimate += 2;
  }
  im.pairs.reserve(estimate);
  for (size_t id = 0; id < im.tokens.size(); ++id) {
    if (im.kinds[id] != static_cast<uint8_t>(TokenKind::kRegular)) continue;
    const std::string_view token = im.tokens[id];
    for (size_t k = 1; k < token.size(); ++k) {
      const int32_t left = im.index.find(token.substr(0, k));
      if (left < 0) continue;
      const int32_t right = im.index.find(token.substr(k));
      if (right < 0) continue;
      im.pairs.insert(left, right, static_cast<uint32_t>(id), static_cast<int32_t>(id));
    }
  }
}

std::shared_ptr<Tokenizer::Impl> load_tiktoken(const fs::path& path, std::string_view pattern,
                                               const std::vector<AddedToken>& added) {
  auto im = std::make_shared<Tokenizer::Impl>();
  im->source = path.string();
  const std::string where = im->source;
  const std::string text = read_text_file(path);

  TableBuilder builder;
  builder.entries.reserve(text.size() / 12);
  std::string bytes;
  size_t line_number = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t space = line.find(' ');
    if (space == std::string_view::npos) {
      fail("tokenizer: {} line {}: expected \"<base64 token> <rank>\", got \"{}\"", where, line_number,
           excerpt(line));
    }
    const std::string_view token64 = line.substr(0, space);
    std::string_view rank_text = line.substr(space + 1);
    while (!rank_text.empty() && rank_text.front() == ' ') rank_text.remove_prefix(1);
    if (!base64_decode(token64, bytes)) {
      fail("tokenizer: {} line {}: invalid base64 token \"{}\"", where, line_number, excerpt(token64));
    }
    int64_t rank = -1;
    const auto [rest, ec] = std::from_chars(rank_text.data(), rank_text.data() + rank_text.size(), rank);
    if (ec != std::errc() || rest != rank_text.data() + rank_text.size() || rank < 0) {
      fail("tokenizer: {} line {}: invalid rank \"{}\"", where, line_number, excerpt(rank_text));
    }
    builder.add(rank, bytes, TokenKind::kRegular, fmt::format("{} line {}", where, line_number));
  }
  if (builder.entries.empty()) fail("tokenizer: {}: no tokens in the file", where);

  for (const AddedToken& a : added) {
    if (a.content.empty()) fail("tokenizer: {}: special token with id {} has empty text", where, a.id);
    builder.add(a.id, a.content, a.special ? TokenKind::kSpecial : TokenKind::kAdded, where);
    im->added.push_back(a);
  }
  builder.build(*im, where, /*same_bytes_required=*/true);
  for (size_t i = 0; i < im->added.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (im->added[i].content == im->added[j].content) {
        fail("tokenizer: {}: special token {} is listed twice", where, excerpt(im->added[i].content));
      }
    }
  }
  im->finish_tables();
  if (im->duplicate_token >= 0) {
    fail("tokenizer: {}: rank {} repeats the token of an earlier rank", where, im->duplicate_token);
  }
  require_all_bytes(*im, where);
  derive_tiktoken_pairs(*im);

  PreTokenizeStep split;
  split.kind = PreTokenizeStep::Kind::kSplit;
  split.regex = std::make_shared<const Pcre2Regex>(pattern, where);
  split.removed = true;  // tiktoken keeps only the regex matches
  split.invert = true;
  im->steps.push_back(std::move(split));
  im->whole_piece_lookup = true;
  return im;
}

// ----------------------------------------------------------------------------------------
// tokenizer.json

// GPT-2's byte <-> printable character table used by byte-level vocabularies.
struct ByteLevelAlphabet {
  std::array<char32_t, 256> char_of{};
  std::array<int16_t, 324> byte_of{};
  ByteLevelAlphabet() {
    byte_of.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      char_of[static_cast<size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
      byte_of[char_of[static_cast<size_t>(b)]] = static_cast<int16_t>(b);
    }
  }
  // The raw bytes a vocab string stands for; nullopt when it is not byte-level text.
  std::optional<std::string> decode(std::string_view s) const {
    std::string out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    size_t i = 0;
    while (i < s.size()) {
      const int len = utf8::valid_sequence_at(p + i, s.size() - i);
      if (len == 0) return std::nullopt;
      const char32_t cp = utf8::decode_at(p + i, len);
      if (cp >= byte_of.size() || byte_of[cp] < 0) return std::nullopt;
      out += static_cast<char>(byte_of[cp]);
      i += static_cast<size_t>(len);
    }
    return out;
  }
};

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet;
  return alphabet;
}

int64_t get_integer(const json& value, std::string_view where, std::string_view field) {
  if (!value.is_number_integer()) fail("tokenizer: {}: {} must be an integer", where, field);
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    fail("tokenizer: {}: {} is out of range", where, field);
  }
  return value.get<int64_t>();
}

bool get_bool(const json& object, const char* key, bool fallback, std::string_view where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail("tokenizer: {}: \"{}\" must be true or false", where, key);
  return it->get<bool>();
}

const json& require_object(const json& parent, const char* key, std::string_view where) {
  const auto it = parent.find(key);
  if (it == parent.end() || !it->is_object()) fail("tokenizer: {}: \"{}\" must be an object", where, key);
  return *it;
}

// An added token as tokenizer.json's "added_tokens" and tokenizer_config.json's
// "added_tokens_decoder" write it.
AddedToken parse_added_token(const json& entry, int64_t id, std::string_view where) {
  if (!entry.is_object()) fail("tokenizer: {}: added token {} must be an object", where, id);
  const auto content = entry.find("content");
  if (content == entry.end() || !content->is_string()) {
    fail("tokenizer: {}: added token {} has no \"content\" string", where, id);
  }
  AddedToken token;
  token.content = content->get<std::string>();
  if (token.content.empty()) fail("tokenizer: {}: added token {} has empty content", where, id);
  if (id < 0 || id >= kMaxTokenId) fail("tokenizer: {}: added token id {} is out of range", where, id);
  token.id = static_cast<int32_t>(id);
  token.special = get_bool(entry, "special", false, where);
  token.lstrip = get_bool(entry, "lstrip", false, where);
  token.rstrip = get_bool(entry, "rstrip", false, where);
  token.single_word = get_bool(entry, "single_word", false, where);
  return token;
}

bool has_byte_level(const json& node, int depth) {
  if (depth > kMaxPreTokenizerDepth || !node.is_object()) return false;
  const auto type = node.find("type");
  if (type != node.end() && type->is_string() && type->get<std::string>() == "ByteLevel") return true;
  for (const char* key : {"pretokenizers", "decoders"}) {
    const auto list = node.find(key);
    if (list != node.end() && list->is_array()) {
      for (const json& child : *list) {
        if (has_byte_level(child, depth + 1)) return true;
      }
    }
  }
  return false;
}

void parse_pre_tokenizer(const json& node, std::vector<PreTokenizeStep>& steps, std::string_view where,
                         int depth) {
  if (node.is_null()) return;
  if (depth > kMaxPreTokenizerDepth) fail("tokenizer: {}: pre_tokenizer is nested too deeply", where);
  if (!node.is_object()) fail("tokenizer: {}: pre_tokenizer must be an object", where);
  const auto type_it = node.find("type");
  if (type_it == node.end() || !type_it->is_string()) fail("tokenizer: {}: pre_tokenizer has no \"type\"", where);
  const std::string type = type_it->get<std::string>();
  const std::string field = fmt::format("{} (pre_tokenizer {})", where, type);

  if (type == "Sequence") {
    const auto list = node.find("pretokenizers");
    if (list == node.end() || !list->is_array()) fail("tokenizer: {}: \"pretokenizers\" must be a list", field);
    for (const json& child : *list) parse_pre_tokenizer(child, steps, where, depth + 1);
    return;
  }
  PreTokenizeStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizeStep::Kind::kByteLevel;
    step.add_prefix_space = get_bool(node, "add_prefix_space", true, field);
    if (get_bool(node, "use_regex", true, field)) {
      step.regex = std::make_shared<const Pcre2Regex>(kGpt2Pattern, field);
    }
    steps.push_back(std::move(step));
    return;
  }
  if (type == "Split") {
    const json& pattern = require_object(node, "pattern", field);
    if (const auto regex = pattern.find("Regex"); regex != pattern.end() && regex->is_string()) {
      step.regex = std::make_shared<const Pcre2Regex>(regex->get<std::string>(), field);
    } else if (const auto literal = pattern.find("String"); literal != pattern.end() && literal->is_string()) {
      step.regex = std::make_shared<const Pcre2Regex>(Pcre2Regex::literal(literal->get<std::string>(), field));
    } else {
      fail("tokenizer: {}: \"pattern\" must hold a \"Regex\" or \"String\"", field);
    }
    const auto behavior = node.find("behavior");
    const std::string b = behavior != node.end() && behavior->is_string() ? behavior->get<std::string>() : "";
    if (b == "Isolated") {
      step.removed = false;
    } else if (b == "Removed") {
      step.removed = true;
    } else {
      fail("tokenizer: {}: split behavior \"{}\" is not supported (Isolated, Removed)", field, excerpt(b));
    }
    step.invert = get_bool(node, "invert", false, field);
    steps.push_back(std::move(step));
    return;
  }
  if (type == "Digits") {
    const bool individual = get_bool(node, "individual_digits", false, field);
    step.regex = std::make_shared<const Pcre2Regex>(individual ? R"(\p{N})" : R"(\p{N}+)", field);
    steps.push_back(std::move(step));
    return;
  }
  if (type == "Punctuation") {
    const auto behavior = node.find("behavior");
    const std::string b = behavior != node.end() && behavior->is_string() ? behavior->get<std::string>() : "Isolated";
    if (b != "Isolated" && b != "Removed") {
      fail("tokenizer: {}: punctuation behavior \"{}\" is not supported (Isolated, Removed)", field, excerpt(b));
    }
    step.regex = std::make_shared<const Pcre2Regex>(R"([\p{P}\x21-\x2F\x3A-\x40\x5B-\x60\x7B-\x7E])", field);
    step.removed = b == "Removed";
    steps.push_back(std::move(step));
    return;
  }
  fail("tokenizer: {}: pre_tokenizer type \"{}\" is not supported (ByteLevel, Split, Sequence, Digits, "
       "Punctuation)",
       where, excerpt(type));
}

void check_normalizer(const json& root, std::string_view where) {
  const auto it = root.find("normalizer");
  if (it == root.end() || it->is_null()) return;
  if (it->is_object()) {
    const auto type = it->find("type");
    const auto list = it->find("normalizers");
    if (type != it->end() && type->is_string() && type->get<std::string>() == "Sequence" && list != it->end() &&
        list->is_array() && list->empty()) {
      return;
    }
    if (type != it->end() && type->is_string()) {
      fail("tokenizer: {}: normalizer \"{}\" is not supported (only null)", where, excerpt(type->get<std::string>()));
    }
  }
  fail("tokenizer: {}: normalizer is not supported (only null)", where);
}

std::shared_ptr<Tokenizer::Impl> parse_tokenizer_json(std::string_view text, std::string_view name) {
  auto im = std::make_shared<Tokenizer::Impl>();
  im->source = std::string(name);
  const std::string& where = im->source;
  try {
    const json root = json::parse(text.begin(), text.end());
    if (!root.is_object()) fail("tokenizer: {}: expected a JSON object", where);
    const json& model = require_object(root, "model", where);
    const auto type = model.find("type");
    if (type != model.end()) {
      if (!type->is_string()) fail("tokenizer: {}: model.type must be a string", where);
      if (type->get<std::string>() != "BPE") {
        fail("tokenizer: {}: model type \"{}\" is not supported (only byte-level BPE)", where,
             excerpt(type->get<std::string>()));
      }
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      const auto it = model.find(key);
      if (it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty())) {
        fail("tokenizer: {}: model.{} is not supported for byte-level BPE", where, key);
      }
    }
    if (!has_byte_level(root.value("pre_tokenizer", json()), 0) && !has_byte_level(root.value("decoder", json()), 0)) {
      fail("tokenizer: {}: not a byte-level BPE (no ByteLevel pre_tokenizer or decoder)", where);
    }
    check_normalizer(root, where);
    im->whole_piece_lookup = get_bool(model, "ignore_merges", false, where);
    im->fuse_unk = get_bool(model, "fuse_unk", false, where);

    const ByteLevelAlphabet& alphabet = byte_level_alphabet();
    const json& vocab = require_object(model, "vocab", where);
    std::unordered_map<std::string, int32_t> vocab_ids;  // vocab spelling -> id, for merges
    vocab_ids.reserve(vocab.size());
    TableBuilder builder;
    builder.entries.reserve(vocab.size());
    for (const auto& [key, value] : vocab.items()) {
      if (!value.is_number_integer()) fail("tokenizer: {}: vocab id of \"{}\" must be an integer", where, excerpt(key));
      const int64_t id = get_integer(value, where, "a vocab id");
      builder.add(id, alphabet.decode(key).value_or(key), TokenKind::kRegular, where);
      vocab_ids.emplace(key, static_cast<int32_t>(id));
    }
    if (const auto added = root.find("added_tokens"); added != root.end() && !added->is_null()) {
      if (!added->is_array()) fail("tokenizer: {}: \"added_tokens\" must be a list", where);
      for (const json& entry : *added) {
        if (!entry.is_object() || !entry.contains("id")) fail("tokenizer: {}: added token without an id", where);
        AddedToken token = parse_added_token(entry, get_integer(entry.at("id"), where, "added token id"), where);
        for (const AddedToken& other : im->added) {
          if (other.content == token.content) {
            fail("tokenizer: {}: added token {} is listed twice", where, excerpt(token.content));
          }
        }
        builder.add(token.id, token.content, token.special ? TokenKind::kSpecial : TokenKind::kAdded, where);
        im->added.push_back(std::move(token));
      }
    }
    builder.build(*im, where, /*same_bytes_required=*/false);
    im->finish_tables();

    if (const auto unk = model.find("unk_token"); unk != model.end() && unk->is_string()) {
      const auto it = vocab_ids.find(unk->get<std::string>());
      if (it != vocab_ids.end()) im->unk_id = it->second;
    }

    const auto merges = model.find("merges");
    if (merges == model.end() || !merges->is_array()) fail("tokenizer: {}: model.merges must be a list", where);
    im->pairs.reserve(merges->size());
    std::string left, right;
    uint32_t rank = 0;
    for (const json& merge : *merges) {
      if (merge.is_string()) {
        const std::string& m = merge.get_ref<const std::string&>();
        const size_t space = m.find(' ');
        if (space == std::string::npos || m.find(' ', space + 1) != std::string::npos) {
          fail("tokenizer: {}: merge {} \"{}\" is not two tokens separated by one space", where, rank + 1,
               excerpt(m));
        }
        left.assign(m, 0, space);
        right.assign(m, space + 1);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        fail("tokenizer: {}: merge {} must be \"a b\" or [\"a\", \"b\"]", where, rank + 1);
      }
      const auto l = vocab_ids.find(left);
      const auto r = vocab_ids.find(right);
      const auto m = vocab_ids.find(left + right);
      if (l == vocab_ids.end() || r == vocab_ids.end() || m == vocab_ids.end()) {
        fail("tokenizer: {}: merge {} (\"{}\" + \"{}\") uses a token that is not in the vocab", where, rank + 1,
             excerpt(left), excerpt(right));
      }
      im->pairs.insert(l->second, r->second, rank, m->second);
      ++rank;
    }
    parse_pre_tokenizer(root.value("pre_tokenizer", json()), im->steps, where, 0);
  } catch (const json::exception& e) {
    fail("tokenizer: {}: invalid JSON: {}", where, e.what());
  }
  return im;
}

}  // namespace

std::optional<std::string> byte_level_decode(std::string_view s) { return byte_level_alphabet().decode(s); }

char32_t byte_level_char(unsigned char byte) { return byte_level_alphabet().char_of[byte]; }

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) utf8::append(out, byte_level_char(static_cast<unsigned char>(c)));
  return out;
}

namespace {

// ----------------------------------------------------------------------------------------
// Model folders

std::optional<std::string> special_name(const json& config, const char* key, std::string_view where) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  fail("tokenizer: {}: \"{}\" must be a string or an object with \"content\"", where, key);
}

}  // namespace

Tokenizer Tokenizer::from_tiktoken(const fs::path& ranks_file, const std::string& pattern,
                                   std::vector<std::pair<std::string, int32_t>> special_tokens) {
  std::vector<AddedToken> added;
  for (auto& [content, id] : special_tokens) added.push_back(AddedToken{std::move(content), id, true, false, false, false});
  return Tokenizer(load_tiktoken(ranks_file, pattern, added));
}

Tokenizer Tokenizer::from_tokenizer_json_text(std::string_view json_text, std::string_view name_for_errors) {
  return Tokenizer(parse_tokenizer_json(json_text, name_for_errors));
}

Tokenizer Tokenizer::from_tokenizer_json(const fs::path& tokenizer_json) {
  return Tokenizer(parse_tokenizer_json(read_text_file(tokenizer_json), tokenizer_json.string()));
}

Tokenizer Tokenizer::load_for_model(const fs::path& model_dir) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) fail("tokenizer: model folder {} does not exist", model_dir.string());

  const fs::path config_path = model_dir / "tokenizer_config.json";
  json config;
  const bool has_config = fs::exists(config_path, ec);
  if (has_config) {
    try {
      config = json::parse(read_text_file(config_path));
    } catch (const json::exception& e) {
      fail("tokenizer: {}: invalid JSON: {}", config_path.string(), e.what());
    }
    if (!config.is_object()) fail("tokenizer: {}: expected a JSON object", config_path.string());
  }
  const std::string config_where = config_path.string();

  std::shared_ptr<Impl> im;
  const fs::path tokenizer_json = model_dir / "tokenizer.json";
  if (fs::exists(tokenizer_json, ec)) {
    im = parse_tokenizer_json(read_text_file(tokenizer_json), tokenizer_json.string());
  } else {
    std::vector<fs::path> candidates;
    for (const auto& entry : fs::directory_iterator(model_dir, ec)) {
      if (entry.path().extension() == ".tiktoken" && entry.is_regular_file(ec)) candidates.push_back(entry.path());
    }
    std::sort(candidates.begin(), candidates.end());
    fs::path ranks;
    if (!candidates.empty()) {
      ranks = candidates.front();
    } else {
      ranks = models_dir() / "tokenizers" / "cl100k_base.tiktoken";
      if (!fs::exists(ranks, ec)) {
        fail("tokenizer: no tokenizer.json or *.tiktoken in {} and cl100k_base.tiktoken is not installed (run "
             "scripts/setup)",
             model_dir.string());
      }
    }
    std::vector<AddedToken> added;
    bool default_specials = true;
    if (has_config && config.contains("added_tokens_decoder")) {
      try {
        const json& decoder = config.at("added_tokens_decoder");
        if (!decoder.is_object()) fail("tokenizer: {}: \"added_tokens_decoder\" must be an object", config_where);
        for (const auto& [key, entry] : decoder.items()) {
          int64_t id = -1;
          const auto [rest, err] = std::from_chars(key.data(), key.data() + key.size(), id);
          if (err != std::errc() || rest != key.data() + key.size()) {
            fail("tokenizer: {}: added_tokens_decoder key \"{}\" is not a token id", config_where, excerpt(key));
          }
          added.push_back(parse_added_token(entry, id, config_where));
        }
      } catch (const json::exception& e) {
        fail("tokenizer: {}: {}", config_where, e.what());
      }
      default_specials = false;
    } else {
      for (auto& [content, id] : cl100k_special_tokens()) added.push_back(AddedToken{content, id, true, false, false, false});
    }
    im = load_tiktoken(ranks, kCl100kPattern, added);
    // cl100k's own end-of-text token ends generation unless a config says otherwise.
    if (default_specials) im->eos = 100257;
  }

  if (has_config) {
    try {
      const auto resolve = [&](const char* key) -> std::optional<int32_t> {
        const std::optional<std::string> name = special_name(config, key, config_where);
        if (!name) return std::nullopt;
        const Tokenizer view(im);
        const std::optional<int32_t> id = view.token_id(*name);
        if (!id) fail("tokenizer: {}: {} \"{}\" is not a token of {}", config_where, key, excerpt(*name), im->source);
        return id;
      };
      im->bos = resolve("bos_token");
      im->eos = config.contains("eos_token") ? resolve("eos_token") : im->eos;
      im->pad = resolve("pad_token");
    } catch (const json::exception& e) {
      fail("tokenizer: {}: {}", config_where, e.what());
    }
  }
  return Tokenizer(std::move(im));
}

}  // namespace tessera
