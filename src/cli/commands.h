#pragma once
// Each subcommand registers itself on the root app; the callback runs the command and may
// throw tessera::Error, which main() prints as one line with exit code 2.
#include <CLI/CLI.hpp>

namespace tessera::cli {

void register_generate(CLI::App& app);
void register_chat(CLI::App& app);
void register_score(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_tokenizer(CLI::App& app);
void register_models(CLI::App& app);
void register_init(CLI::App& app);
void register_quantize(CLI::App& app);
void register_perf(CLI::App& app);
void register_image(CLI::App& app);
void register_serve(CLI::App& app);
void register_tokens(CLI::App& app);
void register_usage(CLI::App& app);
void register_runs(CLI::App& app);
// After register_runs: adds `runs resume` to it.
void register_train(CLI::App& app);
void register_finetune(CLI::App& app);
void register_train_image(CLI::App& app);

}  // namespace tessera::cli
