#include "store/model_registry.h"

#include <charconv>
#include <chrono>
#include <system_error>

#include <fmt/format.h>

#include "core/error.h"

namespace tessera {

namespace {

constexpr size_t kMaxNameLength = 255;

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

// Reads the columns "name, version, path, source_run_id, description, created_ms, versions".
RegisteredModel read_model(const Statement& s) {
  RegisteredModel m;
  m.name = s.column_text(0);
  m.version = s.column_int(1);
  m.path = s.column_text(2);
  m.source_run_id = s.column_text(3);
  m.description = s.column_text(4);
  m.created_ms = s.column_int(5);
  m.versions = s.column_int(6);
  return m;
}

bool has_weights(const std::filesystem::path& folder) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
    const auto ext = entry.path().extension();
    if (ext == ".safetensors" || ext == ".gguf") return true;
  }
  return false;
}

}  // namespace

std::string RegisteredModel::reference() const { return fmt::format("{}/{}", name, version); }

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

ModelRegistry::ModelRegistry(std::shared_ptr<Database> db, std::function<int64_t()> now_ms)
    : db_(std::move(db)), now_ms_(std::move(now_ms)) {
  if (!db_) fail("model registry: no database");
}

int64_t ModelRegistry::now() const {
  if (now_ms_) return now_ms_();
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

RegisteredModel ModelRegistry::register_model(const std::string& name, const std::filesystem::path& path,
                                              const std::string& source_run_id, const std::string& description) {
  check_model_name(name);
  if (path.empty()) fail("model '{}': no model folder given", name);
  std::error_code ec;
  const auto folder = std::filesystem::absolute(path, ec).lexically_normal();
  if (ec) fail("{}: cannot make the path absolute: {}", path.string(), ec.message());
  if (!std::filesystem::is_directory(folder, ec)) fail("{}: not a folder (a model folder is registered)", folder.string());
  if (!std::filesystem::is_regular_file(folder / "config.json", ec))
    fail("{}: no config.json (not a model folder)", folder.string());
  if (!has_weights(folder)) fail("{}: no weights (*.safetensors or *.gguf)", folder.string());

  RegisteredModel m;
  m.name = name;
  m.path = folder.string();
  m.source_run_id = source_run_id;
  m.description = description;
  m.created_ms = now();
  // The next version is read and taken in one write transaction, so two registrations at once
  // get different versions.
  db_->write([&](Database::Session& session) {
    auto& last = session.prepare("SELECT COALESCE(MAX(version), 0) FROM registered_models WHERE name = ?1");
    last.bind_text(1, name);
    last.step();
    m.version = last.column_int(0) + 1;
    last.reset();
    session
        .prepare("INSERT INTO registered_models (name, version, path, source_run_id, description, created_ms)"
                 " VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .bind_text(1, name)
        .bind_int(2, m.version)
        .bind_text(3, m.path)
        .bind_text(4, source_run_id)
        .bind_text(5, description)
        .bind_int(6, m.created_ms)
        .run();
  });
  m.versions = m.version;
  return m;
}

std::vector<RegisteredModel> ModelRegistry::list(bool all_versions) const {
  return db_->read([&](Database::Session& session) {
    auto& s = session.prepare(
        "SELECT m.name, m.version, m.path, m.source_run_id, m.description, m.created_ms, c.n"
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
        " (SELECT COUNT(*) FROM registered_models WHERE name = ?1)"
        " FROM registered_models WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1");
    s.bind_text(1, name).bind_int(2, version);
    if (!s.step()) return std::nullopt;
    return read_model(s);
  });
}

RegisteredModel ModelRegistry::resolve(const std::string& reference) const {
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
  if (auto m = get(name, version)) return std::move(*m);
  if (version && get(name)) fail("model '{}' has no version {} (see `tessera models list`)", name, *version);
  fail("no registered model '{}' (see `tessera models list`)", name);
}

}  // namespace tessera
