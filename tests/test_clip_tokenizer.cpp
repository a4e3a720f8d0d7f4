// CLIP BPE tokenizer: goldens from transformers' CLIPTokenizer as diffusers loads it
// (tools/golden/make_clip_tokenizer_golden.py) on the real CLIP vocab, a hand-made tiny vocab,
// Unicode normalization, and bad files.
#include <gtest/gtest.h>
#include <zlib.h>

#include <array>
#include <atomic>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/paths.h"
#include "test_util.h"
#include "tokenizers/clip_tokenizer.h"
#include "tokenizers/unicode_normalize.h"
#include "tokenizers/utf8.h"

namespace fs = std::filesystem;
using nlohmann::json;
using tessera::ClipTokenizer;
using tessera::testing::error_of;
using tessera::testing::TempDir;
using tessera::testing::write_file;

namespace {

fs::path fixtures() { return tessera::testing::fixtures() / "clip_tokenizer"; }
fs::path bpe_gz_path() { return tessera::models_dir() / "tokenizers" / "bpe_simple_vocab_16e6.txt.gz"; }

json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path << " (run tools/golden/make_clip_tokenizer_golden.py)";
  return json::parse(in);
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

// The case's input: raw bytes for the invalid-UTF-8 cases, else the text.
std::string input_of(const json& c) { return c.contains("bytes") ? from_hex(c["bytes"]) : c["text"].get<std::string>(); }

std::string label(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 50)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u != 0x7F) ? std::string(1, c) : fmt::format("\\x{:02x}", u);
  }
  return s.size() > 50 ? out + "..." : out;
}

// The real vocab, loaded once per process from the installed open-clip merges.
const ClipTokenizer* real() {
  static const std::optional<ClipTokenizer> tokenizer = []() -> std::optional<ClipTokenizer> {
    if (!fs::exists(bpe_gz_path())) return std::nullopt;
    return ClipTokenizer::from_bpe_gz(bpe_gz_path());
  }();
  return tokenizer ? &*tokenizer : nullptr;
}

#define REQUIRE_REAL()                                                                              \
  const ClipTokenizer* tok = real();                                                                \
  if (tok == nullptr) {                                                                             \
    GTEST_SKIP() << bpe_gz_path() << " is missing: run scripts/setup to install the CLIP merges "   \
                                     "(from the open-clip-torch wheel)";                            \
  }

// A diffusers-style tokenizer folder made independently of the library: the .gz unpacked with
// gzread, the vocab built by open_clip's recipe, written as vocab.json + merges.txt, with the
// config files of one fixture style next to them.
void write_hf_folder(const fs::path& dir, const std::string& style) {
  fs::create_directories(dir);
  gzFile gz = gzopen(bpe_gz_path().c_str(), "rb");
  ASSERT_NE(gz, nullptr);
  std::string text;
  std::array<char, 1 << 16> buf{};
  int n = 0;
  while ((n = gzread(gz, buf.data(), buf.size())) > 0) text.append(buf.data(), static_cast<size_t>(n));
  gzclose(gz);
  std::vector<std::string> lines;
  for (size_t pos = 0; pos <= text.size();) {
    const size_t end = std::min(text.find('\n', pos), text.size());
    lines.push_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  std::vector<int> order;
  for (int b = '!'; b <= '~'; ++b) order.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) order.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) order.push_back(b);
  std::vector<std::string> vocab;
  int extra = 0;
  std::array<std::string, 256> symbol;
  for (int b = 0; b < 256; ++b) {
    char32_t cp = static_cast<char32_t>(b);
    if (std::find(order.begin(), order.end(), b) == order.end()) cp = 256 + extra++;
    tessera::utf8::append(symbol[static_cast<size_t>(b)], cp);
  }
  for (int b = 0; b < 256; ++b) {
    if (std::find(order.begin(), order.end(), b) == order.end()) order.push_back(b);
  }
  for (int b : order) vocab.push_back(symbol[static_cast<size_t>(b)]);
  for (int b : order) vocab.push_back(symbol[static_cast<size_t>(b)] + "</w>");
  std::string merges = "#version: 0.2\n";
  for (size_t i = 1; i < lines.size() && i <= 48894; ++i) {
    const std::string& m = lines[i];
    const size_t space = m.find(' ');
    vocab.push_back(m.substr(0, space) + m.substr(space + 1));
    merges += m + "\n";
  }
  vocab.push_back("<|startoftext|>");
  vocab.push_back("<|endoftext|>");
  json v = json::object();
  for (size_t i = 0; i < vocab.size(); ++i) v[vocab[i]] = i;
  write_file(dir / "vocab.json", v.dump());
  write_file(dir / "merges.txt", merges);
  if (!style.empty()) {
    for (const auto& entry : fs::directory_iterator(fixtures() / style)) fs::copy_file(entry.path(), dir / entry.path().filename());
  }
}

