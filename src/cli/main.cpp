#include <cstdio>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"tessera: a self-hosted generative AI platform", "tessera"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "tessera 0.1.0");
  tessera::cli::register_generate(app);
  tessera::cli::register_chat(app);
  tessera::cli::register_score(app);
  tessera::cli::register_tokenize(app);
  tessera::cli::register_tokenizer(app);
  tessera::cli::register_models(app);
  tessera::cli::register_init(app);
  tessera::cli::register_quantize(app);
  tessera::cli::register_perf(app);
  tessera::cli::register_image(app);
  tessera::cli::register_serve(app);
  tessera::cli::register_tokens(app);
  tessera::cli::register_usage(app);
  tessera::cli::register_runs(app);
  tessera::cli::register_train(app);
  tessera::cli::register_finetune(app);
  tessera::cli::register_train_image(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const tessera::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "error: out of memory\n");
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  }
  return 0;
}
