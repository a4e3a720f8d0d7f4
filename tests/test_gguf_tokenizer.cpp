// The tokenizer a GGUF file carries: SmolLM2's against llama.cpp's ids
// (tools/golden/make_gguf_tokenizer_golden.py), and small hand-made vocabularies for the
// pre-tokenizer choices, token types and bad metadata.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/paths.h"
#include "formats/gguf.h"
#include "test_util.h"
#include "tokenizers/bpe_tokenizer.h"

using namespace tessera;
using nlohmann::json;
using tessera::testing::TempDir;
namespace fs = std::filesystem;

using tessera::testing::error_of;

namespace {

fs::path smollm_path() { return models_dir() / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"; }

const Tokenizer* smollm() {
  static const std::optional<Tokenizer> tokenizer = []() -> std::optional<Tokenizer> {
    if (!fs::exists(smollm_path())) return std::nullopt;
    return Tokenizer::from_gguf(GgufFile(smollm_path()));
  }();
  return tokenizer ? &*tokenizer : nullptr;
}

#define REQUIRE_SMOLLM()          \
  const Tokenizer* tok = smollm(); \
  ASSERT_NE(tok, nullptr) << smollm_path() << " is missing: run scripts/setup"

std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 80)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F) {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", u);
    }
  }
  return out;
}

