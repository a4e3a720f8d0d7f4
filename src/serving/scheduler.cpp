#include "serving/scheduler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "serving/generate.h"
#include "serving/text_stream.h"

namespace tessera {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
ThroughputReservation::ThroughputReservation(double tokens_per_second)
    : rate_(tokens_per_second), budget_(tokens_per_second), last_(Clock::now()) {
  if (!(tokens_per_second > 0)) fail("a throughput reservation must be positive, got {}", tokens_per_second);
}

void ThroughputReservation::refill(Clock::time_point now) {
  const double elapsed = std::chrono::duration<double>(now - last_).count();
  last_ = now;
  budget_ = std::min(rate_, budget_ + elapsed * rate_);  // at most one second of burst
}

bool ThroughputReservation::within_rate() {
  std::lock_guard lock(mutex_);
  refill(Clock::now());
  return budget_ > 0;
}

void ThroughputReservation::consume(int64_t tokens) {
  std::lock_guard lock(mutex_);
  refill(Clock::now());
  budget_ -= static_cast<double>(tokens);
}

// ---------------------------------------------------------------------------------------------
bool RequestStream::next(std::vector<ChoiceEvent>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  auto all_done = [&] { return std::all_of(finished_.begin(), finished_.end(), [](bool f) { return f; }); };
  cv_.wait_for(lock, timeout, [&] { return !events_.empty() || all_done(); });
  while (!events_.empty()) {
    out.push_back(std::move(events_.front()));
    events_.pop_front();
  }
  return !(all_done() && events_.empty() && out.empty());
}

void RequestStream::cancel() { cancel_.store(true); }

int64_t RequestStream::completion_tokens() const {
  std::lock_guard lock(mutex_);
  int64_t total = 0;
  for (int64_t t : completion_tokens_) total += t;
  return total;
}

std::string RequestStream::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

std::optional<double> RequestStream::time_to_first_token() const {
  std::lock_guard lock(mutex_);
  if (!first_token_) return std::nullopt;
  return std::chrono::duration<double>(*first_token_ - submitted_).count();
}

void RequestStream::push(ChoiceEvent event, int64_t new_tokens) {
  {
    std::lock_guard lock(mutex_);
    if (new_tokens > 0 && !first_token_) first_token_ = Clock::now();
    completion_tokens_[static_cast<size_t>(event.choice)] += new_tokens;
    if (event.finish_reason) finished_[static_cast<size_t>(event.choice)] = true;
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
}

void RequestStream::fail(const std::string& message) {
  std::lock_guard lock(mutex_);
  if (error_.empty()) error_ = message;
}

// ---------------------------------------------------------------------------------------------
struct BatchScheduler::Sequence {
  Sequence(const Tokenizer& tokenizer, const SamplingParams& params) : sampler(params), text(tokenizer, params.stop) {}

  std::shared_ptr<RequestStream> stream;
  std::shared_ptr<ThroughputReservation> reservation;
  int choice = 0;
  std::vector<int32_t> tokens;  // prompt, then the generated ids
  size_t prompt_len = 0;
  int64_t max_tokens = 0;
  std::vector<int32_t> stop_ids;
  int top_logprobs = -1;
  std::optional<JsonConstraint> json;
  Sampler sampler;
  TextStream text;
  KvCache cache;
  uint64_t order = 0;        // admission order, for FIFO and for choosing whom to preempt
  bool published = false;    // prompt blocks offered for prefix reuse
  bool done = false;

  size_t generated() const { return tokens.size() - prompt_len; }
  bool reserved() const { return reservation && reservation->within_rate(); }
};

BatchScheduler::BatchScheduler(std::shared_ptr<LanguageModel> model, Tokenizer tokenizer, SchedulerOptions options)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), options_(options) {
  if (options_.max_batch < 1) fail("max_batch must be at least 1");
  if (options_.max_queue < 1) fail("max_queue must be at least 1");
  if (options_.block_tokens < 1) fail("block_tokens must be at least 1");
  if (options_.prefill_chunk < 1) fail("prefill_chunk must be at least 1");
  pool_ = model_->new_block_pool(1, options_.block_tokens);
  const int64_t blocks =
      std::max<int64_t>(1, static_cast<int64_t>(options_.kv_memory_bytes / std::max<size_t>(1, pool_->bytes_per_block())));
  pool_ = model_->new_block_pool(blocks, options_.block_tokens);
  // Finished prompts stay cached for reuse in an eighth of the pool (see set_cache_limit).
  pool_->set_cache_limit(std::max<int64_t>(1, blocks / 8));
  // A sequence must at least fit alone: one that needs more blocks than exist could never run.
  const int64_t needed = (model_->info().max_seq_len + options_.block_tokens - 1) / options_.block_tokens;
  if (blocks < needed)
    fail("kv_memory of {} MiB holds {} positions, less than the model's context of {}; raise kv_memory_mb",
         options_.kv_memory_bytes >> 20, blocks * options_.block_tokens, model_->info().max_seq_len);
  vocab_bytes_.resize(static_cast<size_t>(std::max<int64_t>(tokenizer_.vocab_size(), model_->info().vocab_size)));
  for (int32_t id = 0; id < tokenizer_.vocab_size(); ++id) {
    try {
      vocab_bytes_[id] = tokenizer_.token_bytes(id);
    } catch (const Error&) {
    }
  }
  undecodable_ = undecodable_ids(tokenizer_, model_->info().vocab_size);
  stats_.kv_blocks_total = blocks;
  thread_ = std::thread([this] { loop(); });
}

BatchScheduler::~BatchScheduler() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::shared_ptr<RequestStream> BatchScheduler::submit(SequenceRequest request,
                                                      std::shared_ptr<ThroughputReservation> reservation) {
  request.sampling.validate();
  const auto& info = model_->info();
  if (request.prompt.empty()) fail("the prompt is empty");
  if (request.n < 1 || request.n > 128) fail("n must be between 1 and 128, got {}", request.n);
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  if (prompt_len >= info.max_seq_len)
    fail("this model's maximum context length is {} tokens; the prompt has {} tokens and leaves no room for output",
         info.max_seq_len, prompt_len);
  for (int32_t id : request.prompt)
    if (id < 0 || id >= info.vocab_size) fail("token id {} is out of range (vocabulary of {})", id, info.vocab_size);

  auto stream = std::make_shared<RequestStream>(request.n);
  const uint64_t base_seed = Sampler(request.sampling).seed();
  stream->seed_ = base_seed;
  stream->prompt_tokens_ = prompt_len;
  std::vector<std::shared_ptr<Sequence>> seqs;
  for (int i = 0; i < request.n; ++i) {
    SamplingParams params = request.sampling;
    params.seed = base_seed + static_cast<uint64_t>(i);
    auto seq = std::make_shared<Sequence>(tokenizer_, params);
    seq->stream = stream;
    seq->reservation = reservation;
    seq->choice = i;
    seq->tokens = request.prompt;
    seq->prompt_len = request.prompt.size();
    // Output stops at the end of the context at the latest.
    seq->max_tokens = std::min<int64_t>(request.sampling.max_tokens, info.max_seq_len - prompt_len);
    seq->stop_ids = request.stop_token_ids;
    seq->top_logprobs = request.top_logprobs;
    seq->json = request.json;
    seqs.push_back(std::move(seq));
  }
  {
    std::lock_guard lock(mutex_);
    if (static_cast<int64_t>(waiting_.size() + seqs.size()) > options_.max_queue) throw QueueFull();
    for (auto& s : seqs) {
      s->order = next_order_++;
      waiting_.push_back(std::move(s));
    }
    stats_.waiting = static_cast<int64_t>(waiting_.size());
  }
  wake_.notify_all();
  return stream;
}

SchedulerStats BatchScheduler::stats() const {
  std::lock_guard lock(mutex_);
  SchedulerStats s = stats_;
  s.kv_blocks_used = pool_->used_blocks();
  s.kv_blocks_cached = pool_->cached_blocks();
  return s;
}

void BatchScheduler::finish(Sequence& seq, const std::string& reason) {
  if (seq.done) return;
  seq.done = true;
  ChoiceEvent event;
  event.choice = seq.choice;
  if (reason != "cancelled" && reason != "error") event.text = seq.text.finish();
  event.finish_reason = reason;
  seq.stream->push(std::move(event), 0);
  // The positions computed so far stay findable for a follow-up turn of the conversation.
  if (reason == "stop" || reason == "length")
    seq.cache.publish(std::span<const int32_t>(seq.tokens).first(static_cast<size_t>(seq.cache.length())));
  seq.cache.clear();
}

void BatchScheduler::loop() {
  std::vector<std::shared_ptr<Sequence>> running;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || !waiting_.empty() || !running.empty(); });
      if (stop_) {
        for (auto& s : waiting_) finish(*s, "cancelled");
        waiting_.clear();
        break;
      }
    }
    try {
      step(running);
    } catch (const std::exception& e) {
      // A failure in the model is the batch's, not the server's: report it to every request in
      // the batch and carry on with an empty one.
      for (auto& s : running) {
        s->stream->fail(e.what());
        finish(*s, "error");
      }
      running.clear();
    }
    std::lock_guard lock(mutex_);
    stats_.running = static_cast<int64_t>(running.size());
    stats_.waiting = static_cast<int64_t>(waiting_.size());
  }
  for (auto& s : running) finish(*s, "cancelled");
}

