// Chrome trace reading, stage busy fractions and the timeline picture (see timeline-svg.h).
#include "pp/bench/timeline-svg.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pp/bench/plot-svg.h"

namespace pp::bench {

namespace {

int64_t int_or(const nlohmann::json& j, const char* key, int64_t dflt) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return dflt;
  return it->is_number_float() ? int64_t(it->get<double>()) : it->get<int64_t>();
}

bool is_compute(const TraceSpan& s) {
  return s.name == "compute" || (s.tid == 0 && s.name != "wait" && s.name != "send");
}

// Total length of the union of [b, e) intervals, clipped to [lo, hi).
int64_t union_length(std::vector<std::pair<int64_t, int64_t>> iv, int64_t lo, int64_t hi) {
  for (auto& [b, e] : iv) b = std::max(b, lo), e = std::min(e, hi);
  std::sort(iv.begin(), iv.end());
  int64_t total = 0, cur_b = 0, cur_e = INT64_MIN;
  for (auto [b, e] : iv) {
    if (e <= b) continue;
    if (b > cur_e) {
      if (cur_e > cur_b) total += cur_e - cur_b;
      cur_b = b, cur_e = e;
    } else {
      cur_e = std::max(cur_e, e);
    }
  }
  if (cur_e > cur_b) total += cur_e - cur_b;
  return total;
}

}  // namespace

Result<Trace> parse_trace(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return data_loss("the trace is not valid JSON");
  const nlohmann::json* events = &j;
  if (j.is_object()) {
    auto it = j.find("traceEvents");
    if (it == j.end()) return data_loss("the trace has no 'traceEvents'");
    events = &*it;
  }
  if (!events->is_array()) return data_loss("the trace's events are not a list");
  Trace t;
  std::set<int64_t> pids;
  for (const auto& e : *events) {
    if (!e.is_object()) continue;
    const std::string ph = e.value("ph", "");
    const int64_t pid = int_or(e, "pid", 0);
    if (ph == "M") {
      if (e.value("name", "") == "process_name" && e.contains("args") &&
          e["args"].contains("name") && e["args"]["name"].is_string()) {
        t.processes[pid] = e["args"]["name"].get<std::string>();
      }
      continue;
    }
    if (ph != "X") continue;
    TraceSpan s;
    s.pid = pid;
    s.tid = int_or(e, "tid", 0);
    s.name = e.value("name", "");
    s.begin_us = int_or(e, "ts", 0);
    s.end_us = s.begin_us + std::max<int64_t>(int_or(e, "dur", 0), 0);
    if (auto a = e.find("args"); a != e.end() && a->is_object()) {
      s.seq = int_or(*a, "seq", -1);
      s.group = int_or(*a, "group", -1);
      s.n_tokens = int_or(*a, "n_tokens", -1);
    }
    pids.insert(pid);
    t.spans.push_back(std::move(s));
  }
  // Stages: processes named "stage K" (ordered by K), else every process but the coordinator.
  std::vector<std::pair<int64_t, int64_t>> named;  // (K, pid)
  for (const auto& [pid, name] : t.processes) {
    if (name == "coordinator") t.coordinator_pid = pid;
    int k = 0;
    if (std::sscanf(name.c_str(), "stage %d", &k) == 1) named.emplace_back(k, pid);
  }
  std::sort(named.begin(), named.end());
  for (auto [k, pid] : named) t.stage_pids.push_back(pid);
  if (t.stage_pids.empty()) {
    for (int64_t pid : pids) {
      if (pid != t.coordinator_pid) t.stage_pids.push_back(pid);
    }
  }
  if (t.stage_pids.empty()) return data_loss("the trace has no stage span");
  return t;
}

Result<Trace> read_trace(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot open '{}'", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  auto t = parse_trace(ss.str());
  if (!t.ok()) return t.status().with_context(fmt::format("reading '{}'", path.string()));
  return t;
}

TimelineWindow compute_window(const Trace& t, TimelineWindow w) {
  if (w.to_us > w.from_us) return w;
  std::set<int64_t> stages(t.stage_pids.begin(), t.stage_pids.end());
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (const TraceSpan& s : t.spans) {
    if (!stages.count(s.pid) || !is_compute(s)) continue;
    lo = std::min(lo, s.begin_us);
    hi = std::max(hi, s.end_us);
  }
  if (lo > hi) return {};
  return {lo, hi};
}

std::vector<StageUsage> stage_usage(const Trace& t, TimelineWindow w) {
  w = compute_window(t, w);
  std::vector<StageUsage> out;
  for (int64_t pid : t.stage_pids) {
    StageUsage u;
    u.pid = pid;
    auto it = t.processes.find(pid);
    u.name = it != t.processes.end() ? it->second : fmt::format("pid {}", pid);
    std::vector<std::pair<int64_t, int64_t>> iv;
    for (const TraceSpan& s : t.spans) {
      if (s.pid != pid || !is_compute(s)) continue;
      if (s.end_us <= w.from_us || s.begin_us >= w.to_us) continue;
      iv.emplace_back(s.begin_us, s.end_us);
    }
    u.n_spans = int64_t(iv.size());
    u.busy_s = double(union_length(iv, w.from_us, w.to_us)) * 1e-6;
    u.window_s = double(w.to_us - w.from_us) * 1e-6;
    out.push_back(std::move(u));
  }
  return out;
}

std::string format_stage_usage(const std::vector<StageUsage>& usage) {
  std::string s;
  for (const StageUsage& u : usage) {
    s += fmt::format("{}: busy {:.1f}%, idle {:.1f}% ({} micro-batches)\n", u.name,
                     100.0 * u.busy_fraction(), 100.0 * u.idle_fraction(), u.n_spans);
  }
  if (!usage.empty()) s += fmt::format("window: {:.3f} ms\n", usage.front().window_s * 1e3);
  return s;
}

