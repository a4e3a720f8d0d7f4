#include "training/train_config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "core/error.h"
#include "models/llm/dbrx_presets.h"

namespace fs = std::filesystem;

namespace tessera::training {

namespace {

constexpr int64_t kDefaultSeqLen = 512;
// Integer limits at or above this are only there to keep arithmetic safe: messages leave them out.
constexpr int64_t kUnbounded = int64_t{1} << 40;

// Edit distance with adjacent transpositions (so "trian" is one step from "train").
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// The closest candidate when it is close enough to be a likely typo.
std::optional<std::string> closest(std::string_view word, const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  size_t best_distance = 0;
  for (const auto& c : candidates) {
    const size_t dist = edit_distance(word, c);
    if (!best || dist < best_distance) {
      best = c;
      best_distance = dist;
    }
  }
  const size_t limit = std::max<size_t>(1, std::min<size_t>(3, word.size() / 3));
  if (best && best_distance <= limit) return best;
  return std::nullopt;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

std::string describe(const YAML::Node& node) {
  if (!node || node.IsNull()) return "nothing";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  std::string text = node.Scalar();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return fmt::format("'{}'", text);
}

// Formats errors as "file:line: key: problem".
struct Reader {
  std::string file;

  std::string place(const YAML::Node& node) const {
    if (node && node.Mark().line >= 0) return fmt::format("{}:{}", file, node.Mark().line + 1);
    return file;
  }
  [[noreturn]] void bad(const YAML::Node& at, const std::string& key, const std::string& what) const {
    if (key.empty()) fail("{}: {}", place(at), what);
    fail("{}: {}: {}", place(at), key, what);
  }

  std::string str(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar() || n.Scalar().empty()) bad(n, key, fmt::format("expected a string, got {}", describe(n)));
    return n.Scalar();
  }
  int64_t integer(const YAML::Node& n, const std::string& key, int64_t lo, int64_t hi) const {
    int64_t v = 0;
    bool ok = n.IsScalar();
    if (ok) {
      const std::string& s = n.Scalar();
      const auto [end, ec] = std::from_chars(s.data() + (!s.empty() && s[0] == '+'), s.data() + s.size(), v);
      ok = ec == std::errc() && end == s.data() + s.size() && !s.empty();
    }
    if (!ok) bad(n, key, fmt::format("expected a whole number, got {}", describe(n)));
    if (v < lo || v > hi) {
      if (hi >= kUnbounded) bad(n, key, fmt::format("must be at least {}, got {}", lo, v));
      bad(n, key, fmt::format("must be between {} and {}, got {}", lo, hi, v));
    }
    return v;
  }
  double number(const YAML::Node& n, const std::string& key) const {
    double v = 0;
    bool ok = n.IsScalar();
    if (ok) {
      try {
        v = n.as<double>();
      } catch (const YAML::Exception&) {
        ok = false;
      }
    }
    if (!ok || !std::isfinite(v)) bad(n, key, fmt::format("expected a number, got {}", describe(n)));
    return v;
  }
  // A number in [lo, hi] (open at the ends the flags say).
  double number_in(const YAML::Node& n, const std::string& key, double lo, double hi, bool lo_open = false,
                   bool hi_open = false) const {
    const double v = number(n, key);
    const bool ok = (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (!ok) {
      if (std::isinf(hi)) bad(n, key, fmt::format("must be {} {}, got {}", lo_open ? "greater than" : "at least", lo, v));
      bad(n, key, fmt::format("must be in {}{}, {}{}, got {}", lo_open ? "(" : "[", lo, hi, hi_open ? ")" : "]", v));
    }
    return v;
  }
  Duration duration(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) bad(n, key, fmt::format("expected a duration such as 2000ba, 1000000tok or 2ep, got {}", describe(n)));
    try {
      return Duration::parse(n.Scalar());
    } catch (const Error& e) {
      bad(n, key, e.what());
    }
  }
};

// One mapping of the file, its keys checked against the known ones (unknown or repeated keys
// are errors); lookups return the value node or an invalid node when the key is absent or null.
class Section {
 public:
  // `where` is the key path of this mapping ("" for the top level, "training", ...).
  // `at` places errors about the mapping as a whole (its key's line); defaults to the mapping.
  Section(const Reader& reader, const YAML::Node& node, std::string where, std::vector<std::string> known,
          const YAML::Node& at = YAML::Node(YAML::NodeType::Undefined))
      : reader_(reader), node_(at ? at : node), where_(std::move(where)) {
    if (!node.IsMap()) {
      const std::vector<std::string> some(known.begin(), known.begin() + std::min<size_t>(known.size(), 3));
      reader_.bad(node_, where_,
                  fmt::format("expected a mapping with keys such as {}{}, got {}", join(some), known.size() > 3 ? ", ..." : "",
                              describe(node)));
    }
    std::map<std::string, int> first_line;
    for (const auto& item : node) {
      const YAML::Node& key_node = item.first;
      if (!key_node.IsScalar()) reader_.bad(key_node, where_, fmt::format("expected a key name, got {}", describe(key_node)));
      const std::string key = key_node.Scalar();
      if (std::find(known.begin(), known.end(), key) == known.end()) {
        const std::string shown = where_.empty() ? key : where_ + "." + key;
        if (const auto guess = closest(key, known))
          reader_.bad(key_node, "", fmt::format("unknown key '{}' (did you mean '{}'?)", shown, *guess));
        reader_.bad(key_node, "", fmt::format("unknown key '{}' (known here: {})", shown, join(known)));
      }
      const int line = key_node.Mark().line + 1;
      if (const auto it = first_line.find(key); it != first_line.end())
        reader_.bad(key_node, path(key), fmt::format("given twice (also on line {})", it->second));
      first_line[key] = line;
      values_.emplace(key, item.second);
      keys_.emplace(key, key_node);
    }
  }

