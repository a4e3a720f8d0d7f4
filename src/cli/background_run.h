#pragma once
// Training runs in the background or the foreground, shared by `tessera train` and `tessera
// finetune`: a background run is `tessera <command> --worker ID` in its own session with its
// output in the run's log file; the starting command waits until the worker reports that its
// data is ready (or why it failed), so bad data is reported where the user typed the command.
#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "store/database.h"
#include "store/run_store.h"
#include "training/pretrain_job.h"

namespace tessera::cli {

using RunJob = std::function<int(const std::shared_ptr<Database>&, const std::string&,
                                 const training::PretrainJobOptions&, const std::atomic<bool>&)>;

std::shared_ptr<Database> open_store();
std::filesystem::path run_log_file(const std::string& id);

// Starts the worker `tessera <command> --worker ID [--resume]` and waits for its first report.
void start_worker(const RunRecord& run, const std::string& command, bool resume);
void print_submitted(const std::string& id);
// Runs the job here with a progress line; Ctrl-C stops it after a checkpoint. Returns its code.
int run_in_foreground(const std::shared_ptr<Database>& db, const RunRecord& run, bool resume, const RunJob& job);
// The body of `--worker ID`: runs the job with its log on stdout, reports readiness on ready_fd,
// and exits the process with the job's code.
[[noreturn]] void run_worker(const std::string& id, int ready_fd, bool resume, const RunJob& job);

}  // namespace tessera::cli
