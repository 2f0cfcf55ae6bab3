// The server's load line: what a person watching pp-serve's stderr reads while it works, one
// line every few seconds (as SGLang prints), nothing while idle:
//
//   load: running 12, queued 3, prefill 1530.2 tok/s, gen 412.7 tok/s, kv 41.2% (134/325
//   blocks), stage busy 0.93 0.88
//
// Rates and busy fractions are over the interval between two samples of the engine's counters
// (EngineStats), so the line is a pure function of two samples; LoadMeter keeps the previous one.
#pragma once

#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "pp/pipeline/engine.h"

namespace pp::server {

struct LoadReport {
  int64_t n_running = 0;
  int64_t n_waiting = 0;
  double prefill_tok_s = 0;  // prompt tokens prefilled per second over the interval
  double gen_tok_s = 0;      // tokens generated per second over the interval
  double kv_usage = 0;       // 0..1, now
  int64_t kv_blocks_used = 0, kv_blocks_total = 0;
  std::vector<double> stage_busy;  // per stage: compute seconds / interval seconds, 0..1
  // Work was running or queued, or tokens moved, during the interval: the line is worth printing.
  bool busy = false;
};

// The report between two samples of the same engine, `prev` taken before `cur`.
LoadReport load_report(const pipeline::EngineStats& prev, const pipeline::EngineStats& cur);

// The line (without a newline), as in the example above.
std::string format_load_line(const LoadReport& r);

// Keeps the previous sample; thread-safe.
class LoadMeter {
 public:
  // Samples `cur`: the report since the previous sample (none for the first).
  std::optional<LoadReport> sample(const pipeline::EngineStats& cur);
  // Generation throughput of the last report (tokens per second); 0 before one.
  double last_gen_tok_s() const;

 private:
  mutable std::mutex mu_;
  std::optional<pipeline::EngineStats> prev_;
  double last_gen_tok_s_ = 0;
};

}  // namespace pp::server