  std::string path(const std::string& key) const { return where_.empty() ? key : where_ + "." + key; }
  const YAML::Node& node() const { return node_; }

  // The value, or an invalid node when the key is absent or left empty (null).
  YAML::Node get(const std::string& key) const {
    const auto it = values_.find(key);
    if (it == values_.end() || it->second.IsNull()) return YAML::Node(YAML::NodeType::Undefined);
    return it->second;
  }
  YAML::Node require(const std::string& key) const {
    const auto it = values_.find(key);
    if (it == values_.end()) {
      if (where_.empty()) fail("{}: missing required key '{}'", reader_.file, key);
      reader_.bad(node_, where_, fmt::format("missing required key '{}'", key));
    }
    if (it->second.IsNull()) reader_.bad(keys_.at(key), path(key), "no value given");
    return it->second;
  }
  // The key's own node (for the line of errors about its whole value); invalid when absent.
  YAML::Node key_node(const std::string& key) const {
    const auto it = keys_.find(key);
    return it == keys_.end() ? YAML::Node(YAML::NodeType::Undefined) : it->second;
  }

 private:
  const Reader& reader_;
  YAML::Node node_;
  std::string where_;
  std::map<std::string, YAML::Node> values_, keys_;
};

fs::path expand_path(const std::string& text, const fs::path& base) {
  fs::path p = text;
  if (text == "~" || text.rfind("~/", 0) == 0) {
    if (const char* home = std::getenv("HOME"); home && *home) p = fs::path(home) / text.substr(std::min<size_t>(2, text.size()));
  }
  if (p.is_relative()) p = base / p;
  std::error_code ec;
  const fs::path absolute = fs::absolute(p, ec);
  return (ec ? p : absolute).lexically_normal();
}

bool has_data_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".txt" || ext == ".jsonl";
}

// train_data / eval_data: one path or a non-empty list; each must exist.
std::vector<fs::path> data_paths(const Reader& r, const YAML::Node& node, const std::string& key, const fs::path& base) {
  std::vector<YAML::Node> items;
  if (node.IsSequence()) {
    if (node.size() == 0) r.bad(node, key, "expected a file or folder, or a list of them, got an empty list");
    for (const auto& item : node) items.push_back(item);
  } else {
    items.push_back(node);
  }
  std::vector<fs::path> out;
  for (const auto& item : items) {
    if (!item.IsScalar() || item.Scalar().empty())
      r.bad(item, key, fmt::format("expected a file or folder, got {}", describe(item)));
    const fs::path p = expand_path(item.Scalar(), base);
    std::error_code ec;
    const auto status = fs::status(p, ec);
    if (!fs::exists(status)) r.bad(item, key, fmt::format("{}: no such file or folder", item.Scalar()));
    if (fs::is_regular_file(status) && !has_data_extension(p))
      r.bad(item, key, fmt::format("{}: not a .txt or .jsonl file", item.Scalar()));
    if (!fs::is_regular_file(status) && !fs::is_directory(status))
      r.bad(item, key, fmt::format("{}: not a file or folder", item.Scalar()));
    out.push_back(p);
  }
  return out;
}

// catalog.schema.name: three non-empty parts of letters, digits, '_' and '-'.
bool valid_registry_path(const std::string& text) {
  int parts = 1;
  size_t length = 0;
  for (char c : text) {
    if (c == '.') {
      if (length == 0) return false;
      ++parts;
      length = 0;
    } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-') {
      ++length;
    } else {
      return false;
    }
  }
  return parts == 3 && length > 0;
}

