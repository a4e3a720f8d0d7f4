// Byte-level BPE tokenizer: goldens from tiktoken (cl100k_base) and Hugging Face `tokenizers`
// (tools/golden/make_tokenizer_golden.py), streaming decode, chat template, bad files.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/paths.h"
#include "tokenizers/bpe_tokenizer.h"
#include "tokenizers/chat_template.h"
#include "tokenizers/pcre2_regex.h"
#include "tokenizers/utf8.h"

namespace fs = std::filesystem;
using nlohmann::json;
using tessera::Tokenizer;

namespace {

fs::path fixtures() { return tessera::source_tree_dir() / "tests" / "fixtures" / "tokenizer"; }

fs::path cl100k_path() { return tessera::models_dir() / "tokenizers" / "cl100k_base.tiktoken"; }

json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path << " (run tools/golden/make_tokenizer_golden.py)";
  return json::parse(in);
}

void write_file(const fs::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The installed cl100k tokenizer, loaded once. Missing data is a failure, not a skip.
const Tokenizer* cl100k() {
  static const std::optional<Tokenizer> tokenizer = []() -> std::optional<Tokenizer> {
    if (!fs::exists(cl100k_path())) return std::nullopt;
    return Tokenizer::from_tiktoken(cl100k_path(), std::string(tessera::kCl100kPattern),
                                    tessera::cl100k_special_tokens());
  }();
  return tokenizer ? &*tokenizer : nullptr;
}

#define REQUIRE_CL100K()                                                                        \
  const Tokenizer* cl = cl100k();                                                               \
  ASSERT_NE(cl, nullptr) << cl100k_path() << " is missing: run scripts/setup to install the " \
                                             "cl100k_base ranks"

std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 60)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u != 0x7F) {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", u);
    }
  }
  return s.size() > 60 ? out + "..." : out;
}

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           fmt::format("tessera_tok_{}_{}_{}", ::getpid(), counter++,
                       std::chrono::steady_clock::now().time_since_epoch().count());
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Checks every golden case of a fixture file; reports the first few differences. Round trips
// are checked where the tokenizer is lossless: an lstrip added token (<mask>) swallows the
// space before it and add_prefix_space adds one, as in Hugging Face.
void check_golden(const Tokenizer& tokenizer, const fs::path& cases_file, size_t minimum_cases,
                  bool lossless = true) {
  const json data = read_json(cases_file);
  const json& cases = data.at("cases");
  ASSERT_GE(cases.size(), minimum_cases);
  int failures = 0;
  for (const json& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    const auto expected = c.at("ids").get<std::vector<int32_t>>();
    const std::vector<int32_t> got = tokenizer.encode(text);
    if (got != expected && failures++ < 8) {
      ADD_FAILURE() << cases_file.filename() << ": ids differ for \"" << printable(text) << "\" (" << got.size()
                    << " ids, expected " << expected.size() << ")";
    }
    if (lossless && text.find("<mask>") == std::string::npos) {
      EXPECT_EQ(tokenizer.decode(got), text) << "round trip of \"" << printable(text) << "\"";
    }
    const auto plain = c.contains("ids_no_special") ? c.at("ids_no_special").get<std::vector<int32_t>>() : expected;
    const std::vector<int32_t> got_plain = tokenizer.encode(text, /*allow_special=*/false);
    if (got_plain != plain && failures++ < 8) {
      ADD_FAILURE() << cases_file.filename() << ": allow_special=false ids differ for \"" << printable(text)
                    << "\"";
    }
  }
  EXPECT_EQ(failures, 0);
}

