#include <cstdio>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.h"
#include "cli/llm_options.h"
#include "tokenizers/bpe_tokenizer.h"

namespace tessera::cli {

void register_tokenize(CLI::App& app) {
  struct Options {
    std::string model, text, tokens;
    bool no_special = false;
  };
  auto opts = std::make_shared<Options>();
  auto* tok = app.add_subcommand("tokenize", "Print the token ids of a text, comma-separated");
  tok->add_option("-m,--model", opts->model, "Model folder")->required();
  tok->add_option("--text", opts->text, "Text to encode")->required();
  tok->add_flag("--no-special", opts->no_special, "Treat special-token strings in the text as plain text");
  tok->callback([opts] {
    Tokenizer tokenizer = Tokenizer::load_for_model(opts->model);
    fmt::print("{}\n", fmt::join(tokenizer.encode(opts->text, !opts->no_special), ","));
  });

  auto* detok = app.add_subcommand("detokenize", "Print the text of comma-separated token ids");
  detok->add_option("-m,--model", opts->model, "Model folder")->required();
  detok->add_option("--tokens", opts->tokens, "Comma-separated token ids")->required();
  detok->callback([opts] {
    Tokenizer tokenizer = Tokenizer::load_for_model(opts->model);
    const std::string text = tokenizer.decode(parse_token_list(opts->tokens));
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  });
}

}  // namespace tessera::cli
