// `pp-bench history`, `pp-bench compare` and `pp-bench timeline`: reading what earlier runs left.
#include <cstdio>
#include <fstream>

#include "commands.h"
#include "pp/bench/history.h"
#include "pp/bench/timeline-svg.h"
#include "pp/store/run-store.h"

namespace pp::bench_tool {

Status history_command(const HistoryArgs& a) {
  PP_ASSIGN_OR_RETURN(auto store, RunStore::open(a.db, RunStore::OpenMode::kReadOnly));
  BenchFilter f;
  if (!a.kind.empty()) {
    f.kind = parse_bench_kind(a.kind);
    if (!f.kind) return invalid_argument("--kind must be serve, offline or sweep");
  }
  if (!a.label.empty()) f.label = a.label;
  if (a.sweep) f.parent_id = *a.sweep;
  if (a.limit < 0) return invalid_argument("--limit must not be negative");
  f.limit = size_t(a.limit);
  PP_ASSIGN_OR_RETURN(auto runs, store->list_bench_runs(f));
  std::fputs(bench::format_history(runs).c_str(), stdout);
  return ok_status();
}

Status compare_command(const CompareArgs& a, bool* regressed) {
  if (!(a.threshold >= 0)) return invalid_argument("--threshold must not be negative");
  PP_ASSIGN_OR_RETURN(auto store, RunStore::open(a.db, RunStore::OpenMode::kReadOnly));
  PP_ASSIGN_OR_RETURN(BenchRecord ra, store->get_bench_run(a.run_a));
  PP_ASSIGN_OR_RETURN(BenchRecord rb, store->get_bench_run(a.run_b));
  const auto deltas = bench::compare_metrics(ra, rb, a.threshold);
  std::fputs(bench::format_comparison(ra, rb, deltas, a.threshold).c_str(), stdout);
  *regressed = false;
  for (const auto& d : deltas) *regressed = *regressed || d.regression;
  return ok_status();
}

Status timeline_command(const TimelineArgs& a) {
  PP_ASSIGN_OR_RETURN(bench::Trace t, bench::read_trace(a.trace));
  bench::TimelineWindow w;
  if (a.to_ms > a.from_ms || a.from_ms > 0) {
    // Relative to the first compute span of the trace.
    const bench::TimelineWindow all = bench::compute_window(t);
    w.from_us = all.from_us + int64_t(a.from_ms * 1e3);
    w.to_us = a.to_ms > 0 ? all.from_us + int64_t(a.to_ms * 1e3) : all.to_us;
    if (w.to_us <= w.from_us)
      return invalid_argument("empty window: --from-ms must be below --to-ms");
  }
  if (a.width < 200) return invalid_argument("--width must be at least 200");
  const auto usage = bench::stage_usage(t, w);
  if (!a.output.empty()) {
    std::ofstream f(a.output, std::ios::trunc);
    f << bench::timeline_svg(t, w, a.width);
    f.close();
    if (!f) return internal_error("cannot write '{}'", a.output);
  }
  std::fputs(bench::format_stage_usage(usage).c_str(), stdout);
  return ok_status();
}

}  // namespace pp::bench_tool
