#include "server/finetune_api.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "server/api_error.h"
#include "store/run_store.h"
#include "training/finetune_job.h"
#include "training/run_launcher.h"

namespace tessera::server {

using json = nlohmann::json;

namespace {

constexpr const char* kRunKind = "ft";
// Problems listed in a rejected create; the count says how many there were in all.
constexpr size_t kMaxProblems = 1000;

json number_or_null(const std::optional<double>& v) { return v && std::isfinite(*v) ? json(*v) : json(nullptr); }
json int_or_null(const std::optional<int64_t>& v) { return v ? json(*v) : json(nullptr); }

bool visible_to(const RunRecord& run, const ApiToken& caller) {
  return run.kind == kRunKind && (caller.admin || run.owner_token_id == caller.id);
}

ApiError no_such_run(const std::string& id) {
  return ApiError(404, fmt::format("There is no fine-tuning run '{}' (or it belongs to another token).", id),
                  "invalid_request_error", std::nullopt, "run_not_found");
}

// A request names files on the server's machine; before anything reads them, a folder is
// walked (as the loader will, following links) with caps, so that a path like "/" is refused
// quickly instead of being read whole.
constexpr int64_t kMaxDataBytes = int64_t{4} << 30;
constexpr int64_t kMaxDataEntries = 20000;

void check_data_size(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto too_big = [&](const std::string& why) {
    throw bad_param("train_data_path", fmt::format("train_data_path: '{}' {}; give a smaller file or folder", path, why),
                    "data_too_large");
  };
  if (!fs::is_directory(path, ec)) {
    const auto size = fs::file_size(path, ec);
    if (!ec && static_cast<int64_t>(size) > kMaxDataBytes) too_big(fmt::format("is over {} GiB", kMaxDataBytes >> 30));
    return;  // a missing file is reported by the data check, with the others
  }
  int64_t bytes = 0, entries = 0;
  fs::recursive_directory_iterator it(path, fs::directory_options::follow_directory_symlink |
                                                fs::directory_options::skip_permission_denied, ec);
  for (const fs::recursive_directory_iterator end; !ec && it != end; it.increment(ec)) {
    if (++entries > kMaxDataEntries) too_big(fmt::format("holds more than {} entries", kMaxDataEntries));
    if (it.depth() > 32) too_big("is nested more than 32 folders deep (a link loop?)");
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) bytes += static_cast<int64_t>(it->file_size(size_ec));
    if (bytes > kMaxDataBytes) too_big(fmt::format("holds over {} GiB", kMaxDataBytes >> 30));
  }
}

// The body in the request's own terms: Databricks' names (train_data_path, task_type with
// values like CHAT_COMPLETION) and tessera's (train_data, task: chat-completion) both work.
training::FinetuneRequest request_from_body(const json& body) {
  json j = json::object();
  for (const auto& [key, value] : body.items()) {
    if (key == "validate_only") continue;
    std::string name = key == "train_data_path" ? "train_data" : key == "task_type" ? "task" : key;
    if (j.contains(name)) throw bad_param(key, fmt::format("'{}' is given twice (under two names)", name));
    json v = value;
    if (name == "task" && v.is_string()) {
      std::string task = v.get<std::string>();
      for (char& c : task) c = c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      v = task;
    }
    j[name] = std::move(v);
  }
  if (!j.contains("train_data")) throw bad_param("train_data_path", "train_data_path: required (a .jsonl file on the server)");
  const json& data = j["train_data"];
  if (!data.is_string() && !data.is_array())
    throw bad_param("train_data_path", "train_data_path: must be a path or a list of paths");
  for (const json& p : data.is_array() ? data : json::array({data})) {
    if (!p.is_string()) throw bad_param("train_data_path", "train_data_path: every path must be a string");
    if (!std::filesystem::path(p.get<std::string>()).is_absolute())
      throw bad_param("train_data_path", fmt::format("train_data_path: '{}' must be an absolute path on the server's machine",
                                                     p.get<std::string>()));
    check_data_size(p.get<std::string>());
  }
  try {
    return training::FinetuneRequest::from_json(j);
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "invalid_request_error", std::nullopt, "invalid_value");
  }
}