std::string base64(std::string_view bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int k = 18; k >= 0; k -= 6) out += alphabet[(v >> k) & 63];
  }
  if (i + 1 == bytes.size()) {
    const uint32_t v = uint8_t(bytes[i]) << 16;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// A tiny rank file: the 256 bytes, then the given merged tokens in rank order.
std::string tiny_ranks(const std::vector<std::string>& merged) {
  std::string text;
  int rank = 0;
  for (int b = 0; b < 256; ++b) text += base64(std::string(1, char(b))) + " " + std::to_string(rank++) + "\n";
  for (const std::string& t : merged) text += base64(t) + " " + std::to_string(rank++) + "\n";
  return text;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const tessera::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("NOT A tessera::Error: ") + e.what();
  }
  return "no error";
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Goldens

TEST(Tokenizer, Cl100kMatchesTiktoken) {
  REQUIRE_CL100K();
  check_golden(*cl, fixtures() / "cl100k_cases.json", 300);
}

TEST(Tokenizer, Cl100kPatternIsTheFixturePattern) {
  const json data = read_json(fixtures() / "cl100k_cases.json");
  EXPECT_EQ(data.at("pattern").get<std::string>(), std::string(tessera::kCl100kPattern));
}

TEST(Tokenizer, SmallBpeMatchesHuggingFace) {
  const Tokenizer t = Tokenizer::from_tokenizer_json(fixtures() / "small_bpe" / "tokenizer.json");
  check_golden(t, fixtures() / "small_bpe_cases.json", 300);
}

TEST(Tokenizer, SmallBpeOtherMergesSpelling) {
  // The generator writes the merges in the spelling the library does not use by default.
  fs::path other = fixtures() / "small_bpe_strings" / "tokenizer.json";
  if (!fs::exists(other)) other = fixtures() / "small_bpe_arrays" / "tokenizer.json";
  ASSERT_TRUE(fs::exists(other)) << "run tools/golden/make_tokenizer_golden.py";
  const Tokenizer t = Tokenizer::from_tokenizer_json(other);
  check_golden(t, fixtures() / "small_bpe_cases.json", 300);
}

TEST(Tokenizer, Gpt2StyleByteLevelMatchesHuggingFace) {
  const Tokenizer t = Tokenizer::from_tokenizer_json(fixtures() / "small_gpt2" / "tokenizer.json");
  check_golden(t, fixtures() / "small_gpt2_cases.json", 300, /*lossless=*/false);
}

TEST(Tokenizer, SmallBpeAddedTokens) {
  const Tokenizer t = Tokenizer::from_tokenizer_json(fixtures() / "small_bpe" / "tokenizer.json");
  ASSERT_EQ(t.token_id("<|im_start|>"), 1);
  EXPECT_TRUE(t.is_special(1));
  const std::optional<int32_t> sep = t.token_id("[[sep]]");
  ASSERT_TRUE(sep.has_value());
  EXPECT_FALSE(t.is_special(*sep));
  // A non-special added token is matched even when special tokens are not.
  const std::vector<int32_t> ids = t.encode("a [[sep]] <|im_start|>", /*allow_special=*/false);
  EXPECT_NE(std::find(ids.begin(), ids.end(), *sep), ids.end());
  EXPECT_EQ(std::find(ids.begin(), ids.end(), 1), ids.end());
  EXPECT_FALSE(t.bos_id().has_value());
  EXPECT_EQ(t.vocab_size(), 602);
}

// ---------------------------------------------------------------------------------------
// Special tokens

TEST(Tokenizer, SpecialTokensInsideText) {
  REQUIRE_CL100K();
  EXPECT_EQ(cl->vocab_size(), 100277);
  EXPECT_EQ(cl->token_id("<|endoftext|>"), 100257);
  EXPECT_EQ(cl->token_id("<|endofprompt|>"), 100276);
  EXPECT_TRUE(cl->is_special(100257));
  EXPECT_FALSE(cl->is_special(0));
  EXPECT_FALSE(cl->is_special(100256));
  EXPECT_EQ(cl->token_id("hello"), 15339);

  const std::string text = "Hi<|endoftext|>there<|fim_prefix|>x";
  const std::vector<int32_t> ids = cl->encode(text);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 100257), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 100258), 1);
  EXPECT_EQ(cl->decode(ids), text);

  const std::vector<int32_t> plain = cl->encode(text, /*allow_special=*/false);
  for (int32_t id : plain) EXPECT_FALSE(cl->is_special(id));
  EXPECT_EQ(cl->decode(plain), text);

  // Next to each other, and a near miss.
  EXPECT_EQ(cl->encode("<|endoftext|><|endoftext|>"), (std::vector<int32_t>{100257, 100257}));
  for (int32_t id : cl->encode("<|endoftext")) EXPECT_FALSE(cl->is_special(id));
}

