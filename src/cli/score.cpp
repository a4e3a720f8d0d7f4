#include <cstdio>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/llm_options.h"
#include "models/llm/language_model.h"

namespace tessera::cli {

void register_score(CLI::App& app) {
  struct Options {
    ModelOptions model;
    std::string tokens;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("score", "Print the full logits of every position as JSON {\"logits\": [[...], ...]}");
  opts->model.add(*cmd);
  cmd->add_option("--tokens", opts->tokens, "Comma-separated token ids")->required();
  cmd->callback([opts] {
    opts->model.apply_threads();
    const auto ids = parse_token_list(opts->tokens);
    auto model = opts->model.load().model;
    KvCache cache = model->new_cache();
    Tensor logits = model->forward(ids, cache, true);
    const int64_t vocab = logits.dim(1);
    const float* data = logits.data<float>();
    std::string out = "{\"logits\": [";
    for (int64_t r = 0; r < logits.dim(0); ++r) {
      out += r ? ", [" : "[";
      for (int64_t c = 0; c < vocab; ++c) {
        if (c) out += ", ";
        out += fmt::format("{}", data[r * vocab + c]);  // shortest text that reads back exactly
      }
      out += "]";
    }
    out += "]}\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
  });
}

}  // namespace tessera::cli
