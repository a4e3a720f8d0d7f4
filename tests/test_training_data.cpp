// Training data: reading and tokenizing .txt/.jsonl corpora, the eval split, packing into
// windows, the seeded shuffle and the read position a checkpoint saves.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <optional>
#include <set>
#include <string>

#include "core/error.h"
#include "core/paths.h"
#include "test_util.h"
#include "tokenizers/bpe_tokenizer.h"
#include "training/data.h"
#include "training/train_config.h"

namespace fs = std::filesystem;
using namespace tessera;
using namespace tessera::training;
using tessera::testing::error_of;
using tessera::testing::TempDir;
using tessera::testing::write_file;

namespace {

// The tokenizer of the tiny DBRX fixture: no tokenizer files, so the installed cl100k_base with
// DBRX's special tokens (EOS <|endoftext|> = 100257). Loaded once.
const Tokenizer* fixture_tokenizer() {
  static const std::optional<Tokenizer> tokenizer = []() -> std::optional<Tokenizer> {
    if (!fs::exists(models_dir() / "tokenizers" / "cl100k_base.tiktoken")) return std::nullopt;
    return Tokenizer::load_for_model(tessera::testing::fixtures() / "dbrx" / "e4_top2_d64_clip_f32");
  }();
  return tokenizer ? &*tokenizer : nullptr;
}

#define REQUIRE_TOKENIZER()                                                                             \
  const Tokenizer* tok = fixture_tokenizer();                                                          \
  if (!tok) GTEST_SKIP() << "cl100k_base.tiktoken is not installed (scripts/setup installs it)"; \
  [[maybe_unused]] const int32_t eos = *tok->eos_id()

std::vector<int32_t> iota_tokens(int32_t n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), 0);
  return t;
}

// Window index of a batch row of an iota stream: its first input token / seq_len.
std::vector<int64_t> rows_of(const std::vector<int32_t>& inputs, int64_t seq_len) {
  std::vector<int64_t> rows;
  for (size_t r = 0; r * seq_len < inputs.size(); ++r) rows.push_back(inputs[r * seq_len] / seq_len);
  return rows;
}

// The window order of `epochs` epochs, one row at a time.
std::vector<int64_t> draw(TrainLoader& loader, int64_t count) {
  std::vector<int32_t> in, tg;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < count; ++i) {
    loader.next(1, in, tg);
    out.push_back(in[0] / loader.seq_len());
  }
  return out;
}

Corpus synthetic_corpus(int documents, int tokens_each) {
  Corpus c;
  int32_t next = 0;
  for (int d = 0; d < documents; ++d) {
    for (int t = 0; t < tokens_each; ++t) c.tokens.push_back(next++);
    c.document_ends.push_back(static_cast<int64_t>(c.tokens.size()));
  }
  return c;
}

// The documents of a split part: runs of consecutive ids of `tokens_each` tokens, by first id.
std::vector<int32_t> document_starts(const std::vector<int32_t>& tokens, int tokens_each) {
  std::vector<int32_t> starts;
  for (size_t i = 0; i < tokens.size(); i += static_cast<size_t>(tokens_each)) starts.push_back(tokens[i] / tokens_each);
  return starts;
}

}  // namespace

// ---------------------------------------------------------------- packing and the loader