std::string timeline_svg(const Trace& t, TimelineWindow w, int width_px) {
  w = compute_window(t, w);
  if (w.to_us <= w.from_us) w = {0, 1};
  const std::vector<StageUsage> usage = stage_usage(t, w);
  const double left = 170, right = 20, top = 40, row_h = 46, box_h = 28;
  const bool has_coord = t.coordinator_pid >= 0;
  int64_t n_groups = 0;
  for (const TraceSpan& s : t.spans) n_groups = std::max(n_groups, s.group + 1);
  const double coord_h =
      has_coord ? std::max<double>(row_h, double(std::max<int64_t>(n_groups, 1)) * 8 + 14) : 0;
  const int n_rows = int(t.stage_pids.size());
  const double plot_w = width_px - left - right;
  const double height = top + n_rows * row_h + coord_h + 50;
  const double span_us = double(w.to_us - w.from_us);
  auto x_of = [&](int64_t us) {
    return left + plot_w * std::clamp(double(us - w.from_us) / span_us, 0.0, 1.0);
  };

  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{:.0f}\" "
      "viewBox=\"0 0 {} {:.0f}\" font-family=\"sans-serif\" font-size=\"12\">\n",
      width_px, height, width_px, height);
  s += fmt::format("<rect width=\"{}\" height=\"{:.0f}\" fill=\"white\"/>\n", width_px, height);
  s += fmt::format(
      "<text x=\"{}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">pipeline timeline: {} stages, "
      "{:.2f} ms</text>\n",
      left, n_rows, span_us * 1e-3);

  for (int r = 0; r < n_rows; ++r) {
    const int64_t pid = t.stage_pids[size_t(r)];
    const double y = top + r * row_h;
    s += fmt::format(
        "<rect x=\"{}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{}\" fill=\"#f4f4f4\"/>\n", left, y,
        plot_w, box_h);
    s += fmt::format("<text x=\"8\" y=\"{:.1f}\">{}</text>\n", y + 12,
                     xml_escape(usage[size_t(r)].name));
    s += fmt::format("<text x=\"8\" y=\"{:.1f}\" fill=\"#555\">busy {:.1f}%</text>\n", y + 27,
                     100.0 * usage[size_t(r)].busy_fraction());
    for (const TraceSpan& sp : t.spans) {
      if (sp.pid != pid || sp.end_us <= w.from_us || sp.begin_us >= w.to_us) continue;
      const double x0 = x_of(sp.begin_us), x1 = x_of(sp.end_us);
      const double bw = std::max(x1 - x0, 0.5);
      const std::string tip =
          fmt::format("{} seq {} group {} tokens {}: {:.3f} ms", sp.name, sp.seq, sp.group,
                      sp.n_tokens, double(sp.end_us - sp.begin_us) * 1e-3);
      if (is_compute(sp)) {
        s += fmt::format(
            "<rect x=\"{:.2f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{}\" fill=\"{}\" "
            "stroke=\"white\" stroke-width=\"0.3\"><title>{}</title></rect>\n",
            x0, y, bw, box_h, series_color(sp.group < 0 ? 0 : size_t(sp.group)), xml_escape(tip));
        if (bw > 26 && sp.seq >= 0) {
          s += fmt::format(
              "<text x=\"{:.2f}\" y=\"{:.1f}\" font-size=\"9\" fill=\"white\" "
              "text-anchor=\"middle\">{}</text>\n",
              (x0 + x1) / 2, y + box_h / 2 + 3, sp.seq);
        }
      } else {
        const double yy = sp.name == "send" ? y + box_h + 6 : y + box_h + 2;
        s += fmt::format(
            "<rect x=\"{:.2f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"3\" fill=\"{}\">"
            "<title>{}</title></rect>\n",
            x0, yy, bw, sp.name == "send" ? "#8fb8de" : "#b0b0b0", xml_escape(tip));
      }
    }
  }
  if (has_coord) {
    const double y = top + n_rows * row_h;
    s += fmt::format("<text x=\"8\" y=\"{:.1f}\">coordinator</text>\n", y + 12);
    s += fmt::format("<text x=\"8\" y=\"{:.1f}\" fill=\"#555\">plan round trips</text>\n", y + 27);
    for (const TraceSpan& sp : t.spans) {
      if (sp.pid != t.coordinator_pid || sp.end_us <= w.from_us || sp.begin_us >= w.to_us) continue;
      const int64_t lane = sp.group >= 0 ? sp.group : sp.tid;
      const double x0 = x_of(sp.begin_us), x1 = x_of(sp.end_us);
      s += fmt::format(
          "<rect x=\"{:.2f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"6\" fill=\"{}\" "
          "opacity=\"0.8\"><title>plan seq {} group {}: {:.3f} ms</title></rect>\n",
          x0, y + double(lane) * 8, std::max(x1 - x0, 0.5),
          series_color(size_t(std::max<int64_t>(lane, 0))), sp.seq, sp.group,
          double(sp.end_us - sp.begin_us) * 1e-3);
    }
  }
  // Time axis.
  const double ay = top + n_rows * row_h + coord_h + 8;
  s += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#333\"/>\n",
                   left, ay, left + plot_w, ay);
  for (double tick : nice_ticks(0, span_us * 1e-3, 10)) {
    const double x = left + plot_w * (tick * 1e3 / span_us);
    s += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#333\"/>\n", x, ay,
        x, ay + 4);
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{:g}</text>\n", x,
                     ay + 17, tick);
  }
  s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">ms</text>\n", left + plot_w,
                   ay + 34);
  s += "</svg>\n";
  return s;
}

}  // namespace pp::bench