TEST(Tokenizer, TokenBytesAndUnknownIds) {
  REQUIRE_CL100K();
  EXPECT_EQ(cl->token_bytes(15339), "hello");
  EXPECT_EQ(cl->token_bytes(100257), "<|endoftext|>");
  const std::string gap = error_of([&] { cl->token_bytes(100256); });
  EXPECT_NE(gap.find("100256"), std::string::npos) << gap;
  const std::vector<int32_t> bad = {15339, 999999};
  const std::string message = error_of([&] { cl->decode(bad); });
  EXPECT_NE(message.find("999999"), std::string::npos) << message;
  EXPECT_NE(error_of([&] { cl->token_bytes(-1); }).find("-1"), std::string::npos);
}

// ---------------------------------------------------------------------------------------
// Streaming decode

namespace {

void check_streaming(const Tokenizer& t, const std::string& text) {
  const std::vector<int32_t> ids = t.encode(text);
  tessera::StreamingDecoder stream(t);
  std::string joined;
  for (int32_t id : ids) {
    const std::string part = stream.push(id);
    EXPECT_TRUE(tessera::utf8::is_valid(part)) << "incomplete UTF-8 emitted for \"" << printable(text) << "\"";
    joined += part;
    EXPECT_TRUE(tessera::utf8::is_valid(joined));
  }
  joined += stream.flush();
  EXPECT_EQ(joined, t.decode(ids));
  if (text.find("<mask>") == std::string::npos) {
    EXPECT_EQ(joined, text);
  }
}

}  // namespace

TEST(Tokenizer, StreamingDecoderNeverSplitsCharacters) {
  REQUIRE_CL100K();
  const Tokenizer small = Tokenizer::from_tokenizer_json(fixtures() / "small_bpe" / "tokenizer.json");
  const json data = read_json(fixtures() / "cl100k_cases.json");
  for (const json& c : data.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    check_streaming(*cl, text);
    check_streaming(small, text);
  }
}

TEST(Tokenizer, StreamingDecoderHoldsPartialSequences) {
  REQUIRE_CL100K();
  tessera::StreamingDecoder stream(*cl);
  // "€" is E2 82 AC: fed one byte token at a time.
  const std::string euro = "\xE2\x82\xAC";
  std::vector<int32_t> bytes;
  for (char c : euro) bytes.push_back(*cl->token_id(std::string(1, c)));
  EXPECT_EQ(stream.push(bytes[0]), "");
  EXPECT_EQ(stream.push(bytes[1]), "");
  EXPECT_EQ(stream.push(bytes[2]), euro);
  EXPECT_EQ(stream.flush(), "");
  // Unfinished at the end: flush hands back the raw bytes.
  EXPECT_EQ(stream.push(bytes[0]), "");
  EXPECT_EQ(stream.flush(), "\xE2");
  // A byte that can never start a character is not held back.
  EXPECT_EQ(stream.push(*cl->token_id("\xFF")), "\xFF");
  EXPECT_EQ(stream.push(*cl->token_id("a")), "a");
}

// ---------------------------------------------------------------------------------------
// Invalid UTF-8

TEST(Tokenizer, InvalidUtf8DoesNotCrash) {
  REQUIRE_CL100K();
  const Tokenizer small = Tokenizer::from_tokenizer_json(fixtures() / "small_bpe" / "tokenizer.json");
  std::vector<std::string> inputs = {
      "\xFF", "abc\xC3", "\xC3(", "\xED\xA0\x80 surrogate", "\xC0\xAF overlong", "\xF4\x90\x80\x80 too big",
      "ok\xFFok", "\x80\x80\x80", "\xF0\x9F\x98", "hello \xE2\x82 world", std::string("nul\0byte", 8),
      "<|endoftext|>\xFE<|endoftext|>",
  };
  std::mt19937 rng(1234);
  for (int n : {1, 7, 100, 5000}) {
    std::string s;
    for (int i = 0; i < n; ++i) s += static_cast<char>(rng() & 0xFF);
    inputs.push_back(s);
  }
  for (const std::string& s : inputs) {
    for (const Tokenizer* t : {cl, &small}) {
      std::vector<int32_t> ids;
      ASSERT_NO_THROW(ids = t->encode(s)) << printable(s);
      EXPECT_EQ(t->decode(ids), s) << printable(s);
      ASSERT_NO_THROW(ids = t->encode(s, false));
      EXPECT_EQ(t->decode(ids), s);
    }
  }
  // Valid text around an invalid byte encodes as it would alone.
  std::vector<int32_t> expected = cl->encode("ok");
  expected.push_back(*cl->token_id("\xFF"));
  for (int32_t id : cl->encode("ok")) expected.push_back(id);
  EXPECT_EQ(cl->encode("ok\xFFok"), expected);
}

