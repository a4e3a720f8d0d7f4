#pragma once
// How a training run reports: log lines (and a live progress line in the foreground), progress
// and metrics into the run store that `tessera runs` reads, and MLflow tracking. Shared by
// pre-training and fine-tuning runs.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "store/run_store.h"
#include "training/mlflow_client.h"
#include "training/train_config.h"
#include "training/trainer.h"

namespace tessera::training {

int64_t unix_ms();
// The stored run a job is about to start: it must exist, and only a queued run starts fresh
// (a resume continues one that stopped or failed).
RunRecord run_to_start(RunStore& store, const std::string& run_id, bool resume);
std::string human_count(double n);
std::string human_seconds(double s);

// Log lines (every log_interval steps, every evaluation and checkpoint) into the log file, also
// echoed to a terminal in the foreground, where a live progress line may be drawn too.
class LogObserver final : public TrainingObserver {
 public:
  LogObserver(std::FILE* out, int64_t log_interval, std::FILE* echo, bool bar)
      : out_(out), interval_(log_interval), echo_(echo), bar_(bar && echo) {}
  void on_start(const StartReport& s) override {
    first_ = s.start_step;
    start_ = std::chrono::steady_clock::now();
    if (!s.resumed_from.empty())
      line(fmt::format("resumed from {} at step {}", s.resumed_from.string(), s.start_step));
    line(fmt::format("model: {} parameters ({} active per token); {} steps of {} tokens", human_count(s.parameters),
                     human_count(s.active_parameters), s.total_steps, s.tokens_per_step));
  }
  void on_step(const StepReport& r) override {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = static_cast<double>(r.step - first_) / std::max(elapsed, 1e-9);
    const double eta = static_cast<double>(r.total_steps - r.step) / std::max(rate, 1e-9);
    const std::string text =
        fmt::format("step {}/{} | loss {:.4f} | lb {:.4f} | lr {:.2e} | grad {:.3f} | {} tok/s | tokens {} | ETA {}",
                    r.step, r.total_steps, r.loss, r.aux_loss, r.lr, r.grad_norm, human_count(r.tokens_per_second),
                    human_count(static_cast<double>(r.tokens)), human_seconds(eta));
    if (bar_) {
      const int width = 24;
      const int filled = static_cast<int>(width * r.step / std::max<int64_t>(1, r.total_steps));
      fmt::print(echo_, "\r\033[K[{}{}] {}", std::string(filled, '#'), std::string(width - filled, '.'), text);
      std::fflush(echo_);
    }
    if (r.step % interval_ == 0 || r.step == r.total_steps) {
      write(out_, text);
      if (echo_ && !bar_) write(echo_, text);
    }
  }
  void on_eval(const EvalReport& e) override {
    line(fmt::format("eval at step {}: loss {:.4f}, perplexity {:.2f} ({} tokens)", e.step, e.loss, e.perplexity,
                     e.tokens));
  }
  void on_checkpoint(int64_t step, const std::filesystem::path& dir) override {
    line(fmt::format("checkpoint at step {}: {}", step, dir.string()));
  }
  void on_finish(int64_t step, const std::filesystem::path& dir, bool stopped) override {
    line(stopped ? fmt::format("stopped at step {}; resume with `tessera runs resume`", step)
                 : fmt::format("finished at step {}: {}", step, dir.string()));
  }
  // A line for the log and, in the foreground, the terminal (above the progress line).
  void line(const std::string& text) {
    write(out_, text);
    if (echo_) {
      if (bar_) fmt::print(echo_, "\r\033[K");
      write(echo_, text);
    }
  }

 private:
  static void write(std::FILE* f, const std::string& text) {
    fmt::print(f, "{}\n", text);
    std::fflush(f);
  }
  std::FILE* out_;
  int64_t interval_;
  std::FILE* echo_;
  bool bar_;
  int64_t first_ = 0;
  std::chrono::steady_clock::time_point start_;
};

// Progress and metrics into the run store, which `tessera runs` reads.
class StoreObserver final : public TrainingObserver {
 public:
  StoreObserver(RunStore& store, std::string id) : store_(store), id_(std::move(id)) {}
  void on_start(const StartReport& s) override { store_.set_totals(id_, s.total_steps, 0); }
  void on_step(const StepReport& r) override {
    store_.update_progress(id_, r.step, r.tokens, r.loss, r.tokens_per_second);
    store_.add_metrics(id_, r.step,
                       {{"loss", r.loss},
                        {"ce_loss", r.ce_loss},
                        {"load_balancing_loss", r.aux_loss},
                        {"lr", r.lr},
                        {"grad_norm", r.grad_norm},
                        {"tokens_per_second", r.tokens_per_second}});
  }
  void on_eval(const EvalReport& e) override {
    store_.set_eval(id_, e.step, e.loss);
    store_.add_metrics(id_, e.step, {{"eval_loss", e.loss}, {"eval_perplexity", e.perplexity}});
  }