json problems_json(const training::DatasetReport& report) {
  json out = json::array();
  for (const auto& p : report.problems) {
    if (out.size() >= kMaxProblems) break;
    out.push_back({{"file", p.file},
                   {"line", p.line},
                   {"severity", p.severity == training::Severity::Error ? "error" : "warning"},
                   {"message", p.message}});
  }
  return out;
}

json run_json(const RunRecord& r, RunStore& store, bool with_events) {
  json request = json::object();
  try {
    request = json::parse(r.config_text);
  } catch (const json::exception&) {
  }
  const auto field = [&](const char* key) { return request.contains(key) ? request[key] : json(nullptr); };
  json j = {{"id", r.id},
            {"object", "fine_tuning.run"},
            {"status", std::string(to_string(r.status))},
            {"model", field("model")},
            {"task", field("task")},
            {"train_data", field("train_data")},
            {"register_to", field("register_to")},
            {"hyperparameters",
             {{"training_duration", field("training_duration")},
              {"learning_rate", field("learning_rate")},
              {"context_length", field("context_length")},
              {"batch_size", field("batch_size")},
              {"lora_rank", field("lora_rank")},
              {"lora_alpha", field("lora_alpha")},
              {"lora_targets", field("lora_targets")},
              {"seed", field("seed")},
              {"eval_fraction", field("eval_fraction")}}},
            {"experiment_path", field("experiment_path")},
            {"owner_token_id", int_or_null(r.owner_token_id)},
            {"created_at", r.created_ms},
            {"started_at", int_or_null(r.started_ms)},
            {"finished_at", int_or_null(r.finished_ms)},
            {"step", r.step},
            {"total_steps", r.total_steps},
            {"tokens", r.tokens},
            {"progress", r.total_steps > 0 ? json(std::min(1.0, static_cast<double>(r.step) / r.total_steps)) : json(nullptr)},
            {"loss", number_or_null(r.loss)},
            {"eval_loss", number_or_null(r.eval_loss)},
            {"tokens_per_second", number_or_null(r.tokens_per_second)},
            {"error", r.error.empty() ? json(nullptr) : json(r.error)},
            {"registered_model", r.registered_model.empty() ? json(nullptr) : json(r.registered_model)},
            {"registered_version", int_or_null(r.registered_version)},
            {"mlflow_run_id", r.mlflow_run_id.empty() ? json(nullptr) : json(r.mlflow_run_id)}};
  if (!with_events) return j;
  // What happened, in time order, from the run's record and its evaluations.
  std::vector<std::pair<int64_t, json>> events;
  const auto add = [&](int64_t time, const std::string& type, const std::string& message) {
    events.push_back({time, {{"time", time}, {"type", type}, {"message", message}}});
  };
  add(r.created_ms, "created", fmt::format("{} of {} submitted", request.value("task", std::string("fine-tuning")),
                                           request.value("model", r.model)));
  if (r.started_ms)
    add(*r.started_ms, "started", r.total_steps > 0 ? fmt::format("training started: {} steps", r.total_steps)
                                                    : std::string("training started"));
  for (const MetricPoint& p : store.metrics(r.id, "eval_loss"))
    add(p.time_ms, "eval", fmt::format("step {}: eval loss {:.4f}", p.step, p.value));
  if (r.stop_requested_ms) add(*r.stop_requested_ms, "cancel_requested", "cancel requested");
  if (is_finished(r.status)) {
    const int64_t at = r.finished_ms.value_or(r.updated_ms.value_or(r.created_ms));
    if (!r.registered_model.empty() && r.registered_version)
      add(at, "registered", fmt::format("registered as {} version {}", r.registered_model, *r.registered_version));
    std::string message = r.status == RunStatus::completed ? fmt::format("completed after {} steps", r.step)
                          : r.status == RunStatus::stopped ? fmt::format("stopped at step {}", r.step)
                                                           : fmt::format("failed: {}", r.error);
    add(at, std::string(to_string(r.status)), message);
  }
  std::stable_sort(events.begin(), events.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  json list = json::array();
  for (auto& [time, e] : events) list.push_back(std::move(e));
  j["events"] = std::move(list);
  return j;
}

}  // namespace

