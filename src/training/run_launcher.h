#pragma once
// Starting and stopping training runs as background processes, for the command line and the
// server alike. A run's trainer is `tessera <command> --worker ID` in a session of its own,
// with its output in the run's log file and TESSERA_HOME set to the store that holds the run.
// The starter waits until the trainer reports that its data is ready (or why it failed), so a
// bad dataset is reported to whoever started the run.
#include <filesystem>
#include <string>

#include "store/run_store.h"

namespace tessera::training {

// Where run `id` keeps its log and checkpoints under the data folder `home`.
std::filesystem::path run_folder(const std::filesystem::path& home, const std::string& id);

// Starts the trainer of `run` (stored in home's database) and waits for its first report: up to
// two minutes, after which the run counts as started and goes on preparing on its own. Errors
// with the trainer's own one-line reason when it fails before that. The trainer is not a child
// of the caller (a server does not collect it), and inherits none of its files or sockets.
void start_worker(const RunRecord& run, const std::string& command, bool resume, const std::filesystem::path& home);

// Asks a queued or running run to stop without waiting: records the request and sends the
// trainer SIGTERM (it saves a checkpoint and exits, and then reads as stopped). A queued run
// without a process is stopped at once. Errors when the run has already finished or runs on
// another host. Returns the run as it is now.
RunRecord request_stop(RunStore& store, const std::string& id);

}  // namespace tessera::training
