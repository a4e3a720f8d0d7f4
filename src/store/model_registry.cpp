#include "store/model_registry.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <random>
#include <system_error>

#include <fmt/format.h>

#include "core/error.h"

namespace tessera {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kMaxNameLength = 255;

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

std::vector<ModelFile> files_from_json(const std::string& text) {
  std::vector<ModelFile> out;
  const json j = json::parse(text, nullptr, false);
  if (!j.is_array()) return out;
  for (const auto& f : j)
    if (f.is_object() && f.value("name", json()).is_string())
      out.push_back({f["name"].get<std::string>(), f.value("bytes", int64_t{0})});
  return out;
}

json files_to_json(const std::vector<ModelFile>& files) {
  json out = json::array();
  for (const auto& f : files) out.push_back({{"name", f.name}, {"bytes", f.bytes}});
  return out;
}

// Reads the columns "name, version, path, source_run_id, description, created_ms, versions, lineage, files".
RegisteredModel read_model(const Statement& s) {
  RegisteredModel m;
  m.name = s.column_text(0);
  m.version = s.column_int(1);
  m.path = s.column_text(2);
  m.source_run_id = s.column_text(3);
  m.description = s.column_text(4);
  m.created_ms = s.column_int(5);
  m.versions = s.column_int(6);
  // A row whose lineage does not parse (edited by hand) still lists; its lineage reads empty.
  try {
    m.lineage = ModelLineage::from_json(json::parse(s.column_text(7)));
  } catch (const std::exception&) {
  }
  m.files = files_from_json(s.column_text(8));
  return m;
}

bool has_weights(const fs::path& folder) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    const auto ext = entry.path().extension();
    if (ext == ".safetensors" || ext == ".gguf") return true;
  }
  return false;
}

// Training state that a checkpoint carries but a model does not need.
bool training_state(const std::string& name) {
  return name == "trainer_state.json" || (name.starts_with("optimizer") && name.ends_with(".safetensors"));
}

std::string random_suffix() {
  std::random_device rd;
  return fmt::format("{:08x}", rd());
}

// Staging folders are named ".staging-<pid>-<random>", so a leftover of a process that died can
// be told from one that another process is still filling.
bool stale_staging(const std::string& name) {
  if (!name.starts_with(".staging-")) return false;
  const std::string_view rest = std::string_view(name).substr(9);
  long pid = 0;
  const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), pid);
  if (ec != std::errc() || pid <= 0) return true;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

// Links `from` to `to`, or copies it when a link is not possible (another filesystem, or a
// filesystem without hard links).
void link_or_copy(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::create_hard_link(from, to, ec);
  if (!ec) return;
  fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
  if (ec) fail("{}: cannot copy into the registry ({}): {}", from.string(), to.string(), ec.message());
}

void remove_quietly(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
}

// Removes the now-empty model, schema and catalog folders above a deleted version.
void prune_empty(const fs::path& folder, const fs::path& root) {
  std::error_code ec;
  for (fs::path p = folder; p != root && p.has_parent_path() && p.string().size() > root.string().size();
       p = p.parent_path()) {
    if (!fs::is_empty(p, ec) || ec) return;
    fs::remove(p, ec);
  }
}

std::string string_at(const json& j, const char* key) {
  if (!j.contains(key)) return "";
  if (!j[key].is_string()) fail("model lineage: '{}' must be a string", key);
  return j[key].get<std::string>();
}

}  // namespace

std::string RegisteredModel::reference() const { return fmt::format("{}/{}", name, version); }

int64_t RegisteredModel::total_bytes() const {
  int64_t total = 0;
  for (const auto& f : files) total += f.bytes;
  return total;
}

json ModelLineage::to_json() const {
  json j = json::object();
  if (!base_model.empty()) j["base_model"] = base_model;
  if (!task.empty()) j["task"] = task;
  if (!data_paths.empty()) j["data_paths"] = data_paths;
  if (!data_sha256.empty()) j["data_sha256"] = data_sha256;
  if (hyperparameters.is_object() && !hyperparameters.empty()) j["hyperparameters"] = hyperparameters;
  if (metrics.is_object() && !metrics.empty()) j["metrics"] = metrics;
  if (!run_id.empty()) j["run_id"] = run_id;
  return j;
}

