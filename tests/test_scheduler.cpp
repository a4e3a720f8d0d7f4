// The continuous-batching scheduler: concurrent requests give the same greedy tokens as the
// single-sequence loop, cancellation frees KV blocks at once, a full queue refuses work, a
// starved KV pool preempts and recomputes without changing the output, and reserved
// endpoints go first.
#include <gtest/gtest.h>

#include <thread>

#include "core/error.h"
#include "models/llm/dbrx_model.h"
#include "serving/generate.h"
#include "serving/scheduler.h"
#include "test_util.h"

using namespace tessera;

namespace {

const auto kModelDir = tessera::testing::fixtures() / "dbrx" / "e4_top2_d64_clip_f32";

std::shared_ptr<LanguageModel> model() {
  static std::shared_ptr<LanguageModel> m = DbrxModel::load(kModelDir);
  return m;
}

const Tokenizer& tokenizer() {
  static Tokenizer t = Tokenizer::load_for_model(kModelDir);
  return t;
}

// A real model with a long context: slow enough that a sequence is still running while the
// test submits more work or cancels it.
struct Smol {
  std::filesystem::path path = resolve_model_path("smollm2-135m-instruct");
  std::shared_ptr<LanguageModel> model = load_language_model(path);
  Tokenizer tokenizer = load_model_tokenizer(path);
};
const Smol& smol() {
  static Smol s;
  return s;
}

std::vector<int32_t> prompt_of(int seed, size_t length) {
  std::vector<int32_t> p;
  for (size_t i = 0; i < length; ++i) p.push_back(static_cast<int32_t>(32 + (seed * 31 + i * 7) % 90));  // byte tokens
  return p;
}

SequenceRequest greedy_request(std::vector<int32_t> prompt, int64_t max_tokens) {
  SequenceRequest r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.sampling.max_tokens = max_tokens;
  return r;
}

struct Collected {
  std::vector<std::string> text;
  std::vector<std::string> finish;
};

Collected collect(RequestStream& stream, int n = 1) {
  Collected c{std::vector<std::string>(n), std::vector<std::string>(n)};
  std::vector<ChoiceEvent> events;
  while (stream.next(events, std::chrono::milliseconds(100))) {
    for (auto& e : events) {
      c.text[e.choice] += e.text;
      if (e.finish_reason) c.finish[e.choice] = *e.finish_reason;
    }
    events.clear();
  }
  return c;
}

std::string solo(const std::vector<int32_t>& prompt, int64_t max_tokens) {
  Session session;
  GenerationRequest req{prompt, greedy_request(prompt, max_tokens).sampling, {}};
  return generate(*model(), tokenizer(), session, req).text;
}

}  // namespace

TEST(Scheduler, ConcurrentRequestsMatchSoloGeneration) {
  BatchScheduler scheduler(model(), tokenizer());
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 12; ++i) {
    prompts.push_back(prompt_of(i, 5 + static_cast<size_t>(i) * 3));
    streams.push_back(scheduler.submit(greedy_request(prompts.back(), 12 + i)));
  }
  for (int i = 0; i < 12; ++i) {
    const auto got = collect(*streams[i]);
    EXPECT_EQ(got.text[0], solo(prompts[i], 12 + i)) << "request " << i;
    EXPECT_EQ(got.finish[0], "length");
    EXPECT_EQ(streams[i]->completion_tokens(), 12 + i);
  }
  const auto stats = scheduler.stats();
  EXPECT_LT(stats.steps, 12 * 20);  // steps were shared, not one per token per request
  EXPECT_EQ(stats.kv_blocks_used, 0);
}

TEST(Scheduler, SharedPrefixIsReused) {
  BatchScheduler scheduler(model(), tokenizer());
  auto system = prompt_of(3, 40);
  auto a = system, b = system;
  a.push_back(65);
  b.push_back(66);
  collect(*scheduler.submit(greedy_request(a, 4)));
  auto stream = scheduler.submit(greedy_request(b, 4));
  EXPECT_EQ(collect(*stream).text[0], solo(b, 4));
  EXPECT_EQ(scheduler.stats().prefix_reused_tokens, 32);  // two full 16-token blocks of the 40 shared
}