TEST(TrainDataPacking, WindowsOverlapByOneAndTargetsAreShiftedInputs) {
  const int64_t L = 8;
  const PackedTokens packed(iota_tokens(83), L);  // (83 - 1) / 8 = 10 windows, 2 tokens unused
  EXPECT_EQ(packed.windows(), 10);
  EXPECT_EQ(packed.seq_len(), L);
  EXPECT_EQ(packed.token_count(), 83);
  std::vector<int32_t> all_inputs, in(L), tg(L);
  for (int64_t w = 0; w < packed.windows(); ++w) {
    packed.copy_window(w, in.data(), tg.data());
    for (int64_t j = 0; j < L; ++j) EXPECT_EQ(tg[j], in[j] + 1);
    all_inputs.insert(all_inputs.end(), in.begin(), in.end());
  }
  // The inputs of all windows, in order, are the stream itself.
  const auto stream = iota_tokens(80);
  EXPECT_EQ(all_inputs, stream);
  EXPECT_NE(error_of([&] { packed.copy_window(10, in.data(), tg.data()); }), "");

  EXPECT_EQ(PackedTokens(iota_tokens(9), 8).windows(), 1);   // exactly seq_len + 1 tokens
  EXPECT_EQ(PackedTokens(iota_tokens(8), 8).windows(), 0);   // one short
  EXPECT_EQ(PackedTokens(iota_tokens(17), 8).windows(), 2);
  EXPECT_NE(PackedTokens(iota_tokens(17), 8).fingerprint(), PackedTokens(iota_tokens(18), 8).fingerprint());
}

