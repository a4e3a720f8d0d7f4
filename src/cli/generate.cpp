#include <cstdio>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/llm_options.h"
#include "serving/generate.h"

namespace tessera::cli {

void register_generate(CLI::App& app) {
  struct Options {
    ModelOptions model;
    SamplingOptions sampling;
    std::string prompt;
    bool json = false;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("generate", "Complete a prompt, streaming the text to stdout");
  opts->model.add(*cmd);
  cmd->add_option("-p,--prompt", opts->prompt, "Text to complete")->required();
  opts->sampling.add(*cmd, 0.8f, 128);
  cmd->add_flag("--json", opts->json, "Print one JSON object (text, token ids, finish reason, timings) instead of streaming");
  cmd->callback([opts] {
    opts->model.apply_threads();
    const SamplingParams sampling = opts->sampling.get();
    LoadedModel loaded = opts->model.load();
    auto& model = loaded.model;
    const Tokenizer& tokenizer = loaded.tokenizer;
    GenerationRequest request;
    request.prompt = tokenizer.encode(opts->prompt);
    request.sampling = sampling;
    request.stop_token_ids = default_stop_tokens(tokenizer);
    Session session;
    const bool stream = !opts->json;
    auto result = generate(*model, tokenizer, session, request, [stream](std::string_view piece) {
      if (stream) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      }
      return true;
    });
    const auto& s = result.stats;
    if (opts->json) {
      nlohmann::json out = {{"prompt_tokens", request.prompt},
                            {"tokens", result.tokens},
                            {"text", result.text},
                            {"finish_reason", result.finish_reason},
                            {"seed", result.seed},
                            {"prefill_tok_s", s.prefill_tokens_per_second()},
                            {"decode_tok_s", s.decode_tokens_per_second()}};
      fmt::print("{}\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      return;
    }
    std::fputc('\n', stdout);
    std::fflush(stdout);
    fmt::print(stderr, "prompt: {} tokens, {:.1f} tok/s | generation: {} tokens, {:.1f} tok/s | finish: {} | seed: {}\n",
               s.prompt_tokens, s.prefill_tokens_per_second(), s.generated_tokens, s.decode_tokens_per_second(),
               result.finish_reason, result.seed);
  });
}

}  // namespace tessera::cli