std::string registry_path(const Reader& r, const YAML::Node& node, const std::string& key) {
  const std::string text = r.str(node, key);
  if (!valid_registry_path(text))
    r.bad(node, key, fmt::format("expected a three-part name like catalog.schema.model_name, got '{}'", text));
  return text;
}

std::string preset_names() {
  std::vector<std::string> names;
  for (const auto& p : dbrx_presets()) names.push_back(p.name);
  return join(names);
}

void parse_model(const Reader& r, const YAML::Node& node, const fs::path& base, TrainConfig& c) {
  c.model = r.str(node, "model");
  if (find_dbrx_preset(c.model)) return;
  const fs::path p = expand_path(c.model, base);
  std::error_code ec;
  fs::path config_json;
  if (fs::is_directory(p, ec)) {
    config_json = p / "config.json";
    if (!fs::is_regular_file(config_json, ec)) r.bad(node, "model", fmt::format("{}: the folder has no config.json", c.model));
  } else if (fs::is_regular_file(p, ec)) {
    config_json = p;
  } else {
    std::vector<std::string> names;
    for (const auto& preset : dbrx_presets()) names.push_back(preset.name);
    if (const auto guess = closest(c.model, names))
      r.bad(node, "model", fmt::format("'{}' is not a preset (did you mean '{}'?) nor an existing config.json", c.model, *guess));
    r.bad(node, "model", fmt::format("'{}' is neither a preset ({}) nor an existing config.json or model folder", c.model,
                                     preset_names()));
  }
  c.model_config_path = config_json;
}

void parse_warmup(const Reader& r, const YAML::Node& n, Warmup& w) {
  const std::string key = "training.warmup";
  if (!n.IsScalar()) r.bad(n, key, fmt::format("expected <n>ba, <n>tok or a fraction such as 0.05, got {}", describe(n)));
  const std::string& text = n.Scalar();
  if (text.find_first_of(".eE") != std::string::npos && text.find("ep") == std::string::npos) {
    w.duration.reset();
    w.fraction = r.number_in(n, key, 0, 1);
    return;
  }
  w.duration = r.duration(n, key);
  if (w.duration->unit == Duration::Unit::Epochs) r.bad(n, key, "expected <n>ba, <n>tok or a fraction of max_duration, not epochs");
}

