// Byte-level BPE training: merges against Hugging Face `tokenizers`' BpeTrainer
// (tools/golden/make_bpe_trainer_golden.py), hand-countable corpora, the written files as
// tessera loads them, and bad input.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "tokenizers/bpe_tokenizer.h"
#include "tokenizers/bpe_tokenizer_impl.h"
#include "tokenizers/bpe_trainer.h"
#include "tokenizers/chat_template.h"
#include "training/data.h"

namespace fs = std::filesystem;
using nlohmann::json;
using tessera::BpeTrainer;
using tessera::BpeTrainerOptions;
using tessera::Tokenizer;
using tessera::TrainedBpe;
using tessera::testing::error_of;
using tessera::testing::TempDir;
using tessera::testing::write_file;

namespace {

fs::path fixture_dir() { return tessera::testing::fixtures() / "bpe_trainer"; }

json golden() {
  std::ifstream in(fixture_dir() / "golden.json", std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing golden (run tools/golden/make_bpe_trainer_golden.py)";
  return json::parse(in);
}

BpeTrainerOptions options_with(int64_t vocab_size, int64_t min_frequency = 2) {
  BpeTrainerOptions options;
  options.vocab_size = vocab_size;
  options.min_frequency = min_frequency;
  return options;
}

// The fixture corpus, listed the way `tessera tokenizer train --input DIR` lists it.
void add_corpus(BpeTrainer& trainer) {
  for (const auto& file : tessera::training::list_data_files({fixture_dir() / "corpus"}, "corpus")) trainer.add_file(file);
}

// A merge as the vocab spells it: ["Ġ", "t"].
std::vector<std::string> spelled(const TrainedBpe& trained, const TrainedBpe::Merge& m) {
  const auto spell = [&](int32_t id) {
    const std::string& bytes = trained.tokens[static_cast<size_t>(id)];
    return id < trained.special_count ? bytes : tessera::byte_level_encode(bytes);
  };
  return {spell(m.left), spell(m.right)};
}

std::vector<std::vector<std::string>> spelled_merges(const TrainedBpe& trained) {
  std::vector<std::vector<std::string>> out;
  for (const auto& m : trained.merges) out.push_back(spelled(trained, m));
  return out;
}

Tokenizer load(const TrainedBpe& trained) {
  return Tokenizer::from_tokenizer_json_text(tessera::trained_tokenizer_json(trained), "trained");
}

const std::vector<std::string> kRoundTrip = {
    "",
    "The lighthouse keeper's log, kept through the winter of 1887.",
    "  two spaces\n\n\nthree newlines\r\n\ttab   and trailing   ",
    "Déjà vu: Straße, маяк, 灯台守, منارة, 🌧️🌫️☀️ and a ZWJ family 👩‍👩‍👧",
    "<|im_start|>user\nHi<|im_end|>\n<|endoftext|><|pad|>",
    std::string("invalid \xFF\xFE bytes and a cut sequence \xE2\x82", 38),
    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
};

}  // namespace

// ---------------------------------------------------------------------------------------
// Against the reference

TEST(BpeTrainerGolden, MergesVocabAndIdsMatchHuggingFace) {
  const json g = golden();
  ASSERT_FALSE(g["cases"].empty());
  for (const json& c : g["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    BpeTrainerOptions options = options_with(c["vocab_size"].get<int64_t>(), c["min_frequency"].get<int64_t>());
    options.pattern = c["pattern"].get<std::string>();
    options.special_tokens = c["special_tokens"].get<std::vector<std::string>>();
    BpeTrainer trainer(options);
    add_corpus(trainer);
    EXPECT_EQ(trainer.stats().documents, g["documents"].get<int64_t>());
    const TrainedBpe trained = trainer.train();

    const auto expected_merges = c["merges"].get<std::vector<std::vector<std::string>>>();
    const auto merges = spelled_merges(trained);
    ASSERT_EQ(merges.size(), expected_merges.size());
    for (size_t i = 0; i < merges.size(); ++i) ASSERT_EQ(merges[i], expected_merges[i]) << "merge " << i;

    const auto expected_vocab = c["vocab"].get<std::vector<std::string>>();
    ASSERT_EQ(trained.tokens.size(), expected_vocab.size());
    for (size_t id = 0; id < expected_vocab.size(); ++id) {
      const std::string spelling = static_cast<int32_t>(id) < trained.special_count
                                       ? trained.tokens[id]
                                       : tessera::byte_level_encode(trained.tokens[id]);
      ASSERT_EQ(spelling, expected_vocab[id]) << "id " << id;
    }

    const Tokenizer tokenizer = load(trained);
    for (const json& e : c["encodings"]) {
      const std::string text = e["text"].get<std::string>();
      EXPECT_EQ(tokenizer.encode(text), e["ids"].get<std::vector<int32_t>>()) << text;
    }
  }
}

TEST(BpeTrainerGolden, StopsWhereTheReferenceStops) {
  const json g = golden();
  for (const json& c : g["cases"]) {
    if (c["name"] != "cl100k_min3_5000") continue;
    BpeTrainer trainer(options_with(c["vocab_size"].get<int64_t>(), c["min_frequency"].get<int64_t>()));
    add_corpus(trainer);
    const TrainedBpe trained = trainer.train();
    EXPECT_LT(trained.tokens.size(), 5000u);
    EXPECT_EQ(trained.tokens.size(), c["vocab"].size());
    EXPECT_NE(trained.stop_reason.find("3 times"), std::string::npos) << trained.stop_reason;
    return;
  }
  FAIL() << "case cl100k_min3_5000 missing from the golden";
}

// ---------------------------------------------------------------------------------------
// Hand-countable corpora

TEST(BpeTrainer, LearnsMergesInCountOrder) {
  // "aaab": (a,a) occurs twice per word, (a,b) once. After "aa": [aa, a, b] has (aa,a) and
  // (a,b) once each; the tie goes to the smaller pair, and byte ids are below merged ids, so
  // (a,b) comes first. Then (aa,ab), and nothing is left.
  BpeTrainer trainer(options_with(1000, 1));
  for (int i = 0; i < 5; ++i) trainer.add_text("aaab");
  const TrainedBpe trained = trainer.train();
  const std::vector<std::vector<std::string>> expected = {{"a", "a"}, {"a", "b"}, {"aa", "ab"}};
  EXPECT_EQ(spelled_merges(trained), expected);
  EXPECT_EQ(trained.tokens.size(), 256u + 4 + 3);
  EXPECT_EQ(trained.tokens.back(), "aaab");
  EXPECT_NE(trained.stop_reason.find("no pair"), std::string::npos) << trained.stop_reason;
  const Tokenizer tokenizer = load(trained);
  EXPECT_EQ(tokenizer.encode("aaab aaa"), (std::vector<int32_t>{trained.merges[2].merged, *tokenizer.token_id(" "),
                                                                 trained.merges[0].merged, *tokenizer.token_id("a")}));
}

TEST(BpeTrainer, CountsDecideOverTieBreaks) {
  // "xy" is seen 3 times and "ab" twice: (x,y) wins although (a,b) is the smaller pair.
  BpeTrainer trainer(options_with(1000, 1));
  for (int i = 0; i < 3; ++i) trainer.add_text("xy");
  for (int i = 0; i < 2; ++i) trainer.add_text("ab");
  const TrainedBpe trained = trainer.train();
  const std::vector<std::vector<std::string>> expected = {{"x", "y"}, {"a", "b"}};
  EXPECT_EQ(spelled_merges(trained), expected);
}

TEST(BpeTrainer, EqualCountsGoToTheSmallerPair) {
  // One of each: the pair of smaller ids wins, and byte ids follow the byte-level characters
  // ('a' < 'x'), whatever order the text came in.
  BpeTrainer trainer(options_with(1000, 1));
  trainer.add_text("xy");
  trainer.add_text("ab");
  const TrainedBpe trained = trainer.train();
  const std::vector<std::vector<std::string>> expected = {{"a", "b"}, {"x", "y"}};
  EXPECT_EQ(spelled_merges(trained), expected);
}

TEST(BpeTrainer, MinFrequencyStopsEarly) {
  BpeTrainer trainer(options_with(1000, 3));
  for (int i = 0; i < 3; ++i) trainer.add_text("xy");
  for (int i = 0; i < 2; ++i) trainer.add_text("ab");
  const TrainedBpe trained = trainer.train();
  ASSERT_EQ(trained.merges.size(), 1u);
  EXPECT_EQ(spelled(trained, trained.merges[0]), (std::vector<std::string>{"x", "y"}));
  EXPECT_NE(trained.stop_reason.find("3 times"), std::string::npos) << trained.stop_reason;
}

TEST(BpeTrainer, WordsArePreTokenizerPieces) {
  // cl100k keeps a leading space with a word ("Ġcat") and never merges across pieces, so
  // "cat cat" teaches "Ġcat" and "cat" but no pair spanning the space.
  BpeTrainer trainer(options_with(1000, 1));
  trainer.add_text("cat cat cat");
  const TrainedBpe trained = trainer.train();
  const Tokenizer tokenizer = load(trained);
  EXPECT_EQ(tokenizer.encode(" cat").size(), 1u);
  EXPECT_EQ(tokenizer.encode("cat").size(), 1u);
  EXPECT_EQ(tokenizer.encode("cat cat").size(), 2u);
  for (const auto& m : spelled_merges(trained)) {
    EXPECT_FALSE(m[0].back() == 't' && m[1].front() == '\xC4') << m[0] << " " << m[1];  // "t" + "Ġ..."
  }
}

TEST(BpeTrainer, VocabSizeIsExactWhenTheCorpusAllows) {
  for (const int64_t size : {260, 261, 300, 517}) {
    BpeTrainer trainer(options_with(size));
    add_corpus(trainer);
    const TrainedBpe trained = trainer.train();
    EXPECT_EQ(static_cast<int64_t>(trained.tokens.size()), size);
    EXPECT_EQ(static_cast<int64_t>(trained.merges.size()), size - 260);
    EXPECT_EQ(load(trained).vocab_size(), size);
  }
}

TEST(BpeTrainer, SameInputSameOutput) {
  const auto run = [] {
    BpeTrainer trainer(options_with(700, 1));
    add_corpus(trainer);
    trainer.add_text("and a little more text, twice: and a little more text");
    return tessera::trained_tokenizer_json(trainer.train());
  };
  const std::string first = run();
  EXPECT_EQ(first, run());
  // train() does not consume the corpus.
  BpeTrainer trainer(options_with(700, 1));
  add_corpus(trainer);
  EXPECT_EQ(tessera::trained_tokenizer_json(trainer.train()), tessera::trained_tokenizer_json(trainer.train()));
}

// ---------------------------------------------------------------------------------------
// Round trips and the written files

TEST(BpeTrainer, DecodeEncodeRoundTrips) {
  BpeTrainer trainer(options_with(800, 1));
  add_corpus(trainer);
  const Tokenizer tokenizer = load(trainer.train());
  for (const std::string& s : kRoundTrip) {
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(s)), s) << s;
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(s, /*allow_special=*/false)), s) << s;
  }
  // Every byte string, not only text.
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  EXPECT_EQ(tokenizer.decode(tokenizer.encode(all)), all);
}

