// Sweep grids, their table and their throughput-latency plot (see sweep.h).
#include "pp/bench/sweep.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "pp/bench/plot-svg.h"

namespace pp::bench {

namespace {

std::vector<std::string_view> split(std::string_view s, std::string_view seps) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t end = s.find_first_of(seps, pos);
    if (end == std::string_view::npos) end = s.size();
    if (end > pos) out.push_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

}  // namespace

Result<std::vector<SweepAxis>> parse_grid(std::string_view spec,
                                          std::span<const std::string> allowed) {
  std::vector<SweepAxis> axes;
  for (std::string_view item : split(spec, " ;\t\n")) {
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return invalid_argument("bad grid axis '{}': expected NAME=V1,V2,...", item);
    }
    SweepAxis a;
    a.name = std::string(item.substr(0, eq));
    while (a.name.starts_with("-")) a.name.erase(0, 1);
    if (std::find(allowed.begin(), allowed.end(), a.name) == allowed.end()) {
      std::string names;
      for (const auto& n : allowed) names += (names.empty() ? "" : ", ") + n;
      return invalid_argument("cannot sweep '{}': the axes are {}", a.name, names);
    }
    for (const auto& x : axes) {
      if (x.name == a.name) return invalid_argument("grid axis '{}' given twice", a.name);
    }
    for (std::string_view v : split(item.substr(eq + 1), ",")) a.values.emplace_back(v);
    if (a.values.empty()) return invalid_argument("grid axis '{}' has no value", a.name);
    axes.push_back(std::move(a));
  }
  if (axes.empty()) return invalid_argument("empty grid");
  return axes;
}

std::vector<SweepPoint> expand_grid(const std::vector<SweepAxis>& axes) {
  std::vector<SweepPoint> out(1);
  for (const SweepAxis& a : axes) {
    std::vector<SweepPoint> next;
    for (const SweepPoint& p : out) {
      for (const std::string& v : a.values) {
        SweepPoint q = p;
        q.emplace_back(a.name, v);
        next.push_back(std::move(q));
      }
    }
    out = std::move(next);
  }
  return out;
}

std::string point_label(const SweepPoint& p) {
  std::string s;
  for (const auto& [k, v] : p) s += (s.empty() ? "" : " ") + k + "=" + v;
  return s;
}

std::optional<LatencyKind> parse_latency_kind(std::string_view name) {
  for (LatencyKind k :
       {LatencyKind::kTtft, LatencyKind::kTpot, LatencyKind::kItl, LatencyKind::kE2e}) {
    if (name == latency_kind_name(k)) return k;
  }
  return std::nullopt;
}

const char* latency_kind_name(LatencyKind k) {
  switch (k) {
    case LatencyKind::kTtft:
      return "ttft";
    case LatencyKind::kTpot:
      return "tpot";
    case LatencyKind::kItl:
      return "itl";
    case LatencyKind::kE2e:
      return "e2e";
  }
  return "?";
}

double median_latency_ms(const BenchMetrics& m, LatencyKind k) {
  switch (k) {
    case LatencyKind::kTtft:
      return m.ttft_ms.median;
    case LatencyKind::kTpot:
      return m.tpot_ms.median;
    case LatencyKind::kItl:
      return m.itl_ms.median;
    case LatencyKind::kE2e:
      return m.e2e_ms.median;
  }
  return NAN;
}

std::string format_sweep_table(const std::vector<SweepRow>& rows) {
  if (rows.empty()) return "";
  std::vector<size_t> widths;
  for (const auto& [k, v] : rows.front().point) widths.push_back(std::max<size_t>(k.size(), 4));
  for (const SweepRow& r : rows) {
    for (size_t i = 0; i < r.point.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], r.point[i].second.size());
    }
  }
  auto num = [](double v) { return std::isnan(v) ? std::string("n/a") : fmt::format("{:.2f}", v); };
  std::string s;
  for (size_t i = 0; i < widths.size(); ++i) {
    s += fmt::format("{:>{}}  ", rows.front().point[i].first, widths[i]);
  }
  s += fmt::format("{:>6} {:>6} {:>11} {:>8} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10}  {}\n", "ok",
                   "failed", "out tok/s", "req/s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99",
                   "E2E p50", "E2E p99", "run");
  for (const SweepRow& r : rows) {
    for (size_t i = 0; i < widths.size(); ++i) {
      s += fmt::format("{:>{}}  ", i < r.point.size() ? r.point[i].second : "", widths[i]);
    }
    if (!r.error.empty()) {
      s += "error: " + r.error + "\n";
      continue;
    }
    const BenchMetrics& m = r.metrics;
    s += fmt::format("{:>6} {:>6} {:>11} {:>8} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10}  {}\n",
                     m.completed, m.failed, num(m.output_throughput), num(m.request_throughput),
                     num(m.ttft_ms.median), num(m.ttft_ms.p99), num(m.tpot_ms.median),
                     num(m.tpot_ms.p99), num(m.e2e_ms.median), num(m.e2e_ms.p99),
                     r.run_id > 0 ? fmt::format("#{}", r.run_id) : std::string("-"));
  }
  return s;
}

std::string sweep_plot_svg(const std::vector<SweepRow>& rows, LatencyKind k,
                           const std::string& title) {
  std::vector<PlotSeries> series;
  std::map<std::string, size_t> index;
  for (const SweepRow& r : rows) {
    if (!r.error.empty() || r.point.empty()) continue;
    SweepPoint head(r.point.begin(), r.point.end() - 1);
    const std::string name = head.empty() ? std::string("all") : point_label(head);
    auto [it, fresh] = index.emplace(name, series.size());
    if (fresh) series.push_back({name, {}});
    const auto& last = r.point.back();
    series[it->second].points.push_back({r.metrics.output_throughput,
                                         median_latency_ms(r.metrics, k),
                                         last.first + "=" + last.second});
  }
  const std::string kind = latency_kind_name(k);
  std::string upper;
  for (char c : kind) upper += char(std::toupper(static_cast<unsigned char>(c)));
  return line_plot_svg(series, title, "output throughput (tok/s)", "median " + upper + " (ms)");
}

}  // namespace pp::bench
