// `pp-bench serve`: drives a server with a dataset as SGLang's bench_serving does, and measures.
//
// Traffic: request i is released at arrival time a_i, with a_0 = 0 and gaps drawn from an
// exponential distribution of mean 1 / request_rate (a Poisson process; the gaps come from the
// seed, so a rerun sends the same schedule). request_rate = inf releases them all at once. A
// released request waits for one of `max_concurrency` slots; its timing starts when it is sent.
// The duration runs from the first release to the last response's end.
//
// Threads: one client thread per slot, each with its own keep-alive connection. Without
// --max-concurrency there are min(num_prompts, kMaxInFlight) slots, so at most kMaxInFlight
// (1024) requests are in flight at once; a larger --max-concurrency is refused.
//
// Before the run, `warmup_requests` copies of the first request (with at most 32 new tokens) are
// sent at once and not measured; the run fails when every one of them fails.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "pp/bench/dataset.h"
#include "pp/bench/http-client.h"
#include "pp/bench/metrics.h"
#include "pp/bench/progress.h"
#include "pp/model/tokenizer.h"
#include "pp/status.h"

namespace pp::bench {

inline constexpr int64_t kMaxInFlight = 1024;

struct TrafficOptions {
  double request_rate = std::numeric_limits<double>::infinity();  // req/s; inf: all at once
  int64_t max_concurrency = 0;  // requests in flight at most; 0: no limit (kMaxInFlight)
  int64_t warmup_requests = 1;
  uint64_t seed = 1;  // seeds the arrival gaps
};

struct ServeOptions {
  std::string base_url;  // http://HOST:PORT[/PREFIX]
  RequestOptions request;
  TrafficOptions traffic;
};

// The outcome of a measured run, serve or offline.
struct BenchOutcome {
  std::vector<RequestResult> results;  // in dataset order
  double duration_s = 0;
  BenchMetrics metrics;
  std::map<std::string, BenchMetric> extra_metrics;  // mode-specific metrics (offline: stages)
};

// The release times of `n` requests in seconds from the start (see above).
std::vector<double> arrival_times(int64_t n, double request_rate, uint64_t seed);

// The number of client threads for `n` requests (see above); kInvalidArgument when
// max_concurrency is negative or above kMaxInFlight.
Result<int64_t> n_slots(int64_t n, int64_t max_concurrency);

// Runs the benchmark. `tokenizer` (may be null) retokenizes outputs; `progress` (may be empty)
// hears of each finished request. Errors: bad options, a server that cannot be reached, a failed
// warmup. Requests that fail during the run are counted, not errors.
Result<BenchOutcome> run_serve_bench(const ServeOptions& options,
                                     const std::vector<BenchRequest>& requests,
                                     const model::Tokenizer* tokenizer, ProgressFn progress = {});

}  // namespace pp::bench
