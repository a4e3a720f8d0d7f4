#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/llm_options.h"
#include "serving/generate.h"

namespace tessera::cli {

void register_generate(CLI::App& app) {
  struct Options {
    ModelOptions model;
    SamplingOptions sampling;
    std::string prompt;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("generate", "Complete a prompt, streaming the text to stdout");
  opts->model.add(*cmd);
  cmd->add_option("-p,--prompt", opts->prompt, "Text to complete")->required();
  opts->sampling.add(*cmd, 0.8f, 128);
  cmd->callback([opts] {
    opts->model.apply_threads();
    const SamplingParams sampling = opts->sampling.get();
    auto model = load_language_model(opts->model.model);
    Tokenizer tokenizer = Tokenizer::load_for_model(opts->model.model);
    GenerationRequest request;
    request.prompt = tokenizer.encode(opts->prompt);
    request.sampling = sampling;
    request.stop_token_ids = default_stop_tokens(tokenizer);
    Session session;
    auto result = generate(*model, tokenizer, session, request, [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::fputc('\n', stdout);
    std::fflush(stdout);
    const auto& s = result.stats;
    fmt::print(stderr, "prompt: {} tokens, {:.1f} tok/s | generation: {} tokens, {:.1f} tok/s | finish: {} | seed: {}\n",
               s.prompt_tokens, s.prefill_tokens_per_second(), s.generated_tokens, s.decode_tokens_per_second(),
               result.finish_reason, result.seed);
  });
}

}  // namespace tessera::cli