void BatchScheduler::preempt(std::vector<std::shared_ptr<Sequence>>& running, size_t index) {
  auto seq = running[index];
  running.erase(running.begin() + static_cast<std::ptrdiff_t>(index));
  seq->cache.clear();  // recomputed from its tokens when it runs again
  seq->published = false;
  std::lock_guard lock(mutex_);
  waiting_.push_front(std::move(seq));
  ++stats_.preempted;
}

// Frees blocks by preempting the lowest-class, most recently admitted running sequence that
// ranks below `for_whom` (any sequence when for_whom is null). False if there is none.
bool BatchScheduler::make_room(std::vector<std::shared_ptr<Sequence>>& running, const Sequence* for_whom) {
  std::optional<size_t> victim;
  auto rank = [](const Sequence& s) { return std::make_pair(s.reserved() ? 0 : 1, s.order); };
  for (size_t i = 0; i < running.size(); ++i) {
    if (running[i].get() == for_whom) continue;
    if (for_whom && rank(*running[i]) < rank(*for_whom)) continue;
    if (!victim || rank(*running[i]) > rank(*running[*victim])) victim = i;
  }
  if (!victim) return false;
  preempt(running, *victim);
  return true;
}

void BatchScheduler::admit(std::vector<std::shared_ptr<Sequence>>& running) {
  std::vector<std::shared_ptr<Sequence>> candidates;
  {
    std::lock_guard lock(mutex_);
    // Cancelled requests leave the queue without running.
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if ((*it)->stream->cancelled()) {
        finish(**it, "cancelled");
        ++stats_.cancelled;
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
    // Reserved endpoints within their rate first, then arrival order.
    std::stable_sort(waiting_.begin(), waiting_.end(), [](const auto& a, const auto& b) {
      const bool ra = a->reserved(), rb = b->reserved();
      if (ra != rb) return ra;
      return a->order < b->order;
    });
    candidates.assign(waiting_.begin(), waiting_.end());
  }
  std::vector<Sequence*> admitted;
  for (auto& seq : candidates) {
    if (static_cast<int64_t>(running.size()) >= options_.max_batch) {
      // A full batch gives way to a reserved request by preempting a pay-per-token sequence.
      if (!seq->reserved() || !make_room(running, seq.get())) break;
    }
    if (seq->cache.max_length() == 0) seq->cache = model_->new_cache(pool_);
    if (seq->cache.length() == 0) {
      const int64_t reused = seq->cache.reuse_prefix(seq->tokens);
      std::lock_guard lock(mutex_);
      stats_.prefix_reused_tokens += reused;
    }
    // Room for the first chunk; the rest is reserved step by step.
    const int64_t first = std::min<int64_t>(static_cast<int64_t>(seq->tokens.size()), seq->cache.length() + options_.prefill_chunk);
    if (!seq->cache.try_reserve(first)) {
      seq->cache.clear();
      break;  // wait for memory; keeps arrival order
    }
    running.push_back(seq);
    admitted.push_back(seq.get());
  }
  if (admitted.empty()) return;
  std::lock_guard lock(mutex_);
  std::erase_if(waiting_, [&](const auto& s) { return std::find(admitted.begin(), admitted.end(), s.get()) != admitted.end(); });
}

void BatchScheduler::step(std::vector<std::shared_ptr<Sequence>>& running) {
  // Cancelled sequences give their memory back before anything else happens.
  for (auto it = running.begin(); it != running.end();) {
    if ((*it)->stream->cancelled()) {
      finish(**it, "cancelled");
      std::lock_guard lock(mutex_);
      ++stats_.cancelled;
      it = running.erase(it);
    } else {
      ++it;
    }
  }
  admit(running);
  if (running.empty()) {
    // Nothing fits: the queue waits for memory that only running sequences could free.
    std::unique_lock lock(mutex_);
    wake_.wait_for(lock, std::chrono::milliseconds(20));
    return;
  }

  // Each sequence runs the tokens its cache lacks: one for a decoding sequence, a chunk of the
  // prompt (or of the recomputed tokens after a preemption) otherwise.
  int64_t prefill_budget = options_.prefill_chunk;
  std::vector<BatchSequence> batch;
  std::vector<Sequence*> in_batch;
  for (size_t i = 0; i < running.size(); ++i) {
    Sequence& seq = *running[i];
    const int64_t have = seq.cache.length();
    const int64_t missing = static_cast<int64_t>(seq.tokens.size()) - have;
    int64_t take = missing;
    if (missing > 1) {
      if (prefill_budget <= 0) continue;
      take = std::min(missing, prefill_budget);
      prefill_budget -= take;
    }
    while (!seq.cache.try_reserve(have + take)) {
      if (!make_room(running, &seq)) {
        // Nobody ranks below this sequence: it waits for memory itself.
        preempt(running, i);
        --i;
        take = 0;
        break;
      }
      // make_room may have removed a sequence before this one, or one already in the batch.
      i = static_cast<size_t>(std::find_if(running.begin(), running.end(), [&](const auto& p) { return p.get() == &seq; }) -
                              running.begin());
    }
    if (take == 0) continue;
    batch.push_back({std::span<const int32_t>(seq.tokens).subspan(static_cast<size_t>(have), static_cast<size_t>(take)),
                     &seq.cache, false});
    in_batch.push_back(&seq);
  }
  // Preemption may have dropped sequences that were already put in the batch.
  for (size_t b = 0; b < in_batch.size();) {
    const bool alive = std::any_of(running.begin(), running.end(), [&](const auto& p) { return p.get() == in_batch[b]; });
    if (alive) {
      ++b;
    } else {
      in_batch.erase(in_batch.begin() + static_cast<std::ptrdiff_t>(b));
      batch.erase(batch.begin() + static_cast<std::ptrdiff_t>(b));
    }
  }
  if (batch.empty()) return;

  Tensor logits = model_->forward_batch(batch);
  {
    std::lock_guard lock(mutex_);
    ++stats_.steps;
  }
  const int64_t vocab = model_->info().vocab_size;
  for (size_t b = 0; b < in_batch.size(); ++b) {
    Sequence& seq = *in_batch[b];
    if (seq.reservation) seq.reservation->consume(static_cast<int64_t>(batch[b].tokens.size()));
    if (seq.cache.length() < static_cast<int64_t>(seq.tokens.size())) continue;  // prompt not done yet
    if (!seq.published) {
      seq.cache.publish(std::span<const int32_t>(seq.tokens).first(seq.prompt_len));
      seq.published = true;
    }
    sample_next(seq, std::span<float>(logits.data<float>() + static_cast<int64_t>(b) * vocab, static_cast<size_t>(vocab)));
  }
  std::erase_if(running, [](const auto& s) { return s->done; });
}

void BatchScheduler::sample_next(Sequence& seq, std::span<float> logits) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  for (int32_t id : undecodable_) logits[id] = -INFINITY;
  // Log-probabilities of the model's own distribution, before penalties and temperature.
  std::vector<float> raw;
  if (seq.top_logprobs >= 0 || seq.json) raw.assign(logits.begin(), logits.end());

  int32_t next;
  if (seq.json) {
    // Sample as usual; a token that cannot continue valid JSON is masked and the draw repeated.
    // After a few misses the best allowed token is taken directly.
    std::vector<int32_t> masked;
    std::vector<float> work;
    next = -1;
    for (int attempt = 0; attempt < 8 && next < 0; ++attempt) {
      work = raw;
      for (int32_t m : masked) work[m] = -INFINITY;
      const int32_t t = seq.sampler.sample(work, seq.tokens, seq.generated());
      const bool is_end = std::find(seq.stop_ids.begin(), seq.stop_ids.end(), t) != seq.stop_ids.end();
      if (is_end ? seq.json->complete() : (!vocab_bytes_[t].empty() && seq.json->can_accept(vocab_bytes_[t])))
        next = t;
      else
        masked.push_back(t);
    }
    if (next < 0) {
      work = raw;
      for (int32_t m : masked) work[m] = -INFINITY;
      next = best_allowed_token(*seq.json, work, [&](int32_t id) -> const std::string& { return vocab_bytes_[id]; },
                                seq.stop_ids);
      if (next < 0) {
        seq.stream->fail("no token of the vocabulary can continue the JSON output");
        finish(seq, "error");
        return;
      }
    }
  } else {
    next = seq.sampler.sample(logits, seq.tokens, seq.generated());
  }

  ChoiceEvent event;
  event.choice = seq.choice;
  // An end token (allowed under a JSON constraint only once the document is complete).
  if (std::find(seq.stop_ids.begin(), seq.stop_ids.end(), next) != seq.stop_ids.end()) {
    finish(seq, "stop");
    return;
  }
  if (seq.top_logprobs >= 0) {
    float top = -INFINITY;
    for (float v : raw) top = std::max(top, v);
    double sum = 0;
    for (float v : raw) sum += std::exp(static_cast<double>(v - top));
    const float log_z = top + static_cast<float>(std::log(sum));
    TokenLogprob lp;
    lp.token = next;
    lp.logprob = raw[next] - log_z;
    const size_t k = std::min<size_t>(static_cast<size_t>(seq.top_logprobs), static_cast<size_t>(vocab));
    if (k > 0) {
      std::vector<int32_t> ids(static_cast<size_t>(vocab));
      for (int32_t i = 0; i < vocab; ++i) ids[i] = i;
      std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k), ids.end(),
                        [&](int32_t a, int32_t b) { return raw[a] > raw[b]; });
      for (size_t i = 0; i < k; ++i) lp.top.emplace_back(ids[i], raw[ids[i]] - log_z);
    }
    event.logprobs.push_back(std::move(lp));
  }
  seq.tokens.push_back(next);
  if (seq.json) seq.json->accept(vocab_bytes_[next]);
  event.text = seq.text.push(next);

  std::optional<std::string> reason;
  if (seq.text.stopped() || (seq.json && seq.json->complete()))
    reason = "stop";
  else if (static_cast<int64_t>(seq.generated()) >= seq.max_tokens)
    reason = "length";
  seq.stream->push(std::move(event), 1);
  if (reason) finish(seq, *reason);
}

}  // namespace tessera
