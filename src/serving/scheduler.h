#pragma once
// Continuous batching for one language model: many requests share every decode step.
//
// A scheduler thread owns the model. Each step it drops cancelled sequences (their KV blocks go
// back to the pool at once), admits waiting ones while the batch and the KV pool have room
// (reserved endpoints first, see ThroughputReservation), runs one forward pass over all of them
// (a chunk of prompt for new sequences, one token for the others) and samples the next token of
// each. Finished sequences leave between steps. KV memory is paged (KvBlockPool): a sequence
// holds blocks for the positions it has, not for the maximum length, and full blocks of a
// prompt are shared with later requests that start the same way (system prompts, multi-turn).
// When the pool runs dry the most recently admitted sequence of the lowest class is preempted:
// its blocks are freed and it is queued again to recompute its tokens later.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "models/llm/language_model.h"
#include "serving/json_constraint.h"
#include "serving/sampling.h"
#include "tokenizers/bpe_tokenizer.h"

namespace tessera {

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // most likely alternatives, best first
};

// What one step produced for one choice of a request.
struct ChoiceEvent {
  int choice = 0;
  std::string text;
  std::vector<TokenLogprob> logprobs;         // for the tokens of this event, when requested
  std::optional<std::string> finish_reason;   // "stop", "length", "cancelled", "error"
};

struct SequenceRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;      // choice i samples with seed + i
  std::vector<int32_t> stop_token_ids;
  int n = 1;                    // choices, each its own sequence
  int top_logprobs = -1;        // < 0: no logprobs; else the number of alternatives per token
  std::optional<JsonConstraint> json;  // constrain the output to JSON
  std::string endpoint;         // for the reservation's accounting and for errors
};

// A reserved rate in tokens per second (prompt and output tokens both count). While an
// endpoint stays within it, its requests are admitted, and may preempt, ahead of others.
class ThroughputReservation {
 public:
  explicit ThroughputReservation(double tokens_per_second);
  bool within_rate();            // budget left in the current window
  void consume(int64_t tokens);
  double tokens_per_second() const { return rate_; }

 private:
  void refill(std::chrono::steady_clock::time_point now);
  std::mutex mutex_;
  double rate_;
  double budget_;
  std::chrono::steady_clock::time_point last_;
};

// The link between a request's HTTP handler and the scheduler.
class RequestStream {
 public:
  explicit RequestStream(int n) : finished_(static_cast<size_t>(n), false), completion_tokens_(static_cast<size_t>(n), 0) {}

  // Moves pending events into `out`, waiting up to `timeout` for some. Returns false once every
  // choice has finished and all events were taken.
  bool next(std::vector<ChoiceEvent>& out, std::chrono::milliseconds timeout);
  // Stops all choices; the scheduler frees their memory before its next step.
  void cancel();
  bool cancelled() const { return cancel_.load(); }

  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t completion_tokens() const;  // over all choices, tokens sampled so far
  uint64_t seed() const { return seed_; }
  std::string error() const;
  // Seconds from submission to the first token, if one came.
  std::optional<double> time_to_first_token() const;

 private:
  friend class BatchScheduler;
  void push(ChoiceEvent event, int64_t new_tokens);
  void fail(const std::string& message);

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<ChoiceEvent> events_;
  std::vector<bool> finished_;
  std::vector<int64_t> completion_tokens_;
  std::atomic<bool> cancel_{false};
  std::string error_;
  int64_t prompt_tokens_ = 0;
  uint64_t seed_ = 0;
  std::chrono::steady_clock::time_point submitted_ = std::chrono::steady_clock::now();
  std::optional<std::chrono::steady_clock::time_point> first_token_;
};

// submit() refuses work when the queue is full; the server answers 429.
class QueueFull : public std::runtime_error {
 public:
  QueueFull() : std::runtime_error("the server is busy: too many queued requests") {}
};

struct SchedulerOptions {
  int64_t max_batch = 32;             // sequences decoding together
  int64_t max_queue = 256;            // waiting sequences before submit() throws QueueFull
  size_t kv_memory_bytes = size_t{1} << 30;
  int64_t block_tokens = 16;
  int64_t prefill_chunk = 512;        // prompt tokens run per step (keeps decode latency bounded)
};

struct SchedulerStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_used = 0, kv_blocks_cached = 0, kv_blocks_total = 0;
  int64_t steps = 0, preempted = 0, cancelled = 0, prefix_reused_tokens = 0;
};

class BatchScheduler {
 public:
  BatchScheduler(std::shared_ptr<LanguageModel> model, Tokenizer tokenizer, SchedulerOptions options = {});
  ~BatchScheduler();
  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  // Queues a request; throws tessera::Error for an invalid one (empty prompt, a prompt that
  // leaves no room in the context, bad sampling values) and QueueFull when the queue is full.
  std::shared_ptr<RequestStream> submit(SequenceRequest request,
                                        std::shared_ptr<ThroughputReservation> reservation = nullptr);

  SchedulerStats stats() const;
  const LanguageModel& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  struct Sequence;
  void loop();
  void step(std::vector<std::shared_ptr<Sequence>>& running);
  void admit(std::vector<std::shared_ptr<Sequence>>& running);
  bool make_room(std::vector<std::shared_ptr<Sequence>>& running, const Sequence* for_whom);
  void preempt(std::vector<std::shared_ptr<Sequence>>& running, size_t index);
  void sample_next(Sequence& seq, std::span<float> logits);
  void finish(Sequence& seq, const std::string& reason);

  std::shared_ptr<LanguageModel> model_;
  Tokenizer tokenizer_;
  SchedulerOptions options_;
  std::shared_ptr<KvBlockPool> pool_;
  std::vector<std::string> vocab_bytes_;  // every id's bytes, for JSON-constrained decoding
  std::vector<int32_t> undecodable_;      // ids never sampled (no text)

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Sequence>> waiting_;
  uint64_t next_order_ = 0;
  bool stop_ = false;
  SchedulerStats stats_;  // guarded by mutex_
  std::thread thread_;
};

}  // namespace tessera
