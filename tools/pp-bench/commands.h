// pp-bench's subcommands, one function each; main.cpp parses the options and calls them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "bench-options.h"
#include "pp/status.h"

namespace pp::bench_tool {

// One measured run and its id in the run store.
struct Measured {
  bench::BenchOutcome outcome;
  int64_t run_id = 0;
};

// serve / offline: measure, print the table, record. `parent_id` marks a sweep's point; `quiet`
// leaves the table out (the sweep prints its own).
Result<Measured> measure_serve(const CommonArgs& c, const ServeArgs& s,
                               std::optional<int64_t> parent_id = std::nullopt, bool quiet = false);
Result<Measured> measure_offline(const CommonArgs& c, const OfflineArgs& o,
                                 std::optional<int64_t> parent_id = std::nullopt,
                                 bool quiet = false);

struct SweepArgs {
  std::string mode = "serve";
  std::string grid;
  std::string plot;
  std::string plot_latency = "tpot";
  CommonArgs common;
  ServeArgs serve;
  OfflineArgs offline;
  std::string model;  // --model: the server's model name (serve) or the model path (offline)
};
Status sweep_command(SweepArgs a);

struct HistoryArgs {
  std::string db;
  std::string kind;
  std::string label;
  int64_t limit = 20;
  std::optional<int64_t> sweep;
};
Status history_command(const HistoryArgs& a);

struct CompareArgs {
  std::string db;
  int64_t run_a = 0, run_b = 0;
  double threshold = 0.05;
  bool fail_on_regression = false;
};
// Returns whether a regression was flagged (through *regressed).
Status compare_command(const CompareArgs& a, bool* regressed);

struct QualityArgs {
  std::string model;
  std::optional<uint64_t> random_weights;
  std::string device = "cpu";
  int gpu = 0;
  std::string quantization = "fp8";
  int64_t tokens = 512;
  uint64_t seed = 1;
  std::string label;
  std::string db;
};
// The model as stored against it quantized, teacher-forced on random ids: top-1 agreement and
// KL, printed and recorded.
Status quality_command(const QualityArgs& a);

struct TimelineArgs {
  std::string trace;
  std::string output;
  double from_ms = 0, to_ms = 0;
  int width = 1400;
};
Status timeline_command(const TimelineArgs& a);

}  // namespace pp::bench_tool
