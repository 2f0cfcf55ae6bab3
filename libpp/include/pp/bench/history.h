// Reading benchmark runs back from the run store: `pp-bench history` (one line per run with its
// key metrics) and `pp-bench compare A B` (every metric side by side, the ratio B / A, and the
// regressions of B against A beyond a threshold).
//
// Direction: a metric whose name says throughput (or "completed", or a "busy_fraction") is
// better higher; one in ms or seconds (latencies, "duration"), "failed", or an "idle_fraction"
// is better lower; counts and concurrency have no direction and are never flagged.
// A regression is a change in the worse direction by more than `threshold` of A's value
// (|B - A| > threshold * |A|); an improvement likewise in the better direction.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "pp/store/records.h"

namespace pp::bench {

enum class MetricDirection { kHigherIsBetter, kLowerIsBetter, kNeutral };

MetricDirection metric_direction(std::string_view name, std::string_view unit);

struct MetricDelta {
  std::string name, unit;
  bool in_a = false, in_b = false;  // present in run A, in run B
  double a = 0, b = 0;
  double ratio = 0;  // b / a (NaN when a is 0 or either is missing or NaN)
  MetricDirection direction = MetricDirection::kNeutral;
  bool regression = false;
  bool improvement = false;
};

// Every metric of either run, by name.
std::vector<MetricDelta> compare_metrics(const BenchRecord& a, const BenchRecord& b,
                                         double threshold);

// The comparison as a table: metric, A, B, ratio, and "REGRESSION" / "better" marks, followed by
// a summary line counting the regressions.
std::string format_comparison(const BenchRecord& a, const BenchRecord& b,
                              const std::vector<MetricDelta>& deltas, double threshold);

// One line per run: id, local time, kind, label, and the key metrics it has (output throughput,
// median TTFT, median ITL, median E2E latency, completed/failed).
std::string format_history(const std::vector<BenchRecord>& runs);

// "2025-11-29 17:20:05" in local time.
std::string format_local_time(int64_t unix_ms);

}  // namespace pp::bench