// The expected unpadded ids of a case for a folder style: its own list where it differs.
std::vector<int32_t> expected_ids(const json& c, const std::string& style) {
  const std::string key = "ids_" + style;
  return ids_of(c.contains(key) ? c[key] : c["ids"]);
}

void check_padded(const ClipTokenizer& tok, const json& c, const std::string& key) {
  const std::string input = input_of(c);
  const auto expected = ids_of(c[key]);
  const auto p = tok.encode_padded(input, 77);
  ASSERT_EQ(p.ids, expected) << key << " of \"" << label(input) << "\"";
  const size_t tokens = tok.encode(input).size();
  EXPECT_EQ(p.truncated, tokens > 75) << label(input);
  const size_t real_length = std::min<size_t>(tokens, 75) + 2;
  for (size_t i = 0; i < 77; ++i) EXPECT_EQ(p.attention_mask[i], i < real_length ? 1 : 0);
  EXPECT_EQ(p.ids[real_length - 1], tok.eos_id());
  const auto first_eos = std::find(expected.begin(), expected.end(), tok.eos_id()) - expected.begin();
  EXPECT_EQ(p.eos_index, first_eos);
}

// ---------------------------------------------------------------------------------------
// The tiny hand-made vocab (no installed files needed)

TEST(ClipTokenizerTiny, MatchesReference) {
  const json cases = read_json(fixtures() / "tiny_cases.json");
  const auto from_files = ClipTokenizer::from_files(fixtures() / "tiny" / "vocab.json", fixtures() / "tiny" / "merges.txt");
  const auto from_dir = ClipTokenizer::load_dir(fixtures() / "tiny");
  for (const ClipTokenizer* tok : {&from_files, &from_dir}) {
    EXPECT_EQ(tok->vocab_size(), cases["vocab_size"].get<int64_t>());
    EXPECT_EQ(tok->bos_id(), tok->vocab_size() - 2);
    EXPECT_EQ(tok->eos_id(), tok->vocab_size() - 1);
    EXPECT_EQ(tok->pad_id(), tok->eos_id());
    EXPECT_EQ(tok->max_length(), 77);
    for (const auto& c : cases["cases"]) {
      const std::string text = c["text"];
      EXPECT_EQ(tok->encode(text), ids_of(c["ids"])) << text;
      EXPECT_EQ(tok->encode_padded(text, cases["max_length"]).ids, ids_of(c["padded"])) << text;
    }
  }
}

TEST(ClipTokenizerTiny, UnknownBytesBecomeEndOfText) {
  const auto tok = ClipTokenizer::load_dir(fixtures() / "tiny");
  const auto ids = tok.encode("caf\xC3\xA9");
  ASSERT_EQ(ids.size(), 4u);  // c a f + one unknown for each of the two bytes of é
  EXPECT_EQ(ids[2], tok.eos_id());
  EXPECT_EQ(ids[3], tok.eos_id());
}

