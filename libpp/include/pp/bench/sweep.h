// `pp-bench sweep`: a grid of benchmark points (for example pp x async depth x max concurrency),
// one run per point, shown as a table with one row per point and drawn as throughput against
// latency.
//
// A grid is written "NAME=V1,V2,... NAME=..." (axes separated by spaces or ';'), each NAME an
// option of the benchmark without its dashes ("max-concurrency=1,4,16"). Points are the
// Cartesian product, the last axis varying fastest. In the plot each line is one combination of
// every axis but the last, its points the last axis's values in order (so with max-concurrency
// last, each line is one configuration's throughput-latency curve).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pp/bench/metrics.h"
#include "pp/status.h"

namespace pp::bench {

struct SweepAxis {
  std::string name;
  std::vector<std::string> values;
};
using SweepPoint = std::vector<std::pair<std::string, std::string>>;  // (axis, value), axis order

// Parses a grid; `allowed` names the axes accepted (kInvalidArgument naming any other, an axis
// given twice, or an axis without values).
Result<std::vector<SweepAxis>> parse_grid(std::string_view spec,
                                          std::span<const std::string> allowed);
std::vector<SweepPoint> expand_grid(const std::vector<SweepAxis>& axes);
// "pp=2 async-depth=1 max-concurrency=4"
std::string point_label(const SweepPoint& p);

// One measured point (run_id: its record in the run store, 0 if none; error: why it failed).
struct SweepRow {
  SweepPoint point;
  BenchMetrics metrics;
  int64_t run_id = 0;
  std::string error;
};

enum class LatencyKind { kTtft, kTpot, kItl, kE2e };
std::optional<LatencyKind> parse_latency_kind(std::string_view name);  // ttft, tpot, itl, e2e
const char* latency_kind_name(LatencyKind k);
// The median of that latency, in ms.
double median_latency_ms(const BenchMetrics& m, LatencyKind k);

// One row per point: its axis values, completed, output throughput, request throughput, and the
// median and p99 of TTFT, TPOT and E2E latency.
std::string format_sweep_table(const std::vector<SweepRow>& rows);

// Output throughput (x) against the median latency of kind `k` (y); failed points left out.
std::string sweep_plot_svg(const std::vector<SweepRow>& rows, LatencyKind k,
                           const std::string& title);

}  // namespace pp::bench
