// `pp-bench offline`: the serving benchmark without HTTP. Requests go straight to an Engine in
// this process (its stages are local pp-stage processes), so the numbers are the pipeline's own:
// no HTTP parsing, JSON or detokenization on the client side. Same traffic rules and metrics as
// `serve` (serve-bench.h): Poisson releases, at most max_concurrency requests submitted and not
// finished, TTFT at the first delta that carries tokens, one ITL per token, output tokens as the
// engine counts them. Every request is greedy (temperature 0) with max_tokens = output_len.
#pragma once

#include <vector>

#include "pp/bench/dataset.h"
#include "pp/bench/serve-bench.h"
#include "pp/pipeline/engine.h"
#include "pp/status.h"

namespace pp::bench {

struct OfflineOptions {
  TrafficOptions traffic;
  bool ignore_eos = false;
};

// Runs the benchmark on a started engine. Errors: bad options, an engine that failed (the run
// stops and says why), a failed warmup. Requests the engine refuses count as failed.
// The outcome's extra metrics hold each stage's busy fraction over the measured run (compute
// time / duration): "stage0_busy_fraction", ..., and "min_stage_busy_fraction".
Result<BenchOutcome> run_offline_bench(pipeline::Engine& engine, const OfflineOptions& options,
                                       const std::vector<BenchRequest>& requests,
                                       ProgressFn progress = {});

}  // namespace pp::bench
