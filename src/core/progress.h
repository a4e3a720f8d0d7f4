#pragma once
// A one-line progress bar on stderr for long work (writing checkpoints, loading, training).
// Redraws at most ten times a second, and only when stderr is a terminal.
#include <chrono>
#include <cstdint>
#include <string>

namespace tessera {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, std::string unit = "");
  ~ProgressBar();
  void update(int64_t done);  // absolute progress
  void add(int64_t delta) { update(done_ + delta); }
  void finish();

 private:
  void draw(bool final);
  std::string label_, unit_;
  int64_t total_, done_ = 0;
  bool enabled_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace tessera