TEST(TrainDataLoader, EveryWindowOncePerEpochInANewOrderEachEpoch) {
  const int64_t L = 4, W = 37;
  auto packed = std::make_shared<const PackedTokens>(iota_tokens(static_cast<int32_t>(W * L + 1)), L);
  ASSERT_EQ(packed->windows(), W);
  TrainLoader loader(packed, 17);
  std::vector<std::vector<int64_t>> epochs;
  std::vector<int32_t> in, tg;
  std::vector<int64_t> seen;
  // Batches of 5 rows do not divide 37 windows: epochs roll over inside a batch.
  while (static_cast<int64_t>(seen.size()) < 3 * W) {
    loader.next(5, in, tg);
    ASSERT_EQ(in.size(), 5u * L);
    ASSERT_EQ(tg.size(), 5u * L);
    for (size_t i = 0; i < in.size(); ++i) EXPECT_EQ(tg[i], in[i] + 1);
    for (int64_t w : rows_of(in, L)) seen.push_back(w);
  }
  for (int e = 0; e < 3; ++e) {
    std::vector<int64_t> epoch(seen.begin() + e * W, seen.begin() + (e + 1) * W);
    std::vector<int64_t> sorted = epoch;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(static_cast<size_t>(W));
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(sorted, all) << "epoch " << e << " is not a permutation of the windows";
    epochs.push_back(epoch);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  std::vector<int64_t> identity(static_cast<size_t>(W));
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(epochs[0], identity);
  // 3 * 37 = 111 windows in batches of 5: 23 batches = 115 windows, 4 into the fourth epoch.
  EXPECT_EQ(loader.epoch(), 3);
  EXPECT_EQ(loader.position(), 4);
  EXPECT_EQ(loader.windows_served(), 115);
}

TEST(TrainDataLoader, TheSameSeedGivesTheSameOrderAndAnotherSeedAnother) {
  auto packed = std::make_shared<const PackedTokens>(iota_tokens(8 * 50 + 1), 8);
  TrainLoader a(packed, 17), b(packed, 17), c(packed, 18);
  const auto order_a = draw(a, 120), order_b = draw(b, 120), order_c = draw(c, 120);
  EXPECT_EQ(order_a, order_b);
  EXPECT_NE(order_a, order_c);
}

TEST(TrainDataLoader, TheOrderIsPinnedAcrossMachines) {
  // The first epoch for seed 17 over 10 windows. It depends only on xoshiro256** and the
  // Fisher-Yates written in data.cpp, so it must never change (resumed runs rely on it).
  auto packed = std::make_shared<const PackedTokens>(iota_tokens(10 * 2 + 1), 2);
  TrainLoader loader(packed, 17);
  const std::vector<int64_t> expected = {2, 7, 4, 6, 3, 8, 9, 1, 5, 0};
  EXPECT_EQ(draw(loader, 10), expected);
}

TEST(TrainDataLoader, RestoredLoaderContinuesExactlyLikeAnUninterruptedOne) {
  auto packed = std::make_shared<const PackedTokens>(iota_tokens(16 * 23 + 5), 16);
  TrainLoader uninterrupted(packed, 5), first(packed, 5);
  std::vector<int32_t> in_a, tg_a, in_b, tg_b;
  // 7 batches of 3 = 21 windows (position 21 of 23), then a save.
  for (int i = 0; i < 7; ++i) {
    uninterrupted.next(3, in_a, tg_a);
    first.next(3, in_b, tg_b);
  }
  // Through text, as a checkpoint stores it.
  const std::string saved = first.state().dump();
  TrainLoader resumed(packed, 5);
  resumed.restore(nlohmann::json::parse(saved));
  EXPECT_EQ(resumed.epoch(), 0);
  EXPECT_EQ(resumed.position(), 21);
  for (int i = 0; i < 40; ++i) {  // across several epoch boundaries
    uninterrupted.next(3, in_a, tg_a);
    resumed.next(3, in_b, tg_b);
    ASSERT_EQ(in_a, in_b) << "batch " << i;
    ASSERT_EQ(tg_a, tg_b) << "batch " << i;
  }
  EXPECT_EQ(resumed.state(), uninterrupted.state());

  // A save in a later epoch restores too.
  TrainLoader again(packed, 5);
  again.restore(uninterrupted.state());
  EXPECT_EQ(draw(again, 30), draw(uninterrupted, 30));
}

TEST(TrainDataLoader, RestoreRefusesAStateOfOtherDataOrSettings) {
  auto packed = std::make_shared<const PackedTokens>(iota_tokens(8 * 20 + 1), 8);
  TrainLoader loader(packed, 17);
  std::vector<int32_t> in, tg;
  loader.next(4, in, tg);
  const nlohmann::json state = loader.state();
  EXPECT_EQ(state["epoch"], 0);
  EXPECT_EQ(state["position"], 4);
  EXPECT_EQ(state["windows"], 20);
  EXPECT_EQ(state["seq_len"], 8);
  EXPECT_EQ(state["tokens"], 161);

  auto changed_tokens = iota_tokens(8 * 20 + 1);
  changed_tokens[100] = 7;  // same length, different text
  TrainLoader other_data(std::make_shared<const PackedTokens>(changed_tokens, 8), 17);
  EXPECT_NE(error_of([&] { other_data.restore(state); }).find("the training data changed since the checkpoint"), std::string::npos);
  TrainLoader longer(std::make_shared<const PackedTokens>(iota_tokens(8 * 21 + 1), 8), 17);
  EXPECT_NE(error_of([&] { longer.restore(state); }).find("the training data changed"), std::string::npos);
  TrainLoader other_len(std::make_shared<const PackedTokens>(iota_tokens(8 * 20 + 1), 4), 17);
  EXPECT_NE(error_of([&] { other_len.restore(state); }).find("made with seq_len 8, but the run now uses 4"), std::string::npos);
  TrainLoader other_seed(packed, 18);
  EXPECT_NE(error_of([&] { other_seed.restore(state); }).find("made with seed 17, but the run now uses 18"), std::string::npos);

  TrainLoader fresh(packed, 17);
  auto broken = state;
  broken.erase("position");
  EXPECT_NE(error_of([&] { fresh.restore(broken); }).find("\"position\" is missing or not an integer"), std::string::npos);
  broken = state;
  broken["position"] = 20;
  EXPECT_NE(error_of([&] { fresh.restore(broken); }).find("out of range"), std::string::npos);
  broken = state;
  broken["version"] = 99;
  EXPECT_NE(error_of([&] { fresh.restore(broken); }).find("version 99"), std::string::npos);
  EXPECT_NE(error_of([&] { fresh.restore(nlohmann::json::array()); }).find("expected a JSON object"), std::string::npos);
  // A failed restore leaves the loader where it was.
  EXPECT_EQ(fresh.position(), 0);
  EXPECT_EQ(fresh.epoch(), 0);

  EXPECT_NE(error_of([&] { loader.next(0, in, tg); }), "");
  EXPECT_NE(error_of([&] { TrainLoader(std::make_shared<const PackedTokens>(iota_tokens(4), 8), 1); }).find("no windows"),
            std::string::npos);
}

TEST(TrainDataEval, WindowsInOrderShortLastBatchAndShortStreams) {
  const EvalWindows eval(iota_tokens(8 * 7 + 3), 8);  // 7 windows
  EXPECT_EQ(eval.windows(), 7);
  EXPECT_EQ(eval.seq_len(), 8);
  EXPECT_EQ(eval.batches(3), 3);
  std::vector<int32_t> in, tg;
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < eval.batches(3); ++b) {
    const int64_t filled = eval.batch(b, 3, in, tg);
    EXPECT_EQ(filled, b < 2 ? 3 : 1);
    EXPECT_EQ(in.size(), static_cast<size_t>(filled * 8));
    for (size_t i = 0; i < in.size(); ++i) EXPECT_EQ(tg[i], in[i] + 1);
    for (int64_t w : rows_of(in, 8)) rows.push_back(w);
  }
  EXPECT_EQ(rows, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6}));  // no shuffle
  EXPECT_NE(error_of([&] { eval.batch(3, 3, in, tg); }), "");

  // Shorter than one window: one shorter window.
  const EvalWindows short_eval(iota_tokens(5), 8);
  EXPECT_EQ(short_eval.windows(), 1);
  EXPECT_EQ(short_eval.seq_len(), 4);
  EXPECT_EQ(short_eval.batch(0, 2, in, tg), 1);
  EXPECT_EQ(in, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(tg, (std::vector<int32_t>{1, 2, 3, 4}));
  // Under two tokens: no eval at all.
  EXPECT_EQ(EvalWindows(iota_tokens(1), 8).windows(), 0);
  EXPECT_EQ(EvalWindows().windows(), 0);
  EXPECT_EQ(EvalWindows().batches(4), 0);
}