ModelLineage ModelLineage::from_json(const json& j) {
  if (!j.is_object()) fail("model lineage: expected a JSON object");
  ModelLineage l;
  l.base_model = string_at(j, "base_model");
  l.task = string_at(j, "task");
  l.data_sha256 = string_at(j, "data_sha256");
  l.run_id = string_at(j, "run_id");
  if (j.contains("data_paths")) {
    const auto& d = j["data_paths"];
    if (!d.is_array()) fail("model lineage: 'data_paths' must be a list of strings");
    for (const auto& p : d) {
      if (!p.is_string()) fail("model lineage: 'data_paths' must be a list of strings");
      l.data_paths.push_back(p.get<std::string>());
    }
  }
  for (const auto& [key, field] : {std::pair{"hyperparameters", &l.hyperparameters}, std::pair{"metrics", &l.metrics}}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_object()) fail("model lineage: '{}' must be a JSON object", key);
    *field = j[key];
  }
  return l;
}

bool ModelLineage::empty() const { return to_json().empty(); }

void check_model_name(std::string_view name) {
  if (name.empty()) fail("model name: must not be empty (expected catalog.schema.model)");
  if (name.size() > kMaxNameLength)
    fail("model name '{}...': {} characters is too long (at most {})", name.substr(0, 40), name.size(),
         kMaxNameLength);
  size_t parts = 1;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (c == '.') {
      if (i == 0 || i + 1 == name.size() || name[i + 1] == '.')
        fail("model name '{}': every part of catalog.schema.model must be non-empty", name);
      ++parts;
    } else if (!name_char(c)) {
      fail("model name '{}': '{}' is not allowed (each part of catalog.schema.model is letters, digits, '_' or '-')",
           name, c);
    }
  }
  if (parts != 3) fail("model name '{}': expected three parts, catalog.schema.model, got {}", name, parts);
}

std::pair<std::string, std::optional<int64_t>> parse_model_reference(const std::string& reference) {
  std::string name = reference;
  std::optional<int64_t> version;
  if (const size_t slash = reference.find('/'); slash != std::string::npos) {
    name = reference.substr(0, slash);
    const std::string_view digits = std::string_view(reference).substr(slash + 1);
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || v <= 0)
      fail("model '{}': the version after '/' must be a positive number (catalog.schema.model/3)", reference);
    version = v;
  }
  check_model_name(name);
  return {name, version};
}