void parse_training(const Reader& r, const YAML::Node& node, const YAML::Node& key, TrainingOptions& t,
                    int64_t model_max_seq_len) {
  const Section s(r, node, "training",
                  {"max_duration", "global_batch_size", "micro_batch_size", "seq_len", "lr", "schedule", "warmup",
                   "min_lr_ratio", "weight_decay", "betas", "eps", "grad_clip", "seed", "eval_interval", "eval_batches",
                   "eval_fraction", "save_interval", "keep_last", "log_interval", "moe_loss_weight", "moe_jitter_eps"},
                  key);
  if (auto n = s.get("max_duration")) {
    t.max_duration = r.duration(n, s.path("max_duration"));
    if (t.max_duration.value <= 0) r.bad(n, s.path("max_duration"), fmt::format("must be positive, got {}", n.Scalar()));
  }
  if (auto n = s.get("global_batch_size")) t.global_batch_size = r.integer(n, s.path("global_batch_size"), 1, 1 << 20);
  t.micro_batch_size = t.global_batch_size;
  if (auto n = s.get("micro_batch_size")) {
    t.micro_batch_size = r.integer(n, s.path("micro_batch_size"), 1, 1 << 20);
    if (t.global_batch_size % t.micro_batch_size != 0)
      r.bad(n, s.path("micro_batch_size"),
            fmt::format("{} does not divide global_batch_size {}", t.micro_batch_size, t.global_batch_size));
  }
  t.seq_len = std::min(model_max_seq_len, kDefaultSeqLen);
  if (auto n = s.get("seq_len")) {
    t.seq_len = r.integer(n, s.path("seq_len"), 1, kUnbounded);
    if (t.seq_len > model_max_seq_len)
      r.bad(n, s.path("seq_len"), fmt::format("{} is more than the model's max_seq_len {}", t.seq_len, model_max_seq_len));
  }
  if (auto n = s.get("lr")) t.lr = r.number_in(n, s.path("lr"), 0, INFINITY, /*lo_open=*/true);
  if (auto n = s.get("schedule")) {
    const std::string name = r.str(n, s.path("schedule"));
    if (name == "cosine") t.schedule = LrSchedule::Cosine;
    else if (name == "linear") t.schedule = LrSchedule::Linear;
    else if (name == "constant") t.schedule = LrSchedule::Constant;
    else r.bad(n, s.path("schedule"), fmt::format("expected cosine, linear or constant, got '{}'", name));
  }
  if (auto n = s.get("warmup")) parse_warmup(r, n, t.warmup);
  if (auto n = s.get("min_lr_ratio")) t.min_lr_ratio = r.number_in(n, s.path("min_lr_ratio"), 0, 1);
  if (auto n = s.get("weight_decay")) t.weight_decay = r.number_in(n, s.path("weight_decay"), 0, INFINITY);
  if (auto n = s.get("betas")) {
    if (!n.IsSequence() || n.size() != 2)
      r.bad(n, s.path("betas"), fmt::format("expected a list of two numbers such as [0.9, 0.95], got {}", describe(n)));
    t.beta1 = r.number_in(n[0], s.path("betas[0]"), 0, 1, false, /*hi_open=*/true);
    t.beta2 = r.number_in(n[1], s.path("betas[1]"), 0, 1, false, /*hi_open=*/true);
  }
  if (auto n = s.get("eps")) t.eps = r.number_in(n, s.path("eps"), 0, INFINITY, /*lo_open=*/true);
  if (auto n = s.get("grad_clip")) t.grad_clip = r.number_in(n, s.path("grad_clip"), 0, INFINITY);
  if (auto n = s.get("seed")) t.seed = static_cast<uint64_t>(r.integer(n, s.path("seed"), 0, INT64_MAX));
  if (auto n = s.get("eval_interval")) t.eval_interval = r.duration(n, s.path("eval_interval"));
  if (auto n = s.get("eval_batches")) t.eval_batches = r.integer(n, s.path("eval_batches"), 0, kUnbounded);
  if (auto n = s.get("eval_fraction")) t.eval_fraction = r.number_in(n, s.path("eval_fraction"), 0, 1, false, /*hi_open=*/true);
  if (auto n = s.get("save_interval")) t.save_interval = r.duration(n, s.path("save_interval"));
  if (auto n = s.get("keep_last")) t.keep_last = r.integer(n, s.path("keep_last"), 0, 1 << 20);
  if (auto n = s.get("log_interval")) t.log_interval = r.integer(n, s.path("log_interval"), 1, kUnbounded);
  if (auto n = s.get("moe_loss_weight")) t.moe_loss_weight = r.number_in(n, s.path("moe_loss_weight"), 0, INFINITY);
  if (auto n = s.get("moe_jitter_eps")) t.moe_jitter_eps = r.number_in(n, s.path("moe_jitter_eps"), 0, 1);

  // Warmup longer than the whole run can only be told apart here when both use the same unit.
  if (const auto n = s.get("warmup"); n && t.warmup.duration && t.warmup.duration->unit == t.max_duration.unit &&
                                      t.warmup.duration->value > t.max_duration.value)
    r.bad(n, s.path("warmup"), fmt::format("{} is longer than max_duration {}", t.warmup.duration->str(), t.max_duration.str()));
}

}  // namespace