// ---------------------------------------------------------------- the eval split

TEST(TrainDataSplit, HoldsOutTheFractionOfDocumentsChosenBySeed) {
  const Corpus corpus = synthetic_corpus(40, 5);
  const Split split = split_corpus(corpus, 0.1, 17);
  EXPECT_EQ(split.eval_documents, 4);
  EXPECT_EQ(split.train_documents, 36);
  EXPECT_EQ(split.eval.size(), 4u * 5);
  EXPECT_EQ(split.train.size(), 36u * 5);
  // Whole documents, each part in corpus order, together exactly the corpus.
  const auto train_docs = document_starts(split.train, 5), eval_docs = document_starts(split.eval, 5);
  EXPECT_TRUE(std::is_sorted(train_docs.begin(), train_docs.end()));
  EXPECT_TRUE(std::is_sorted(eval_docs.begin(), eval_docs.end()));
  std::vector<int32_t> both = train_docs;
  both.insert(both.end(), eval_docs.begin(), eval_docs.end());
  std::sort(both.begin(), both.end());
  std::vector<int32_t> all(40);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(both, all);
  for (size_t i = 0; i < split.eval.size(); ++i) {
    if (i % 5) {
      EXPECT_EQ(split.eval[i], split.eval[i - 1] + 1);
    }
  }
  // Not simply the last documents, the same for the same seed, different for others.
  EXPECT_NE(eval_docs, (std::vector<int32_t>{36, 37, 38, 39}));
  EXPECT_EQ(split_corpus(corpus, 0.1, 17).eval, split.eval);
  bool differs = false;
  for (uint64_t seed = 1; seed < 6; ++seed) differs |= split_corpus(corpus, 0.1, seed).eval != split.eval;
  EXPECT_TRUE(differs);
}

