#include "serving/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace tessera {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string.
size_t held_back(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& stop : stops) {
    for (size_t len = std::min(stop.size() - 1, text.size()); len > hold; --len) {
      if (text.substr(text.size() - len) == std::string_view(stop).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  return hold;
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

  StreamingDecoder decoder(tokenizer);
  std::string pending;  // decoded text not yet passed on (may start a stop string)
  auto emit = [&](std::string_view piece) {
    result.text.append(piece);
    if (on_text && !piece.empty() && !on_text(piece)) return false;
    return true;
  };

  start = Clock::now();
  result.finish_reason = "length";
  bool cut_at_stop_string = false;
  while (static_cast<int64_t>(result.tokens.size()) < request.sampling.max_tokens) {
    std::span<float> row(logits.data<float>(), static_cast<size_t>(info.vocab_size));
    const int32_t next = sampler.sample(row, context, result.tokens.size());
    if (!request.sampling.ignore_eos &&
        std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), next) != request.stop_token_ids.end()) {
      result.finish_reason = "stop";
      break;
    }
    result.tokens.push_back(next);
    context.push_back(next);

    pending += decoder.push(next);
    bool stopped = false;
    for (const auto& stop : request.sampling.stop) {
      if (auto pos = pending.find(stop); pos != std::string::npos) {
        pending.resize(pos);
        stopped = true;
      }
    }
    if (stopped) {
      cut_at_stop_string = true;
      emit(pending);
      pending.clear();
      result.finish_reason = "stop";
      break;
    }
    const size_t hold = held_back(pending, request.sampling.stop);
    if (!emit(std::string_view(pending).substr(0, pending.size() - hold))) {
      pending.clear();
      result.finish_reason = "cancelled";
      break;
    }
    pending.erase(0, pending.size() - hold);

    if (static_cast<int64_t>(result.tokens.size()) >= request.sampling.max_tokens) break;
    if (session.cache.length() >= info.max_seq_len) break;  // no room for another position
    const int32_t one[1] = {next};
    logits = model.forward(one, session.cache, false);
    session.tokens.push_back(next);
  }
  if (result.finish_reason != "cancelled" && !cut_at_stop_string) {
    pending += decoder.flush();
    emit(pending);
  }
  result.stats.generated_tokens = static_cast<int64_t>(result.tokens.size());
  result.stats.decode_seconds = seconds_since(start);
  return result;
}

}  // namespace tessera
