#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "models/llm/dbrx_presets.h"

namespace tessera::cli {

namespace {
// "132B", "9.0B", "6.6M": whole billions from 10B up, one decimal below.
std::string count_str(int64_t n) {
  if (n >= 9'950'000'000) return fmt::format("{:.0f}B", n / 1e9);
  if (n >= 1'000'000'000) return fmt::format("{:.1f}B", n / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.1f}M", n / 1e6);
  return fmt::format("{:.1f}K", n / 1e3);
}
}  // namespace

void register_models(CLI::App& app) {
  auto* models = app.add_subcommand("models", "Model presets");
  models->require_subcommand(1);
  auto* presets = models->add_subcommand("presets", "List the DBRX size presets with their parameter counts");
  auto json_out = std::make_shared<bool>(false);
  presets->add_flag("--json", *json_out, "Print JSON with exact counts and the full configs");
  presets->callback([json_out] {
    if (*json_out) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& p : dbrx_presets())
        out.push_back({{"name", p.name},
                       {"description", p.description},
                       {"parameters", p.config.parameter_count()},
                       {"active_parameters", p.config.active_parameter_count()},
                       {"config", p.config.to_json()}});
      fmt::print("{}\n", out.dump(2));
      return;
    }
    fmt::print("{:<11} {:>7} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}  {}\n", "NAME", "D_MODEL", "LAYERS", "HEADS",
               "EXPERTS", "FFN", "TOTAL", "ACTIVE", "DESCRIPTION");
    for (const auto& p : dbrx_presets()) {
      const auto& c = p.config;
      fmt::print("{:<11} {:>7} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}  {}\n", p.name, c.d_model, c.n_layers,
                 fmt::format("{}/{}", c.n_heads, c.kv_n_heads), fmt::format("{}/{}", c.moe_top_k, c.moe_num_experts),
                 c.ffn_hidden_size, count_str(c.parameter_count()), count_str(c.active_parameter_count()),
                 p.description);
    }
  });
}

}  // namespace tessera::cli