TEST(TrainDataSplit, SizesAtTheEdges) {
  EXPECT_EQ(split_corpus(synthetic_corpus(20, 3), 0.01, 1).eval_documents, 1);   // at least one
  EXPECT_EQ(split_corpus(synthetic_corpus(2, 3), 0.9, 1).eval_documents, 1);     // never all
  EXPECT_EQ(split_corpus(synthetic_corpus(2, 3), 0.9, 1).train_documents, 1);
  EXPECT_EQ(split_corpus(synthetic_corpus(10, 3), 0.25, 1).eval_documents, 3);   // round(2.5) = 3
  const Split none = split_corpus(synthetic_corpus(10, 3), 0.0, 1);
  EXPECT_EQ(none.eval_documents, 0);
  EXPECT_TRUE(none.eval.empty());
  EXPECT_EQ(none.train.size(), 30u);

  // One document: its last 10% of tokens.
  const Split one = split_corpus(synthetic_corpus(1, 200), 0.1, 1);
  EXPECT_EQ(one.eval.size(), 20u);
  EXPECT_EQ(one.train.size(), 180u);
  EXPECT_EQ(one.eval.front(), 180);
  EXPECT_EQ(one.train.back(), 179);
  EXPECT_EQ(split_corpus(synthetic_corpus(1, 200), 0.001, 1).eval.size(), 1u);  // at least one token
  EXPECT_NE(error_of([&] { split_corpus(synthetic_corpus(3, 3), 1.0, 1); }), "");
}

// ---------------------------------------------------------------- files and tokenizing

TEST(TrainDataFiles, FoldersAreSearchedRecursivelyInPathOrder) {
  TempDir dir;
  fs::create_directories(dir / "c" / "sub");
  fs::create_directories(dir / "c" / ".hidden");
  write_file(dir / "c" / "b.txt", "b");
  write_file(dir / "c" / "a.jsonl", "{\"text\": \"a\"}\n");
  write_file(dir / "c" / "sub" / "0.TXT", "0");
  write_file(dir / "c" / "notes.md", "not data");
  write_file(dir / "c" / ".hidden" / "x.txt", "hidden");
  write_file(dir / "c" / ".y.txt", "hidden too");
  write_file(dir / "single.txt", "single");
  const auto files = list_data_files({dir / "single.txt", dir / "c", dir / "c" / "b.txt"}, "train_data");
  EXPECT_EQ(files, (std::vector<fs::path>{dir / "single.txt", dir / "c" / "a.jsonl", dir / "c" / "b.txt",
                                          dir / "c" / "sub" / "0.TXT"}));

  EXPECT_EQ(error_of([&] { list_data_files({dir / "missing"}, "train_data"); }),
            "train_data: " + (dir / "missing").string() + ": no such file or folder");
  EXPECT_EQ(error_of([&] { list_data_files({dir / "c" / "notes.md"}, "eval_data"); }),
            "eval_data: " + (dir / "c" / "notes.md").string() + ": not a .txt or .jsonl file");
  fs::create_directories(dir / "empty");
  EXPECT_EQ(error_of([&] { list_data_files({dir / "empty"}, "train_data"); }),
            "train_data: no .txt or .jsonl files in " + (dir / "empty").string());
}