// GPT-2's byte -> printable character spelling, written out for the test vocabularies.
std::string byte_level(std::string_view bytes) {
  std::string out;
  for (char ch : bytes) {
    const auto b = static_cast<unsigned char>(ch);
    uint32_t cp = b;
    const bool printable_byte = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    if (!printable_byte) {
      uint32_t n = 0;
      for (uint32_t x = 0; x < b; ++x) {
        const bool p = (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
        if (!p) ++n;
      }
      cp = 256 + n;
    }
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return out;
}

// A small byte-level vocabulary: the 256 bytes, then merged tokens, then extra tokens with
// their types, written as a GGUF file.
struct TinyVocab {
  std::vector<std::string> tokens;  // GGUF spelling
  std::vector<int64_t> types;
  std::vector<std::string> merges;
  TinyVocab() {
    for (int b = 0; b < 256; ++b) {
      tokens.push_back(byte_level(std::string(1, static_cast<char>(b))));
      types.push_back(1);
    }
  }
  int32_t merge(std::string_view left, std::string_view right) {
    merges.push_back(byte_level(left) + " " + byte_level(right));
    tokens.push_back(byte_level(std::string(left) + std::string(right)));
    types.push_back(1);
    return static_cast<int32_t>(tokens.size() - 1);
  }
  int32_t add(std::string text, int64_t type) {
    tokens.push_back(std::move(text));
    types.push_back(type);
    return static_cast<int32_t>(tokens.size() - 1);
  }
  fs::path write(const TempDir& dir, const std::string& pre, const std::string& name = "tiny.gguf",
                 const std::function<void(GgufWriter&)>& extra = {}) const {
    const fs::path path = dir / name;
    GgufWriter w(path);
    w.set_string("general.architecture", "llama");
    w.set_string("tokenizer.ggml.model", "gpt2");
    if (!pre.empty()) w.set_string("tokenizer.ggml.pre", pre);
    w.set_strings("tokenizer.ggml.tokens", tokens);
    w.set("tokenizer.ggml.token_type", GgufValue::from_ints(GgufType::I32, types));
    w.set_strings("tokenizer.ggml.merges", merges);
    if (extra) extra(w);
    w.write();
    return path;
  }
};

std::vector<int32_t> bytes_of(std::string_view s) {
  std::vector<int32_t> out;
  for (char c : s) out.push_back(static_cast<unsigned char>(c));
  return out;
}

}  // namespace

TEST(GgufTokenizer, SmolLM2MatchesLlamaCpp) {
  REQUIRE_SMOLLM();
  const fs::path golden = tessera::source_tree_dir() / "tests/fixtures/tokenizer/smollm2_cases.json";
  std::ifstream in(golden, std::ios::binary);
  ASSERT_TRUE(in.good()) << golden << " is missing (tools/golden/make_gguf_tokenizer_golden.py)";
  const json fixture = json::parse(in);
  const auto& cases = fixture.at("cases");
  ASSERT_GE(cases.size(), 200u);
  size_t failures = 0;
  for (const auto& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const bool special = c.value("special", true);
    const auto expected = c.at("ids").get<std::vector<int32_t>>();
    const auto ids = tok->encode(text, special);
    if (ids != expected && ++failures <= 10) {
      ADD_FAILURE() << "text \"" << printable(text) << "\" (special " << special << ")\n  tessera:   "
                    << json(ids).dump() << "\n  llama.cpp: " << json(expected).dump();
    }
  }
  EXPECT_EQ(failures, 0u) << "of " << cases.size() << " cases";
}

// The same vocabulary under each other pre-tokenizer tessera knows: a metadata-only copy of
// the file with tokenizer.ggml.pre changed, against llama.cpp on the same copy.
TEST(GgufTokenizer, OtherPreTokenizersMatchLlamaCpp) {
  ASSERT_TRUE(fs::exists(smollm_path())) << smollm_path() << " is missing: run scripts/setup";
  const fs::path golden = tessera::source_tree_dir() / "tests/fixtures/tokenizer/smollm2_cases.json";
  std::ifstream in(golden, std::ios::binary);
  ASSERT_TRUE(in.good()) << golden << " is missing (tools/golden/make_gguf_tokenizer_golden.py)";
  const json fixture = json::parse(in);
  const GgufFile source(smollm_path());
  TempDir dir;
  const auto pres = fixture.at("other_pre").get<std::vector<std::string>>();
  ASSERT_GE(pres.size(), 6u);
  for (const std::string& pre : pres) {
    SCOPED_TRACE(pre);
    const fs::path path = dir / (pre + ".gguf");
    GgufWriter w(path);
    for (const auto& [key, value] : source.metadata())
      w.set(key, key == "tokenizer.ggml.pre" ? GgufValue::from_string(pre) : value);
    w.write();
    const Tokenizer tok = Tokenizer::from_gguf(GgufFile(path));
    size_t failures = 0, differing = 0;
    for (const auto& c : fixture.at("cases")) {
      if (!c.value("special", true)) continue;
      const std::string text = c.at("text").get<std::string>();
      std::vector<int32_t> expected = c.at("ids").get<std::vector<int32_t>>();
      if (c.contains("by_pre") && c.at("by_pre").contains(pre)) {
        expected = c.at("by_pre").at(pre).get<std::vector<int32_t>>();
        ++differing;
      }
      const auto ids = tok.encode(text);
      if (ids != expected && ++failures <= 5) {
        ADD_FAILURE() << "text \"" << printable(text) << "\"\n  tessera:   " << json(ids).dump()
                      << "\n  llama.cpp: " << json(expected).dump();
      }
    }
    EXPECT_EQ(failures, 0u);
    // starcoder uses smollm's regexes; every other one splits some fixture strings differently.
    if (pre != "starcoder") EXPECT_GT(differing, 10u) << "no fixture case tells " << pre << " from smollm";
  }
}

TEST(GgufTokenizer, SmolLM2DecodeInvertsEncode) {
  REQUIRE_SMOLLM();
  const fs::path golden = tessera::source_tree_dir() / "tests/fixtures/tokenizer/smollm2_cases.json";
  std::ifstream in(golden, std::ios::binary);
  ASSERT_TRUE(in.good()) << golden << " is missing";
  const json cases = json::parse(in).at("cases");  // kept alive for the loop
  for (const auto& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(tok->decode(tok->encode(text)), text) << printable(text);
    EXPECT_EQ(tok->decode(tok->encode(text, false)), text) << printable(text);
  }
  // Arbitrary bytes, invalid UTF-8 included. SmolLM2 has no token for a few bytes (those that
  // never occur in UTF-8, some control characters); like llama.cpp, encoding drops them.
  std::string missing;
  for (int b = 0; b < 256; ++b)
    if (!tok->token_id(std::string(1, static_cast<char>(b)))) missing += static_cast<char>(b);
  EXPECT_NE(missing.find('\xC0'), std::string::npos);
  EXPECT_EQ(missing.find('a'), std::string::npos);
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::string s(rng() % 64, '\0');
    for (char& ch : s) ch = static_cast<char>(rng() & 0xFF);
    std::string kept;
    for (char ch : s)
      if (missing.find(ch) == std::string::npos) kept += ch;
    EXPECT_EQ(tok->decode(tok->encode(s)), kept) << printable(s);
  }
}

TEST(GgufTokenizer, SmolLM2SpecialTokens) {
  REQUIRE_SMOLLM();
  EXPECT_EQ(tok->vocab_size(), 49152);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->pad_id(), 2);
  EXPECT_EQ(tok->unk_id(), 0);
  EXPECT_FALSE(tok->eot_id().has_value());
  EXPECT_EQ(tok->token_id("<|im_start|>"), 1);
  EXPECT_EQ(tok->token_id("<empty_output>"), 16);
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_FALSE(tok->is_special(100));
  EXPECT_EQ(tok->token_bytes(100), "t");
  EXPECT_EQ(tok->encode("<|im_start|>user"), (std::vector<int32_t>{1, *tok->token_id("user")}));
  // With special tokens off the control token is plain text.
  EXPECT_GT(tok->encode("<|im_start|>", false).size(), 1u);
  EXPECT_EQ(tok->decode(tok->encode("<|im_start|>", false)), "<|im_start|>");
  // smollm splits digits one by one.
  const auto digits = tok->encode("12345");
  ASSERT_EQ(digits.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(tok->decode(std::span(&digits[i], 1)), std::string(1, '1' + i));
  EXPECT_EQ(GgufFile(smollm_path()).chat_template()->substr(0, 16), "{% for message i");
}

