#include "training/run_reporting.h"

#include "core/error.h"

namespace tessera::training {

RunRecord run_to_start(RunStore& store, const std::string& run_id, bool resume) {
  const auto found = store.get(run_id);
  if (!found) fail("no run '{}' (see `tessera runs list`)", run_id);
  if (!resume && found->status != RunStatus::queued)
    fail("run {} is {}; only a new run can start (resume continues an old one)", run_id, to_string(found->status));
  return *found;
}

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string human_count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f}G", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.1f}k", n / 1e3);
  return fmt::format("{:.0f}", n);
}

std::string human_seconds(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

}  // namespace tessera::training