TEST(TrainDataCorpus, DocumentsAreTokenizedWithEosAfterEach) {
  REQUIRE_TOKENIZER();
  EXPECT_EQ(eos, 100257);
  TempDir dir;
  fs::create_directories(dir / "corpus");
  write_file(dir / "corpus" / "a.txt", "\xEF\xBB\xBFThe first document.\nIt has two lines.\n");
  write_file(dir / "corpus" / "b.jsonl",
             "{\"text\": \"Second <|endoftext|> doc\"}\r\n\n   \n{\"text\": \"\", \"meta\": 1}\n{\"text\": \"Third \\u00e9\", \"id\": 3}");
  write_file(dir / "corpus" / "c.txt", "");  // empty: no document
  const Corpus corpus = read_corpus({dir / "corpus"}, *tok);

  std::vector<int32_t> expected;
  std::vector<int64_t> ends;
  for (const std::string doc : {"The first document.\nIt has two lines.\n", "Second <|endoftext|> doc", "Third \xC3\xA9"}) {
    const auto ids = tok->encode(doc, /*allow_special=*/false);
    expected.insert(expected.end(), ids.begin(), ids.end());
    expected.push_back(eos);
    ends.push_back(static_cast<int64_t>(expected.size()));
  }
  EXPECT_EQ(corpus.tokens, expected);
  EXPECT_EQ(corpus.document_ends, ends);
  EXPECT_EQ(corpus.documents(), 3);
  EXPECT_EQ(corpus.files.size(), 3u);
  // Special-token text inside a document is ordinary text: EOS only ends documents.
  EXPECT_EQ(std::count(corpus.tokens.begin(), corpus.tokens.end(), eos), 3);
  EXPECT_EQ(tok->decode(std::vector<int32_t>(corpus.tokens.begin(), corpus.tokens.begin() + ends[0] - 1)),
            "The first document.\nIt has two lines.\n");
}

TEST(TrainDataCorpus, ManyDocumentsKeepTheirOrderWhenTokenizedInParallel) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  std::string lines;
  std::vector<int32_t> expected;
  for (int i = 0; i < 300; ++i) {
    const std::string text = "document number " + std::to_string(i) + std::string(static_cast<size_t>(i % 7), '!');
    lines += "{\"text\": \"" + text + "\"}\n";
    const auto ids = tok->encode(text, false);
    expected.insert(expected.end(), ids.begin(), ids.end());
    expected.push_back(eos);
  }
  write_file(dir / "many.jsonl", lines);
  CorpusOptions options;
  options.progress = true;  // stderr is not a terminal here: must not get in the way
  const Corpus corpus = read_corpus({dir / "many.jsonl"}, *tok, options);
  EXPECT_EQ(corpus.tokens, expected);
  EXPECT_EQ(corpus.documents(), 300);
}

TEST(TrainDataCorpus, BadFilesGiveOneLineNamingTheFileAndLine) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  auto error = [&](const std::string& name, const std::string& content) {
    const fs::path file = dir / name;
    write_file(file, content);
    return error_of([&] { read_corpus({file}, *tok); });
  };
  const std::string bad_txt = error("a.txt", "line one\nline two\nbad \xff here\n");
  EXPECT_EQ(bad_txt, (dir / "a.txt").string() + ":3: not valid UTF-8 (byte 0xff at offset 22)");
  EXPECT_EQ(error("cut.txt", "ok\n\xE2\x82"), (dir / "cut.txt").string() + ":2: not valid UTF-8 (byte 0xe2 at offset 3)");

  const std::string jsonl_utf8 = error("u.jsonl", "{\"text\": \"fine\"}\n{\"text\": \"\xc3\x28\"}\n");
  EXPECT_EQ(jsonl_utf8, (dir / "u.jsonl").string() + ":2: not valid UTF-8 (byte 0xc3 at offset 27)");

  const std::string malformed = error("data.jsonl", "{\"text\": \"1\"}\n{\"text\": \"2\"}\n\n{\"text\": \"4\"}\n{\"text\": \"5\",}\n");
  EXPECT_EQ(malformed.rfind((dir / "data.jsonl").string() + ":5: not valid JSON: ", 0), 0u) << malformed;
  EXPECT_EQ(malformed.find('\n'), std::string::npos);
  EXPECT_EQ(malformed.find("json.exception"), std::string::npos) << malformed;

  EXPECT_EQ(error("p.jsonl", "{\"prompt\": \"q\", \"response\": \"a\"}\n"),
            (dir / "p.jsonl").string() + ":1: the object has no \"text\" field (each line needs {\"text\": \"...\"})");
  EXPECT_EQ(error("n.jsonl", "{\"text\": 5}\n"), (dir / "n.jsonl").string() + ":1: \"text\" must be a string, got number");
  EXPECT_EQ(error("l.jsonl", "\n[\"text\"]\n"),
            (dir / "l.jsonl").string() + ":2: expected a JSON object with a string field \"text\", got array");

  // Empty corpus: files with no text at all.
  fs::create_directories(dir / "blank");
  write_file(dir / "blank" / "x.txt", "");
  write_file(dir / "blank" / "y.jsonl", "\n\n{\"text\": \"\"}\n");
  const std::string empty = error_of([&] { read_corpus({dir / "blank"}, *tok); });
  EXPECT_EQ(empty.rfind("train_data: empty corpus: no text in ", 0), 0u) << empty;
  EXPECT_NE(empty.find("(2 files)"), std::string::npos) << empty;

  // A model whose vocabulary does not hold the tokenizer's ids.
  write_file(dir / "ok.txt", "hello there");
  CorpusOptions small_vocab;
  small_vocab.vocab_size = 256;
  const std::string vocab = error_of([&] { read_corpus({dir / "ok.txt"}, *tok, small_vocab); });
  EXPECT_NE(vocab.find("outside the model's vocab_size 256"), std::string::npos) << vocab;
  EXPECT_EQ(vocab.rfind((dir / "ok.txt").string(), 0), 0u) << vocab;
}