TEST(ClipTokenizerTiny, PaddingAndTruncation) {
  const auto tok = ClipTokenizer::load_dir(fixtures() / "tiny");
  const auto words = tok.encode("hello world hello world");
  ASSERT_EQ(words.size(), 4u);
  auto p = tok.encode_padded("hello world hello world", 5);
  EXPECT_TRUE(p.truncated);
  EXPECT_EQ(p.ids, (std::vector<int32_t>{tok.bos_id(), words[0], words[1], words[2], tok.eos_id()}));
  EXPECT_EQ(p.attention_mask, (std::vector<int32_t>{1, 1, 1, 1, 1}));
  EXPECT_EQ(p.eos_index, 4);
  p = tok.encode_padded("hello world hello world", 6);
  EXPECT_FALSE(p.truncated);
  EXPECT_EQ(p.ids.back(), tok.eos_id());
  p = tok.encode_padded("", 2);
  EXPECT_EQ(p.ids, (std::vector<int32_t>{tok.bos_id(), tok.eos_id()}));
  EXPECT_EQ(p.eos_index, 1);
  p = tok.encode_padded("hello", 2);
  EXPECT_TRUE(p.truncated);
  EXPECT_NE(error_of([&] { tok.encode_padded("x", 1); }), "");
  EXPECT_NE(error_of([&] { tok.encode_padded("x", -5); }), "");
}

TEST(ClipTokenizerTiny, PadTokenIsSpecial) {
  auto tok = ClipTokenizer::load_dir(fixtures() / "tiny");
  const auto bang = tok.encode("!");
  ASSERT_EQ(bang.size(), 1u);
  EXPECT_NE(bang[0], 0);  // "!</w>"
  ClipTokenizer copy = tok;
  tok.set_pad_token("!");
  const int32_t pad = tok.pad_id();
  EXPECT_NE(pad, bang[0]);  // "!", not "!</w>"
  EXPECT_EQ(tok.encode("hello!"), (std::vector<int32_t>{tok.encode("hello")[0], pad}));
  EXPECT_EQ(tok.encode("!!"), (std::vector<int32_t>{pad, pad}));
  EXPECT_EQ(tok.encode_padded("hello", 4).ids, (std::vector<int32_t>{tok.bos_id(), tok.encode("hello")[0], tok.eos_id(), pad}));
  EXPECT_EQ(copy.encode("!"), bang) << "a copy keeps its own pad token";
  tok.set_pad_token("<|endoftext|>");
  EXPECT_EQ(tok.pad_id(), tok.eos_id());
  EXPECT_EQ(tok.encode("!"), bang) << "the old pad token is ordinary text again";
  EXPECT_NE(error_of([&] { tok.set_pad_token("<pad>"); }), "");
}

TEST(ClipTokenizerTiny, Decode) {
  const auto tok = ClipTokenizer::load_dir(fixtures() / "tiny");
  const auto ids = tok.encode("Hello World");
  EXPECT_EQ(tok.decode(ids), "hello world");
  std::vector<int32_t> with_specials = {tok.bos_id()};
  with_specials.insert(with_specials.end(), ids.begin(), ids.end());
  with_specials.push_back(tok.eos_id());
  EXPECT_EQ(tok.decode(with_specials), "<|startoftext|>hello world <|endoftext|>");
  EXPECT_EQ(tok.decode({-1, 100000, static_cast<int32_t>(tok.vocab_size())}), "");
  EXPECT_EQ(tok.decode({}), "");
}

TEST(ClipTokenizerTiny, InvalidUtf8NeverThrows) {
  const auto tok = ClipTokenizer::load_dir(fixtures() / "tiny");
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string s(static_cast<size_t>(rng() % 24), '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    const auto ids = tok.encode(s);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
    const std::string back = tok.decode(ids);
    EXPECT_TRUE(tessera::utf8::is_valid(back));
  }
}

// ---------------------------------------------------------------------------------------
// Bad files

struct ClipBadFiles : ::testing::Test {
  TempDir dir;
  fs::path tiny = fixtures() / "tiny";

  // Copies the tiny folder, replacing `name` with `content` when given.
  fs::path folder(const std::string& name = "", const std::string& content = "") {
    const fs::path d = dir / fmt::format("t{}", counter++);
    fs::create_directories(d);
    for (const auto& e : fs::directory_iterator(tiny)) fs::copy_file(e.path(), d / e.path().filename());
    if (!name.empty()) write_file(d / name, content);
    return d;
  }
  int counter = 0;
};

