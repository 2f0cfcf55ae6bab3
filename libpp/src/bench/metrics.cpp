// Benchmark metric math (see metrics.h): chunk timing, numpy-style summaries, the metrics of a
// run, and SGLang's result table.
#include "pp/bench/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include <fmt/format.h>

namespace pp::bench {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}

void ChunkTimer::on_content(double t_s, int64_t n_new_tokens) {
  if (n_new_tokens == 0) return;
  if (!has_first_) {
    has_first_ = true;
    ttft_s_ = t_s - start_s_;
  } else if (n_new_tokens > 0) {
    const double each = (t_s - last_s_) / double(n_new_tokens);
    itl_s_.insert(itl_s_.end(), size_t(n_new_tokens), each);
  } else {
    itl_s_.push_back(t_s - last_s_);
  }
  last_s_ = t_s;
}

double percentile(std::span<const double> values, double q) {
  if (values.empty()) return kNaN;
  std::vector<double> v(values.begin(), values.end());
  std::sort(v.begin(), v.end());
  const double pos = std::clamp(q, 0.0, 100.0) / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  const double frac = pos - double(lo);
  return v[lo] + (v[hi] - v[lo]) * frac;
}

Summary summarize(std::span<const double> values) {
  Summary s;
  s.n = values.size();
  if (values.empty()) {
    s.mean = s.median = s.std = s.p90 = s.p95 = s.p99 = s.max = kNaN;
    return s;
  }
  const double n = double(values.size());
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / n;
  double ss = 0;
  for (double x : values) ss += (x - s.mean) * (x - s.mean);
  s.std = std::sqrt(ss / n);
  s.median = percentile(values, 50);
  s.p90 = percentile(values, 90);
  s.p95 = percentile(values, 95);
  s.p99 = percentile(values, 99);
  s.max = *std::max_element(values.begin(), values.end());
  return s;
}

BenchMetrics compute_metrics(std::span<const RequestResult> results, double duration_s) {
  BenchMetrics m;
  m.duration_s = duration_s;
  std::vector<double> ttft, tpot, itl, e2e;
  bool all_retokenized = true;
  int64_t retokenized = 0;
  for (const RequestResult& r : results) {
    if (!r.success) {
      ++m.failed;
      continue;
    }
    ++m.completed;
    m.total_input += r.prompt_len;
    m.total_output += r.output_len;
    if (r.output_len_retokenized < 0) {
      all_retokenized = false;
    } else {
      retokenized += r.output_len_retokenized;
    }
    ttft.push_back(r.ttft_s * 1e3);
    e2e.push_back(r.latency_s * 1e3);
    if (r.output_len > 1) tpot.push_back((r.latency_s - r.ttft_s) / double(r.output_len - 1) * 1e3);
    for (double x : r.itl_s) itl.push_back(x * 1e3);
  }
  if (all_retokenized && m.completed > 0) m.total_output_retokenized = retokenized;
  if (duration_s > 0) {
    m.request_throughput = double(m.completed) / duration_s;
    m.input_throughput = double(m.total_input) / duration_s;
    m.output_throughput = double(m.total_output) / duration_s;
    m.total_throughput = double(m.total_input + m.total_output) / duration_s;
    m.concurrency = std::accumulate(e2e.begin(), e2e.end(), 0.0) * 1e-3 / duration_s;
  }
  m.ttft_ms = summarize(ttft);
  m.tpot_ms = summarize(tpot);
  m.itl_ms = summarize(itl);
  m.e2e_ms = summarize(e2e);
  return m;
}

std::map<std::string, BenchMetric> metric_map(const BenchMetrics& m) {
  std::map<std::string, BenchMetric> out;
  out["completed"] = {double(m.completed), "req"};
  out["failed"] = {double(m.failed), "req"};
  out["duration"] = {m.duration_s, "s"};
  out["total_input_tokens"] = {double(m.total_input), "tok"};
  out["total_output_tokens"] = {double(m.total_output), "tok"};
  if (m.total_output_retokenized >= 0) {
    out["total_output_tokens_retokenized"] = {double(m.total_output_retokenized), "tok"};
  }
  out["request_throughput"] = {m.request_throughput, "req/s"};
  out["input_throughput"] = {m.input_throughput, "tok/s"};
  out["output_throughput"] = {m.output_throughput, "tok/s"};
  out["total_throughput"] = {m.total_throughput, "tok/s"};
  out["concurrency"] = {m.concurrency, ""};
  auto add = [&](const char* what, const Summary& s) {
    out[fmt::format("mean_{}_ms", what)] = {s.mean, "ms"};
    out[fmt::format("median_{}_ms", what)] = {s.median, "ms"};
    out[fmt::format("std_{}_ms", what)] = {s.std, "ms"};
    out[fmt::format("p90_{}_ms", what)] = {s.p90, "ms"};
    out[fmt::format("p95_{}_ms", what)] = {s.p95, "ms"};
    out[fmt::format("p99_{}_ms", what)] = {s.p99, "ms"};
    out[fmt::format("max_{}_ms", what)] = {s.max, "ms"};
  };
  add("ttft", m.ttft_ms);
  add("tpot", m.tpot_ms);
  add("itl", m.itl_ms);
  add("e2e_latency", m.e2e_ms);
  return out;
}

namespace {

std::string row(const std::string& name, const std::string& value) {
  return fmt::format("{:<40} {:<10}\n", name, value);
}
std::string num(double v) { return std::isnan(v) ? std::string("n/a") : fmt::format("{:.2f}", v); }
std::string section(const std::string& title) { return fmt::format("{:-^50}\n", title); }

}  // namespace

std::string format_result_table(const BenchMetrics& m,
                                const std::vector<std::pair<std::string, std::string>>& header,
                                const std::string& title) {
  std::string s = fmt::format("{:=^50}\n", " " + title + " ");
  for (const auto& [k, v] : header) s += row(k + ":", v);
  s += row("Successful requests:", std::to_string(m.completed));
  s += row("Failed requests:", std::to_string(m.failed));
  s += row("Benchmark duration (s):", num(m.duration_s));
  s += row("Total input tokens:", std::to_string(m.total_input));
  s += row("Total generated tokens:", std::to_string(m.total_output));
  if (m.total_output_retokenized >= 0) {
    s += row("Total generated tokens (retokenized):", std::to_string(m.total_output_retokenized));
  }
  s += row("Request throughput (req/s):", num(m.request_throughput));
  s += row("Input token throughput (tok/s):", num(m.input_throughput));
  s += row("Output token throughput (tok/s):", num(m.output_throughput));
  s += row("Total token throughput (tok/s):", num(m.total_throughput));
  s += row("Concurrency:", num(m.concurrency));
  auto block = [&](const std::string& title, const std::string& abbr, const Summary& x,
                   bool with_max) {
    s += section(title);
    s += row("Mean " + abbr + " (ms):", num(x.mean));
    s += row("Median " + abbr + " (ms):", num(x.median));
    s += row("Std " + abbr + " (ms):", num(x.std));
    s += row("P90 " + abbr + " (ms):", num(x.p90));
    s += row("P99 " + abbr + " (ms):", num(x.p99));
    if (with_max) s += row("Max " + abbr + " (ms):", num(x.max));
  };
  block("End-to-End Latency", "E2E Latency", m.e2e_ms, false);
  block("Time to First Token", "TTFT", m.ttft_ms, false);
  block("Time per Output Token (excl. 1st token)", "TPOT", m.tpot_ms, false);
  block("Inter-Token Latency", "ITL", m.itl_ms, true);
  s += std::string(50, '=') + "\n";
  return s;
}

}  // namespace pp::bench