std::vector<fs::path> registrable_files(const fs::path& folder) {
  std::vector<fs::path> out;
  std::error_code ec;
  fs::directory_iterator it(folder, ec), end;
  if (ec) fail("{}: cannot list the folder: {}", folder.string(), ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) fail("{}: cannot list the folder: {}", folder.string(), ec.message());
    const std::string name = it->path().filename().string();
    if (name.starts_with(".") || name.ends_with(".tmp") || training_state(name)) continue;
    if (it->is_regular_file(ec)) out.push_back(it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

ModelRegistry::ModelRegistry(std::shared_ptr<Database> db, std::function<int64_t()> now_ms, fs::path storage_root)
    : db_(std::move(db)), now_ms_(std::move(now_ms)), root_(std::move(storage_root)) {
  if (!db_) fail("model registry: no database");
  if (root_.empty()) root_ = db_->file().parent_path() / "registry";
  std::error_code ec;
  root_ = fs::absolute(root_, ec).lexically_normal();
}

fs::path ModelRegistry::model_folder(const std::string& name) const {
  check_model_name(name);
  const size_t first = name.find('.'), second = name.find('.', first + 1);
  fs::path folder = root_ / name.substr(0, first) / name.substr(first + 1, second - first - 1) / name.substr(second + 1);
  return folder;
}

int64_t ModelRegistry::now() const {
  if (now_ms_) return now_ms_();
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

RegisteredModel ModelRegistry::register_model(const std::string& name, const fs::path& path,
                                              const std::string& source_run_id, const std::string& description,
                                              ModelLineage lineage) {
  check_model_name(name);
  if (path.empty()) fail("model '{}': no model folder given", name);
  std::error_code ec;
  const auto folder = fs::absolute(path, ec).lexically_normal();
  if (ec) fail("{}: cannot make the path absolute: {}", path.string(), ec.message());
  if (!fs::is_directory(folder, ec)) fail("{}: not a folder (a model folder is registered)", folder.string());
  // A LoRA adapter kept apart from its base model has adapter_config.json instead.
  if (!fs::is_regular_file(folder / "config.json", ec) && !fs::is_regular_file(folder / "adapter_config.json", ec))
    fail("{}: no config.json or adapter_config.json (not a model folder)", folder.string());
  if (!has_weights(folder)) fail("{}: no weights (*.safetensors or *.gguf)", folder.string());

  RegisteredModel m;
  m.name = name;
  m.source_run_id = source_run_id.empty() ? lineage.run_id : source_run_id;
  if (lineage.run_id.empty()) lineage.run_id = m.source_run_id;
  m.description = description;
  m.created_ms = now();
  m.lineage = std::move(lineage);

  // 1. The files, into a staging folder beside the versions (same filesystem: the rename below
  // is atomic).
  const fs::path model_dir = model_folder(name);
  fs::create_directories(model_dir, ec);
  if (ec) fail("{}: cannot create the registry folder: {}", model_dir.string(), ec.message());
  for (const auto& entry : fs::directory_iterator(model_dir, ec))
    if (stale_staging(entry.path().filename().string())) remove_quietly(entry.path());
  const fs::path staging = model_dir / fmt::format(".staging-{}-{}", ::getpid(), random_suffix());
  fs::path placed;
  try {
    fs::create_directory(staging, ec);
    if (ec) fail("{}: cannot create the folder: {}", staging.string(), ec.message());
    for (const auto& file : registrable_files(folder)) {
      link_or_copy(file, staging / file.filename());
      const auto bytes = fs::file_size(staging / file.filename(), ec);
      m.files.push_back({file.filename().string(), ec ? 0 : static_cast<int64_t>(bytes)});
    }

    // 2. The version number, the folder's final name and the row, under the write lock, so that
    // two registrations at once get different versions and folders.
    db_->write([&](Database::Session& session) {
      auto& last = session.prepare("SELECT COALESCE(MAX(version), 0) FROM registered_models WHERE name = ?1");
      last.bind_text(1, name);
      last.step();
      m.version = last.column_int(0) + 1;
      last.reset();
      const fs::path target = model_dir / std::to_string(m.version);
      // A folder without a row: the remains of a registration that crashed before its commit.
      if (fs::exists(target, ec)) remove_quietly(target);
      fs::rename(staging, target, ec);
      if (ec) fail("{}: cannot move the files into place: {}", target.string(), ec.message());
      placed = target;
      m.path = target.string();
      session
          .prepare("INSERT INTO registered_models (name, version, path, source_run_id, description, created_ms,"
                   " lineage, files) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
          .bind_text(1, name)
          .bind_int(2, m.version)
          .bind_text(3, m.path)
          .bind_text(4, m.source_run_id)
          .bind_text(5, description)
          .bind_int(6, m.created_ms)
          .bind_text(7, m.lineage.to_json().dump())
          .bind_text(8, files_to_json(m.files).dump())
          .run();
    });
  } catch (...) {
    remove_quietly(staging);
    if (!placed.empty()) remove_quietly(placed);
    throw;
  }
  m.versions = m.version;
  return m;
}

std::vector<RegisteredModel> ModelRegistry::list(bool all_versions) const {
  return db_->read([&](Database::Session& session) {
    auto& s = session.prepare(
        "SELECT m.name, m.version, m.path, m.source_run_id, m.description, m.created_ms, c.n, m.lineage, m.files"
        " FROM registered_models m JOIN (SELECT name, COUNT(*) AS n, MAX(version) AS latest"
        " FROM registered_models GROUP BY name) c ON c.name = m.name"
        " WHERE ?1 OR m.version = c.latest ORDER BY m.name, m.version DESC");
    s.bind_int(1, all_versions ? 1 : 0);
    std::vector<RegisteredModel> out;
    while (s.step()) out.push_back(read_model(s));
    return out;
  });
}

std::optional<RegisteredModel> ModelRegistry::get(const std::string& name, std::optional<int64_t> version) const {
  return db_->read([&](Database::Session& session) -> std::optional<RegisteredModel> {
    auto& s = session.prepare(
        "SELECT name, version, path, source_run_id, description, created_ms,"
        " (SELECT COUNT(*) FROM registered_models WHERE name = ?1), lineage, files"
        " FROM registered_models WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1");
    s.bind_text(1, name).bind_int(2, version);
    if (!s.step()) return std::nullopt;
    return read_model(s);
  });
}

std::vector<RegisteredModel> ModelRegistry::versions(const std::string& name) const {
  return db_->read([&](Database::Session& session) {
    auto& s = session.prepare(
        "SELECT name, version, path, source_run_id, description, created_ms,"
        " (SELECT COUNT(*) FROM registered_models WHERE name = ?1), lineage, files"
        " FROM registered_models WHERE name = ?1 ORDER BY version DESC");
    s.bind_text(1, name);
    std::vector<RegisteredModel> out;
    while (s.step()) out.push_back(read_model(s));
    return out;
  });
}

RegisteredModel ModelRegistry::resolve(const std::string& reference) const {
  const auto [name, version] = parse_model_reference(reference);
  if (auto m = get(name, version)) return std::move(*m);
  if (version && get(name)) fail("model '{}' has no version {} (see `tessera models list`)", name, *version);
  fail("no registered model '{}' (see `tessera models list`)", name);
}

std::vector<RegisteredModel> ModelRegistry::delete_model(const std::string& name, std::optional<int64_t> version) {
  check_model_name(name);
  std::vector<RegisteredModel> gone = versions(name);
  if (version) std::erase_if(gone, [&](const RegisteredModel& m) { return m.version != *version; });
  if (gone.empty()) {
    if (version && get(name)) fail("model '{}' has no version {} (see `tessera models list --all`)", name, *version);
    fail("no registered model '{}' (see `tessera models list`)", name);
  }
  // The rows go in one transaction; the registry's own folders are moved aside inside it (and
  // moved back if anything fails), then removed once the rows are gone for good. Folders
  // outside the registry (rows made before it stored files) are left alone.
  std::vector<std::pair<fs::path, fs::path>> moved;  // {folder, trash}
  const fs::path model_dir = model_folder(name);
  try {
    db_->write([&](Database::Session& session) {
      for (const auto& m : gone) {
        session.prepare("DELETE FROM registered_models WHERE name = ?1 AND version = ?2")
            .bind_text(1, name)
            .bind_int(2, m.version)
            .run();
        const fs::path folder = fs::path(m.path).lexically_normal();
        if (folder.parent_path() != model_dir) continue;
        std::error_code ec;
        if (!fs::exists(folder, ec)) continue;
        const fs::path trash = model_dir / fmt::format(".staging-{}-{}-deleted", ::getpid(), random_suffix());
        fs::rename(folder, trash, ec);
        if (ec) fail("{}: cannot delete the folder: {}", folder.string(), ec.message());
        moved.emplace_back(folder, trash);
      }
    });
  } catch (...) {
    for (const auto& [folder, trash] : moved) {
      std::error_code ec;
      fs::rename(trash, folder, ec);
    }
    throw;
  }
  for (const auto& [folder, trash] : moved) remove_quietly(trash);
  prune_empty(model_dir, root_);
  return gone;
}

}  // namespace tessera
