#include <algorithm>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "models/llm/dbrx_presets.h"
#include "store/database.h"
#include "store/model_registry.h"
#include "store/time_spec.h"

namespace tessera::cli {

namespace {
// "132B", "9.0B", "6.6M": whole billions from 10B up, one decimal below.
std::string count_str(int64_t n) {
  if (n >= 9'950'000'000) return fmt::format("{:.0f}B", n / 1e9);
  if (n >= 1'000'000'000) return fmt::format("{:.1f}B", n / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.1f}M", n / 1e6);
  return fmt::format("{:.1f}K", n / 1e3);
}

nlohmann::json registered_json(const RegisteredModel& m) {
  return {{"name", m.name},
          {"version", m.version},
          {"versions", m.versions},
          {"path", m.path},
          {"source_run_id", m.source_run_id},
          {"description", m.description},
          {"created_ms", m.created_ms}};
}

void print_registered(const std::vector<RegisteredModel>& models, bool all_versions) {
  if (models.empty()) {
    fmt::print("no registered models (a training run registers one under its model_registry_path)\n");
    return;
  }
  size_t name_w = 4, path_w = 4, run_w = 3;
  for (const auto& m : models) {
    name_w = std::max(name_w, m.name.size());
    path_w = std::max(path_w, m.path.size());
    run_w = std::max(run_w, m.source_run_id.size());
  }
  const auto row = [&](const std::string& name, const std::string& version, const std::string& versions,
                       const std::string& path, const std::string& run, const std::string& created) {
    std::string line = all_versions ? fmt::format("{:<{}}  {:>7}  {:<{}}  {:<{}}  {}", name, name_w, version, path,
                                                  path_w, run, run_w, created)
                                    : fmt::format("{:<{}}  {:>7}  {:>8}  {:<{}}  {:<{}}  {}", name, name_w, version,
                                                  versions, path, path_w, run, run_w, created);
    line.erase(line.find_last_not_of(' ') + 1);
    fmt::print("{}\n", line);
  };
  row("NAME", all_versions ? "VERSION" : "LATEST", "VERSIONS", "PATH", "RUN", "CREATED");
  for (const auto& m : models)
    row(m.name, std::to_string(m.version), std::to_string(m.versions), m.path,
        m.source_run_id.empty() ? "-" : m.source_run_id, format_utc(m.created_ms / 1000));
}
}  // namespace

void register_models(CLI::App& app) {
  auto* models = app.add_subcommand("models", "Model presets and the model registry");
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

  struct ListOptions {
    bool json = false, all = false;
  };
  auto list_opts = std::make_shared<ListOptions>();
  auto* list = models->add_subcommand("list", "List registered models: the latest version of each name");
  list->add_flag("--json", list_opts->json, "Print JSON");
  list->add_flag("--all", list_opts->all, "Every version, not only the latest");
  list->callback([list_opts] {
    ModelRegistry registry(std::make_shared<Database>(default_database_file()));
    const auto all = registry.list(list_opts->all);
    if (list_opts->json) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& m : all) out.push_back(registered_json(m));
      fmt::print("{}\n", out.dump(2));
    } else {
      print_registered(all, list_opts->all);
    }
  });
}

}  // namespace tessera::cli
