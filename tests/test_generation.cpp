// The generation loop: sampling controls, stop tokens and strings, streaming, cancellation and
// cache reuse across turns. Uses a golden fixture model with the cl100k tokenizer (ids < 256 are
// byte tokens there, so any id the model emits decodes).
#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "models/llm/dbrx_model.h"
#include "serving/generate.h"
#include "test_util.h"

using namespace tessera;

namespace {

struct Fixture {
  std::unique_ptr<LanguageModel> model = DbrxModel::load(tessera::testing::fixtures() / "dbrx" / "e4_top2_d64_clip_f32");
  Tokenizer tokenizer = Tokenizer::load_for_model(tessera::testing::fixtures() / "dbrx" / "e4_top2_d64_clip_f32");
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

GenerationResult run(const std::vector<int32_t>& prompt, SamplingParams params, std::vector<int32_t> stop_ids = {},
                     const TextCallback& cb = nullptr, Session* session = nullptr) {
  Session local;
  GenerationRequest req{prompt, params, stop_ids};
  return generate(*fixture().model, fixture().tokenizer, session ? *session : local, req, cb);
}

SamplingParams greedy(int64_t max_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  return p;
}

const std::vector<int32_t> kPrompt = {5, 17, 99, 3};

}  // namespace

TEST(Generation, GreedyRunsToLengthAndStreamsTheSameText) {
  std::string streamed;
  auto r = run(kPrompt, greedy(24), {}, [&](std::string_view s) {
    streamed += s;
    return true;
  });
  EXPECT_EQ(r.tokens.size(), 24u);
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(streamed, r.text);
  EXPECT_EQ(r.text, fixture().tokenizer.decode(r.tokens));
  EXPECT_EQ(r.stats.prompt_tokens, 4);
}

TEST(Generation, SeedMakesSamplingRepeatable) {
  SamplingParams p;
  p.temperature = 1.5f;
  p.max_tokens = 20;
  p.seed = 1234;
  auto a = run(kPrompt, p), b = run(kPrompt, p);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.seed, 1234u);
  p.seed = 99;
  EXPECT_NE(run(kPrompt, p).tokens, a.tokens);
  // top_k = 1 and a tiny top_p both reduce sampling to the argmax.
  p.top_k = 1;
  EXPECT_EQ(run(kPrompt, p).tokens, run(kPrompt, greedy(20)).tokens);
  p.top_k = 0;
  p.top_p = 1e-6f;
  EXPECT_EQ(run(kPrompt, p).tokens, run(kPrompt, greedy(20)).tokens);
}

TEST(Generation, StopTokenEndsWithoutEmittingIt) {
  auto full = run(kPrompt, greedy(16));
  size_t cut = 6;
  while (cut > 0 && std::find(full.tokens.begin(), full.tokens.begin() + cut, full.tokens[cut]) != full.tokens.begin() + cut)
    --cut;  // the first occurrence of the stop id
  auto stopped = run(kPrompt, greedy(16), {full.tokens[cut]});
  EXPECT_EQ(stopped.finish_reason, "stop");
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + cut));
  SamplingParams p = greedy(16);
  p.ignore_eos = true;
  EXPECT_EQ(run(kPrompt, p, {full.tokens[cut]}).tokens, full.tokens);
}

TEST(Generation, StopStringCutsTheTextAndNeverStreamsItsStart) {
  auto full = run(kPrompt, greedy(32));
  ASSERT_GE(full.text.size(), 12u);
  const std::string stop = full.text.substr(8, 3);
  const size_t at = full.text.find(stop);
  SamplingParams p = greedy(32);
  p.stop = {stop, "never-appears-here"};
  std::string streamed;
  auto r = run(kPrompt, p, {}, [&](std::string_view s) {
    streamed += s;
    return true;
  });
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.text, full.text.substr(0, at));
  EXPECT_EQ(streamed, r.text);
}

TEST(Generation, CallbackCancels) {
  int calls = 0;
  auto r = run(kPrompt, greedy(30), {}, [&](std::string_view) { return ++calls < 3; });
  EXPECT_EQ(r.finish_reason, "cancelled");
  EXPECT_LT(r.tokens.size(), 30u);
}

TEST(Generation, SessionReusesTheCachedPrefix) {
  Session session;
  auto first = run(kPrompt, greedy(8), {}, nullptr, &session);
  std::vector<int32_t> next = kPrompt;
  next.insert(next.end(), first.tokens.begin(), first.tokens.end());
  next.push_back(42);
  auto cached = run(next, greedy(8), {}, nullptr, &session);
  EXPECT_LE(cached.stats.prefilled_tokens, 2);  // only what the cache did not hold
  EXPECT_EQ(cached.tokens, run(next, greedy(8)).tokens);
  // A prompt that diverges early rewinds the cache instead of reusing stale positions.
  auto other = run({5, 18}, greedy(8), {}, nullptr, &session);
  EXPECT_EQ(other.tokens, run({5, 18}, greedy(8)).tokens);
}

TEST(Generation, PenaltiesChangeTheChoice) {
  SamplingParams p = greedy(24);
  p.frequency_penalty = 2.0f;
  p.presence_penalty = 2.0f;
  auto penalised = run(kPrompt, p);
  auto plain = run(kPrompt, greedy(24));
  // With strong penalties, repeats become rarer than in the plain greedy run.
  auto repeats = [](const std::vector<int32_t>& t) {
    std::set<int32_t> s(t.begin(), t.end());
    return t.size() - s.size();
  };
  ASSERT_GT(repeats(plain.tokens), 0u) << "the fixture's greedy run should repeat itself";
  EXPECT_LT(repeats(penalised.tokens), repeats(plain.tokens));
  EXPECT_THROW(run(kPrompt, [] { SamplingParams q; q.top_p = 0; return q; }()), Error);
}

TEST(Generation, PromptLongerThanContextIsAnError) {
  std::vector<int32_t> long_prompt(fixture().model->info().max_seq_len + 1, 7);
  EXPECT_THROW(run(long_prompt, greedy(4)), Error);
  // A generation that reaches max_seq_len stops with "length".
  std::vector<int32_t> near(fixture().model->info().max_seq_len - 3, 7);
  auto r = run(near, greedy(50));
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_LE(r.tokens.size(), 4u);
}
