#include "server/metrics.h"

#include <fmt/format.h>

namespace tessera::server {

namespace {

// Seconds: from a few milliseconds (a token) to minutes (an image on a CPU).
const std::vector<double> kBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

std::string escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string number(double v) { return fmt::format("{}", v); }

}  // namespace

std::string Metrics::label_text(const Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i)
    out += fmt::format("{}{}=\"{}\"", i ? "," : "", labels[i].first, escape(labels[i].second));
  return out + "}";
}

void Metrics::describe(const std::string& name, const std::string& type, const std::string& help) {
  std::lock_guard lock(mutex_);
  meta_[name] = {type, help};
}

void Metrics::add(const std::string& name, const Labels& labels, double value) {
  std::lock_guard lock(mutex_);
  counters_[name][label_text(labels)] += value;
}

void Metrics::observe(const std::string& name, const Labels& labels, double value) {
  std::lock_guard lock(mutex_);
  auto& h = histograms_[name][label_text(labels)];
  if (h.counts.empty()) h.counts.assign(kBuckets.size(), 0);
  for (size_t i = 0; i < kBuckets.size(); ++i)
    if (value <= kBuckets[i]) {
      h.counts[i] += 1;
      break;
    }
  h.sum += value;
  ++h.count;
}

void Metrics::gauge(const std::string& name, std::function<std::vector<std::pair<Labels, double>>()> fn) {
  std::lock_guard lock(mutex_);
  gauges_.emplace_back(name, std::move(fn));
}

std::string Metrics::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  auto header = [&](const std::string& name, const char* fallback_type) {
    auto it = meta_.find(name);
    if (it != meta_.end()) {
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, it->second.second, name, it->second.first);
    } else {
      out += fmt::format("# TYPE {} {}\n", name, fallback_type);
    }
  };
  for (const auto& [name, series] : counters_) {
    header(name, "counter");
    for (const auto& [labels, value] : series) out += fmt::format("{}{} {}\n", name, labels, number(value));
  }
  for (const auto& [name, series] : histograms_) {
    header(name, "histogram");
    for (const auto& [labels, h] : series) {
      // Bucket labels join the series' own labels.
      const std::string inner = labels.empty() ? "" : labels.substr(1, labels.size() - 2) + ",";
      double cumulative = 0;
      for (size_t i = 0; i < kBuckets.size(); ++i) {
        cumulative += h.counts[i];
        out += fmt::format("{}_bucket{{{}le=\"{}\"}} {}\n", name, inner, number(kBuckets[i]), number(cumulative));
      }
      out += fmt::format("{}_bucket{{{}le=\"+Inf\"}} {}\n", name, inner, h.count);
      out += fmt::format("{}_sum{} {}\n{}_count{} {}\n", name, labels, number(h.sum), name, labels, h.count);
    }
  }
  std::map<std::string, std::vector<std::pair<Labels, double>>> gauges;
  for (const auto& [name, fn] : gauges_)
    for (auto& sample : fn()) gauges[name].push_back(std::move(sample));
  for (const auto& [name, samples] : gauges) {
    header(name, "gauge");
    for (const auto& [labels, value] : samples) out += fmt::format("{}{} {}\n", name, label_text(labels), number(value));
  }
  return out;
}

}  // namespace tessera::server