// ---------------------------------------------------------------- the whole pipeline

TEST(TrainDataLoad, HeldOutSplitPackingAndCounts) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  fs::create_directories(dir / "docs");
  for (int i = 0; i < 20; ++i)
    write_file(dir / "docs" / (std::to_string(100 + i) + ".txt"),
               "Document " + std::to_string(i) + " talks about the number " + std::to_string(i * 7) + " at length.");
  DataOptions options;
  options.train_data = {dir / "docs"};
  options.seq_len = 16;
  options.eval_fraction = 0.1;
  options.seed = 3;
  const TrainingData data = load_training_data(options, *tok);
  const DataStats& s = data.stats;
  EXPECT_EQ(s.files, 20);
  EXPECT_EQ(s.documents, 20);
  EXPECT_EQ(s.eval_documents, 2);
  EXPECT_EQ(s.train_documents, 18);
  EXPECT_TRUE(s.eval_held_out);
  const Corpus corpus = read_corpus({dir / "docs"}, *tok);
  EXPECT_EQ(s.train_tokens + s.eval_tokens, static_cast<int64_t>(corpus.tokens.size()));
  EXPECT_EQ(s.train_tokens, data.train->token_count());
  EXPECT_EQ(s.windows_per_epoch, (s.train_tokens - 1) / 16);
  EXPECT_EQ(s.eval_windows, data.eval.windows());
  EXPECT_EQ(s.seq_len, 16);
  const Split split = split_corpus(corpus, 0.1, 3);
  EXPECT_EQ(data.train->tokens(), split.train);

  const std::string summary = s.summary();
  EXPECT_NE(summary.find("data: 20 files, 20 documents (18 train, 2 held out for eval); "), std::string::npos) << summary;
  EXPECT_NE(summary.find(std::to_string(s.windows_per_epoch) + " windows of 16 tokens per epoch"), std::string::npos) << summary;

  TrainLoader loader = data.loader();
  std::vector<int32_t> in, tg;
  loader.next(4, in, tg);
  EXPECT_EQ(in.size(), 64u);
}