 private:
  RunStore& store_;
  std::string id_;
};

// MLflow tracking. A tracking server that fails does not stop training: the failure is logged
// once and tracking goes on without MLflow.
class MlflowObserver final : public TrainingObserver {
 public:
  MlflowObserver(RunStore& store, const RunRecord& run, const MlflowOptions& options, std::string uri,
                 std::vector<std::pair<std::string, std::string>> params, LogObserver& log)
      : store_(store), run_(run), options_(options), uri_(std::move(uri)), params_(std::move(params)), log_(log) {}

  void on_start(const StartReport& s) override {
    guard("start", [&] {
      client_ = std::make_unique<MlflowClient>(uri_);
      const std::string experiment = client_->get_or_create_experiment(options_.experiment_path);
      if (!run_.mlflow_run_id.empty() && run_.tracking_uri == uri_) {
        mlflow_run_ = run_.mlflow_run_id;  // a resumed run continues its MLflow run
        client_->set_tag(mlflow_run_, "tessera.resumed_at_step", std::to_string(s.start_step));
      } else {
        mlflow_run_ = client_->create_run(experiment, run_.id, unix_ms(), {{"tessera.run_id", run_.id}}).run_id;
        client_->log_params(mlflow_run_, params_);
      }
      store_.set_mlflow(run_.id, uri_, experiment, mlflow_run_);
      log_.line(fmt::format("mlflow: run {} in experiment '{}' at {}", mlflow_run_, options_.experiment_path, uri_));
    });
  }
  void on_step(const StepReport& r) override {
    const int64_t t = unix_ms();
    for (auto [key, value] : {std::pair<const char*, double>{"loss", r.loss},
                              {"load_balancing_loss", r.aux_loss},
                              {"lr", r.lr},
                              {"grad_norm", r.grad_norm},
                              {"tokens_per_second", r.tokens_per_second}})
      pending_.push_back({key, value, t, r.step});
    if (pending_.size() >= 500 || t - last_flush_ > 5000) flush();
  }
  void on_eval(const EvalReport& e) override {
    const int64_t t = unix_ms();
    pending_.push_back({"eval_loss", e.loss, t, e.step});
    pending_.push_back({"eval_perplexity", e.perplexity, t, e.step});
    flush();
  }
  void on_finish(int64_t step, const std::filesystem::path& dir, bool stopped) override {
    flush();
    if (!stopped && !dir.empty())
      guard("model upload", [&] {
        const std::string uri = client_->log_artifacts(mlflow_run_, dir, "model");
        log_.line(fmt::format("mlflow: model uploaded to {}", uri));
        if (options_.model_registry_path) {
          const auto version = client_->register_model(*options_.model_registry_path, uri, mlflow_run_,
                                                       "pre-trained by tessera run " + run_.id);
          log_.line(fmt::format("mlflow: registered {} version {}", version.name, version.version));
        }
      });
    guard("end", [&] { client_->set_terminated(mlflow_run_, stopped ? "KILLED" : "FINISHED", unix_ms()); });
  }
  void fail_run() {
    flush();
    guard("end", [&] { client_->set_terminated(mlflow_run_, "FAILED", unix_ms()); });
  }

 private:
  void flush() {
    last_flush_ = unix_ms();
    if (pending_.empty()) return;
    guard("metrics", [&] { client_->log_metrics(mlflow_run_, pending_); });
    pending_.clear();
  }
  template <typename Fn>
  void guard(const char* what, Fn&& fn) {
    if (disabled_ || (!client_ && std::string(what) != "start")) return;
    try {
      fn();
    } catch (const std::exception& e) {
      disabled_ = true;
      log_.line(fmt::format("warning: mlflow {} failed, training goes on without MLflow: {}", what, e.what()));
    }
  }
  RunStore& store_;
  RunRecord run_;
  MlflowOptions options_;
  std::string uri_;
  std::vector<std::pair<std::string, std::string>> params_;
  LogObserver& log_;
  std::unique_ptr<MlflowClient> client_;
  std::string mlflow_run_;
  std::vector<MlflowMetric> pending_;
  int64_t last_flush_ = 0;
  bool disabled_ = false;
};

}  // namespace tessera::training
