// The metric math of a serving benchmark, with SGLang bench_serving's definitions, so that a
// pp-bench number means what the same number means in SGLang or vLLM:
//
//   TTFT         time from sending a request to the first chunk that carries content
//   ITL          the gaps between successive content chunks. A chunk known to carry k new tokens
//                (SGLang's meta_info.completion_tokens, or OpenAI usage sent on every chunk)
//                gives k gaps of (gap / k) each, as SGLang's native client does; a chunk whose
//                token count is unknown gives one gap (SGLang's OpenAI clients). The tokens of
//                the first chunk are covered by TTFT and give no ITL.
//   TPOT         (latency - TTFT) / (output_len - 1), for requests with output_len > 1
//   E2E latency  time from sending a request to the end of its response
//   concurrency  sum of the successful requests' latencies / benchmark duration
//   throughput   completed requests, input tokens (prompt_len of the successful requests),
//                output tokens, and input + output tokens, each divided by the duration
//
// Summaries are numpy's: the mean, the population standard deviation (ddof 0), and percentiles
// by linear interpolation between the closest ranks (np.percentile's default). A summary of no
// sample is NaN (SGLang prints 0 there; a missing number should not look measured). Failed
// requests count in `failed` only.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "pp/store/records.h"

namespace pp::bench {

// What one request gave. Times are in seconds.
struct RequestResult {
  bool success = false;
  std::string error;                    // why it failed (empty on success)
  int64_t prompt_len = 0;               // prompt tokens (the dataset's count)
  int64_t output_len = 0;               // output tokens: the server's count when it gave one, else
                                        // the retokenized text, else the tokens asked for
  int64_t output_len_retokenized = -1;  // the generated text encoded again; -1 without tokenizer
  double ttft_s = 0.0;        // time to first token (the whole latency when not streaming)
  double latency_s = 0.0;     // end-to-end latency
  std::vector<double> itl_s;  // inter-token latencies
  double start_s = 0.0;       // when it was sent, since the benchmark's start
  std::string generated_text;
};

// The arrival times of a response's content chunks turned into TTFT and ITL (rules above).
class ChunkTimer {
 public:
  explicit ChunkTimer(double start_s) : start_s_(start_s), last_s_(start_s) {}

  // A chunk with content arrived at `t_s`. `n_new_tokens` > 0: it carries that many new tokens;
  // 0: it carries no new token (ignored, as SGLang does); -1: unknown (one gap).
  void on_content(double t_s, int64_t n_new_tokens);

  bool has_first() const { return has_first_; }
  double ttft_s() const { return ttft_s_; }
  const std::vector<double>& itl_s() const { return itl_s_; }
  std::vector<double>&& take_itl() { return std::move(itl_s_); }

 private:
  double start_s_;
  double last_s_;
  bool has_first_ = false;
  double ttft_s_ = 0.0;
  std::vector<double> itl_s_;
};

// numpy's np.percentile(values, q) with linear interpolation; q in [0, 100]. NaN when empty.
double percentile(std::span<const double> values, double q);

// Summary of a sample, in the unit of the sample.
struct Summary {
  size_t n = 0;
  double mean = 0, median = 0, std = 0, p90 = 0, p95 = 0, p99 = 0, max = 0;  // NaN when n == 0
};
Summary summarize(std::span<const double> values);

struct BenchMetrics {
  int64_t completed = 0;  // successful requests
  int64_t failed = 0;
  double duration_s = 0;
  int64_t total_input = 0;                   // prompt tokens of the successful requests
  int64_t total_output = 0;                  // output tokens of the successful requests
  int64_t total_output_retokenized = -1;     // -1 when unknown
  double request_throughput = 0;             // req/s
  double input_throughput = 0;               // tok/s
  double output_throughput = 0;              // tok/s
  double total_throughput = 0;               // tok/s, input + output
  double concurrency = 0;                    // sum of latencies / duration
  Summary ttft_ms, tpot_ms, itl_ms, e2e_ms;  // milliseconds
};

BenchMetrics compute_metrics(std::span<const RequestResult> results, double duration_s);

// Every metric by name (SGLang's JSON names: "output_throughput", "median_ttft_ms",
// "p99_itl_ms", "mean_e2e_latency_ms", ...) with its unit, for the run store and JSON lines.
std::map<std::string, BenchMetric> metric_map(const BenchMetrics& m);

// The result table, SGLang's layout: a "==== Serving Benchmark Result ====" banner, the header
// rows given (name, value), the counts and throughputs, then per latency a section with mean,
// median, std, p90, p99 (and max for ITL).
std::string format_result_table(const BenchMetrics& m,
                                const std::vector<std::pair<std::string, std::string>>& header,
                                const std::string& title = "Serving Benchmark Result");

}  // namespace pp::bench
