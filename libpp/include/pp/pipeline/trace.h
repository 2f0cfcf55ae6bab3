// The pipeline's timeline: every micro-batch on every stage (StageTiming, reported by the stages)
// and every plan's round trip at the coordinator, kept in memory and written as a Chrome trace
// (a JSON array of "ph":"X" complete events, opens in Perfetto and chrome://tracing).
//
// Layout of the trace: one process per stage (pid = stage index, named "stage K") with three
// lanes: tid 0 "compute" (start..end: the stage's layers ran), tid 1 "wait" (queued..start: the
// plan was there, the activations or the compute thread were not), tid 2 "send" (end..sent:
// the output was handed over). The coordinator is pid = n_stages ("coordinator"), one lane per
// micro-batch group: plan issued .. tokens back. Every event's args carry seq, group, n_tokens.
// Times are microseconds since the Unix epoch (the stages' system clocks; on several hosts they
// are only as aligned as the hosts' clocks).
//
// StageBusy is the measure of the bubble: the fraction of a window each stage spent computing.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "pp/status.h"
#include "pp/transport/messages.h"

namespace pp::pipeline {

// Microseconds since the Unix epoch (system clock): the time base of StageTiming.
int64_t trace_now_us();

// One plan's round trip as the coordinator saw it.
struct PlanSpan {
  uint64_t seq = 0;
  int32_t group = 0;
  int32_t n_tokens = 0;
  int64_t issued_us = 0;    // plan sent to the stages
  int64_t returned_us = 0;  // its tokens applied
};

// How busy each stage was between its first compute start and its last compute end.
struct StageBusy {
  int32_t stage = 0;
  int64_t n_micro_batches = 0;
  double wall_s = 0;     // first start .. last end
  double compute_s = 0;  // sum of end - start
  double idle_fraction() const { return wall_s > 0 ? 1.0 - compute_s / wall_s : 0.0; }
};

// Busy time per stage (index = stage) over the timings given; stages without a timing get an
// empty entry. With `from_us`/`to_us` set (> 0), only micro-batches starting in that window
// count and the window is the wall time.
std::vector<StageBusy> stage_busy(std::span<const transport::StageTiming> timings, int32_t n_stages,
                                  int64_t from_us = 0, int64_t to_us = 0);

class TraceRecorder {
 public:
  explicit TraceRecorder(int32_t n_stages) : n_stages_(n_stages) {}

  void add(const transport::StageTiming& t) { timings_.push_back(t); }
  void add(const PlanSpan& s) { plans_.push_back(s); }
  std::span<const transport::StageTiming> timings() const { return timings_; }
  std::span<const PlanSpan> plans() const { return plans_; }

  // Writes the Chrome trace to `path` (replacing it). kInternal naming the file on failure.
  Status write(const std::filesystem::path& path) const;

 private:
  int32_t n_stages_;
  std::vector<transport::StageTiming> timings_;
  std::vector<PlanSpan> plans_;
};

}  // namespace pp::pipeline