FinetuneApi::FinetuneApi(std::shared_ptr<Database> db, std::filesystem::path home)
    : db_(std::move(db)), home_(std::move(home)) {}

json FinetuneApi::create(const json& body, const ApiToken& caller) {
  const training::FinetuneRequest request = request_from_body(body);
  const bool validate_only = body.contains("validate_only") && body["validate_only"].is_boolean() && body["validate_only"].get<bool>();
  training::CheckedFinetune checked;
  try {
    checked = training::check_finetune(request, db_);
  } catch (const Error& e) {
    throw ApiError(400, e.what(), "invalid_request_error", std::nullopt, "invalid_value");
  }
  const auto& report = checked.data.report;
  if (!report.ok()) {
    std::vector<std::string> first;
    for (const auto& p : report.problems)
      if (p.severity == training::Severity::Error && first.size() < 3) first.push_back(p.format());
    ApiError error(400,
                   fmt::format("The training data has {} problem{}; nothing was started: {}{}", report.errors(),
                               report.errors() == 1 ? "" : "s", fmt::join(first, "; "),
                               report.errors() > static_cast<int64_t>(first.size()) ? "; ..." : ""),
                   "invalid_request_error", "train_data_path", "invalid_training_data");
    error.details = {{"problems", problems_json(report)}, {"problem_count", report.problems.size()}};
    throw error;
  }
  if (validate_only) {
    const training::FinetunePlan plan = training::plan_finetune(checked);
    return {{"object", "fine_tuning.validation"},
            {"summary", report.summary()},
            {"warnings", problems_json(report)},
            {"steps", plan.steps},
            {"epochs", plan.epochs},
            {"tokens_per_epoch", plan.tokens.tokens_per_epoch},
            {"total_tokens", plan.tokens.total_tokens},
            {"loss_tokens", plan.tokens.total_loss_tokens}};
  }
  RunStore store(db_);
  const RunRecord run = training::create_finetune_run(store, checked, home_, "(REST API)", caller.id);
  training::start_worker(run, "finetune", false, home_);
  return run_json(store.get(run.id).value_or(run), store, true);
}

json FinetuneApi::list(const ApiToken& caller, std::optional<int64_t> limit) {
  if (limit && *limit < 1) throw bad_param("limit", "limit must be at least 1");
  RunStore store(db_);
  json runs = json::array();
  for (const RunRecord& r : store.list()) {
    if (!visible_to(r, caller)) continue;
    if (limit && static_cast<int64_t>(runs.size()) >= *limit) break;
    runs.push_back(run_json(r, store, false));
  }
  return {{"object", "list"}, {"runs", runs}};
}

json FinetuneApi::get(const std::string& id, const ApiToken& caller) {
  RunStore store(db_);
  const auto run = store.get(id);
  if (!run || !visible_to(*run, caller)) throw no_such_run(id);
  return run_json(*run, store, true);
}

json FinetuneApi::metrics(const std::string& id, const ApiToken& caller) {
  RunStore store(db_);
  const auto run = store.get(id);
  if (!run || !visible_to(*run, caller)) throw no_such_run(id);
  json series = json::object();
  for (const std::string& name : store.metric_names(id)) {
    json points = json::array();
    for (const MetricPoint& p : store.metrics(id, name))
      points.push_back({{"step", p.step}, {"value", number_or_null(p.value)}, {"time", p.time_ms}});
    series[name] = std::move(points);
  }
  return {{"id", id}, {"metrics", series}};
}

json FinetuneApi::cancel(const std::string& id, const ApiToken& caller) {
  RunStore store(db_);
  const auto run = store.get(id);
  if (!run || !visible_to(*run, caller)) throw no_such_run(id);
  if (is_finished(run->status))
    throw ApiError(400, fmt::format("Run '{}' has already finished ({}); there is nothing to cancel.", id, to_string(run->status)),
                   "invalid_request_error", std::nullopt, "run_finished");
  training::request_stop(store, id);
  return run_json(store.get(id).value_or(*run), store, true);
}

}  // namespace tessera::server
