// MetricsRegistry: counters, gauges and histograms rendered in Prometheus' text exposition
// format (version 0.0.4) for GET /metrics. A metric family is declared once (name, help, type,
// histogram bucket bounds); its series are keyed by a label set. Thread-safe: one mutex, held
// only for a few additions, so the engine's sink (on the coordinator thread) may observe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace pp::server {

enum class MetricType : uint8_t { kCounter, kGauge, kHistogram };

// Label pairs, e.g. {{"reason", "stop"}}; rendered in the order given.
using Labels = std::vector<std::pair<std::string, std::string>>;

class MetricsRegistry {
 public:
  // Declares a family. Histograms need strictly increasing finite bucket upper bounds (+Inf is
  // implied). Declaring a name twice is a bug.
  void declare(const std::string& name, MetricType type, const std::string& help,
               std::vector<double> buckets = {});

  // Counters and gauges: add to / set the series' value.
  void add(const std::string& name, const Labels& labels, double v = 1.0);
  void set(const std::string& name, const Labels& labels, double v);
  // Histograms: one observation.
  void observe(const std::string& name, const Labels& labels, double v);

  // The value of a counter / gauge series, or a histogram's observation count (0 if absent).
  double value(const std::string& name, const Labels& labels = {}) const;

  // Every family, in declaration order, in Prometheus text format.
  std::string render() const;

  // Bucket bounds for latencies in seconds, 1 ms .. 60 s.
  static std::vector<double> latency_buckets();

 private:
  struct Series {
    double value = 0;              // counter / gauge; histogram: sum
    uint64_t count = 0;            // histogram observations
    std::vector<uint64_t> bucket;  // histogram: per bucket (not cumulative)
  };
  struct Family {
    std::string name, help;
    MetricType type = MetricType::kCounter;
    std::vector<double> buckets;
    std::map<Labels, Series> series;
  };
  Family& family(const std::string& name);  // mu_ held; a bug when undeclared
  const Family* find(const std::string& name) const;

  mutable std::mutex mu_;
  std::vector<Family> families_;
};

}  // namespace pp::server