TEST(BpeTrainer, InvalidUtf8IsKeptAsBytes) {
  BpeTrainer trainer(options_with(1000, 1));
  trainer.add_text(std::string("ab\xFF" "ab\xC3", 6));
  EXPECT_EQ(trainer.stats().invalid_bytes, 2);
  const TrainedBpe trained = trainer.train();
  // The valid runs on each side of a bad byte are words of their own: "ab" twice.
  ASSERT_EQ(trained.merges.size(), 1u);
  EXPECT_EQ(spelled(trained, trained.merges[0]), (std::vector<std::string>{"a", "b"}));
  const Tokenizer tokenizer = load(trained);
  EXPECT_EQ(trainer.count_tokens(tokenizer), 4);  // ab, \xFF, ab, \xC3
}

TEST(BpeTrainer, WrittenFolderLoadsAsAModelTokenizerWithChatMl) {
  BpeTrainer trainer(options_with(600));
  add_corpus(trainer);
  const TrainedBpe trained = trainer.train();
  TempDir dir;
  tessera::write_trained_tokenizer(trained, dir / "tok");
  const Tokenizer tokenizer = Tokenizer::load_for_model(dir / "tok");
  EXPECT_EQ(tokenizer.vocab_size(), 600);
  const auto eot = tokenizer.token_id("<|endoftext|>"), start = tokenizer.token_id("<|im_start|>"),
             end = tokenizer.token_id("<|im_end|>"), pad = tokenizer.token_id("<|pad|>");
  ASSERT_TRUE(eot && start && end && pad);
  EXPECT_EQ(*eot, 0);
  EXPECT_EQ(*pad, 3);
  for (int32_t id : {*eot, *start, *end, *pad}) EXPECT_TRUE(tokenizer.is_special(id));
  EXPECT_EQ(tokenizer.eos_id(), eot);
  EXPECT_EQ(tokenizer.bos_id(), eot);
  EXPECT_EQ(tokenizer.pad_id(), pad);

  const std::string prompt =
      tessera::apply_chatml({{"user", "When does the boat come?"}}, /*add_generation_prompt=*/true, std::nullopt);
  const auto ids = tokenizer.encode(prompt);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *start), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), *end), 1);
  EXPECT_EQ(ids.front(), *start);
  EXPECT_EQ(tokenizer.decode(ids), prompt);

  const json config = json::parse(tessera::testing::read_file(dir / "tok" / "tokenizer_config.json"));
  EXPECT_EQ(config["eos_token"], "<|endoftext|>");
  EXPECT_EQ(config["pad_token"], "<|pad|>");
  EXPECT_NE(config["chat_template"].get<std::string>().find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(config["added_tokens_decoder"]["2"]["content"], "<|im_end|>");
  const json tj = json::parse(tessera::testing::read_file(dir / "tok" / "tokenizer.json"));
  EXPECT_EQ(tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], std::string(tessera::kCl100kPattern));
  EXPECT_EQ(tj["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
  EXPECT_EQ(tj["decoder"]["type"], "ByteLevel");
}

TEST(BpeTrainer, CustomSpecialTokensShapeTheConfig) {
  BpeTrainerOptions options = options_with(300);
  options.special_tokens = {"<s>", "</s>"};
  BpeTrainer trainer(options);
  add_corpus(trainer);
  const TrainedBpe trained = trainer.train();
  const json config = json::parse(tessera::trained_tokenizer_config_json(trained));
  EXPECT_EQ(config["eos_token"], "<s>");  // no <|endoftext|>: the first special token
  EXPECT_FALSE(config.contains("pad_token"));
  EXPECT_FALSE(config.contains("chat_template"));  // no ChatML tokens, no ChatML template
  const Tokenizer tokenizer = load(trained);
  EXPECT_EQ(tokenizer.encode("</s>"), (std::vector<int32_t>{1}));
}

TEST(BpeTrainer, JsonlAndPlainFilesAreDocuments) {
  TempDir dir;
  write_file(dir / "a.jsonl", "{\"text\": \"one two\"}\n\n  \n{\"text\": \"three\", \"id\": 4}\n");
  write_file(dir / "b.txt", "\xEF\xBB\xBFone two\nthree");
  BpeTrainer from_files(options_with(400, 1));
  from_files.add_file(dir / "a.jsonl");
  from_files.add_file(dir / "b.txt");
  EXPECT_EQ(from_files.stats().files, 2);
  EXPECT_EQ(from_files.stats().documents, 3);
  BpeTrainer from_text(options_with(400, 1));
  for (const char* doc : {"one two", "three", "one two\nthree"}) from_text.add_text(doc);
  EXPECT_EQ(from_files.stats().words, from_text.stats().words);
  EXPECT_EQ(from_files.stats().text_bytes, from_text.stats().text_bytes);  // the byte-order mark is dropped
  EXPECT_EQ(tessera::trained_tokenizer_json(from_files.train()), tessera::trained_tokenizer_json(from_text.train()));
}

TEST(BpeTrainer, LargeFilesReadInBlocksGiveTheWholeFilesWords) {
  // Over 4 MiB, so the file is cut into blocks; lines start with letters, spaces, digits and
  // punctuation, and some paragraphs end with runs of blank lines and spaces.
  std::string text;
  uint64_t state = 7;
  const char* starts[] = {"word", " indented", "12345", "(paren", "\t\ttabs", "", "  ", "Ünïcödé"};
  while (text.size() < (size_t{9} << 20)) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    text += starts[(state >> 33) % 8];
    text += " some text " + std::to_string(state >> 40);
    text += (state >> 20) % 5 == 0 ? "\n\n  \n" : "\n";
  }
  TempDir dir;
  write_file(dir / "big.txt", text);
  BpeTrainer from_file(options_with(2000));
  from_file.add_file(dir / "big.txt");
  BpeTrainer whole(options_with(2000));
  whole.add_text(text);
  EXPECT_EQ(from_file.stats().words, whole.stats().words);
  EXPECT_EQ(from_file.stats().distinct_words, whole.stats().distinct_words);
  EXPECT_EQ(tessera::trained_tokenizer_json(from_file.train()), tessera::trained_tokenizer_json(whole.train()));
}