TEST(TrainDataLoad, EvalFilesAndErrors) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  write_file(dir / "train.txt", "one two three four five six seven eight nine ten eleven twelve");
  write_file(dir / "eval.jsonl", "{\"text\": \"held out text\"}\n{\"text\": \"more held out text\"}\n");
  DataOptions options;
  options.train_data = {dir / "train.txt"};
  options.eval_data = {dir / "eval.jsonl"};
  options.seq_len = 4;
  const TrainingData data = load_training_data(options, *tok);
  EXPECT_FALSE(data.stats.eval_held_out);
  EXPECT_EQ(data.stats.eval_files, 1);
  EXPECT_EQ(data.stats.eval_documents, 2);
  EXPECT_EQ(data.stats.train_documents, 1);
  const Corpus train = read_corpus({dir / "train.txt"}, *tok);
  EXPECT_EQ(data.train->tokens(), train.tokens);  // nothing held out of the train files
  const Corpus eval = read_corpus({dir / "eval.jsonl"}, *tok);
  EXPECT_EQ(data.stats.eval_tokens, static_cast<int64_t>(eval.tokens.size()));
  EXPECT_NE(data.stats.summary().find("data: 1 file, 1 document; eval_data: 1 file, 2 documents; "), std::string::npos) << data.stats.summary();

  // Too short for one window: says how many tokens there are and what seq_len needs.
  options.seq_len = 512;
  const std::string short_error = error_of([&] { load_training_data(options, *tok); });
  EXPECT_EQ(short_error, fmt::format("train_data: the train split has {} tokens, but seq_len 512 needs at least 513 (add text "
                                     "or lower training.seq_len)",
                                     train.tokens.size()));
  // Errors in the eval files name eval_data.
  options.seq_len = 4;
  options.eval_data = {dir / "nowhere"};
  EXPECT_EQ(error_of([&] { load_training_data(options, *tok); }),
            "eval_data: " + (dir / "nowhere").string() + ": no such file or folder");

  // A single train document with no eval files: its tail is held out.
  DataOptions single;
  single.train_data = {dir / "train.txt"};
  single.seq_len = 4;
  single.eval_fraction = 0.25;
  const TrainingData tail = load_training_data(single, *tok);
  const auto n = static_cast<int64_t>(train.tokens.size());
  EXPECT_EQ(tail.stats.eval_tokens, static_cast<int64_t>(std::llround(0.25 * static_cast<double>(n))));
  EXPECT_EQ(tail.stats.train_tokens + tail.stats.eval_tokens, n);
  EXPECT_GE(tail.eval.windows(), 1);
  EXPECT_NE(tail.stats.summary().find(fmt::format("1 document, its last {} tokens held out for eval", tail.stats.eval_tokens)),
            std::string::npos)
      << tail.stats.summary();
  // When the held-out part is what makes the train split too short, the message says so.
  single.seq_len = n - 1;
  const std::string held = error_of([&] { load_training_data(single, *tok); });
  EXPECT_NE(held.find(fmt::format("more are held out for eval), but seq_len {} needs at least {}", n - 1, n)),
            std::string::npos)
      << held;
  single.eval_fraction = 0;  // nothing held out: exactly one window
  EXPECT_EQ(load_training_data(single, *tok).stats.windows_per_epoch, 1);
}

TEST(TrainDataLoad, OptionsComeFromTheTrainConfig) {
  TempDir dir;
  write_file(dir / "c.txt", "x");
  const TrainConfig config = parse_train_config(
      "model: dbrx-tiny\ntrain_data: c.txt\nsave_folder: out\ntraining:\n  seq_len: 64\n  seed: 9\n  eval_fraction: 0.2\n",
      dir / "config.yaml");
  const DataOptions o = data_options(config, 100352);
  EXPECT_EQ(o.train_data, std::vector<fs::path>{(dir / "c.txt").lexically_normal()});
  EXPECT_TRUE(o.eval_data.empty());
  EXPECT_EQ(o.seq_len, 64);
  EXPECT_EQ(o.seed, 9u);
  EXPECT_DOUBLE_EQ(o.eval_fraction, 0.2);
  EXPECT_EQ(o.vocab_size, 100352);
}