// ---------------------------------------------------------------------------------------
// Long pieces and speed

TEST(Tokenizer, LongPiecesAreNotQuadratic) {
  REQUIRE_CL100K();
  std::mt19937 rng(99);
  std::string word;
  for (int i = 0; i < 100000; ++i) word += static_cast<char>('a' + rng() % 26);
  const std::vector<std::string> inputs = {word, std::string(10000, ' '), std::string(100000, 'a'),
                                           std::string(20000, '\n'), std::string(30000, '7')};
  for (const std::string& s : inputs) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = cl->encode(s);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(cl->decode(ids), s);
    EXPECT_LT(seconds, 5.0) << "encoding " << s.size() << " bytes of \"" << printable(s.substr(0, 8)) << "\"";
  }
}

TEST(Tokenizer, EncodeThroughput) {
  REQUIRE_CL100K();
  const json data = read_json(fixtures() / "cl100k_cases.json");
  std::string corpus;
  for (const json& c : data.at("cases")) corpus += c.at("text").get<std::string>() + "\n";
  std::string english;
  for (int i = 0; i < 2000; ++i) {
    english += "The quick brown fox jumps over the lazy dog; it's 2024 and tokenizers should be fast. ";
    english += "def f(x):\n    return x * 2  # doubled\n";
  }
  for (const auto& [name, sample] : {std::pair<const char*, const std::string&>{"golden mix", corpus},
                                     std::pair<const char*, const std::string&>{"english+code", english}}) {
    size_t bytes = 0, tokens = 0;
    const auto start = std::chrono::steady_clock::now();
    double seconds = 0;
    while (seconds < 0.5) {
      tokens += cl->encode(sample).size();
      bytes += sample.size();
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    const double mb_per_s = static_cast<double>(bytes) / seconds / 1e6;
    std::cout << "[ encode  ] cl100k " << name << ": " << mb_per_s << " MB/s, "
              << static_cast<double>(bytes) / static_cast<double>(tokens) << " bytes/token\n";
    EXPECT_GT(mb_per_s, 0.2);
  }
}

TEST(Tokenizer, ConcurrentEncodeIsConsistent) {
  REQUIRE_CL100K();
  const std::string text = "Threads 🧵 share one tokenizer, 你好, don't they? 12345 <|endoftext|> end";
  const std::vector<int32_t> expected = cl->encode(text);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        if (cl->encode(text) != expected) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ---------------------------------------------------------------------------------------
// Model folders and tokenizer_config.json

TEST(Tokenizer, LoadForModelPrefersTokenizerJson) {
  const Tokenizer t = Tokenizer::load_for_model(fixtures() / "small_bpe");
  const Tokenizer direct = Tokenizer::from_tokenizer_json(fixtures() / "small_bpe" / "tokenizer.json");
  EXPECT_EQ(t.encode("hello world"), direct.encode("hello world"));
  EXPECT_EQ(t.vocab_size(), 602);
}

TEST(Tokenizer, LoadForModelFallsBackToCl100k) {
  REQUIRE_CL100K();
  TempDir dir;
  const Tokenizer t = Tokenizer::load_for_model(dir.path);
  EXPECT_EQ(t.encode("hello world"), cl->encode("hello world"));
  EXPECT_EQ(t.eos_id(), 100257);
  EXPECT_EQ(t.token_id("<|endofprompt|>"), 100276);
}

TEST(Tokenizer, TiktokenWithTokenizerConfig) {
  REQUIRE_CL100K();
  TempDir dir;
  fs::copy_file(cl100k_path(), dir.path / "dbrx.tiktoken");
  write_file(dir.path / "tokenizer_config.json", R"({
    "added_tokens_decoder": {
      "100257": {"content": "<|endoftext|>", "lstrip": false, "normalized": false, "rstrip": false,
                 "single_word": false, "special": true},
      "100277": {"content": "<|pad|>", "special": true},
      "100278": {"content": "<|im_start|>", "special": true},
      "100279": {"content": "<|im_end|>", "special": true},
      "100280": {"content": "<tool>", "special": false}
    },
    "bos_token": "<|endoftext|>",
    "eos_token": {"__type": "AddedToken", "content": "<|im_end|>"},
    "pad_token": "<|pad|>",
    "unk_token": "<|endoftext|>"
  })");
  const Tokenizer t = Tokenizer::load_for_model(dir.path);
  EXPECT_EQ(t.bos_id(), 100257);
  EXPECT_EQ(t.eos_id(), 100279);
  EXPECT_EQ(t.pad_id(), 100277);
  EXPECT_EQ(t.vocab_size(), 100281);
  EXPECT_TRUE(t.is_special(100278));
  EXPECT_FALSE(t.is_special(100280));
  // Only the config's tokens are special here: cl100k's fim tokens are plain text.
  EXPECT_FALSE(t.token_id("<|fim_prefix|>").has_value());
  const std::string prompt = tessera::apply_chatml({{"user", "Hi <tool>"}}, true, std::nullopt);
  const std::vector<int32_t> ids = t.encode(prompt);
  EXPECT_EQ(ids.front(), 100278);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 100279), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 100280), 1);
  EXPECT_EQ(t.decode(ids), prompt);
  const std::vector<int32_t> plain = t.encode(prompt, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 100278), 0);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 100280), 1);

  write_file(dir.path / "tokenizer_config.json", R"({"eos_token": "<|nope|>"})");
  const std::string message = error_of([&] { Tokenizer::load_for_model(dir.path); });
  EXPECT_NE(message.find("tokenizer_config.json"), std::string::npos) << message;
  EXPECT_NE(message.find("<|nope|>"), std::string::npos) << message;
}