// ---------------------------------------------------------------------------------------------

int64_t Duration::to_steps(int64_t tokens_per_step, int64_t steps_per_epoch) const {
  switch (unit) {
    case Unit::Batches: return value;
    case Unit::Tokens:
      if (tokens_per_step <= 0) fail("duration {}: tokens per step must be positive", str());
      return (value + tokens_per_step - 1) / tokens_per_step;
    case Unit::Epochs:
      if (steps_per_epoch <= 0) fail("duration {}: steps per epoch must be positive", str());
      return value * steps_per_epoch;
  }
  return value;
}

std::string Duration::str() const {
  switch (unit) {
    case Unit::Batches: return fmt::format("{}ba", value);
    case Unit::Tokens: return fmt::format("{}tok", value);
    case Unit::Epochs: return fmt::format("{}ep", value);
  }
  return std::to_string(value);
}

Duration Duration::parse(std::string_view text) {
  const auto bad = [&]() {
    fail("expected a duration such as 2000ba, 1000000tok, 2ep or a number of steps, got '{}'", text);
  };
  size_t i = 0;
  std::string digits;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '_')) {
    if (text[i] != '_') digits += text[i];
    ++i;
  }
  if (digits.empty() || text[0] == '_') bad();
  Duration d;
  const std::string_view suffix = text.substr(i);
  if (suffix.empty() || suffix == "ba") d.unit = Unit::Batches;
  else if (suffix == "tok") d.unit = Unit::Tokens;
  else if (suffix == "ep") d.unit = Unit::Epochs;
  else bad();
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), d.value);
  if (ec != std::errc() || end != digits.data() + digits.size()) fail("duration '{}' is too large", text);
  return d;
}

std::string schedule_name(LrSchedule schedule) {
  switch (schedule) {
    case LrSchedule::Cosine: return "cosine";
    case LrSchedule::Linear: return "linear";
    case LrSchedule::Constant: return "constant";
  }
  return "?";
}

int64_t Warmup::to_steps(int64_t total_steps, int64_t tokens_per_step, int64_t steps_per_epoch) const {
  const int64_t steps = duration ? duration->to_steps(tokens_per_step, steps_per_epoch)
                                 : static_cast<int64_t>(std::llround(fraction * static_cast<double>(total_steps)));
  return std::clamp<int64_t>(steps, 0, total_steps);
}

std::string Warmup::str() const { return duration ? duration->str() : fmt::format("{}", fraction); }

