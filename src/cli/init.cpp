#include <memory>

#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "models/llm/dbrx_init.h"
#include "models/llm/dbrx_presets.h"

namespace tessera::cli {

void register_init(CLI::App& app) {
  struct Options {
    std::string preset, config, out, dtype = "f32";
    uint64_t seed = 0;
  };
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("init", "Write a randomly initialised checkpoint of a preset (Hugging Face layout)");
  auto* preset = cmd->add_option("--preset", opts->preset, "Preset name (see `tessera models presets`)");
  auto* config = cmd->add_option("--config", opts->config, "A DBRX config.json to use instead of a preset");
  preset->excludes(config);
  cmd->add_option("-o,--output", opts->out, "Output folder")->required();
  cmd->add_option("--seed", opts->seed, "Random seed")->capture_default_str();
  cmd->add_option("--dtype", opts->dtype, "f32, bf16 or f16")->capture_default_str();
  cmd->callback([opts] {
    if (opts->preset.empty() && opts->config.empty()) fail("init: give --preset NAME or --config FILE");
    std::optional<DbrxPreset> preset;
    if (!opts->config.empty()) {
      preset = DbrxPreset{opts->config, "from " + opts->config, DbrxConfig::load(opts->config)};
    } else {
      preset = find_dbrx_preset(opts->preset);
      if (!preset) fail("--preset: unknown preset '{}' (see `tessera models presets`)", opts->preset);
    }
    auto dtype = dtype_from_name(opts->dtype);
    if (!dtype) fail("--dtype: unknown dtype '{}'", opts->dtype);
    DbrxInitOptions init;
    init.seed = opts->seed;
    init.dtype = *dtype;
    write_random_dbrx(preset->config, opts->out, init);
    fmt::print("wrote {} ({} parameters, {}) to {}\n", preset->name, preset->config.parameter_count(), opts->dtype,
               opts->out);
  });
}

}  // namespace tessera::cli
