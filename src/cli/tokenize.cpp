#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.h"
#include "cli/llm_options.h"
#include "core/error.h"
#include "models/llm/language_model.h"
#include "tokenizers/bpe_tokenizer.h"

namespace tessera::cli {

void register_tokenize(CLI::App& app) {
  struct Options {
    std::string model, text, file, tokens;
    bool no_special = false, count = false;
  };
  auto opts = std::make_shared<Options>();
  auto* tok = app.add_subcommand("tokenize", "Print the token ids of a text, comma-separated");
  tok->add_option("-m,--model", opts->model, "Model folder")->required();
  auto* text = tok->add_option("--text", opts->text, "Text to encode");
  tok->add_option("--file", opts->file, "Encode this file's contents instead")->excludes(text)->check(CLI::ExistingFile);
  tok->add_flag("--no-special", opts->no_special, "Treat special-token strings in the text as plain text");
  tok->add_flag("--count", opts->count, "Print only the number of tokens (and the encoding speed on stderr)");
  tok->callback([opts] {
    if (opts->file.empty() && opts->text.empty()) fail("tokenize: give --text TEXT or --file PATH");
    Tokenizer tokenizer = load_model_tokenizer(resolve_model_path(opts->model));
    std::string input = opts->text;
    if (!opts->file.empty()) {
      std::ifstream in(opts->file, std::ios::binary);
      input.assign(std::istreambuf_iterator<char>(in), {});
    }
    const auto start = std::chrono::steady_clock::now();
    const auto ids = tokenizer.encode(input, !opts->no_special);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (opts->count) {
      fmt::print("{}\n", ids.size());
      fmt::print(stderr, "encoded {} bytes into {} tokens in {:.3f} s ({:.1f} MB/s)\n", input.size(), ids.size(),
                 seconds, seconds > 0 ? input.size() / seconds / 1e6 : 0.0);
    } else {
      fmt::print("{}\n", fmt::join(ids, ","));
    }
  });

  auto* detok = app.add_subcommand("detokenize", "Print the text of comma-separated token ids");
  detok->add_option("-m,--model", opts->model, "Model folder")->required();
  detok->add_option("--tokens", opts->tokens, "Comma-separated token ids")->required();
  detok->callback([opts] {
    Tokenizer tokenizer = load_model_tokenizer(resolve_model_path(opts->model));
    const std::string text = tokenizer.decode(parse_token_list(opts->tokens));
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  });
}

}  // namespace tessera::cli
