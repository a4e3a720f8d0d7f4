#include "serving/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "serving/text_stream.h"

namespace tessera {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

std::vector<int32_t> default_stop_tokens(const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  if (auto eos = tokenizer.eos_id()) ids.push_back(*eos);
  for (const char* name : {"<|endoftext|>", "<|im_end|>"}) {
    if (auto id = tokenizer.token_id(name); id && std::find(ids.begin(), ids.end(), *id) == ids.end())
      ids.push_back(*id);
  }
  return ids;
}

std::vector<int32_t> undecodable_ids(const Tokenizer& tokenizer, int64_t vocab_size) {
  std::vector<int32_t> ids;
  for (int64_t id = 0; id < vocab_size; ++id) {
    if (id < tokenizer.vocab_size()) {
      try {
        tokenizer.token_bytes(static_cast<int32_t>(id));
        continue;
      } catch (const Error&) {
      }
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

GenerationResult generate(LanguageModel& model, const Tokenizer& tokenizer, Session& session,
                          const GenerationRequest& request, const TextCallback& on_text) {
  request.sampling.validate();
  const auto& info = model.info();
  if (request.prompt.empty()) fail("the prompt is empty");
  if (static_cast<int64_t>(request.prompt.size()) > info.max_seq_len)
    fail("prompt of {} tokens exceeds the model's max_seq_len {}", request.prompt.size(), info.max_seq_len);

  GenerationResult result;
  Sampler sampler(request.sampling);
  result.seed = sampler.seed();
  result.stats.prompt_tokens = static_cast<int64_t>(request.prompt.size());

  // Reuse the cached prefix; at least one prompt token must run to produce logits.
  size_t common = 0;
  while (common < session.tokens.size() && common < request.prompt.size() &&
         session.tokens[common] == request.prompt[common])
    ++common;
  common = std::min(common, request.prompt.size() - 1);
  if (session.cache.max_length() == 0) session.cache = model.new_cache();
  // A kept partial block shared with another cache is copied before the first write into it
  // (forward reserves, and reserving makes that block private).
  session.cache.truncate(static_cast<int64_t>(common));
  session.tokens.assign(request.prompt.begin(), request.prompt.begin() + static_cast<std::ptrdiff_t>(common));
  // Room for the whole generation up front when the pool has it; otherwise forward reserves
  // step by step and reports a full pool when it happens.
  session.cache.try_reserve(std::min<int64_t>(info.max_seq_len, static_cast<int64_t>(request.prompt.size()) +
                                                                     request.sampling.max_tokens));

  std::vector<int32_t> context = request.prompt;
  auto start = Clock::now();
  std::span<const int32_t> fresh(request.prompt.data() + common, request.prompt.size() - common);
  Tensor logits = model.forward(fresh, session.cache, false);
  session.tokens.insert(session.tokens.end(), fresh.begin(), fresh.end());
  result.stats.prefilled_tokens = static_cast<int64_t>(fresh.size());
  result.stats.prefill_seconds = seconds_since(start);

  TextStream text(tokenizer, request.sampling.stop);
  const std::vector<int32_t> unusable = undecodable_ids(tokenizer, info.vocab_size);
  start = Clock::now();
  result.finish_reason = "length";
  while (static_cast<int64_t>(result.tokens.size()) < request.sampling.max_tokens) {
    std::span<float> row(logits.data<float>(), static_cast<size_t>(info.vocab_size));
    for (int32_t id : unusable) row[id] = -INFINITY;
    const int32_t next = sampler.sample(row, context, result.tokens.size());
    if (!request.sampling.ignore_eos &&
        std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), next) != request.stop_token_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    result.tokens.push_back(next);
    context.push_back(next);

    const std::string piece = text.push(next);
    result.text += piece;
    if (on_text && !piece.empty() && !on_text(piece)) {
      result.finish_reason = "cancelled";
      break;
    }
    if (text.stopped()) {
      result.finish_reason = "stop";
      break;
    }

    if (static_cast<int64_t>(result.tokens.size()) >= request.sampling.max_tokens) break;
    if (session.cache.length() >= info.max_seq_len) break;  // no room for another position
    const int32_t one[1] = {next};
    logits = model.forward(one, session.cache, false);
    session.tokens.push_back(next);
  }
  if (result.finish_reason != "cancelled") {
    const std::string rest = text.finish();
    result.text += rest;
    if (on_text && !rest.empty()) on_text(rest);
  }
  result.stats.generated_tokens = static_cast<int64_t>(result.tokens.size());
  result.stats.decode_seconds = seconds_since(start);
  return result;
}

}  // namespace tessera
