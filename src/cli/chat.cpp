#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "cli/commands.h"
#include "cli/llm_options.h"
#include "serving/generate.h"
#include "serving/chat_format.h"

namespace tessera::cli {

void register_chat(CLI::App& app) {
  struct Options {
    ModelOptions model;
    SamplingOptions sampling;
    std::string system;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("chat", "Talk to a model in the terminal (ChatML); /reset clears, /exit quits");
  opts->model.add(*cmd);
  cmd->add_option("-s,--system", opts->system, "System prompt");
  opts->sampling.add(*cmd, 0.7f, 512);
  cmd->callback([opts] {
    opts->model.apply_threads();
    const SamplingParams sampling = opts->sampling.get();
    LoadedModel loaded = opts->model.load();
    auto& model = loaded.model;
    const Tokenizer& tokenizer = loaded.tokenizer;
    const ChatFormat format = ChatFormat::from_template(load_chat_template(loaded.path));
    const bool interactive = isatty(STDIN_FILENO);
    std::vector<ChatMessage> history;
    if (!opts->system.empty()) history.push_back({"system", opts->system});
    Session session;
    if (interactive)
      fmt::print(stderr, "Chatting with {} ({} parameters). /reset starts over, /exit or Ctrl-D quits.\n",
                 model->info().name, model->info().parameters);
    std::string line;
    for (;;) {
      if (interactive) fmt::print(stderr, "\n> ");
      if (!std::getline(std::cin, line)) break;
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        history.resize(opts->system.empty() ? 0 : 1);
        fmt::print(stderr, "(conversation cleared)\n");
        continue;
      }
      if (line.empty()) continue;
      history.push_back({"user", line});
      GenerationRequest request;
      request.prompt = tokenizer.encode(format.render(history, true));
      request.sampling = sampling;
      request.stop_token_ids = default_stop_tokens(tokenizer);
      if (static_cast<int64_t>(request.prompt.size()) >= model->info().max_seq_len) {
        fmt::print(stderr, "error: the conversation ({} tokens) no longer fits the model's context of {}; /reset\n",
                   request.prompt.size(), model->info().max_seq_len);
        history.pop_back();
        continue;
      }
      auto result = generate(*model, tokenizer, session, request, [](std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
        return true;
      });
      std::fputc('\n', stdout);
      std::fflush(stdout);
      history.push_back({"assistant", result.text});
      if (interactive)
        fmt::print(stderr, "[{} tokens, {:.1f} tok/s]\n", result.stats.generated_tokens,
                   result.stats.decode_tokens_per_second());
    }
  });
}

}  // namespace tessera::cli
