// The server's load line (see load-log.h): differences of the engine's cumulative counters
// over the interval between two samples.
#include "pp/server/load-log.h"

#include <algorithm>

#include <fmt/format.h>

namespace pp::server {

LoadReport load_report(const pipeline::EngineStats& prev, const pipeline::EngineStats& cur) {
  const pipeline::SchedulerStats& a = prev.scheduler;
  const pipeline::SchedulerStats& b = cur.scheduler;
  LoadReport r;
  r.n_running = b.n_running;
  r.n_waiting = b.n_waiting;
  r.kv_usage = b.kv_usage;
  r.kv_blocks_used = b.kv_blocks_used;
  r.kv_blocks_total = b.kv_blocks_total;
  const double dt = cur.uptime_s - prev.uptime_s;
  // Counters restart with nothing (a new engine): a negative difference counts as none.
  const int64_t prefill = std::max<int64_t>(0, b.n_prefill_tokens - a.n_prefill_tokens);
  const int64_t gen = std::max<int64_t>(0, b.n_generated_tokens - a.n_generated_tokens);
  if (dt > 0) {
    r.prefill_tok_s = double(prefill) / dt;
    r.gen_tok_s = double(gen) / dt;
  }
  for (size_t k = 0; k < cur.stages.size(); ++k) {
    const double before = k < prev.stages.size() ? prev.stages[k].compute_s : 0.0;
    const double busy = dt > 0 ? (cur.stages[k].compute_s - before) / dt : 0.0;
    r.stage_busy.push_back(std::clamp(busy, 0.0, 1.0));
  }
  r.busy = r.n_running > 0 || r.n_waiting > 0 || prefill > 0 || gen > 0;
  return r;
}

std::string format_load_line(const LoadReport& r) {
  std::string line = fmt::format(
      "load: running {}, queued {}, prefill {:.1f} tok/s, gen {:.1f} tok/s, kv {:.1f}% ({}/{} "
      "blocks), stage busy",
      r.n_running, r.n_waiting, r.prefill_tok_s, r.gen_tok_s, 100.0 * r.kv_usage, r.kv_blocks_used,
      r.kv_blocks_total);
  for (double b : r.stage_busy) line += fmt::format(" {:.2f}", b);
  return line;
}

std::optional<LoadReport> LoadMeter::sample(const pipeline::EngineStats& cur) {
  std::lock_guard lock(mu_);
  std::optional<LoadReport> r;
  if (prev_) {
    r = load_report(*prev_, cur);
    last_gen_tok_s_ = r->gen_tok_s;
  }
  prev_ = cur;
  return r;
}

double LoadMeter::last_gen_tok_s() const {
  std::lock_guard lock(mu_);
  return last_gen_tok_s_;
}

}  // namespace pp::server
