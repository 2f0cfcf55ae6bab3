// pp-bench's pictures and run comparisons: Chrome traces read (both layouts), stage busy and idle
// fractions with known answers (overlaps counted once), timeline and sweep SVGs well-formed, sweep
// grids, and direction-aware regression flags.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "pp/bench/history.h"
#include "pp/bench/plot-svg.h"
#include "pp/bench/sweep.h"
#include "pp/bench/timeline-svg.h"
#include "test-util.h"

namespace pp::bench {
namespace {

// A small XML well-formedness check: tags nest and close, attributes are quoted, entities are
// the five predefined ones, and there is one root element.
::testing::AssertionResult well_formed_xml(const std::string& s) {
  std::vector<std::string> stack;
  int roots = 0;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == '&') {
      const size_t semi = s.find(';', i);
      if (semi == std::string::npos) return ::testing::AssertionFailure() << "bare & at " << i;
      const std::string ent = s.substr(i, semi - i + 1);
      if (ent != "&amp;" && ent != "&lt;" && ent != "&gt;" && ent != "&quot;" && ent != "&apos;") {
        return ::testing::AssertionFailure() << "entity " << ent;
      }
      i = semi + 1;
      continue;
    }
    if (s[i] != '<') {
      if (s[i] == '>') return ::testing::AssertionFailure() << "bare > at " << i;
      if (stack.empty() && !std::isspace(static_cast<unsigned char>(s[i]))) {
        return ::testing::AssertionFailure() << "text outside the root at " << i;
      }
      ++i;
      continue;
    }
    // A tag: find its end outside quotes.
    size_t j = i + 1;
    char quote = 0;
    for (; j < s.size(); ++j) {
      if (quote) {
        if (s[j] == quote) quote = 0;
        if (s[j] == '<') return ::testing::AssertionFailure() << "< in an attribute at " << j;
      } else if (s[j] == '"' || s[j] == '\'') {
        quote = s[j];
      } else if (s[j] == '>') {
        break;
      }
    }
    if (j >= s.size()) return ::testing::AssertionFailure() << "unclosed tag at " << i;
    std::string tag = s.substr(i + 1, j - i - 1);
    if (tag.starts_with("/")) {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) {
        return ::testing::AssertionFailure() << "</" << name << "> closes nothing open";
      }
      stack.pop_back();
    } else {
      const bool self = tag.ends_with("/");
      const std::string name = tag.substr(0, tag.find_first_of(" \t\n/"));
      if (stack.empty()) ++roots;
      if (!self) stack.push_back(name);
    }
    i = j + 1;
  }
  if (!stack.empty()) return ::testing::AssertionFailure() << "<" << stack.back() << "> unclosed";
  if (roots != 1) return ::testing::AssertionFailure() << roots << " root elements";
  return ::testing::AssertionSuccess();
}