StepPlan plan_steps(const TrainingOptions& t, int64_t windows_per_epoch) {
  if (windows_per_epoch <= 0) fail("training: no train sequences to plan steps for");
  StepPlan plan;
  plan.steps_per_epoch = std::max<int64_t>(1, windows_per_epoch / t.global_batch_size);
  const int64_t tokens = t.tokens_per_step();
  plan.total_steps = std::max<int64_t>(1, t.max_duration.to_steps(tokens, plan.steps_per_epoch));
  plan.warmup_steps = t.warmup.to_steps(plan.total_steps, tokens, plan.steps_per_epoch);
  plan.eval_interval = t.eval_interval.value == 0 ? 0 : std::max<int64_t>(1, t.eval_interval.to_steps(tokens, plan.steps_per_epoch));
  plan.save_interval = t.save_interval.value == 0 ? 0 : std::max<int64_t>(1, t.save_interval.to_steps(tokens, plan.steps_per_epoch));
  return plan;
}

std::optional<std::string> MlflowOptions::effective_tracking_uri() const {
  if (tracking_uri) return tracking_uri;
  if (const char* env = std::getenv("MLFLOW_TRACKING_URI"); env && *env) return std::string(env);
  return std::nullopt;
}

TrainConfig load_train_config(const fs::path& file) {
  std::error_code ec;
  if (fs::is_directory(file, ec)) fail("{}: is a folder, not a config file", file.string());
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot read the file (does it exist?)", file.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail("{}: cannot read the file", file.string());
  return parse_train_config(text.str(), file);
}

TrainConfig parse_train_config(std::string_view yaml, const fs::path& origin) {
  const Reader r{origin.string()};
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    if (e.mark.line >= 0) fail("{}:{}: not valid YAML: {}", r.file, e.mark.line + 1, e.msg);
    fail("{}: not valid YAML: {}", r.file, e.msg);
  }
  if (!root || root.IsNull()) fail("{}: the file is empty (expected model, train_data and save_folder)", r.file);
  if (!root.IsMap())
    r.bad(root, "", fmt::format("expected a mapping with model, train_data and save_folder, got {}", describe(root)));

  const Section top(r, root, "",
                    {"model", "train_data", "eval_data", "save_folder", "run_name", "experiment_tracker",
                     "model_registry_path", "compute", "training"});
  // Report every missing required key before anything else, in the order a user reads them.
  for (const char* key : {"model", "train_data", "save_folder"}) top.require(key);

  const fs::path base = origin.parent_path().empty() ? fs::path(".") : origin.parent_path();
  TrainConfig c;
  c.origin = origin;
  c.yaml_text = std::string(yaml);

  const YAML::Node model_node = top.require("model");
  parse_model(r, model_node, base, c);
  DbrxConfig model;
  try {
    model = resolve_model_config(c);
  } catch (const Error& e) {
    r.bad(model_node, "model", e.what());
  }

  c.train_data = data_paths(r, top.require("train_data"), "train_data", base);
  if (auto n = top.get("eval_data")) c.eval_data = data_paths(r, n, "eval_data", base);

  const YAML::Node save = top.require("save_folder");
  c.save_folder = expand_path(r.str(save, "save_folder"), base);
  {
    std::error_code ec;
    if (fs::exists(c.save_folder, ec) && !fs::is_directory(c.save_folder, ec))
      r.bad(save, "save_folder", fmt::format("{} exists and is not a folder", save.Scalar()));
  }

  if (auto n = top.get("run_name")) {
    c.run_name = r.str(n, "run_name");
    if (c.run_name->size() > 256 || c.run_name->find_first_of("\n\r\t") != std::string::npos)
      r.bad(n, "run_name", "must be one line of at most 256 characters");
  }
  if (auto n = top.get("model_registry_path")) c.model_registry_path = registry_path(r, n, "model_registry_path");

  if (auto n = top.get("experiment_tracker")) {
    const Section tracker(r, n, "experiment_tracker", {"mlflow"}, top.key_node("experiment_tracker"));
    if (auto m = tracker.get("mlflow")) {
      const Section s(r, m, "experiment_tracker.mlflow", {"experiment_path", "model_registry_path", "tracking_uri"},
                      tracker.key_node("mlflow"));
      MlflowOptions ml;
      ml.experiment_path = r.str(s.require("experiment_path"), s.path("experiment_path"));
      if (auto p = s.get("model_registry_path")) ml.model_registry_path = registry_path(r, p, s.path("model_registry_path"));
      if (auto u = s.get("tracking_uri")) {
        ml.tracking_uri = r.str(u, s.path("tracking_uri"));
        if (ml.tracking_uri->rfind("http://", 0) != 0 && ml.tracking_uri->rfind("https://", 0) != 0)
          r.bad(u, s.path("tracking_uri"), fmt::format("expected an http:// or https:// URL, got '{}'", *ml.tracking_uri));
      }
      c.mlflow = ml;
    }
  }

  if (auto n = top.get("compute")) {
    const Section s(r, n, "compute", {"gpus", "threads"}, top.key_node("compute"));
    if (auto g = s.get("gpus")) {
      c.compute.gpus = r.integer(g, s.path("gpus"), 0, 1024);
      // This build has no GPU kernels (TESSERA_CUDA adds none yet), so any GPU request is refused.
      if (c.compute.gpus > 0)
        r.bad(g, s.path("gpus"),
              fmt::format("{} GPU{} requested but this build has no GPU support (use gpus: 0 to train on the CPU)",
                          c.compute.gpus, c.compute.gpus == 1 ? "" : "s"));
    }
    if (auto t = s.get("threads")) c.compute.threads = r.integer(t, s.path("threads"), 0, 4096);
  }

  c.training.seq_len = std::min(model.max_seq_len, kDefaultSeqLen);
  if (auto n = top.get("training")) parse_training(r, n, top.key_node("training"), c.training, model.max_seq_len);
  // The overrides must leave a valid model (resolve_model_config checks it again).
  try {
    resolve_model_config(c);
  } catch (const Error& e) {
    r.bad(top.key_node("training"), "training", e.what());
  }
  return c;
}