// ---------------------------------------------------------------------------------------
// Bad input

TEST(BpeTrainer, BadOptionsAreErrors) {
  const auto with = [](auto change) {
    return error_of([&] {
      BpeTrainerOptions options = options_with(1000);
      change(options);
      BpeTrainer trainer(options);
    });
  };
  EXPECT_NE(with([](auto& o) { o.vocab_size = 259; }).find("vocab size 259 is too small"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.vocab_size = 259; }).find("at least 260"), std::string::npos);
  EXPECT_EQ(with([](auto& o) { o.vocab_size = 260; }), "");
  EXPECT_NE(with([](auto& o) { o.vocab_size = int64_t{1} << 40; }).find("too large"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.min_frequency = -1; }).find("negative"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.special_tokens = {"<a>", ""}; }).find("special token 2 is empty"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.special_tokens = {"<a>", "<a>"}; }).find("given twice"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.special_tokens = {"\xFF"}; }).find("not valid UTF-8"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.special_tokens = {"a"}; }).find("byte 0x61"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.pattern = "(unclosed"; }), "");
}

TEST(BpeTrainer, BadCorporaAreErrors) {
  TempDir dir;
  EXPECT_NE(error_of([] { BpeTrainer(options_with(300)).train(); }).find("corpus is empty"), std::string::npos);
  EXPECT_NE(error_of([&] {
              BpeTrainer trainer(options_with(300));
              trainer.add_text("");
              trainer.train();
            }).find("corpus is empty"),
            std::string::npos);
  EXPECT_NE(error_of([&] { BpeTrainer(options_with(300)).add_file(dir / "missing.txt"); }).find("missing.txt: no such file"),
            std::string::npos);
  EXPECT_NE(error_of([&] { BpeTrainer(options_with(300)).add_file(dir.path()); }).find("not a file"), std::string::npos);
  const auto jsonl_error = [&](const std::string& content) {
    write_file(dir / "bad.jsonl", content);
    return error_of([&] { BpeTrainer(options_with(300)).add_file(dir / "bad.jsonl"); });
  };
  EXPECT_NE(jsonl_error("{\"text\": \"ok\"}\n{\"text\": \"cut").find("bad.jsonl:2: not valid JSON"), std::string::npos);
  EXPECT_NE(jsonl_error("{\"text\": \"ok\"}\n\n[1, 2]\n").find("bad.jsonl:3: expected a JSON object"), std::string::npos);
  EXPECT_NE(jsonl_error("{\"body\": \"ok\"}\n").find("bad.jsonl:1: the object has no \"text\" field"), std::string::npos);
  EXPECT_NE(jsonl_error("{\"text\": 5}\n").find("bad.jsonl:1: \"text\" must be a string"), std::string::npos);
}