nlohmann::json span(int pid, int tid, const char* name, int64_t ts, int64_t dur, int seq,
                    int group) {
  return {{"name", name},
          {"ph", "X"},
          {"pid", pid},
          {"tid", tid},
          {"ts", ts},
          {"dur", dur},
          {"args", {{"seq", seq}, {"group", group}, {"n_tokens", 8}}}};
}
nlohmann::json pname(int pid, const std::string& name) {
  return {{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", name}}}};
}

TEST(BenchTimeline, BusyFractionsWithKnownAnswers) {
  // Two stages and a coordinator, times in µs from 1e15 (epoch-like). Window: 0..1000.
  const int64_t t0 = 1'000'000'000'000'000;
  nlohmann::json ev = nlohmann::json::array();
  ev.push_back(pname(0, "stage 0"));
  ev.push_back(pname(1, "stage 1"));
  ev.push_back(pname(2, "coordinator"));
  // Stage 0: [0,300) and [250,500) overlap -> 500 busy; [600,700) -> 600 of 1000.
  ev.push_back(span(0, 0, "compute", t0 + 0, 300, 0, 0));
  ev.push_back(span(0, 0, "compute", t0 + 250, 250, 1, 1));
  ev.push_back(span(0, 0, "compute", t0 + 600, 100, 2, 2));
  ev.push_back(span(0, 1, "wait", t0 + 500, 100, 2, 2));  // not compute
  // Stage 1: [300,500) and [800,1000) -> 400 of 1000.
  ev.push_back(span(1, 0, "compute", t0 + 300, 200, 0, 0));
  ev.push_back(span(1, 0, "compute", t0 + 800, 200, 1, 1));
  ev.push_back(span(1, 2, "send", t0 + 1000, 30, 1, 1));
  ev.push_back(span(2, 0, "plan", t0 - 50, 1100, 0, 0));
  for (const nlohmann::json& doc : {ev, nlohmann::json{{"traceEvents", ev}}}) {
    auto t = parse_trace(doc.dump());
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ(t->stage_pids, (std::vector<int64_t>{0, 1}));
    EXPECT_EQ(t->coordinator_pid, 2);
    auto u = stage_usage(*t);
    ASSERT_EQ(u.size(), 2u);
    EXPECT_NEAR(u[0].window_s, 1000e-6, 1e-12);
    EXPECT_NEAR(u[0].busy_fraction(), 0.6, 1e-9);
    EXPECT_NEAR(u[1].busy_fraction(), 0.4, 1e-9);
    EXPECT_NEAR(u[1].idle_fraction(), 0.6, 1e-9);
    EXPECT_EQ(u[0].n_spans, 3);
    const std::string text = format_stage_usage(u);
    EXPECT_NE(text.find("stage 0: busy 60.0%, idle 40.0%"), std::string::npos) << text;
    // A window: [200, 700) -> stage 0 busy [200,500) + [600,700) = 400 of 500.
    auto w = stage_usage(*t, {t0 + 200, t0 + 700});
    EXPECT_NEAR(w[0].busy_fraction(), 0.8, 1e-9);
    EXPECT_NEAR(w[1].busy_fraction(), 0.4, 1e-9);

    const std::string svg = timeline_svg(*t);
    EXPECT_TRUE(well_formed_xml(svg));
    EXPECT_NE(svg.find("<svg"), std::string::npos);
    EXPECT_NE(svg.find("busy 60.0%"), std::string::npos);
    EXPECT_NE(svg.find("coordinator"), std::string::npos);
    // One box per compute span, coloured by group.
    size_t boxes = 0;
    for (size_t p = svg.find("<title>compute"); p != std::string::npos;
         p = svg.find("<title>compute", p + 1)) {
      ++boxes;
    }
    EXPECT_EQ(boxes, 5u);
  }
}

TEST(BenchTimeline, RandomTraceUnionNeverExceedsWindow) {
  auto& g = test::rng();
  nlohmann::json ev = nlohmann::json::array();
  const int n_stages = std::uniform_int_distribution<int>(1, 6)(g);
  std::vector<std::vector<char>> busy(size_t(n_stages), std::vector<char>(5000, 0));
  for (int k = 0; k < n_stages; ++k) {
    ev.push_back(pname(k, "stage " + std::to_string(k)));
    for (int i = 0; i < 60; ++i) {
      const int64_t b = std::uniform_int_distribution<int64_t>(0, 4900)(g);
      const int64_t d = std::uniform_int_distribution<int64_t>(1, 100)(g);
      ev.push_back(span(k, 0, "compute", 10'000 + b, d, i, i % 5));
      for (int64_t x = b; x < b + d; ++x) busy[size_t(k)][size_t(x)] = 1;
    }
  }
  auto t = parse_trace(ev.dump());
  ASSERT_TRUE(t.ok());
  auto u = stage_usage(*t);
  const TimelineWindow w = compute_window(*t);
  ASSERT_EQ(int(u.size()), n_stages);
  for (int k = 0; k < n_stages; ++k) {
    int64_t truth = 0;
    for (char c : busy[size_t(k)]) truth += c;
    EXPECT_NEAR(u[size_t(k)].busy_s, double(truth) * 1e-6, 1e-9) << "stage " << k;
    EXPECT_NEAR(u[size_t(k)].window_s, double(w.to_us - w.from_us) * 1e-6, 1e-12);
    EXPECT_LE(u[size_t(k)].busy_fraction(), 1.0);
  }
  EXPECT_TRUE(well_formed_xml(timeline_svg(*t, {}, 800)));
}

TEST(BenchTimeline, BadTracesAreRefused) {
  EXPECT_EQ(parse_trace("not json").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(parse_trace("{\"x\":1}").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(parse_trace("[]").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(read_trace("/nonexistent/trace.json").status().code(), StatusCode::kNotFound);
}

TEST(BenchSweep, GridsExpandInOrder) {
  const std::vector<std::string> allowed = {"pp", "async-depth", "max-concurrency"};
  auto axes = parse_grid("pp=1,2; --async-depth=1 max-concurrency=1,4,16", allowed);
  ASSERT_TRUE(axes.ok()) << axes.status().message();
  ASSERT_EQ(axes->size(), 3u);
  auto pts = expand_grid(*axes);
  ASSERT_EQ(pts.size(), 6u);
  EXPECT_EQ(point_label(pts[0]), "pp=1 async-depth=1 max-concurrency=1");
  EXPECT_EQ(point_label(pts[2]), "pp=1 async-depth=1 max-concurrency=16");
  EXPECT_EQ(point_label(pts[5]), "pp=2 async-depth=1 max-concurrency=16");
  EXPECT_FALSE(parse_grid("tp=2", allowed).ok());
  EXPECT_FALSE(parse_grid("pp=1 pp=2", allowed).ok());
  EXPECT_FALSE(parse_grid("pp=", allowed).ok());
  EXPECT_FALSE(parse_grid("", allowed).ok());

  std::vector<SweepRow> rows;
  auto& g = test::rng();
  for (const auto& p : pts) {
    SweepRow r;
    r.point = p;
    r.metrics.completed = 10;
    r.metrics.output_throughput = std::uniform_real_distribution<double>(10, 1000)(g);
    r.metrics.tpot_ms.median = std::uniform_real_distribution<double>(1, 50)(g);
    r.run_id = int64_t(rows.size()) + 2;
    rows.push_back(r);
  }
  rows[3].error = "server <gone> & \"lost\"";
  const std::string table = format_sweep_table(rows);
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 7);
  EXPECT_NE(table.find("error: server"), std::string::npos);
  const std::string svg = sweep_plot_svg(rows, LatencyKind::kTpot, "sweep <1> & more");
  EXPECT_TRUE(well_formed_xml(svg));
  EXPECT_NE(svg.find("pp=1 async-depth=1"), std::string::npos);  // a series per configuration
  EXPECT_NE(svg.find("median TPOT (ms)"), std::string::npos);
  EXPECT_EQ(std::count(svg.begin(), svg.end(), 'p') > 0, true);
  size_t lines = 0;
  for (size_t p = svg.find("<polyline"); p != std::string::npos; p = svg.find("<polyline", p + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 2u);
}

TEST(BenchHistory, CompareFlagsRegressionsByDirection) {
  BenchRecord a, b;
  a.id = 1;
  b.id = 2;
  a.metrics = {{"output_throughput", {1000, "tok/s"}},
               {"median_ttft_ms", {100, "ms"}},
               {"median_itl_ms", {10, "ms"}},
               {"p99_e2e_latency_ms", {500, "ms"}},
               {"total_input_tokens", {4000, "tok"}},
               {"failed", {0, "req"}},
               {"only_in_a", {1, ""}}};
  b.metrics = {{"output_throughput", {900, "tok/s"}},  // -10%: regression
               {"median_ttft_ms", {80, "ms"}},         // -20%: better
               {"median_itl_ms", {10.3, "ms"}},        // +3%: within 5%
               {"p99_e2e_latency_ms", {600, "ms"}},    // +20%: regression
               {"total_input_tokens", {8000, "tok"}},  // no direction
               {"failed", {2, "req"}},                 // more failures: regression
               {"only_in_b", {1, ""}}};
  auto d = compare_metrics(a, b, 0.05);
  std::map<std::string, MetricDelta> by;
  for (const auto& x : d) by[x.name] = x;
  EXPECT_TRUE(by["output_throughput"].regression);
  EXPECT_NEAR(by["output_throughput"].ratio, 0.9, 1e-12);
  EXPECT_TRUE(by["median_ttft_ms"].improvement);
  EXPECT_FALSE(by["median_ttft_ms"].regression);
  EXPECT_FALSE(by["median_itl_ms"].regression);
  EXPECT_FALSE(by["median_itl_ms"].improvement);
  EXPECT_TRUE(by["p99_e2e_latency_ms"].regression);
  EXPECT_FALSE(by["total_input_tokens"].regression);
  EXPECT_FALSE(by["total_input_tokens"].improvement);
  EXPECT_TRUE(by["failed"].regression);
  EXPECT_TRUE(by["only_in_a"].in_a && !by["only_in_a"].in_b);
  EXPECT_TRUE(std::isnan(by["only_in_b"].ratio));
  // A larger threshold lets the 10% throughput drop pass.
  for (const auto& x : compare_metrics(a, b, 0.15)) {
    if (x.name == "output_throughput") {
      EXPECT_FALSE(x.regression);
    }
  }
  const std::string text = format_comparison(a, b, d, 0.05);
  EXPECT_NE(text.find("3 regressions, 1 improvement beyond 5%"), std::string::npos) << text;
  EXPECT_EQ(metric_direction("stage0_busy_fraction", ""), MetricDirection::kHigherIsBetter);
  EXPECT_EQ(metric_direction("concurrency", ""), MetricDirection::kNeutral);
  EXPECT_EQ(metric_direction("duration", "s"), MetricDirection::kLowerIsBetter);
}

TEST(BenchPlot, TicksAndEscapes) {
  auto t = nice_ticks(0, 87, 9);  // steps of 10
  ASSERT_FALSE(t.empty());
  EXPECT_EQ(t.front(), 0);
  EXPECT_EQ(t[1], 10);
  EXPECT_LE(t.back(), 87);
  EXPECT_EQ(xml_escape("a<b & \"c\"'"), "a&lt;b &amp; &quot;c&quot;&apos;");
  EXPECT_TRUE(well_formed_xml(line_plot_svg({}, "empty", "x", "y")));
  EXPECT_FALSE(well_formed_xml("<svg><g></svg>"));  // the checker can fail
}

}  // namespace
}  // namespace pp::bench