void expect_one_line_error(const std::string& message, const std::string& mentions) {
  EXPECT_NE(message, "") << "expected an error mentioning " << mentions;
  EXPECT_NE(message.find(mentions), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST_F(ClipBadFiles, MissingFiles) {
  const fs::path d = dir / "empty";
  fs::create_directories(d);
  expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(d); }), "vocab.json: file not found");
  expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(dir / "nope"); }), "not a tokenizer folder");
  const fs::path f = folder();
  fs::remove(f / "merges.txt");
  expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(f); }), "merges.txt: file not found");
  expect_one_line_error(error_of([&] { ClipTokenizer::from_files(f / "vocab.json", f / "nope.txt"); }), "nope.txt");
  expect_one_line_error(error_of([&] { ClipTokenizer::from_bpe_gz(dir / "none.gz"); }), "none.gz: file not found");
  expect_one_line_error(error_of([&] { ClipTokenizer::from_files(f, f / "vocab.json"); }), "is a directory");
}

TEST_F(ClipBadFiles, Vocab) {
  const std::pair<std::string, std::string> cases[] = {
      {"{\"a\": 0, ", "not valid JSON"},
      {"[1, 2]", "expected a JSON object"},
      {"{}", "the vocab is empty"},
      {"{\"a\": \"zero\"}", "is not an integer"},
      {"{\"a\": -1}", "out of range"},
      {"{\"a\": 99999999999}", "out of range"},
      {"{\"a\": 0, \"b\": 0}", "id 0 is given to both"},
      {"{\"a\": 0, \"b\": 1}", "\"<|startoftext|>\" is not in the vocab"},
  };
  for (const auto& [content, mentions] : cases) {
    const fs::path f = folder("vocab.json", content);
    write_file(f / "merges.txt", "#version: 0.2\n");
    expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(f); }), mentions);
    expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(f); }), "vocab.json");
  }
  const fs::path f = folder("vocab.json", "{\"a\": 0, \"b\": 1}");
  expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(f); }), "merges.txt: line 2: \"h\" is not in the vocab");
}

TEST_F(ClipBadFiles, Merges) {
  const std::pair<std::string, std::string> cases[] = {
      {"#version: 0.2\nh e\n\nl l\n", "line 3: expected two tokens"},
      {"h e x\n", "line 1: expected two tokens"},
      {"he\n", "line 1: expected two tokens"},
      {"h  e\n", "line 1: expected two tokens"},
      {"h \u00e9\n", "line 1: \"\u00e9\" is not in the vocab"},
      {"h e\nq z\n", "line 2: the merged token \"qz\" is not in the vocab"},
  };
  for (const auto& [content, mentions] : cases) {
    const fs::path f = folder("merges.txt", content);
    expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(f); }), mentions);
    expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(f); }), "merges.txt");
  }
  // CRLF line ends and an empty merges file are fine.
  EXPECT_EQ(error_of([&] { ClipTokenizer::load_dir(folder("merges.txt", "#version: 0.2\r\nh e\r\n")); }), "");
  EXPECT_EQ(error_of([&] { ClipTokenizer::load_dir(folder("merges.txt", "")); }), "");
}

TEST_F(ClipBadFiles, Configs) {
  const std::pair<std::string, std::string> cases[] = {
      {"{\"pad_token\": \"<pad>\"}", "pad_token \"<pad>\" is not in the vocab"},
      {"{\"bos_token\": {\"content\": \"<s>\"}}", "bos_token \"<s>\" is not in the vocab"},
      {"{\"eos_token\": 5}", "eos_token is neither a string nor a token object"},
      {"{\"eos_token\": {\"normalized\": true}}", "has no \"content\""},
      {"{\"model_max_length\": \"77\"}", "model_max_length is not a number"},
      {"{\"model_max_length\": 1}", "model_max_length 1 is below 2"},
      {"[]", "expected a JSON object"},
      {"{\"added_tokens_decoder\": {\"7\": {\"content\": \"!\"}}}", "does not have that id"},
      {"{\"added_tokens_decoder\": {\"x\": {\"content\": \"!\"}}}", "the key is not a token id"},
      {"{", "not valid JSON"},
  };
  for (const auto& [content, mentions] : cases) {
    const fs::path f = folder("tokenizer_config.json", content);
    expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(f); }), mentions);
  }
  expect_one_line_error(error_of([&] { ClipTokenizer::load_dir(folder("special_tokens_map.json", "{\"pad_token\": \"?\"}")); }),
                        "pad_token \"?\" is not in the vocab");
  // transformers' "no limit" value falls back to CLIP's 77.
  EXPECT_EQ(ClipTokenizer::load_dir(folder("tokenizer_config.json", "{\"model_max_length\": 1e30}")).max_length(), 77);
  EXPECT_EQ(ClipTokenizer::load_dir(folder("tokenizer_config.json", "{\"model_max_length\": 64}")).max_length(), 64);
  const auto bang = ClipTokenizer::load_dir(folder("tokenizer_config.json", "{\"pad_token\": \"!\"}"));
  EXPECT_EQ(bang.encode("!"), std::vector<int32_t>{bang.pad_id()});
}