DbrxConfig resolve_model_config(const TrainConfig& config) {
  DbrxConfig model;
  if (config.model_config_path) {
    model = DbrxConfig::load(*config.model_config_path);
  } else if (const auto preset = find_dbrx_preset(config.model)) {
    model = preset->config;
  } else {
    fail("model '{}' is neither a preset ({}) nor a config.json path", config.model, preset_names());
  }
  if (config.training.moe_loss_weight) model.moe_loss_weight = *config.training.moe_loss_weight;
  if (config.training.moe_jitter_eps) {
    // 0 turns jitter off, as an absent moe_jitter_eps does in the Hugging Face config.
    if (*config.training.moe_jitter_eps > 0) model.moe_jitter_eps = *config.training.moe_jitter_eps;
    else model.moe_jitter_eps.reset();
  }
  model.validate(config.model_config_path ? config.model_config_path->string() : config.model);
  return model;
}

std::string model_short_name(const TrainConfig& config) {
  std::string raw;
  if (!config.model_config_path) {
    raw = config.model;
  } else {
    const fs::path& p = *config.model_config_path;
    // ".../my-model/config.json" names the model by its folder; "small.json" by its stem.
    raw = p.filename() == "config.json" && p.has_parent_path() ? p.parent_path().filename().string() : p.stem().string();
  }
  std::string out;
  for (char ch : raw) {
    const auto c = static_cast<unsigned char>(std::tolower(static_cast<unsigned char>(ch)));
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (ok) out += static_cast<char>(c);
    else if (!out.empty() && out.back() != '-') out += '-';
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  while (!out.empty() && out.front() == '-') out.erase(out.begin());
  if (out.size() > 40) {
    out.resize(40);
    while (!out.empty() && out.back() == '-') out.pop_back();
  }
  return out.empty() ? "model" : out;
}

}  // namespace tessera::training