TEST(Scheduler, CancelFreesBlocksAtOnce) {
  BatchScheduler scheduler(smol().model, smol().tokenizer);
  auto stream = scheduler.submit(greedy_request(prompt_of(1, 30), 100000));
  std::vector<ChoiceEvent> events;
  while (events.empty()) stream->next(events, std::chrono::milliseconds(50));
  EXPECT_GT(scheduler.stats().kv_blocks_used, 0);
  stream->cancel();
  Collected c = collect(*stream);
  EXPECT_EQ(c.finish[0], "cancelled");
  for (int i = 0; i < 100 && scheduler.stats().kv_blocks_used != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(scheduler.stats().kv_blocks_used, 0);
  EXPECT_EQ(scheduler.stats().cancelled, 1);
}

TEST(Scheduler, FullQueueRefusesAndBadRequestsFail) {
  SchedulerOptions options;
  options.max_batch = 1;
  options.max_queue = 2;
  BatchScheduler scheduler(smol().model, smol().tokenizer, options);
  auto first = scheduler.submit(greedy_request(prompt_of(1, 4), 100000));
  std::vector<ChoiceEvent> events;
  while (events.empty()) first->next(events, std::chrono::milliseconds(20));  // running, queue empty
  auto second = scheduler.submit(greedy_request(prompt_of(2, 4), 2));
  auto third = scheduler.submit(greedy_request(prompt_of(3, 4), 2));
  EXPECT_THROW(scheduler.submit(greedy_request(prompt_of(4, 4), 2)), QueueFull);
  first->cancel();
  EXPECT_EQ(collect(*second).finish[0], "length");
  EXPECT_EQ(collect(*third).finish[0], "length");

  EXPECT_NE(tessera::testing::error_of([&] { scheduler.submit(greedy_request({}, 2)); }), "");
  const int64_t ctx = smol().model->info().max_seq_len;
  EXPECT_NE(tessera::testing::error_of([&] { scheduler.submit(greedy_request(prompt_of(1, static_cast<size_t>(ctx)), 2)); })
                .find("maximum context length"),
            std::string::npos);
  auto bad = greedy_request(prompt_of(1, 3), 2);
  bad.sampling.top_p = 0;
  EXPECT_NE(tessera::testing::error_of([&] { scheduler.submit(bad); }).find("top_p"), std::string::npos);
}

TEST(Scheduler, ChoicesAreSeededAndRepeatable) {
  BatchScheduler scheduler(model(), tokenizer());
  SequenceRequest r = greedy_request(prompt_of(5, 6), 16);
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 42;
  r.n = 3;
  const auto a = collect(*scheduler.submit(r), 3);
  const auto b = collect(*scheduler.submit(r), 3);
  EXPECT_EQ(a.text, b.text);
  EXPECT_NE(a.text[0], a.text[1]);
}

TEST(Scheduler, StarvedPoolPreemptsWithoutChangingOutput) {
  // Room for barely more than one full-context sequence: eight long requests must take turns.
  const auto& info = model()->info();
  SchedulerOptions options;
  options.block_tokens = 16;
  auto probe = model()->new_block_pool(1, 16);
  const int64_t blocks = (info.max_seq_len + 15) / 16 + 2;
  options.kv_memory_bytes = static_cast<size_t>(blocks) * probe->bytes_per_block();
  BatchScheduler scheduler(model(), tokenizer(), options);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::shared_ptr<RequestStream>> streams;
  const int64_t max_tokens = std::min<int64_t>(48, info.max_seq_len / 4);
  for (int i = 0; i < 8; ++i) {
    prompts.push_back(prompt_of(10 + i, static_cast<size_t>(info.max_seq_len / 4)));
    streams.push_back(scheduler.submit(greedy_request(prompts.back(), max_tokens)));
  }
  for (int i = 0; i < 8; ++i) EXPECT_EQ(collect(*streams[i]).text[0], solo(prompts[i], max_tokens)) << i;
  EXPECT_EQ(scheduler.stats().kv_blocks_used, 0);
}

TEST(Scheduler, ReservedEndpointGoesFirst) {
  SchedulerOptions options;
  options.max_batch = 1;
  BatchScheduler scheduler(smol().model, smol().tokenizer, options);
  auto blocker = scheduler.submit(greedy_request(prompt_of(1, 4), 150));
  std::vector<ChoiceEvent> events;
  while (events.empty()) blocker->next(events, std::chrono::milliseconds(20));
  auto reservation = std::make_shared<ThroughputReservation>(1e6);
  std::vector<std::shared_ptr<RequestStream>> paygo;
  for (int i = 0; i < 3; ++i) paygo.push_back(scheduler.submit(greedy_request(prompt_of(2 + i, 4), 8)));
  auto reserved = scheduler.submit(greedy_request(prompt_of(9, 4), 8), reservation);
  // The reserved request preempts the running pay-per-token one and runs before the queue.
  collect(*reserved);
  int unfinished = 0;
  for (auto& s : paygo) {
    std::vector<ChoiceEvent> ev;
    s->next(ev, std::chrono::milliseconds(0));
    bool done = false;
    for (auto& e : ev) done |= e.finish_reason.has_value();
    unfinished += done ? 0 : 1;
  }
  EXPECT_EQ(unfinished, 3);
  EXPECT_GE(scheduler.stats().preempted, 1);
  for (auto& s : paygo) EXPECT_EQ(collect(*s).finish[0], "length");
  EXPECT_EQ(collect(*blocker).finish[0], "length");
}

TEST(Scheduler, LogprobsAreNormalisedAndSorted) {
  BatchScheduler scheduler(model(), tokenizer());
  SequenceRequest r = greedy_request(prompt_of(7, 5), 6);
  r.top_logprobs = 4;
  auto stream = scheduler.submit(r);
  std::vector<ChoiceEvent> events;
  std::vector<TokenLogprob> lps;
  while (stream->next(events, std::chrono::milliseconds(100))) {
    for (auto& e : events)
      for (auto& lp : e.logprobs) lps.push_back(lp);
    events.clear();
  }
  ASSERT_EQ(lps.size(), 6u);
  for (const auto& lp : lps) {
    ASSERT_EQ(lp.top.size(), 4u);
    EXPECT_EQ(lp.top[0].first, lp.token);  // greedy picks the most likely
    EXPECT_LE(lp.logprob, 0.0f);
    for (size_t i = 1; i < lp.top.size(); ++i) EXPECT_GE(lp.top[i - 1].second, lp.top[i].second);
  }
}
