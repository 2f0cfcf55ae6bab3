// `pp-bench sweep`: one serve or offline run per point of a grid, recorded as points of one sweep
// record; a table of every point and, with --plot, throughput against latency as SVG.
#include <cstdio>
#include <fstream>

#include <fmt/format.h>

#include "commands.h"
#include "pp/bench/sweep.h"
#include "pp/store/run-store.h"

namespace pp::bench_tool {

namespace {

Result<int64_t> to_int(const std::string& axis, const std::string& v) {
  try {
    size_t used = 0;
    const int64_t x = std::stoll(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  return invalid_argument("grid axis '{}': '{}' is not an integer", axis, v);
}

Status apply(const std::string& axis, const std::string& v, SweepArgs& a) {
  CommonArgs& c = a.common;
  if (axis == "request-rate") {
    PP_RETURN_IF_ERROR(parse_rate(v).status());
    c.request_rate = v;
    return ok_status();
  }
  if (axis == "random-range-ratio") {
    try {
      c.random_range_ratio = std::stod(v);
    } catch (const std::exception&) {
      return invalid_argument("grid axis '{}': '{}' is not a number", axis, v);
    }
    return ok_status();
  }
  PP_ASSIGN_OR_RETURN(const int64_t x, to_int(axis, v));
  if (axis == "max-concurrency") c.max_concurrency = x;
  if (axis == "num-prompts") c.num_prompts = x;
  if (axis == "random-input-len") c.random_input_len = x;
  if (axis == "random-output-len") c.random_output_len = x;
  if (axis == "pp") a.offline.pp = int32_t(x);
  if (axis == "async-depth") a.offline.async_depth = int32_t(x);
  if (axis == "max-running-requests") a.offline.max_running_requests = int32_t(x);
  if (axis == "max-batch-tokens") a.offline.max_batch_tokens = int32_t(x);
  return ok_status();
}

}  // namespace

Status sweep_command(SweepArgs a) {
  std::vector<std::string> allowed = {"request-rate",      "max-concurrency",
                                      "num-prompts",       "random-input-len",
                                      "random-output-len", "random-range-ratio"};
  const bool offline = a.mode == "offline";
  if (offline) {
    for (const char* x : {"pp", "async-depth", "max-running-requests", "max-batch-tokens"}) {
      allowed.push_back(x);
    }
    a.offline.model = a.model;
    if (a.model.empty()) return invalid_argument("sweep --mode offline needs --model");
  } else {
    a.serve.model = a.model;
    if (a.serve.base_url.empty()) {
      a.serve.base_url = fmt::format("http://{}:{}", a.serve.host, a.serve.port);
    }
  }
  auto latency = bench::parse_latency_kind(a.plot_latency);
  if (!latency) return invalid_argument("--plot-latency must be ttft, tpot, itl or e2e");
  PP_ASSIGN_OR_RETURN(auto axes, bench::parse_grid(a.grid, allowed));
  const std::vector<bench::SweepPoint> points = bench::expand_grid(axes);
  // Every point's options are checked before anything runs.
  for (const auto& p : points) {
    SweepArgs b = a;
    for (const auto& [k, v] : p) PP_RETURN_IF_ERROR(apply(k, v, b));
    if (offline) PP_RETURN_IF_ERROR(cli::engine_options(b.offline).status());
  }

  nlohmann::json params = common_params(a.common);
  params["mode"] = a.mode;
  params["grid"] = a.grid;
  params.update(offline ? cli::engine_params(a.offline) : serve_params(a.serve, a.model));
  BenchRecord parent;
  parent.kind = BenchKind::kSweep;
  parent.label = a.common.label;
  parent.params_json = params.dump();
  if (!offline) parent.server_url = a.serve.base_url;
  parent.metrics["points"] = {double(points.size()), ""};
  int64_t sweep_id = 0;
  {
    PP_ASSIGN_OR_RETURN(auto store, RunStore::open(a.common.db));
    PP_ASSIGN_OR_RETURN(sweep_id, store->record_bench_run(parent));
  }
  std::printf("sweep %lld: %zu points\n", (long long)sweep_id, points.size());
  std::fflush(stdout);

  std::vector<bench::SweepRow> rows;
  for (size_t i = 0; i < points.size(); ++i) {
    SweepArgs b = a;
    for (const auto& [k, v] : points[i]) PP_RETURN_IF_ERROR(apply(k, v, b));
    b.common.label = bench::point_label(points[i]);
    std::printf("[%zu/%zu] %s\n", i + 1, points.size(), b.common.label.c_str());
    std::fflush(stdout);
    auto m = offline ? measure_offline(b.common, b.offline, sweep_id, true)
                     : measure_serve(b.common, b.serve, sweep_id, true);
    bench::SweepRow row;
    row.point = points[i];
    if (m.ok()) {
      row.metrics = m->outcome.metrics;
      row.run_id = m->run_id;
    } else {
      row.error = m.status().message();
      std::fprintf(stderr, "%s: point '%s' failed: %s\n", kTool, b.common.label.c_str(),
                   row.error.c_str());
    }
    rows.push_back(std::move(row));
  }
  std::fputs(bench::format_sweep_table(rows).c_str(), stdout);
  if (!a.plot.empty()) {
    const std::string title = fmt::format("pp-bench sweep {} ({}): {}", sweep_id, a.mode, a.grid);
    std::ofstream f(a.plot, std::ios::trunc);
    f << bench::sweep_plot_svg(rows, *latency, title);
    f.close();
    if (!f) return internal_error("cannot write '{}'", a.plot);
    std::printf("plot: %s\n", a.plot.c_str());
  }
  for (const auto& r : rows) {
    if (!r.error.empty()) return internal_error("some points of sweep {} failed", sweep_id);
  }
  return ok_status();
}

}  // namespace pp::bench_tool
