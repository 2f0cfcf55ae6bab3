// `pp-bench timeline`: a pp-serve --trace file (Chrome trace format, see pipeline/trace.h) drawn
// as a picture of the pipeline, and each stage's busy and idle fraction.
//
// Reading: a JSON array of events, or an object with "traceEvents". "ph":"X" events (ts and dur
// in microseconds) are spans; "ph":"M" process_name events name the processes. A process named
// "stage K" (or any process, when none is named) is a stage; one named "coordinator" holds the
// plans' round trips, one lane per micro-batch group. On a stage, lane (tid) 0 or a span named
// "compute" is compute; "wait" and "send" spans are drawn thinner beside it.
//
// Busy fraction: the union of a stage's compute spans within the window, divided by the window:
// the first compute start to the last compute end over all stages (one window for every stage,
// so the pipeline's fill and drain count as idle on the stages they leave waiting).
//
// The picture: one row per stage, compute spans as boxes coloured by micro-batch group (the same
// group the same colour on every stage, so one micro-batch can be followed down the pipeline),
// wait spans as a thin grey bar under them, the coordinator's plan spans in a row of their own,
// a time axis in milliseconds, and each stage's busy percentage by its name.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "pp/status.h"

namespace pp::bench {

struct TraceSpan {
  int64_t pid = 0;
  int64_t tid = 0;
  std::string name;
  int64_t begin_us = 0, end_us = 0;
  int64_t seq = -1, group = -1, n_tokens = -1;  // from args; -1 when absent
};

struct Trace {
  std::vector<TraceSpan> spans;              // every "X" event, in file order
  std::map<int64_t, std::string> processes;  // pid -> name (from "M" events)
  std::vector<int64_t> stage_pids;           // the stages, in stage order
  int64_t coordinator_pid = -1;              // -1 when absent
};

Result<Trace> parse_trace(std::string_view json_text);
Result<Trace> read_trace(const std::filesystem::path& path);

struct StageUsage {
  int64_t pid = 0;
  std::string name;
  int64_t n_spans = 0;  // compute spans
  double busy_s = 0;    // union of compute spans within the window
  double window_s = 0;  // the common window
  double busy_fraction() const { return window_s > 0 ? busy_s / window_s : 0.0; }
  double idle_fraction() const { return window_s > 0 ? 1.0 - busy_s / window_s : 0.0; }
};

struct TimelineWindow {
  int64_t from_us = 0;  // 0 with to_us 0: the whole trace
  int64_t to_us = 0;
};

// The window used for busy fractions: the given one, or first..last compute span.
TimelineWindow compute_window(const Trace& t, TimelineWindow w = {});
std::vector<StageUsage> stage_usage(const Trace& t, TimelineWindow w = {});

// The SVG document (UTF-8 text). Spans outside the window are left out.
std::string timeline_svg(const Trace& t, TimelineWindow w = {}, int width_px = 1400);

// "stage 0: busy 87.1%, idle 12.9% (412 micro-batches)" lines and the window.
std::string format_stage_usage(const std::vector<StageUsage>& usage);

}  // namespace pp::bench
