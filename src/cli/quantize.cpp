#include <memory>

#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "models/llm/language_model.h"
#include "models/llm/quantize.h"

namespace tessera::cli {

void register_quantize(CLI::App& app) {
  struct Options {
    std::string model, to, out;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("quantize", "Write a model's weights as 8- or 4-bit blocks (GGUF) ahead of time");
  cmd->add_option("-m,--model", opts->model, "Source model: Hugging Face DBRX folder or .gguf file")->required();
  cmd->add_option("--to", opts->to, "q8_0, q4_0, q4_1 (or f16/bf16/f32)")->required();
  cmd->add_option("-o,--output", opts->out, "Output folder (model.gguf and the tokenizer files)")->required();
  cmd->callback([opts] {
    auto dtype = dtype_from_name(opts->to);
    if (!dtype) fail("--to: unknown type '{}' (use q8_0, q4_0 or q4_1)", opts->to);
    const auto written = quantize_model_files(resolve_model_path(opts->model), *dtype, opts->out);
    fmt::print("wrote {} ({:.1f} MB)\n", written.string(), std::filesystem::file_size(written) / 1e6);
  });
}

}  // namespace tessera::cli