TEST(GgufTokenizer, PreTokenizerChoices) {
  TempDir dir;
  TinyVocab v;
  const int32_t t12 = v.merge("1", "2");
  const int32_t t123 = v.merge("12", "3");
  const int32_t ta1 = v.merge("a", "1");
  const int32_t tsp1 = v.merge(" ", "1");
  const int32_t tabc = v.add(byte_level("abc"), 1);  // no merges lead here
  (void)tsp1;

  // GPT-2: " ?\p{N}+" keeps digit runs (and a leading space) together.
  Tokenizer gpt2 = Tokenizer::from_gguf(GgufFile(v.write(dir, "gpt-2", "gpt2.gguf")));
  EXPECT_EQ(gpt2.encode("123"), (std::vector<int32_t>{t123}));
  EXPECT_EQ(gpt2.encode("a1"), bytes_of("a1"));  // letters and digits are separate pieces
  EXPECT_EQ(gpt2.encode("abc"), bytes_of("abc"));

  // smollm (and starcoder, refact): every digit on its own first.
  for (const char* pre : {"smollm", "starcoder", "refact"}) {
    SCOPED_TRACE(pre);
    Tokenizer t = Tokenizer::from_gguf(GgufFile(v.write(dir, pre, std::string(pre) + ".gguf")));
    EXPECT_EQ(t.encode("123"), bytes_of("123"));
    EXPECT_EQ(t.encode(" 1"), bytes_of(" 1"));  // the space is its own piece
  }

  // llama3: up to three digits per piece, and a piece that is a token is taken whole.
  Tokenizer llama3 = Tokenizer::from_gguf(GgufFile(v.write(dir, "llama-bpe", "llama3.gguf")));
  EXPECT_EQ(llama3.encode("1231"), (std::vector<int32_t>{t123, '1'}));
  EXPECT_EQ(llama3.encode("abc"), (std::vector<int32_t>{tabc}));
  EXPECT_EQ(llama3.encode("'S"), bytes_of("'S"));
  // dbrx: the same split, but merges as usual.
  Tokenizer dbrx = Tokenizer::from_gguf(GgufFile(v.write(dir, "dbrx", "dbrx.gguf")));
  EXPECT_EQ(dbrx.encode("1231"), (std::vector<int32_t>{t123, '1'}));
  EXPECT_EQ(dbrx.encode("abc"), bytes_of("abc"));
  // qwen2: one digit per piece.
  Tokenizer qwen2 = Tokenizer::from_gguf(GgufFile(v.write(dir, "qwen2", "qwen2.gguf")));
  EXPECT_EQ(qwen2.encode("12"), bytes_of("12"));
  (void)t12;
  (void)ta1;

  // llama.cpp's "default": punctuation runs and digit runs split off, digits in threes.
  Tokenizer def = Tokenizer::from_gguf(GgufFile(v.write(dir, "default", "default.gguf")));
  EXPECT_EQ(def.encode("1231"), (std::vector<int32_t>{t123, '1'}));
  EXPECT_EQ(def.decode(def.encode("x+=1; y!")), "x+=1; y!");

  // Unknown names fall back to GPT-2 with one warning line.
  ::testing::internal::CaptureStderr();
  Tokenizer unknown = Tokenizer::from_gguf(GgufFile(v.write(dir, "no-such-pre", "unknown.gguf")));
  const std::string warning = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(warning.find("tokenizer.ggml.pre 'no-such-pre' is not known"), std::string::npos) << warning;
  EXPECT_NE(warning.find("unknown.gguf"), std::string::npos) << warning;
  EXPECT_EQ(std::count(warning.begin(), warning.end(), '\n'), 1);
  EXPECT_EQ(unknown.encode("123"), (std::vector<int32_t>{t123}));
}

