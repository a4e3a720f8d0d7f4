#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "models/llm/dbrx_presets.h"
#include "core/error.h"
#include "store/data_hash.h"
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

// "512 B", "1.2 KB", "24.0 MB", "3.10 GB"
std::string bytes_str(int64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  if (n < (int64_t{1} << 20)) return fmt::format("{:.1f} KB", n / 1024.0);
  if (n < (int64_t{1} << 30)) return fmt::format("{:.1f} MB", n / 1048576.0);
  return fmt::format("{:.2f} GB", n / 1073741824.0);
}

nlohmann::json registered_json(const RegisteredModel& m, bool details = false) {
  nlohmann::json j = {{"name", m.name},
                      {"version", m.version},
                      {"versions", m.versions},
                      {"path", m.path},
                      {"source_run_id", m.source_run_id},
                      {"description", m.description},
                      {"created_ms", m.created_ms}};
  if (details) {
    j["lineage"] = m.lineage.to_json();
    nlohmann::json files = nlohmann::json::array();
    for (const auto& f : m.files) files.push_back({{"name", f.name}, {"bytes", f.bytes}});
    j["files"] = files;
    j["total_bytes"] = m.total_bytes();
  }
  return j;
}

ModelRegistry open_registry() { return ModelRegistry(std::make_shared<Database>(default_database_file())); }