TEST_F(ClipBadFiles, BpeGz) {
  const fs::path plain = dir / "plain.gz";
  write_file(plain, "\"bpe#version\nh e\n");
  expect_one_line_error(error_of([&] { ClipTokenizer::from_bpe_gz(plain); }), "not a gzip file");
  // A real gzip stream, then cut short.
  std::string content = "\"bpe#version\n";
  for (int i = 0; i < 2000; ++i) content += "a b\n";
  uLongf size = compressBound(content.size()) + 64;
  std::string gz(size, '\0');
  z_stream zs{};
  ASSERT_EQ(deflateInit2(&zs, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  zs.next_in = reinterpret_cast<Bytef*>(content.data());
  zs.avail_in = static_cast<uInt>(content.size());
  zs.next_out = reinterpret_cast<Bytef*>(gz.data());
  zs.avail_out = static_cast<uInt>(gz.size());
  ASSERT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  gz.resize(zs.total_out);
  deflateEnd(&zs);
  const fs::path good = dir / "good.gz", cut = dir / "cut.gz", bad = dir / "bad.gz";
  write_file(good, gz);
  write_file(cut, gz.substr(0, gz.size() / 2));
  std::string garbled = gz;
  for (size_t i = 12; i < garbled.size(); i += 3) garbled[i] = static_cast<char>(garbled[i] ^ 0x5A);
  write_file(bad, garbled);
  expect_one_line_error(error_of([&] { ClipTokenizer::from_bpe_gz(cut); }), "cut.gz: bad gzip data");
  expect_one_line_error(error_of([&] { ClipTokenizer::from_bpe_gz(bad); }), "bad.gz: bad gzip data");
  // "a b" over and over: the second merge makes a duplicate token.
  expect_one_line_error(error_of([&] { ClipTokenizer::from_bpe_gz(good); }), "appears twice");
}

// ---------------------------------------------------------------------------------------
// Unicode normalization (the reference's tables)


TEST(UnicodeNormalize, Nfc) {
  using tessera::unicode::nfc;
  EXPECT_EQ(nfc(U"cafe\u0301"), U"caf\u00e9");
  EXPECT_EQ(nfc(U"\u212b"), U"\u00c5");                  // singleton
  EXPECT_EQ(nfc(U"q\u0307\u0323"), U"q\u0323\u0307");    // reordered, nothing composes
  EXPECT_EQ(nfc(U"\u1e0b\u0323"), U"\u1e0d\u0307");      // reordered, then composed
  EXPECT_EQ(nfc(U"\u1100\u1161\u11a8"), U"\uac01");      // Hangul L V T
  EXPECT_EQ(nfc(U"\uac00\u11a8"), U"\uac01");
  EXPECT_EQ(nfc(U"\u0301a"), U"\u0301a");                // a leading mark stays
  EXPECT_EQ(nfc(U"a\u0301\u0301"), U"\u00e1\u0301");
  EXPECT_EQ(nfc(U"\U00011935\U00011930"), U"\U00011935\U00011930");  // unknown to the reference
  EXPECT_EQ(nfc(U""), U"");
  EXPECT_EQ(tessera::unicode::combining_class(0x301), 230);
  EXPECT_EQ(tessera::unicode::combining_class(0x41), 0);
  EXPECT_EQ(tessera::unicode::combining_class(0x898), 0);  // newer than the reference's tables
}

TEST(UnicodeNormalize, Lowercase) {
  using tessera::unicode::lowercase;
  EXPECT_EQ(lowercase(U"ABC xyz"), U"abc xyz");
  EXPECT_EQ(lowercase(U"\u0130"), U"i\u0307");
  EXPECT_EQ(lowercase(U"\u03a3\u0391\u03a3"), U"\u03c3\u03b1\u03c3");
  EXPECT_EQ(lowercase(U"\u1e9e"), U"\u00df");
  EXPECT_EQ(lowercase(U"\u216b"), U"\u217b");
  EXPECT_EQ(lowercase(U"\u1c89"), U"\u1c8a");  // Unicode 16, as Rust's tables
}

// ---------------------------------------------------------------------------------------
// The real CLIP vocab: goldens from transformers

TEST(ClipTokenizerReal, KnownIds) {
  REQUIRE_REAL();
  EXPECT_EQ(tok->vocab_size(), 49408);
  EXPECT_EQ(tok->bos_id(), 49406);
  EXPECT_EQ(tok->eos_id(), 49407);
  EXPECT_EQ(tok->pad_id(), 49407);
  EXPECT_EQ(tok->max_length(), 77);
  EXPECT_EQ(tok->encode("a photo of a cat"), (std::vector<int32_t>{320, 1125, 539, 320, 2368}));
  const auto p = tok->encode_padded("a photo of a cat");
  EXPECT_EQ(std::vector<int32_t>(p.ids.begin(), p.ids.begin() + 8),
            (std::vector<int32_t>{49406, 320, 1125, 539, 320, 2368, 49407, 49407}));
  EXPECT_EQ(p.ids.size(), 77u);
  EXPECT_EQ(p.eos_index, 6);
  EXPECT_FALSE(p.truncated);
}

TEST(ClipTokenizerReal, GoldenCases) {
  REQUIRE_REAL();
  const json golden = read_json(fixtures() / "cases.json");
  ASSERT_GE(golden["cases"].size(), 200u);
  for (const auto& c : golden["cases"]) {
    const std::string input = input_of(c);
    ASSERT_EQ(tok->encode(input), ids_of(c["ids"])) << "\"" << label(input) << "\"";
    check_padded(*tok, c, "padded");
    std::vector<int32_t> with_specials = {tok->bos_id()};
    const auto body = ids_of(c["ids"]);
    with_specials.insert(with_specials.end(), body.begin(), body.end());
    with_specials.push_back(tok->eos_id());
    ASSERT_EQ(tok->decode(with_specials), c["decoded"].get<std::string>()) << label(input);
  }
}

TEST(ClipTokenizerReal, GoldenDecode) {
  REQUIRE_REAL();
  const json golden = read_json(fixtures() / "decode_cases.json");
  for (const auto& c : golden["cases"]) {
    EXPECT_EQ(tok->decode(ids_of(c["ids"])), c["text"].get<std::string>()) << c["ids"].dump();
  }
}

TEST(ClipTokenizerReal, FromFilesMatchesGz) {
  REQUIRE_REAL();
  TempDir dir;
  write_hf_folder(dir / "plain", "");
  const auto files = ClipTokenizer::from_files(dir / "plain" / "vocab.json", dir / "plain" / "merges.txt");
  const auto folder = ClipTokenizer::load_dir(dir / "plain");
  const json golden = read_json(fixtures() / "cases.json");
  for (const ClipTokenizer* t : {&files, &folder}) {
    EXPECT_EQ(t->vocab_size(), 49408);
    EXPECT_EQ(t->bos_id(), 49406);
    EXPECT_EQ(t->eos_id(), 49407);
    EXPECT_EQ(t->pad_id(), 49407);
    for (const auto& c : golden["cases"]) {
      const std::string input = input_of(c);
      ASSERT_EQ(t->encode(input), ids_of(c["ids"])) << label(input);
    }
  }
}

void check_style(const std::string& style, int32_t pad) {
  TempDir dir;
  write_hf_folder(dir / style, style);
  const auto tok = ClipTokenizer::load_dir(dir / style);
  EXPECT_EQ(tok.pad_id(), pad);
  EXPECT_EQ(tok.bos_id(), 49406);
  EXPECT_EQ(tok.eos_id(), 49407);
  EXPECT_EQ(tok.max_length(), 77);
  const json golden = read_json(fixtures() / "cases.json");
  for (const auto& c : golden["cases"]) {
    const std::string input = input_of(c);
    ASSERT_EQ(tok.encode(input), expected_ids(c, style)) << style << ": \"" << label(input) << "\"";
    if (style == "sd2") check_padded(tok, c, "padded_sd2");
  }
}

TEST(ClipTokenizerReal, Sd15Folder) {
  REQUIRE_REAL();
  check_style("sd15", 49407);
}

TEST(ClipTokenizerReal, Sd2Folder) {
  REQUIRE_REAL();
  check_style("sd2", 0);
}

TEST(ClipTokenizerReal, SdxlFolder) {
  REQUIRE_REAL();
  check_style("sdxl", 0);
}

TEST(ClipTokenizerReal, SetPadTokenLikeSd2) {
  REQUIRE_REAL();
  ClipTokenizer t = *tok;
  t.set_pad_token("!");
  EXPECT_EQ(t.pad_id(), 0);
  EXPECT_EQ(t.encode("wow!!! ok"), (std::vector<int32_t>{2781, 0, 0, 0, 2481}));
  EXPECT_EQ(tok->encode("wow!!! ok"), (std::vector<int32_t>{2781, 995, 2481}));
  const auto p = t.encode_padded("a photo", 6);
  EXPECT_EQ(p.ids, (std::vector<int32_t>{49406, 320, 1125, 49407, 0, 0}));
  EXPECT_EQ(p.eos_index, 3);
}

// Every code point in a small context, against CRC-32s of the reference's ids per block.
TEST(ClipTokenizerReal, EveryCodePoint) {
  REQUIRE_REAL();
  const json golden = read_json(fixtures() / "codepoints.json");
  std::map<uint32_t, std::vector<int32_t>> blocks;
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    std::string ch;
    tessera::utf8::append(ch, c);
    const std::string text = ch + "a" + ch + ch + "5" + ch + "?" + ch;
    auto& block = blocks[c >> 12];
    const auto ids = tok->encode(text);
    block.insert(block.end(), ids.begin(), ids.end());
    block.push_back(-1);
  }
  int bad = 0;
  for (const auto& [b, ids] : blocks) {
    const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(ids.data()), static_cast<uInt>(ids.size() * 4));
    const std::string key = fmt::format("{:03X}", b);
    ASSERT_TRUE(golden["blocks"].contains(key)) << key;
    if (fmt::format("{:08x}", crc) != golden["blocks"][key].get<std::string>()) {
      ADD_FAILURE() << "code points U+" << key << "000..U+" << key << "FFF differ from the reference";
      if (++bad > 10) break;
    }
  }
}

TEST(ClipTokenizerReal, ThreadsAgree) {
  REQUIRE_REAL();
  const json golden = read_json(fixtures() / "cases.json");
  std::vector<std::string> inputs;
  for (const auto& c : golden["cases"]) inputs.push_back(input_of(c));
  std::vector<std::vector<int32_t>> serial;
  for (const auto& s : inputs) serial.push_back(tok->encode(s));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = static_cast<size_t>(t); i < inputs.size(); i += 2) {
        if (tok->encode(inputs[i]) != serial[i]) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(ClipTokenizerReal, RandomBytesNeverThrow) {
  REQUIRE_REAL();
  std::mt19937 rng(11);
  for (int i = 0; i < 3000; ++i) {
    std::string s(static_cast<size_t>(rng() % 40), '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    const auto ids = tok->encode(s);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok->vocab_size());
    EXPECT_TRUE(tessera::utf8::is_valid(tok->decode(ids)));
    EXPECT_EQ(tok->encode_padded(s).ids.size(), 77u);
  }
}

}  // namespace