TEST(GgufTokenizer, TokenTypes) {
  TempDir dir;
  TinyVocab v;
  const int32_t control = v.add("<|ctl|>", 3);
  const int32_t user = v.add("<user tok>", 4);  // user-defined tokens are stored as plain text
  const int32_t unknown = v.add("<unk>", 2);
  const int32_t unused = v.add(byte_level("zz"), 5);
  const fs::path path = v.write(dir, "gpt-2", "types.gguf", [&](GgufWriter& w) {
    w.set_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(control));
    w.set_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(control));
    w.set_u32("tokenizer.ggml.eot_token_id", static_cast<uint32_t>(user));
    w.set_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(unknown));
  });
  Tokenizer t = Tokenizer::from_gguf(GgufFile(path));
  EXPECT_EQ(t.bos_id(), control);
  EXPECT_EQ(t.eot_id(), user);
  EXPECT_EQ(t.unk_id(), unknown);
  EXPECT_TRUE(t.is_special(control));
  EXPECT_TRUE(t.is_special(unknown));
  EXPECT_FALSE(t.is_special(user));
  EXPECT_EQ(t.encode("a<|ctl|>b<user tok><unk>"), (std::vector<int32_t>{'a', control, 'b', user, unknown}));
  // Without special tokens the control and unknown tokens are text; user-defined still match.
  std::vector<int32_t> plain = bytes_of("<|ctl|>");
  plain.push_back(user);
  EXPECT_EQ(t.encode("<|ctl|><user tok>", false), plain);
  EXPECT_EQ(t.token_bytes(unused), "zz");
  EXPECT_EQ(t.decode(t.encode("x<user tok>y<|ctl|>")), "x<user tok>y<|ctl|>");
}

TEST(GgufTokenizer, BadMetadataNamesTheFile) {
  TempDir dir;
  TinyVocab v;
  auto expect_error = [&](const std::string& name, const std::function<void(GgufWriter&)>& edit,
                          const std::string& text, TinyVocab vocab) {
    const fs::path path = vocab.write(dir, "gpt-2", name, edit);
    const std::string e = error_of([&] { Tokenizer::from_gguf(GgufFile(path)); });
    EXPECT_NE(e.find(text), std::string::npos) << e;
    EXPECT_NE(e.find(name), std::string::npos) << e;
  };
  // A file without any tokenizer.
  {
    GgufWriter w(dir / "none.gguf");
    w.set_string("general.architecture", "llama");
    w.write();
    const std::string e = error_of([&] { Tokenizer::from_gguf(GgufFile(dir / "none.gguf")); });
    EXPECT_EQ(e, (dir / "none.gguf").string() + ": metadata key 'tokenizer.ggml.model' is missing");
  }
  {
    GgufWriter w(dir / "spm.gguf");
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_strings("tokenizer.ggml.tokens", {"a"});
    w.write();
    const std::string e = error_of([&] { Tokenizer::from_gguf(GgufFile(dir / "spm.gguf")); });
    EXPECT_NE(e.find("spm.gguf: tokenizer.ggml.model 'llama' is not supported"), std::string::npos) << e;
  }
  TinyVocab short_types = v;
  short_types.types.pop_back();
  expect_error("types.gguf", {}, "tokenizer.ggml.token_type has 255 entries but tokenizer.ggml.tokens has 256",
               short_types);
  TinyVocab bad_type = v;
  bad_type.types[3] = 9;
  expect_error("type9.gguf", {}, "tokenizer.ggml.token_type[3] is 9 (expected 1 to 6)", bad_type);
  TinyVocab bad_merge = v;
  bad_merge.merges.push_back("a q");  // "aq" is not a token
  expect_error("merge.gguf", {}, "tokenizer.ggml.merges[0] (\"a\" + \"q\") uses a token that is not in", bad_merge);
  TinyVocab no_space = v;
  no_space.merges.push_back("ab");
  expect_error("nospace.gguf", {}, "is not two tokens separated by one space", no_space);
  {
    GgufWriter w(dir / "inttokens.gguf");
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set("tokenizer.ggml.tokens", GgufValue::from_ints(GgufType::I32, {1, 2}));
    w.write();
    const std::string e = error_of([&] { Tokenizer::from_gguf(GgufFile(dir / "inttokens.gguf")); });
    EXPECT_NE(e.find("'tokenizer.ggml.tokens' has type array of i32, expected array of string"), std::string::npos)
        << e;
  }
  // A special-token id past the vocabulary is ignored with a warning, as llama.cpp does.
  ::testing::internal::CaptureStderr();
  const fs::path path = v.write(dir, "gpt-2", "bos.gguf", [](GgufWriter& w) {
    w.set_u32("tokenizer.ggml.bos_token_id", 100000);
  });
  Tokenizer t = Tokenizer::from_gguf(GgufFile(path));
  const std::string warning = ::testing::internal::GetCapturedStderr();
  EXPECT_FALSE(t.bos_id().has_value());
  EXPECT_NE(warning.find("tokenizer.ggml.bos_token_id is 100000, not a token id"), std::string::npos) << warning;
}
