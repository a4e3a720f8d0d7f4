#pragma once
// Training runs and their metrics, in tessera's shared SQLite file. `tessera train` creates a
// run, the background trainer it forks reports progress and metrics into it, and `tessera runs
// ...` reads it from any other process. Nothing here knows how training works: the trainer
// writes numbers, the CLI shows them.
//
// A run's status moves queued -> running -> completed | failed | stopped; a resume moves a
// finished run back to running. A trainer that dies without saying so (kill -9, out of memory,
// a reboot) cannot report it, so readers check: a "running" run whose process no longer exists
// on this host is recorded as failed (or stopped, when a stop was asked for) the first time
// anyone looks at it.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/database.h"

namespace tessera {

enum class RunStatus { queued, running, completed, failed, stopped };

std::string_view to_string(RunStatus status);
// "queued", "running", ...; anything else is an error naming the text.
RunStatus parse_run_status(std::string_view text);
// completed, failed and stopped: the run's process is gone for good (until a resume).
bool is_finished(RunStatus status);

struct RunRecord {
  std::string id;  // "pretrain-dbrx-tiny-aq7pd2"
  std::string kind;  // "pretrain" or "ft"
  std::string model;  // the model's short name, as in the id
  RunStatus status = RunStatus::queued;
  std::string config_file;  // where the config was read from, as given
  std::string config_text;  // the YAML source, kept so the run can be understood later
  std::string save_folder;
  std::string log_file;
  std::optional<int64_t> pid;  // the trainer's process while it runs
  // When that process started (clock ticks since boot, /proc/<pid>/stat), so that another
  // process that later gets the same pid is not taken for the trainer.
  std::optional<int64_t> pid_start;
  std::string host;  // where that process runs; liveness is only judged on the same host
  int64_t created_ms = 0;  // unix milliseconds
  std::optional<int64_t> started_ms, finished_ms, updated_ms;
  std::optional<int64_t> stop_requested_ms;  // `tessera runs stop` asked the trainer to stop
  int64_t step = 0, total_steps = 0;
  int64_t tokens = 0, total_tokens = 0;  // total_tokens: 0 when the run is bounded by steps only
  std::optional<double> loss;  // the last training loss
  std::optional<int64_t> eval_step;
  std::optional<double> eval_loss, best_eval_loss;
  std::optional<double> tokens_per_second;
  std::string error;  // why it failed, one line
  std::string mlflow_run_id, mlflow_experiment_id, tracking_uri;
  std::string registered_model;  // "catalog.schema.model" in tessera's registry, "" when none
  std::optional<int64_t> registered_version;
  std::string details = "{}";  // free JSON object for whatever the trainer wants to keep
  // The API token that started the run through the REST API; nullopt: started on the command
  // line. Through the API a run is visible to its owner and to admin tokens only.
  std::optional<int64_t> owner_token_id;

  bool running() const { return status == RunStatus::running; }
};

struct MetricValue {
  std::string name;
  double value = 0;
};

struct MetricPoint {
  int64_t step = 0;
  double value = 0;
  int64_t time_ms = 0;
};

// What a run whose trainer vanished is marked failed with.
inline constexpr std::string_view kRunVanishedError =
    "the training process exited without finishing (killed?)";

class RunStore {
 public:
  // now_ms returns unix milliseconds; tests pass a fake clock.
  explicit RunStore(std::shared_ptr<Database> db, std::function<int64_t()> now_ms = {});

  // "<kind>-<model>-<6 random [a-z0-9]>" from the system's random source, not used by any run
  // in the store yet. kind and model are lowercased and anything outside [a-z0-9._-] becomes '-'.
  std::string new_run_id(std::string_view kind, std::string_view model) const;

  // Stores a new run. An empty id gets new_run_id(kind, model); created_ms 0 becomes now; the
  // status is whatever the record says (normally queued). Returns the stored record. Errors
  // when the id is taken or kind/model are empty, or details is not a JSON object.
  RunRecord create(RunRecord run);

  // The run with exactly this id, liveness checked (see above).
  std::optional<RunRecord> get(const std::string& id);
  // An exact id, or else a prefix that only one run's id starts with. Errors: "no run 'xyz'
  // (see `tessera runs list`)", or that the prefix is ambiguous, naming the candidates.
  RunRecord resolve(const std::string& key);
  // Newest first (by creation time), liveness checked; `limit` 0 means all.
  std::vector<RunRecord> list(size_t limit = 0);

  // The trainer started (or resumed) in process `pid` on this host: status running, the error
  // and finish time cleared, started_ms set the first time.
  void mark_running(const std::string& id, int64_t pid);
  // Progress after an optimizer step. NaN and infinite losses are kept as such.
  void update_progress(const std::string& id, int64_t step, int64_t tokens, double loss, double tokens_per_second);
  void set_totals(const std::string& id, int64_t total_steps, int64_t total_tokens);
  // An evaluation at `step`; the best eval loss so far is kept alongside.
  void set_eval(const std::string& id, int64_t step, double loss);
  // Ends the run with completed, failed or stopped (error: why, for failed). Only a queued or
  // running run changes; returns false when it had already finished, which keeps the first
  // verdict (a trainer that completes while `runs stop` waits stays completed).
  bool finish(const std::string& id, RunStatus status, const std::string& error = "");
  // Records that a stop was asked for, so that a trainer that then dies reads as stopped.
  void request_stop(const std::string& id);
  void set_mlflow(const std::string& id, const std::string& tracking_uri, const std::string& experiment_id,
                  const std::string& run_id);
  void set_registered(const std::string& id, const std::string& model_name, int64_t version);
  // Replaces the free JSON object (must be a JSON object).
  void set_details(const std::string& id, const std::string& json_object);

  // Metrics of one step, in one transaction. A (run, name, step) logged again replaces the
  // earlier value: a resumed run repeats the steps after its last checkpoint.
  void add_metrics(const std::string& run_id, int64_t step, const std::vector<MetricValue>& values,
                   int64_t time_ms = 0);
  // One series ordered by step.
  std::vector<MetricPoint> metrics(const std::string& run_id, const std::string& name) const;
  // The names logged for the run, sorted.
  std::vector<std::string> metric_names(const std::string& run_id) const;

  // Applies the liveness rule to one record (persisting the change); get and list call it.
  RunRecord refresh_liveness(RunRecord run);

  // Replaces the liveness probe, which says whether a running run's trainer still exists
  // (tests; the default is trainer_alive below).
  void set_process_probe(std::function<bool(const RunRecord&)> probe);

 private:
  int64_t now() const;
  // Runs an UPDATE on one run and errors with "no run 'id'" when it matched nothing.
  void update_one(const std::string& id, const std::string& sql, const std::function<void(Statement&)>& bind);

  std::shared_ptr<Database> db_;
  std::function<int64_t()> now_ms_;
  std::function<bool(const RunRecord&)> probe_;
};

// This machine's host name ("" when it cannot be read).
std::string this_host();

// Whether process `pid` exists on this machine and is not a zombie (and, when `start` is given,
// started at that time). A process this user may not signal counts as alive.
bool process_alive(int64_t pid, std::optional<int64_t> start = std::nullopt);

// The start time of process `pid` in clock ticks since boot, when /proc says.
std::optional<int64_t> process_start_time(int64_t pid);

// Whether a running run's trainer may still be there: true when it runs on another host (this
// machine cannot tell), or has no pid yet; otherwise process_alive(pid, pid_start).
bool trainer_alive(const RunRecord& run);

}  // namespace tessera