TEST(Tokenizer, MissingCl100kSaysRunSetup) {
  TempDir models, model;
  const char* old = std::getenv("TESSERA_MODELS");
  const std::string saved = old ? old : "";
  ::setenv("TESSERA_MODELS", models.path.c_str(), 1);
  const std::string message = error_of([&] { Tokenizer::load_for_model(model.path); });
  if (old) {
    ::setenv("TESSERA_MODELS", saved.c_str(), 1);
  } else {
    ::unsetenv("TESSERA_MODELS");
  }
  EXPECT_NE(message.find("cl100k_base.tiktoken is not installed (run scripts/setup)"), std::string::npos) << message;
  EXPECT_NE(message.find(model.path.string()), std::string::npos) << message;
}

// ---------------------------------------------------------------------------------------
// Bad files

TEST(Tokenizer, TinyRankFile) {
  TempDir dir;
  const fs::path path = dir.path / "tiny.tiktoken";
  write_file(path, tiny_ranks({"ab", "abc", "cd", "abcd"}));
  const Tokenizer t = Tokenizer::from_tiktoken(path, std::string(tessera::kCl100kPattern), {{"<s>", 300}});
  EXPECT_EQ(t.encode("abcd"), std::vector<int32_t>{259});
  EXPECT_EQ(t.encode("abcdab<s>"), (std::vector<int32_t>{259, 256, 300}));
  EXPECT_EQ(t.encode("bcd"), (std::vector<int32_t>{'b', 258}));
  EXPECT_EQ(t.vocab_size(), 301);
}

