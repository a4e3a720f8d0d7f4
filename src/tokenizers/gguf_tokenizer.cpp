// tessera::Tokenizer from the tokenizer that a GGUF file carries in its metadata, encoding as
// llama.cpp does for the same file:
//   tokenizer.ggml.model        "gpt2" (byte-level BPE; the only kind supported)
//   tokenizer.ggml.tokens       id -> text; normal tokens in GPT-2's byte-to-unicode spelling,
//                               control and user-defined tokens as plain text
//   tokenizer.ggml.token_type   1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
//   tokenizer.ggml.merges       "left right", in rank order
//   tokenizer.ggml.pre          which pre-tokenizer regexes split the text (llama-vocab.cpp)
//   tokenizer.ggml.{bos,eos,unknown,padding,eot}_token_id
// Control and unknown tokens are special (matched in text only when special tokens are
// allowed); user-defined tokens are always matched, as llama.cpp does.
#include <iostream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "formats/gguf.h"
#include "tokenizers/bpe_tokenizer.h"
#include "tokenizers/bpe_tokenizer_impl.h"

namespace tessera {

namespace {

constexpr size_t kMaxTokens = size_t{1} << 24;

// llama.cpp's pre-tokenizer regexes, by family. Each regex splits every piece the previous one
// produced, keeping both the matches and the text between them.
// GPT-2's pattern (llama.cpp drops the final \s+, which changes nothing when the text between
// matches is kept).
constexpr std::string_view kGpt2 = kGpt2Pattern;
// Llama 3 (also dbrx, whose tiktoken pattern splits the same way): the contractions are
// matched case-insensitively in ASCII only, as llama.cpp does.
constexpr std::string_view kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen 2: as Llama 3 but every digit on its own.
constexpr std::string_view kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct PreTokenizer {
  std::vector<std::string_view> patterns;
  bool ignore_merges = false;  // a piece that is itself a token is not merged
};

std::optional<PreTokenizer> pre_tokenizer_for(std::string_view pre) {
  const auto is = [&](std::initializer_list<std::string_view> names) {
    for (std::string_view n : names)
      if (pre == n) return true;
    return false;
  };
  if (is({"default"})) {
    // llama.cpp's fallback for BPE files without a known pre-tokenizer name.
    return PreTokenizer{{R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"}, false};
  }
  if (is({"gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4", "mellum",
          "roberta-bpe", "jina-v1-en", "jina-v2-code", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de",
          "gigachat", "a.x-4.0", "modern-bert"})) {
    return PreTokenizer{{kGpt2}, false};
  }
  if (is({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"})) {
    return PreTokenizer{{kLlama3}, true};
  }
  if (is({"dbrx", "smaug-bpe"})) return PreTokenizer{{kLlama3}, false};
  if (is({"qwen2", "deepseek-r1-qwen", "stablelm2", "hunyuan"})) return PreTokenizer{{kQwen2}, false};
  if (is({"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"})) {
    // Every digit on its own first, then GPT-2's pattern inside each piece.
    return PreTokenizer{{R"(\p{N})", kGpt2}, false};
  }
  if (is({"falcon"})) {
    return PreTokenizer{{R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"}, false};
  }
  return std::nullopt;
}

// An optional special-token id; ids past the vocabulary are ignored with a warning, as
// llama.cpp does.
std::optional<int32_t> special_id(const GgufFile& file, const std::string& key, size_t n_tokens) {
  if (!file.contains(key)) return std::nullopt;
  const int64_t id = file.get_i64(key);
  if (id < 0 || static_cast<uint64_t>(id) >= n_tokens) {
    std::cerr << fmt::format("warning: {}: {} is {}, not a token id (vocabulary of {}); ignored\n",
                             file.path().string(), key, id, n_tokens);
    return std::nullopt;
  }
  return static_cast<int32_t>(id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& file) {
  auto im = std::make_shared<Impl>();
  im->source = file.path().string();
  const std::string& where = im->source;

  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model != "gpt2")
    fail("{}: tokenizer.ggml.model '{}' is not supported (only 'gpt2', byte-level BPE)", where, excerpt(model));

  const GgufValue& tokens_value = file.get("tokenizer.ggml.tokens");
  if (!tokens_value.is_array() || tokens_value.element_type != GgufType::String)
    fail("{}: metadata key 'tokenizer.ggml.tokens' has type {}, expected array of string", where,
         tokens_value.type_str());
  const std::vector<std::string>& texts = tokens_value.strings;
  const size_t n = texts.size();
  if (n == 0) fail("{}: tokenizer.ggml.tokens is empty", where);
  if (n > kMaxTokens) fail("{}: tokenizer.ggml.tokens has {} tokens (at most {})", where, n, kMaxTokens);

  std::vector<int64_t> types(n, 1);
  if (file.contains("tokenizer.ggml.token_type")) {
    types = file.get_int_array("tokenizer.ggml.token_type");
    if (types.size() != n)
      fail("{}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}", where, types.size(), n);
  }

  im->tokens.resize(n);
  im->kinds.resize(n);
  // Regular token spelling -> id for the merges; a spelling listed twice means its last id,
  // as in llama.cpp (the earlier id still decodes, but encoding never produces it).
  std::unordered_map<std::string_view, int32_t> by_text;
  by_text.reserve(n);
  for (size_t id = 0; id < n; ++id) {
    const std::string& text = texts[id];
    const int64_t type = types[id];
    switch (type) {
      case 0:  // undefined: llama.cpp treats it as a normal token
      case 1:  // normal
      case 5:  // unused
      case 6: {  // byte
        im->tokens[id] = byte_level_decode(text).value_or(text);
        im->kinds[id] = static_cast<uint8_t>(TokenKind::kRegular);
        auto [it, inserted] = by_text.emplace(text, static_cast<int32_t>(id));
        if (!inserted) {
          im->kinds[static_cast<size_t>(it->second)] = static_cast<uint8_t>(TokenKind::kAdded);
          it->second = static_cast<int32_t>(id);
        }
        break;
      }
      case 2:  // unknown
      case 3:  // control
      case 4: {  // user defined
        const bool special = type != 4;
        im->tokens[id] = text;
        im->kinds[id] = static_cast<uint8_t>(special ? TokenKind::kSpecial : TokenKind::kAdded);
        if (!text.empty()) im->added.push_back(AddedToken{text, static_cast<int32_t>(id), special, false, false, false});
        break;
      }
      default:
        fail("{}: tokenizer.ggml.token_type[{}] is {} (expected 1 to 6)", where, id, type);
    }
  }
  im->finish_tables();

  if (file.contains("tokenizer.ggml.merges")) {
    const GgufValue& merges = file.get("tokenizer.ggml.merges");
    if (!merges.is_array() || merges.element_type != GgufType::String)
      fail("{}: metadata key 'tokenizer.ggml.merges' has type {}, expected array of string", where,
           merges.type_str());
    im->pairs.reserve(merges.strings.size());
    std::string joined;
    for (size_t rank = 0; rank < merges.strings.size(); ++rank) {
      const std::string_view m = merges.strings[rank];
      const size_t space = m.find(' ', 1);  // as llama.cpp: the first space after the first byte
      if (space == std::string_view::npos || m.find(' ', space + 1) != std::string_view::npos)
        fail("{}: tokenizer.ggml.merges[{}] \"{}\" is not two tokens separated by one space", where, rank, excerpt(m));
      const std::string_view left = m.substr(0, space), right = m.substr(space + 1);
      joined.assign(left);
      joined += right;
      const auto l = by_text.find(left), r = by_text.find(right), j = by_text.find(joined);
      if (l == by_text.end() || r == by_text.end() || j == by_text.end())
        fail("{}: tokenizer.ggml.merges[{}] (\"{}\" + \"{}\") uses a token that is not in tokenizer.ggml.tokens",
             where, rank, excerpt(left), excerpt(right));
      im->pairs.insert(l->second, r->second, static_cast<uint32_t>(rank), j->second);
    }
  }

  std::string pre = "default";
  if (file.contains("tokenizer.ggml.pre")) {
    pre = file.get_string("tokenizer.ggml.pre");
  } else {
    std::cerr << fmt::format("warning: {}: no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer\n",
                             where);
  }
  std::optional<PreTokenizer> pre_tokenizer = pre_tokenizer_for(pre);
  if (!pre_tokenizer) {
    std::cerr << fmt::format(
        "warning: {}: tokenizer.ggml.pre '{}' is not known to tessera; using GPT-2's pre-tokenizer (ids may "
        "differ from llama.cpp's)\n",
        where, excerpt(pre));
    pre_tokenizer = pre_tokenizer_for("gpt2");
  }
  const std::string field = fmt::format("{} (tokenizer.ggml.pre '{}')", where, excerpt(pre));
  for (std::string_view pattern : pre_tokenizer->patterns) {
    PreTokenizeStep step;
    step.kind = PreTokenizeStep::Kind::kSplit;
    step.regex = std::make_shared<const Pcre2Regex>(pattern, field);
    step.removed = false;  // keep the matches and the text between them
    im->steps.push_back(std::move(step));
  }
  im->whole_piece_lookup = pre_tokenizer->ignore_merges;

  im->bos = special_id(file, "tokenizer.ggml.bos_token_id", n);
  im->eos = special_id(file, "tokenizer.ggml.eos_token_id", n);
  im->pad = special_id(file, "tokenizer.ggml.padding_token_id", n);
  im->unk_token = special_id(file, "tokenizer.ggml.unknown_token_id", n);
  im->eot = special_id(file, "tokenizer.ggml.eot_token_id", n);
  return Tokenizer(std::move(im));
}

}  // namespace tessera