TEST(BpeTrainerCli, TrainsAndReportsOrFailsWithOneLine) {
  TempDir dir;
  const std::string corpus = (fixture_dir() / "corpus").string();
  auto r = tessera::testing::run_tessera("tokenizer train --input '" + corpus + "' --vocab-size 400 -o '" +
                                         (dir / "tok").string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("400 tokens (4 special, 256 bytes, 140 merged)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bytes per token"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(dir / "tok" / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(dir / "tok" / "tokenizer_config.json"));

  const auto fails = [&](const std::string& args, const std::string& message) {
    auto bad = tessera::testing::run_tessera("tokenizer train " + args + " -o '" + (dir / "bad").string() + "'");
    EXPECT_EQ(bad.exit_code, 2) << args;
    EXPECT_NE(bad.err.find(message), std::string::npos) << args << ": " << bad.err;
    EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
    EXPECT_FALSE(fs::exists(dir / "bad" / "tokenizer.json")) << args;
  };
  fails("--input '" + (dir / "nope").string() + "' --vocab-size 400", "nope: no such file or folder");
  fails("--input '" + corpus + "' --vocab-size 100", "vocab size 100 is too small");
  write_file(dir / "empty.txt", "");
  fails("--input '" + (dir / "empty.txt").string() + "' --vocab-size 400", "corpus is empty");
  fails("--input '" + corpus + "' --vocab-size 400 --pattern '('", "pattern");
}
