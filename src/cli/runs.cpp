// `tessera runs ...`: training runs as the store records them. The trainer (started by `tessera
// train`) writes; these commands read, follow the log, stop a run and plot its curves.
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "store/database.h"
#include "store/run_store.h"
#include "store/time_spec.h"
#include "training/loss_plot.h"
#include "training/run_launcher.h"

namespace tessera::cli {

namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

RunStore open_runs() { return RunStore(std::make_shared<Database>(default_database_file())); }

std::string time_str(const std::optional<int64_t>& ms) { return ms ? format_utc(*ms / 1000) : "-"; }

// 1234567 -> "1,234,567"
std::string grouped(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

// "45s", "12m 05s", "3h 07m", "2d 04h"
std::string duration_str(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m {:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h {:02}m", s / 3600, s / 60 % 60);
  return fmt::format("{}d {:02}h", s / 86400, s / 3600 % 24);
}

std::string loss_str(const std::optional<double>& v) { return v ? fmt::format("{:.4f}", *v) : "-"; }

std::optional<double> progress_of(const RunRecord& r) {
  if (r.total_steps <= 0) return std::nullopt;
  return std::clamp(static_cast<double>(r.step) / static_cast<double>(r.total_steps), 0.0, 1.0);
}

// Seconds left at the current speed: tokens still to go over tokens per second, tokens per step
// taken from the run so far; without a token count, from the time the steps so far took.
std::optional<double> eta_seconds(const RunRecord& r) {
  if (!r.running() || r.step <= 0 || r.total_steps <= r.step) return std::nullopt;
  const double steps_left = static_cast<double>(r.total_steps - r.step);
  if (r.tokens > 0 && r.tokens_per_second && *r.tokens_per_second > 0 && std::isfinite(*r.tokens_per_second))
    return steps_left * (static_cast<double>(r.tokens) / static_cast<double>(r.step)) / *r.tokens_per_second;
  if (r.started_ms && r.updated_ms && *r.updated_ms > *r.started_ms)
    return steps_left * (static_cast<double>(*r.updated_ms - *r.started_ms) / 1000.0) / static_cast<double>(r.step);
  return std::nullopt;
}

nlohmann::json number_or_null(const std::optional<double>& v) {
  if (!v) return nullptr;
  // JSON has no NaN or infinity; a diverged loss is shown as the string MLflow also uses.
  if (std::isnan(*v)) return "NaN";
  if (std::isinf(*v)) return *v > 0 ? "Infinity" : "-Infinity";
  return *v;
}

nlohmann::json opt_int(const std::optional<int64_t>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }

nlohmann::json run_json(const RunRecord& r, bool full) {
  nlohmann::json details;
  try {
    details = nlohmann::json::parse(r.details);
  } catch (const nlohmann::json::exception&) {
    details = r.details;
  }
  nlohmann::json j = {
      {"id", r.id},
      {"kind", r.kind},
      {"model", r.model},
      {"status", std::string(to_string(r.status))},
      {"config_file", r.config_file},
      {"save_folder", r.save_folder},
      {"log_file", r.log_file},
      {"pid", opt_int(r.pid)},
      {"host", r.host},
      {"created_ms", r.created_ms},
      {"started_ms", opt_int(r.started_ms)},
      {"finished_ms", opt_int(r.finished_ms)},
      {"updated_ms", opt_int(r.updated_ms)},
      {"step", r.step},
      {"total_steps", r.total_steps},
      {"tokens", r.tokens},
      {"total_tokens", r.total_tokens},
      {"progress", number_or_null(progress_of(r))},
      {"loss", number_or_null(r.loss)},
      {"eval_step", opt_int(r.eval_step)},
      {"eval_loss", number_or_null(r.eval_loss)},
      {"eval_perplexity", number_or_null(r.eval_loss ? std::optional<double>(std::exp(*r.eval_loss)) : std::nullopt)},
      {"best_eval_loss", number_or_null(r.best_eval_loss)},
      {"tokens_per_second", number_or_null(r.tokens_per_second)},
      {"eta_seconds", number_or_null(eta_seconds(r))},
      {"error", r.error},
      {"mlflow",
       {{"tracking_uri", r.tracking_uri}, {"experiment_id", r.mlflow_experiment_id}, {"run_id", r.mlflow_run_id}}},
      {"registered_model", r.registered_model.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.registered_model)},
      {"registered_version", opt_int(r.registered_version)},
  };
  if (full) {
    j["config_text"] = r.config_text;
    j["stop_requested_ms"] = opt_int(r.stop_requested_ms);
    j["details"] = details;
  }
  return j;
}

std::string progress_str(const RunRecord& r) {
  if (const auto p = progress_of(r)) return fmt::format("{}/{} {:.0f}%", r.step, r.total_steps, *p * 100);
  return std::to_string(r.step);
}

void print_list(const std::vector<RunRecord>& runs) {
  if (runs.empty()) {
    fmt::print("no runs yet (start one with `tessera train -f config.yaml`)\n");
    return;
  }
  size_t id_w = 2, model_w = 5, progress_w = 8;
  for (const auto& r : runs) {
    id_w = std::max(id_w, r.id.size());
    model_w = std::max(model_w, r.model.size());
    progress_w = std::max(progress_w, progress_str(r).size());
  }
  const auto row = [&](const std::string& id, const std::string& status, const std::string& model,
                       const std::string& progress, const std::string& loss, const std::string& eval,
                       const std::string& tps, const std::string& created) {
    std::string line = fmt::format("{:<{}}  {:<9}  {:<{}}  {:>{}}  {:>8}  {:>8}  {:>8}  {}", id, id_w, status, model,
                                   model_w, progress, progress_w, loss, eval, tps, created);
    line.erase(line.find_last_not_of(' ') + 1);
    fmt::print("{}\n", line);
  };
  row("ID", "STATUS", "MODEL", "PROGRESS", "LOSS", "EVAL", "TOK/S", "CREATED");
  for (const auto& r : runs)
    row(r.id, std::string(to_string(r.status)), r.model, progress_str(r), loss_str(r.loss), loss_str(r.eval_loss),
        r.tokens_per_second ? fmt::format("{:.0f}", *r.tokens_per_second) : "-", time_str(r.created_ms));
}

void print_describe(const RunRecord& r) {
  const auto line = [](const std::string& key, const std::string& value) { fmt::print("  {:<14}{}\n", key + ":", value); };
  fmt::print("Run {}\n", r.id);
  std::string status(to_string(r.status));
  if (r.running() && r.pid) status += fmt::format(" (pid {}{})", *r.pid, r.host.empty() ? "" : " on " + r.host);
  if (r.stop_requested_ms && r.running()) status += ", stopping";
  line("status", status);
  line("kind", r.kind);
  line("model", r.model);
  if (!r.config_file.empty()) line("config", r.config_file);
  line("created", time_str(r.created_ms));
  line("started", time_str(r.started_ms));
  if (r.finished_ms) line("finished", time_str(r.finished_ms));
  if (r.started_ms) {
    const int64_t end = r.finished_ms ? *r.finished_ms : (r.running() ? now_ms() : r.updated_ms.value_or(*r.started_ms));
    line("elapsed", duration_str(static_cast<double>(end - *r.started_ms) / 1000.0));
  }
  if (const auto p = progress_of(r))
    line("step", fmt::format("{} / {} ({:.1f}%)", grouped(r.step), grouped(r.total_steps), *p * 100));
  else
    line("step", grouped(r.step));
  line("tokens", r.total_tokens > 0 ? fmt::format("{} / {}", grouped(r.tokens), grouped(r.total_tokens)) : grouped(r.tokens));
  line("loss", loss_str(r.loss));
  if (r.eval_loss) {
    std::string eval = fmt::format("{:.4f} (perplexity {:.2f})", *r.eval_loss, std::exp(*r.eval_loss));
    if (r.eval_step) eval += fmt::format(" at step {}", grouped(*r.eval_step));
    if (r.best_eval_loss && *r.best_eval_loss != *r.eval_loss) eval += fmt::format(", best {:.4f}", *r.best_eval_loss);
    line("eval loss", eval);
  } else {
    line("eval loss", "-");
  }
  line("throughput", r.tokens_per_second ? fmt::format("{} tok/s", grouped(std::llround(*r.tokens_per_second))) : "-");
  if (const auto eta = eta_seconds(r)) line("ETA", duration_str(*eta));
  line("save folder", r.save_folder.empty() ? "-" : r.save_folder);
  line("log file", r.log_file.empty() ? "-" : r.log_file);
  if (!r.mlflow_run_id.empty() || !r.tracking_uri.empty())
    line("MLflow", fmt::format("run {} in experiment {} at {}", r.mlflow_run_id.empty() ? "-" : r.mlflow_run_id,
                               r.mlflow_experiment_id.empty() ? "-" : r.mlflow_experiment_id,
                               r.tracking_uri.empty() ? "-" : r.tracking_uri));
  if (!r.registered_model.empty())
    line("registered", r.registered_version ? fmt::format("{} version {}", r.registered_model, *r.registered_version)
                                            : r.registered_model);
  if (!r.error.empty()) line("error", r.error);
  if (r.running()) fmt::print("\nFollow the log with: tessera runs logs {} --follow\n", r.id);
}

// Copies what the log holds beyond `offset` to stdout; returns the new offset. A log that got
// shorter (rotated, rewritten) is read again from the start.
uint64_t copy_log(const std::string& path, uint64_t offset) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return offset;
  in.seekg(0, std::ios::end);
  const auto size = static_cast<uint64_t>(std::max<std::streamoff>(0, in.tellg()));
  if (size < offset) offset = 0;
  in.seekg(static_cast<std::streamoff>(offset));
  char buffer[1 << 16];
  while (offset < size) {
    in.read(buffer, static_cast<std::streamsize>(std::min<uint64_t>(sizeof buffer, size - offset)));
    const auto n = in.gcount();
    if (n <= 0) break;
    std::fwrite(buffer, 1, static_cast<size_t>(n), stdout);
    offset += static_cast<uint64_t>(n);
  }
  std::fflush(stdout);
  return offset;
}

void show_logs(RunStore& store, const std::string& key, bool follow) {
  RunRecord run = store.resolve(key);
  if (run.log_file.empty()) fail("run '{}' has no log file", run.id);
  std::error_code ec;
  const bool waiting = run.running() || run.status == RunStatus::queued;
  if (!std::filesystem::exists(run.log_file, ec) && !(follow && waiting))
    fail("run '{}': the log file {} does not exist", run.id, run.log_file);
  uint64_t offset = copy_log(run.log_file, 0);
  if (!follow) return;
  while (true) {
    const auto active = [&] {
      const auto now = store.get(run.id);
      return now && (now->running() || now->status == RunStatus::queued);
    }();
    offset = copy_log(run.log_file, offset);
    if (!active) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  // What the trainer wrote between the last read and its exit.
  copy_log(run.log_file, offset);
}

// Waits until the run's process is gone, up to `timeout`.
bool wait_for_exit(const RunRecord& run, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (process_alive(*run.pid, run.pid_start)) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return true;
}

void stop_run(RunStore& store, const std::string& key, int timeout_s) {
  const RunRecord run = training::request_stop(store, store.resolve(key).id);
  if (!run.pid) {
    fmt::print("Run {} stopped before it started.\n", run.id);
    return;
  }
  bool killed = false;
  if (process_alive(*run.pid, run.pid_start)) {
    fmt::print("Sent SIGTERM to process {}; waiting up to {}s for run {} to save and exit...\n", *run.pid, timeout_s,
               run.id);
    std::fflush(stdout);
    if (!wait_for_exit(run, std::chrono::seconds(timeout_s))) {
      // The trainer had its chance to stop cleanly; the last checkpoint is what a resume uses.
      fmt::print("Process {} did not exit within {}s; sending SIGKILL\n", *run.pid, timeout_s);
      if (kill(static_cast<pid_t>(*run.pid), SIGKILL) != 0 && errno != ESRCH)
        fail("run '{}': cannot signal process {}: {}", run.id, *run.pid, std::strerror(errno));
      killed = true;
      if (!wait_for_exit(run, std::chrono::seconds(10)))
        fail("run '{}': process {} is still there after SIGKILL", run.id, *run.pid);
    }
  }
  store.finish(run.id, RunStatus::stopped);
  const auto final_run = store.get(run.id);
  const RunStatus status = final_run ? final_run->status : RunStatus::stopped;
  if (status == RunStatus::stopped)
    fmt::print("Run {} stopped{}.\n", run.id, killed ? " (killed)" : "");
  else
    fmt::print("Run {} ended as {} before it could be stopped.\n", run.id, to_string(status));
}

void plot_run(RunStore& store, const std::string& key, const std::string& output, std::vector<std::string> wanted,
              int width, int height) {
  const RunRecord run = store.resolve(key);
  const auto names = store.metric_names(run.id);
  if (names.empty()) fail("run '{}' has no metrics yet", run.id);
  const auto is_lr = [](const std::string& n) { return n == "lr" || n.starts_with("lr/") || n == "learning_rate"; };
  if (wanted.empty()) {
    // The training loss first, the other losses after it on the same axis, and the learning
    // rate, when logged, on a second axis.
    if (std::find(names.begin(), names.end(), "loss") != names.end()) wanted.push_back("loss");
    for (const auto& n : names)
      if (n != "loss" && n.find("loss") != std::string::npos) wanted.push_back(n);
    for (const auto& n : names)
      if (is_lr(n)) wanted.push_back(n);
    if (wanted.empty()) wanted = names;
  }
  std::vector<training::PlotSeries> series;
  bool right = false;
  for (const auto& name : wanted) {
    if (std::find(names.begin(), names.end(), name) == names.end())
      fail("run '{}' has no metric '{}' (it has: {})", run.id, name, fmt::join(names, ", "));
    training::PlotSeries s;
    s.name = name;
    s.right_axis = is_lr(name) && wanted.size() > 1;
    right = right || s.right_axis;
    for (const auto& p : store.metrics(run.id, name))
      s.points.push_back({static_cast<double>(p.step), p.value});
    series.push_back(std::move(s));
  }
  training::PlotOptions options;
  options.title = fmt::format("{} ({})", run.id, run.model);
  options.width = width;
  options.height = height;
  if (series.size() == 1) options.y_label = series.front().name;
  if (right) options.right_label = "lr";
  training::write_plot(output, series, options);
  fmt::print("wrote {}\n", output);
}

}  // namespace

void register_runs(CLI::App& app) {
  struct Options {
    std::string id, output;
    bool json = false, follow = false;
    int timeout_s = 30, width = 960, height = 540;
    std::vector<std::string> metrics;
    size_t limit = 0;
  };
  auto opts = std::make_shared<Options>();
  auto* runs = app.add_subcommand("runs", "Training runs: list, describe, logs, stop, plot");
  runs->require_subcommand(1);

  auto* list = runs->add_subcommand("list", "List runs, newest first");
  list->add_flag("--json", opts->json, "Print JSON");
  list->add_option("--limit", opts->limit, "Show at most this many runs");
  list->callback([opts] {
    auto store = open_runs();
    const auto all = store.list(opts->limit);
    if (opts->json) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& r : all) out.push_back(run_json(r, false));
      fmt::print("{}\n", out.dump(2));
    } else {
      print_list(all);
    }
  });

  auto* describe = runs->add_subcommand("describe", "Show a run: status, progress, losses, speed, where its files are");
  describe->add_option("id", opts->id, "The run id (or a unique start of it)")->required();
  describe->add_flag("--json", opts->json, "Print JSON, with the config text and details");
  describe->callback([opts] {
    auto store = open_runs();
    const RunRecord run = store.resolve(opts->id);
    if (opts->json)
      fmt::print("{}\n", run_json(run, true).dump(2));
    else
      print_describe(run);
  });

  auto* logs = runs->add_subcommand("logs", "Print a run's log");
  logs->add_option("id", opts->id, "The run id (or a unique start of it)")->required();
  logs->add_flag("-f,--follow", opts->follow, "Keep printing new lines until the run is no longer running");
  logs->callback([opts] {
    auto store = open_runs();
    show_logs(store, opts->id, opts->follow);
  });

  auto* stop = runs->add_subcommand("stop", "Stop a running run (SIGTERM; it saves a checkpoint and exits)");
  stop->add_option("id", opts->id, "The run id (or a unique start of it)")->required();
  stop->add_option("--timeout", opts->timeout_s, "Seconds to wait for a clean exit before SIGKILL")
      ->check(CLI::Range(1, 3600));
  stop->callback([opts] {
    auto store = open_runs();
    stop_run(store, opts->id, opts->timeout_s);
  });

  auto* plot = runs->add_subcommand("plot", "Draw a run's loss curves into a .png, .svg or .html file");
  plot->add_option("id", opts->id, "The run id (or a unique start of it)")->required();
  plot->add_option("-o,--output", opts->output, "The picture to write: FILE.png, FILE.svg or FILE.html")->required();
  plot->add_option("--metric", opts->metrics,
                   "A metric to draw (repeatable; default: every loss, and the learning rate on a second axis)");
  plot->add_option("--width", opts->width, "Width in pixels")->check(CLI::Range(200, 4000));
  plot->add_option("--height", opts->height, "Height in pixels")->check(CLI::Range(200, 4000));
  plot->callback([opts] {
    auto store = open_runs();
    plot_run(store, opts->id, opts->output, opts->metrics, opts->width, opts->height);
  });

  // `runs resume ID` joins here with the trainer: it restarts a stopped or failed run from the
  // last checkpoint in its save folder.
}

}  // namespace tessera::cli
