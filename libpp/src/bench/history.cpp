// History and comparison of benchmark runs (see history.h).
#include "pp/bench/history.h"

#include <cmath>
#include <ctime>
#include <limits>
#include <set>

#include <fmt/format.h>

namespace pp::bench {

namespace {

bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

std::string num(double v) {
  if (std::isnan(v)) return "n/a";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v != 0 && std::fabs(v) < 0.01) return fmt::format("{:.3g}", v);
  return fmt::format("{:.2f}", v);
}

}  // namespace

MetricDirection metric_direction(std::string_view name, std::string_view unit) {
  if (contains(name, "throughput") || name == "completed" || contains(name, "busy_fraction")) {
    return MetricDirection::kHigherIsBetter;
  }
  if (unit == "ms" || unit == "s" || name == "failed" || contains(name, "idle_fraction")) {
    return MetricDirection::kLowerIsBetter;
  }
  return MetricDirection::kNeutral;
}

std::vector<MetricDelta> compare_metrics(const BenchRecord& a, const BenchRecord& b,
                                         double threshold) {
  std::set<std::string> names;
  for (const auto& [k, v] : a.metrics) names.insert(k);
  for (const auto& [k, v] : b.metrics) names.insert(k);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<MetricDelta> out;
  for (const std::string& name : names) {
    MetricDelta d;
    d.name = name;
    auto ia = a.metrics.find(name), ib = b.metrics.find(name);
    d.in_a = ia != a.metrics.end();
    d.in_b = ib != b.metrics.end();
    d.a = d.in_a ? ia->second.value : nan;
    d.b = d.in_b ? ib->second.value : nan;
    d.unit = d.in_a ? ia->second.unit : ib->second.unit;
    d.direction = metric_direction(name, d.unit);
    d.ratio =
        (d.in_a && d.in_b && d.a != 0 && std::isfinite(d.a) && !std::isnan(d.b)) ? d.b / d.a : nan;
    if (d.in_a && d.in_b && std::isfinite(d.a) && std::isfinite(d.b) &&
        d.direction != MetricDirection::kNeutral) {
      const double margin = threshold * std::fabs(d.a);
      const bool up = d.b - d.a > margin, down = d.a - d.b > margin;
      const bool higher_better = d.direction == MetricDirection::kHigherIsBetter;
      d.regression = higher_better ? down : up;
      d.improvement = higher_better ? up : down;
    }
    out.push_back(std::move(d));
  }
  return out;
}

std::string format_comparison(const BenchRecord& a, const BenchRecord& b,
                              const std::vector<MetricDelta>& deltas, double threshold) {
  auto title = [](const BenchRecord& r) {
    return fmt::format("#{} {}{}", r.id, bench_kind_name(r.kind),
                       r.label.empty() ? "" : " '" + r.label + "'");
  };
  std::string s =
      fmt::format("A: {} ({})\nB: {} ({})\n", title(a), format_local_time(a.created_at_ms),
                  title(b), format_local_time(b.created_at_ms));
  s += fmt::format("{:<36} {:>14} {:>14} {:>8}  {}\n", "metric", "A", "B", "B/A", "");
  int n_reg = 0, n_better = 0;
  for (const MetricDelta& d : deltas) {
    const std::string name = d.unit.empty() ? d.name : d.name + " (" + d.unit + ")";
    std::string mark;
    if (d.regression) {
      mark = "REGRESSION";
      ++n_reg;
    } else if (d.improvement) {
      mark = "better";
      ++n_better;
    }
    s += fmt::format("{:<36} {:>14} {:>14} {:>8}  {}\n", name, d.in_a ? num(d.a) : "-",
                     d.in_b ? num(d.b) : "-",
                     std::isnan(d.ratio) ? "-" : fmt::format("{:.3f}", d.ratio), mark);
  }
  s += fmt::format("{} regression{}, {} improvement{} beyond {:g}%\n", n_reg, n_reg == 1 ? "" : "s",
                   n_better, n_better == 1 ? "" : "s", threshold * 100.0);
  return s;
}

std::string format_local_time(int64_t unix_ms) {
  const std::time_t t = std::time_t(unix_ms / 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string format_history(const std::vector<BenchRecord>& runs) {
  auto metric = [](const BenchRecord& r, const char* name) {
    auto it = r.metrics.find(name);
    return it == r.metrics.end() ? std::string("-") : num(it->second.value);
  };
  std::string s =
      fmt::format("{:>5}  {:<19}  {:<7}  {:<20}  {:>10}  {:>9}  {:>9}  {:>10}  {:>9}\n", "id",
                  "time", "kind", "label", "out tok/s", "TTFT ms", "ITL ms", "E2E ms", "ok/failed");
  for (const BenchRecord& r : runs) {
    std::string label = r.label;
    if (r.parent_id) label = fmt::format("[sweep {}] {}", *r.parent_id, label);
    if (label.size() > 20) label = label.substr(0, 19) + "~";
    std::string okf = "-";
    if (r.metrics.count("completed")) {
      okf = fmt::format("{}/{}", int64_t(r.metrics.at("completed").value),
                        r.metrics.count("failed") ? int64_t(r.metrics.at("failed").value) : 0);
    }
    s += fmt::format("{:>5}  {:<19}  {:<7}  {:<20}  {:>10}  {:>9}  {:>9}  {:>10}  {:>9}\n", r.id,
                     format_local_time(r.created_at_ms), bench_kind_name(r.kind), label,
                     metric(r, "output_throughput"), metric(r, "median_ttft_ms"),
                     metric(r, "median_itl_ms"), metric(r, "median_e2e_latency_ms"), okf);
  }
  return s;
}

}  // namespace pp::bench
