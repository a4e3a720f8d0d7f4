#pragma once
// Counters, gauges and histograms in the Prometheus text exposition format (version 0.0.4).
// Gauges that mirror live state (queue depth, KV blocks) are read from callbacks at scrape time.
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace tessera::server {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Metrics {
 public:
  void describe(const std::string& name, const std::string& type, const std::string& help);
  void add(const std::string& name, const Labels& labels, double value = 1);
  void observe(const std::string& name, const Labels& labels, double value);  // histogram
  // fn returns the current (labels, value) samples of a gauge.
  void gauge(const std::string& name, std::function<std::vector<std::pair<Labels, double>>()> fn);
  std::string render() const;

 private:
  struct Histogram {
    std::vector<double> counts;  // per bucket (cumulative at render time)
    double sum = 0;
    uint64_t count = 0;
  };
  static std::string label_text(const Labels& labels);

  mutable std::mutex mutex_;
  std::map<std::string, std::pair<std::string, std::string>> meta_;  // name -> type, help
  std::map<std::string, std::map<std::string, double>> counters_;    // name -> labels -> value
  std::map<std::string, std::map<std::string, Histogram>> histograms_;
  std::vector<std::pair<std::string, std::function<std::vector<std::pair<Labels, double>>()>>> gauges_;
};

}  // namespace tessera::server
