#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

namespace tessera {

namespace {
std::string human(double value, const std::string& unit) {
  if (unit == "B") {
    const char* units[] = {"B", "KB", "MB", "GB", "TB"};
    int i = 0;
    while (value >= 1000 && i < 4) {
      value /= 1000;
      ++i;
    }
    return fmt::format("{:.1f} {}", value, units[i]);
  }
  return fmt::format("{:.0f}{}", value, unit.empty() ? "" : " " + unit);
}
}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(std::max<int64_t>(total, 1)),
      enabled_(isatty(STDERR_FILENO)), start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(int64_t done) {
  done_ = std::min(done, total_);
  auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ >= std::chrono::milliseconds(100)) {
    last_draw_ = now;
    draw(false);
  }
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void ProgressBar::draw(bool final) {
  if (!enabled_) return;
  const double fraction = static_cast<double>(done_) / static_cast<double>(total_);
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(fraction * kWidth);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string eta;
  if (!final && fraction > 0.01) eta = fmt::format(" ETA {:.0f}s", elapsed * (1 - fraction) / fraction);
  fmt::print(stderr, "\r{} [{}{}] {:3.0f}% {}/{}{}\x1b[K{}", label_, std::string(filled, '#'),
             std::string(kWidth - filled, ' '), fraction * 100, human(static_cast<double>(done_), unit_),
             human(static_cast<double>(total_), unit_), eta, final ? "\n" : "");
  std::fflush(stderr);
}

}  // namespace tessera
