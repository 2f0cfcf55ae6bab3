// pp-bench: load generator and benchmark for pp and any OpenAI-compatible or SGLang server.
//   pp-bench serve --base-url URL [--backend openai|openai-chat|sglang] [dataset, traffic options]
//   pp-bench offline --model M --pp N --async-depth D [dataset, traffic options]
//   pp-bench sweep --mode serve|offline --grid "max-concurrency=1,4,16" [--plot FILE.svg] ...
//   pp-bench quality --model M [--random-weights S] --device cpu|cuda --quantization fp8
//   pp-bench history | compare RUN_A RUN_B [--threshold 5%] | timeline TRACE -o FILE.svg
// Every run is recorded in the run store (--db). Exit codes: 0 ok, 1 a failure while working
// (compare --fail-on-regression: a regression), 2 bad usage or bad input.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli.h"
#include "commands.h"

namespace {

using namespace pp;
using namespace pp::bench_tool;

Result<double> parse_threshold(const std::string& text) {
  std::string t = text;
  double scale = 1.0;
  if (!t.empty() && t.back() == '%') {
    t.pop_back();
    scale = 0.01;
  }
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (t.empty() || *end != '\0' || !(v >= 0)) {
    return invalid_argument("--threshold must be a fraction (0.05) or a percentage (5%), not '{}'",
                            text);
  }
  return v * scale;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pp-bench: serving and offline benchmarks, sweeps, run history, timelines", kTool};
  app.require_subcommand(1);
  cli::add_version_flag(app);

  CommonArgs serve_common;
  ServeArgs serve;
  auto* serve_cmd = app.add_subcommand("serve", "benchmark a running server over HTTP");
  add_common_options(serve_cmd, serve_common);
  add_serve_options(serve_cmd, serve, true);

  CommonArgs offline_common;
  OfflineArgs offline;
  auto* offline_cmd =
      app.add_subcommand("offline", "benchmark the engine in this process, without HTTP");
  add_common_options(offline_cmd, offline_common);
  cli::add_engine_options(*offline_cmd, offline);

  SweepArgs sweep;
  auto* sweep_cmd = app.add_subcommand("sweep", "one run per point of a grid, and a plot");
  sweep_cmd->add_option("--mode", sweep.mode, "serve or offline (default serve)")
      ->check(CLI::IsMember({"serve", "offline"}));
  sweep_cmd->add_option("--grid", sweep.grid, "axes: \"pp=1,2 max-concurrency=1,4,16\"")
      ->required();
  sweep_cmd->add_option("--plot", sweep.plot, "draw throughput against latency to FILE.svg");
  sweep_cmd
      ->add_option("--plot-latency", sweep.plot_latency,
                   "latency plotted: ttft, tpot, itl or e2e (default tpot)")
      ->check(CLI::IsMember({"ttft", "tpot", "itl", "e2e"}));
  sweep_cmd->add_option("--model", sweep.model,
                        "serve: model name sent; offline: model folder, .gguf or partition");
  add_common_options(sweep_cmd, sweep.common);
  sweep_cmd->add_option("--base-url", sweep.serve.base_url, "serve: the server, http://HOST:PORT");
  sweep_cmd->add_option("--backend", sweep.serve.backend, "serve: openai, openai-chat or sglang")
      ->check(CLI::IsMember({"openai", "openai-chat", "sglang"}));
  sweep_cmd->add_flag("--disable-stream", sweep.serve.disable_stream, "serve: no streaming");
  sweep_cmd->add_option("--extra-request-body", sweep.serve.extra_request_body,
                        "serve: JSON object merged into every request body");
  cli::add_engine_options(*sweep_cmd, sweep.offline, {.model = false});

  HistoryArgs history;
  auto* history_cmd = app.add_subcommand("history", "list recorded benchmark runs");
  cli::add_db_option(*history_cmd, history.db);
  history_cmd->add_option("--kind", history.kind, "only serve, offline or sweep runs");
  history_cmd->add_option("--label", history.label, "only runs with this label");
  history_cmd->add_option("--sweep", history.sweep, "only the points of this sweep");
  history_cmd->add_option("--limit", history.limit, "the newest N runs (default 20; 0: all)");

  CompareArgs compare;
  std::string threshold = "5%";
  auto* compare_cmd = app.add_subcommand("compare", "two runs side by side, regressions flagged");
  compare_cmd->add_option("RUN_A", compare.run_a, "the baseline run id")->required();
  compare_cmd->add_option("RUN_B", compare.run_b, "the run compared with it")->required();
  compare_cmd->add_option("--threshold", threshold,
                          "flag changes beyond this: 5% or 0.05 (default 5%)");
  compare_cmd->add_flag("--fail-on-regression", compare.fail_on_regression,
                        "exit 1 when a regression is flagged");
  cli::add_db_option(*compare_cmd, compare.db);

  QualityArgs quality;
  auto* quality_cmd = app.add_subcommand(
      "quality", "accuracy of a quantization: top-1 agreement and KL against the model as stored");
  quality_cmd->add_option("--model", quality.model, "model folder, .gguf file, or a config")
      ->required();
  quality_cmd->add_option(
      "--random-weights", quality.random_weights,
      "--model is a config.json (or its folder): random weights from this seed");
  quality_cmd->add_option("--device", quality.device, "cpu or cuda (default cpu)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  quality_cmd->add_option("--gpu", quality.gpu, "cuda: the GPU (default 0)");
  quality_cmd->add_option("--quantization", quality.quantization, "the quantization (default fp8)")
      ->check(CLI::IsMember({"fp8"}));
  quality_cmd->add_option("--tokens", quality.tokens,
                          "positions compared, one sequence of random ids (default 512)");
  quality_cmd->add_option("--seed", quality.seed, "seed of the token ids (default 1)");
  quality_cmd->add_option("--label", quality.label, "label stored with the run");
  cli::add_db_option(*quality_cmd, quality.db);

  TimelineArgs timeline;
  auto* timeline_cmd =
      app.add_subcommand("timeline", "draw a pp-serve --trace file; stage busy and idle time");
  timeline_cmd->add_option("TRACE", timeline.trace, "Chrome trace written by --trace")->required();
  timeline_cmd->add_option("-o,--output", timeline.output, "write the picture to FILE.svg");
  timeline_cmd->add_option("--from-ms", timeline.from_ms,
                           "window start, ms after the first compute span");
  timeline_cmd->add_option("--to-ms", timeline.to_ms, "window end, ms after the first span");
  timeline_cmd->add_option("--width", timeline.width, "picture width in pixels (default 1400)");

  if (int rc = cli::parse(app, argc, argv); rc >= 0) return rc;

  Status st;
  if (*serve_cmd) {
    cli::apply_log_level(serve_common.log_level);
    st = measure_serve(serve_common, serve).status();
  } else if (*offline_cmd) {
    cli::apply_log_level(offline_common.log_level);
    st = measure_offline(offline_common, offline).status();
  } else if (*sweep_cmd) {
    cli::apply_log_level(sweep.common.log_level);
    st = sweep_command(sweep);
  } else if (*history_cmd) {
    st = history_command(history);
  } else if (*compare_cmd) {
    auto t = parse_threshold(threshold);
    if (!t.ok()) return cli::report(kTool, t.status());
    compare.threshold = *t;
    bool regressed = false;
    st = compare_command(compare, &regressed);
    if (st.ok() && regressed && compare.fail_on_regression) return cli::kExitFailure;
  } else if (*quality_cmd) {
    st = quality_command(quality);
  } else if (*timeline_cmd) {
    st = timeline_command(timeline);
  }
  return cli::report(kTool, st);
}