// A JSON value as one short line: strings without quotes, numbers as written.
std::string value_str(const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

void print_details(const RegisteredModel& m, const std::vector<RegisteredModel>& others) {
  fmt::print("Model {} version {} (of {})\n", m.name, m.version, m.versions);
  fmt::print("  path:         {}\n", m.path);
  fmt::print("  created:      {}\n", format_utc(m.created_ms / 1000));
  fmt::print("  run:          {}\n", m.source_run_id.empty() ? "- (registered by hand)" : m.source_run_id);
  if (!m.description.empty()) fmt::print("  description:  {}\n", m.description);
  const ModelLineage& l = m.lineage;
  fmt::print("Lineage:\n");
  if (l.empty()) fmt::print("  (none recorded)\n");
  if (!l.base_model.empty()) fmt::print("  base model:   {}\n", l.base_model);
  if (!l.task.empty()) fmt::print("  task:         {}\n", l.task);
  for (size_t i = 0; i < l.data_paths.size(); ++i)
    fmt::print("  {}{}\n", i == 0 ? "data:         " : "              ", l.data_paths[i]);
  if (!l.data_sha256.empty()) fmt::print("  data sha256:  {}\n", l.data_sha256);
  if (!l.hyperparameters.empty()) {
    fmt::print("  hyperparameters:\n");
    for (const auto& [k, v] : l.hyperparameters.items()) fmt::print("    {}: {}\n", k, value_str(v));
  }
  if (!l.metrics.empty()) {
    fmt::print("  metrics:\n");
    for (const auto& [k, v] : l.metrics.items()) fmt::print("    {}: {}\n", k, value_str(v));
  }
  fmt::print("Files ({}, {}):\n", m.files.size(), bytes_str(m.total_bytes()));
  size_t w = 4;
  for (const auto& f : m.files) w = std::max(w, f.name.size());
  std::error_code ec;
  for (const auto& f : m.files) {
    const bool there = std::filesystem::exists(std::filesystem::path(m.path) / f.name, ec);
    fmt::print("  {:<{}}  {:>10}{}\n", f.name, w, bytes_str(f.bytes), there ? "" : "  (missing)");
  }
  if (others.size() > 1) {
    fmt::print("Versions:\n");
    for (const auto& o : others)
      fmt::print("  {:>4}  {}  {}\n", o.version, format_utc(o.created_ms / 1000),
                 o.source_run_id.empty() ? "-" : o.source_run_id);
  }
}

// Asks on the terminal; refuses outright when there is no terminal to ask on.
void confirm(const std::string& question) {
  if (!isatty(STDIN_FILENO))
    fail("{}: refusing without --yes (no terminal to confirm on)", question);
  fmt::print("{} [y/N] ", question);
  std::fflush(stdout);
  std::string answer;
  std::getline(std::cin, answer);
  if (answer != "y" && answer != "Y" && answer != "yes") fail("not confirmed: nothing was deleted");
}

void print_registered(const std::vector<RegisteredModel>& models, bool all_versions) {
  if (models.empty()) {
    fmt::print("no registered models (a training run registers one under its model_registry_path; `tessera models register` adds one by hand)\n");
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

  struct ShowOptions {
    std::string reference;
    bool json = false;
  };
  auto show_opts = std::make_shared<ShowOptions>();
  auto* show = models->add_subcommand("show", "Show a registered model: its fields, lineage and files");
  show->add_option("model", show_opts->reference, "catalog.schema.model (the latest version) or catalog.schema.model/3")
      ->required();
  show->add_flag("--json", show_opts->json, "Print JSON");
  show->callback([show_opts] {
    const ModelRegistry registry = open_registry();
    const RegisteredModel m = registry.resolve(show_opts->reference);
    const auto all = registry.versions(m.name);
    if (show_opts->json) {
      nlohmann::json out = registered_json(m, true);
      nlohmann::json versions = nlohmann::json::array();
      for (const auto& o : all) versions.push_back(o.version);
      out["all_versions"] = versions;
      fmt::print("{}\n", out.dump(2));
    } else {
      print_details(m, all);
    }
  });

  struct DeleteOptions {
    std::string reference;
    bool yes = false;
  };
  auto delete_opts = std::make_shared<DeleteOptions>();
  auto* del = models->add_subcommand("delete", "Delete a registered model (every version) or one version, with its files");
  del->add_option("model", delete_opts->reference, "catalog.schema.model (every version) or catalog.schema.model/3")
      ->required();
  del->add_flag("--yes,-y", delete_opts->yes, "Do not ask for confirmation (needed when not on a terminal)");
  del->callback([delete_opts] {
    ModelRegistry registry = open_registry();
    const auto [name, version] = parse_model_reference(delete_opts->reference);
    // Resolving first gives the usual errors for a missing name or version before asking.
    registry.resolve(delete_opts->reference);
    if (!delete_opts->yes) {
      const auto count = registry.versions(name).size();
      confirm(version ? fmt::format("delete {} version {} and its files?", name, *version)
                      : fmt::format("delete {} ({} version{}) and its files?", name, count, count == 1 ? "" : "s"));
    }
    const auto gone = registry.delete_model(name, version);
    for (const auto& m : gone) fmt::print("deleted {}\n", m.reference());
  });

  struct RegisterOptions {
    std::string name, path, description, task, base_model;
    std::vector<std::string> data;
  };
  auto reg_opts = std::make_shared<RegisterOptions>();
  auto* reg = models->add_subcommand("register", "Register a model folder as the next version of a name");
  reg->add_option("name", reg_opts->name, "catalog.schema.model")->required();
  reg->add_option("--path", reg_opts->path, "The model folder (config.json, weights, tokenizer files)")->required();
  reg->add_option("--description", reg_opts->description, "Free text shown by `models show`");
  reg->add_option("--task", reg_opts->task, "Lineage: what the model was trained for");
  reg->add_option("--base-model", reg_opts->base_model, "Lineage: the model it was trained from");
  reg->add_option("--data", reg_opts->data, "Lineage: training data file or folder (repeatable; hashed)");
  reg->callback([reg_opts] {
    ModelLineage lineage;
    lineage.task = reg_opts->task;
    lineage.base_model = reg_opts->base_model;
    if (!reg_opts->data.empty()) {
      std::vector<std::filesystem::path> paths;
      for (const auto& d : reg_opts->data) {
        std::error_code ec;
        paths.push_back(std::filesystem::absolute(d, ec).lexically_normal());
        lineage.data_paths.push_back(paths.back().string());
      }
      lineage.data_sha256 = hash_data_files(paths);
    }
    ModelRegistry registry = open_registry();
    const auto m = registry.register_model(reg_opts->name, reg_opts->path, "", reg_opts->description, lineage);
    fmt::print("registered {} version {} ({} files, {}) at {}\n", m.name, m.version, m.files.size(),
               bytes_str(m.total_bytes()), m.path);
  });
}

}  // namespace tessera::cli