TEST(Tokenizer, BadFilesNameTheFile) {
  TempDir dir;
  const std::string pattern(tessera::kCl100kPattern);
  const auto expect_error = [&](const fs::path& file, auto&& load, std::string_view also) {
    const std::string message = error_of(load);
    EXPECT_NE(message.find(file.string()), std::string::npos) << message;
    EXPECT_NE(message.find(also), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
  };

  const fs::path missing = dir.path / "missing.tiktoken";
  expect_error(missing, [&] { Tokenizer::from_tiktoken(missing, pattern, {}); }, "does not exist");

  const fs::path corrupt = dir.path / "corrupt.tiktoken";
  write_file(corrupt, "IQ== 0\n!!notbase64!! 1\n");
  expect_error(corrupt, [&] { Tokenizer::from_tiktoken(corrupt, pattern, {}); }, "line 2");

  const fs::path bad_rank = dir.path / "bad_rank.tiktoken";
  write_file(bad_rank, "IQ== zero\n");
  expect_error(bad_rank, [&] { Tokenizer::from_tiktoken(bad_rank, pattern, {}); }, "rank");

  const fs::path no_rank = dir.path / "no_rank.tiktoken";
  write_file(no_rank, "IQ==\n");
  expect_error(no_rank, [&] { Tokenizer::from_tiktoken(no_rank, pattern, {}); }, "line 1");

  const fs::path few_bytes = dir.path / "few_bytes.tiktoken";
  write_file(few_bytes, "IQ== 0\nIg== 1\n");
  expect_error(few_bytes, [&] { Tokenizer::from_tiktoken(few_bytes, pattern, {}); }, "single byte");

  const fs::path dup = dir.path / "dup.tiktoken";
  write_file(dup, tiny_ranks({}) + base64("ab") + " 5\n");
  expect_error(dup, [&] { Tokenizer::from_tiktoken(dup, pattern, {}); }, "5");

  const fs::path dup_bytes = dir.path / "dup_bytes.tiktoken";
  write_file(dup_bytes, tiny_ranks({"ab", "ab"}));
  expect_error(dup_bytes, [&] { Tokenizer::from_tiktoken(dup_bytes, pattern, {}); }, "257");

  const fs::path sparse = dir.path / "sparse.tiktoken";
  write_file(sparse, tiny_ranks({}) + base64("ab") + " 2000000000\n");
  expect_error(sparse, [&] { Tokenizer::from_tiktoken(sparse, pattern, {}); }, "range");

  const fs::path clash = dir.path / "clash.tiktoken";
  write_file(clash, tiny_ranks({}));
  expect_error(clash, [&] { Tokenizer::from_tiktoken(clash, pattern, {{"<s>", 65}}); }, "<s>");

  const fs::path bad_regex = dir.path / "regex.tiktoken";
  write_file(bad_regex, tiny_ranks({}));
  expect_error(bad_regex, [&] { Tokenizer::from_tiktoken(bad_regex, "(unclosed", {}); }, "regex");

  const fs::path bad_json = dir.path / "tokenizer.json";
  write_file(bad_json, "{\"model\": {\"type\": \"BPE\", ");
  expect_error(bad_json, [&] { Tokenizer::from_tokenizer_json(bad_json); }, "JSON");

  const std::string small = [] {
    std::ifstream in(fixtures() / "small_bpe" / "tokenizer.json", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }();
  json base = json::parse(small);

  const fs::path wordpiece = dir.path / "wordpiece.json";
  json j = base;
  j["model"]["type"] = "WordPiece";
  write_file(wordpiece, j.dump());
  expect_error(wordpiece, [&] { Tokenizer::from_tokenizer_json(wordpiece); }, "WordPiece");

  const fs::path unigram = dir.path / "unigram.json";
  j = json{{"model", {{"type", "Unigram"}, {"vocab", json::array()}}}};
  write_file(unigram, j.dump());
  expect_error(unigram, [&] { Tokenizer::from_tokenizer_json(unigram); }, "Unigram");

  const fs::path bad_merge = dir.path / "bad_merge.json";
  j = base;
  j["model"]["merges"].push_back(json::array({"\xE2\x82\xAC", "zzz"}));
  write_file(bad_merge, j.dump());
  expect_error(bad_merge, [&] { Tokenizer::from_tokenizer_json(bad_merge); }, "not in the vocab");

  const fs::path not_byte_level = dir.path / "metaspace.json";
  j = base;
  j["pre_tokenizer"] = json{{"type", "Metaspace"}, {"replacement", "_"}};
  j["decoder"] = json{{"type", "Metaspace"}};
  write_file(not_byte_level, j.dump());
  expect_error(not_byte_level, [&] { Tokenizer::from_tokenizer_json(not_byte_level); }, "byte-level");

  const fs::path normalizer = dir.path / "nfc.json";
  j = base;
  j["normalizer"] = json{{"type", "NFC"}};
  write_file(normalizer, j.dump());
  expect_error(normalizer, [&] { Tokenizer::from_tokenizer_json(normalizer); }, "NFC");

  const fs::path wrong_type = dir.path / "wrong_type.json";
  j = base;
  j["model"]["vocab"]["a"] = "one";
  write_file(wrong_type, j.dump());
  expect_error(wrong_type, [&] { Tokenizer::from_tokenizer_json(wrong_type); }, "vocab");

  TempDir model;
  write_file(model.path / "tokenizer.json", small);
  write_file(model.path / "tokenizer_config.json", "{not json");
  const fs::path config = model.path / "tokenizer_config.json";
  expect_error(config, [&] { Tokenizer::load_for_model(model.path); }, "JSON");

  const fs::path nowhere = dir.path / "no_such_model";
  expect_error(nowhere, [&] { Tokenizer::load_for_model(nowhere); }, "does not exist");
}

TEST(Tokenizer, DamagedTokenizerJsonOnlyThrowsTesseraErrors) {
  std::ifstream in(fixtures() / "small_bpe" / "tokenizer.json", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::mt19937 rng(5);
  int loaded = 0;
  for (int i = 0; i < 300; ++i) {
    std::string damaged = text;
    if (i % 3 == 0) {
      damaged.resize(rng() % text.size());
    } else {
      for (int k = 0; k < 1 + i % 4; ++k) damaged[rng() % damaged.size()] = static_cast<char>(rng() & 0xFF);
    }
    try {
      const Tokenizer t = Tokenizer::from_tokenizer_json_text(damaged, "damaged.json");
      const std::vector<int32_t> ids = t.encode("Hello, world! 你好 <|im_start|> 123");
      (void)t.decode(ids);
      ++loaded;
    } catch (const tessera::Error& e) {
      EXPECT_NE(std::string(e.what()).find("damaged.json"), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a tessera::Error: " << e.what();
    }
  }
  std::cout << "[ damaged ] " << loaded << " of 300 damaged files still loaded\n";
}

TEST(Tokenizer, RegexUsesJitWhenAvailable) {
  uint32_t jit_available = 0;
  pcre2_config(PCRE2_CONFIG_JIT, &jit_available);
  const tessera::Pcre2Regex regex(tessera::kCl100kPattern, "test");
  EXPECT_EQ(regex.jit(), jit_available != 0);
  std::cout << "[ pcre2   ] JIT " << (regex.jit() ? "on" : "off (interpreter)") << "\n";
}

TEST(Tokenizer, WhitespaceEscapesCoverNextLine) {
  EXPECT_EQ(tessera::adapt_whitespace_escapes(R"(\s+(?!\S))"), R"([\s\x{85}]+(?![^\s\x{85}]))");
  EXPECT_EQ(tessera::adapt_whitespace_escapes(R"([^\s\p{L}])"), R"([^\s\x{85}\p{L}])");
  EXPECT_EQ(tessera::adapt_whitespace_escapes(R"(\\s[]\s][[:alpha:]\s])"), R"(\\s[]\s\x{85}][[:alpha:]\s\x{85}])");
  EXPECT_EQ(tessera::adapt_whitespace_escapes(R"(\Q\s\E\s)"), R"(\Q\s\E[\s\x{85}])");
}

// ---------------------------------------------------------------------------------------
// Chat template

TEST(ChatTemplate, MatchesDbrxInstructTemplate) {
  const json data = read_json(fixtures() / "chatml_cases.json");
  EXPECT_EQ(data.at("default_system_prompt").get<std::string>(), std::string(tessera::kDbrxDefaultSystemPrompt));
  const json& cases = data.at("cases");
  ASSERT_GE(cases.size(), 40u);
  for (const json& c : cases) {
    std::vector<tessera::ChatMessage> messages;
    for (const json& m : c.at("messages")) {
      messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
    }
    const std::optional<std::string> system =
        c.at("default_system").get<bool>() ? std::optional<std::string>(std::string(tessera::kDbrxDefaultSystemPrompt))
                                           : std::nullopt;
    EXPECT_EQ(tessera::apply_chatml(messages, c.at("add_generation_prompt").get<bool>(), system),
              c.at("expected").get<std::string>())
        << c.at("messages").dump();
  }
}

TEST(ChatTemplate, Basics) {
  EXPECT_EQ(tessera::apply_chatml({}, true, std::nullopt), "");
  EXPECT_EQ(tessera::apply_chatml({{"user", "Hi"}}, true, std::string("Be nice.")),
            "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(tessera::apply_chatml({{"user", "a"}, {"assistant", "b"}}, false, std::nullopt),
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>");
}
