// Prometheus text exposition of counters, gauges and histograms.
#include "pp/server/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "pp/assert.h"

namespace pp::server {
namespace {

std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string label_text(const Labels& labels, const std::string& extra = "") {
  if (labels.empty() && extra.empty()) return "";
  std::string s = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i) s += ',';
    s += labels[i].first + "=\"" + escape_label(labels[i].second) + "\"";
  }
  if (!extra.empty()) {
    if (!labels.empty()) s += ',';
    s += extra;
  }
  return s + "}";
}

std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

}  // namespace

void MetricsRegistry::declare(const std::string& name, MetricType type, const std::string& help,
                              std::vector<double> buckets) {
  std::lock_guard lock(mu_);
  PP_ASSERT(find(name) == nullptr);
  if (type == MetricType::kHistogram) {
    PP_ASSERT(!buckets.empty());
    for (size_t i = 0; i < buckets.size(); ++i) {
      PP_ASSERT(std::isfinite(buckets[i]) && (i == 0 || buckets[i] > buckets[i - 1]));
    }
  }
  families_.push_back(Family{name, help, type, std::move(buckets), {}});
}

MetricsRegistry::Family& MetricsRegistry::family(const std::string& name) {
  for (Family& f : families_) {
    if (f.name == name) return f;
  }
  PP_ASSERT_MSG(false, name.c_str());
  return families_.front();
}

const MetricsRegistry::Family* MetricsRegistry::find(const std::string& name) const {
  for (const Family& f : families_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

void MetricsRegistry::add(const std::string& name, const Labels& labels, double v) {
  std::lock_guard lock(mu_);
  Family& f = family(name);
  PP_ASSERT(f.type != MetricType::kHistogram);
  f.series[labels].value += v;
}

void MetricsRegistry::set(const std::string& name, const Labels& labels, double v) {
  std::lock_guard lock(mu_);
  Family& f = family(name);
  PP_ASSERT(f.type != MetricType::kHistogram);
  f.series[labels].value = v;
}

void MetricsRegistry::observe(const std::string& name, const Labels& labels, double v) {
  std::lock_guard lock(mu_);
  Family& f = family(name);
  PP_ASSERT(f.type == MetricType::kHistogram);
  Series& s = f.series[labels];
  if (s.bucket.empty()) s.bucket.assign(f.buckets.size(), 0);
  const size_t b =
      size_t(std::lower_bound(f.buckets.begin(), f.buckets.end(), v) - f.buckets.begin());
  if (b < s.bucket.size()) ++s.bucket[b];
  ++s.count;
  s.value += v;
}

double MetricsRegistry::value(const std::string& name, const Labels& labels) const {
  std::lock_guard lock(mu_);
  const Family* f = find(name);
  if (!f) return 0;
  auto it = f->series.find(labels);
  if (it == f->series.end()) return 0;
  return f->type == MetricType::kHistogram ? double(it->second.count) : it->second.value;
}

std::string MetricsRegistry::render() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const Family& f : families_) {
    const char* type = f.type == MetricType::kCounter ? "counter"
                       : f.type == MetricType::kGauge ? "gauge"
                                                      : "histogram";
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f.name, f.help, f.name, type);
    if (f.type != MetricType::kHistogram) {
      // An unlabelled family with no series yet still shows its zero.
      if (f.series.empty()) out += fmt::format("{} 0\n", f.name);
      for (const auto& [labels, s] : f.series) {
        out += fmt::format("{}{} {}\n", f.name, label_text(labels), number(s.value));
      }
      continue;
    }
    auto render_series = [&](const Labels& labels, const Series* s) {
      uint64_t cum = 0;
      for (size_t b = 0; b < f.buckets.size(); ++b) {
        if (s && b < s->bucket.size()) cum += s->bucket[b];
        out += fmt::format("{}_bucket{} {}\n", f.name,
                           label_text(labels, "le=\"" + number(f.buckets[b]) + "\""), cum);
      }
      const uint64_t count = s ? s->count : 0;
      out += fmt::format("{}_bucket{} {}\n", f.name, label_text(labels, "le=\"+Inf\""), count);
      out += fmt::format("{}_sum{} {}\n", f.name, label_text(labels), number(s ? s->value : 0.0));
      out += fmt::format("{}_count{} {}\n", f.name, label_text(labels), count);
    };
    if (f.series.empty()) render_series({}, nullptr);
    for (const auto& [labels, s] : f.series) render_series(labels, &s);
  }
  return out;
}

std::vector<double> MetricsRegistry::latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
          0.75,  1.0,    1.5,   2.0,  2.5,   5.0,  7.5,   10., 15.,  20.0, 30.0, 60.0};
}

}  // namespace pp::server
