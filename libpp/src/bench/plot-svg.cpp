// SVG helpers and the line plot (see plot-svg.h).
#include "pp/bench/plot-svg.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace pp::bench {

std::string xml_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

const char* series_color(size_t i) {
  static const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return kPalette[i % (sizeof kPalette / sizeof kPalette[0])];
}

std::vector<double> nice_ticks(double lo, double hi, int n) {
  std::vector<double> out;
  if (!(hi > lo) || n < 1 || !std::isfinite(lo) || !std::isfinite(hi)) return {lo};
  const double raw = (hi - lo) / n;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  double step = p;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * p >= raw) {
      step = m * p;
      break;
    }
  }
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    out.push_back(std::fabs(v) < step * 1e-9 ? 0.0 : v);
  }
  return out;
}

std::string line_plot_svg(const std::vector<PlotSeries>& series, const std::string& title,
                          const std::string& x_label, const std::string& y_label, int width_px,
                          int height_px) {
  const double left = 80, right = 190, top = 45, bottom = 60;
  const double pw = width_px - left - right, ph = height_px - top - bottom;
  double x_max = 0, y_max = 0;
  for (const auto& se : series) {
    for (const auto& p : se.points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
      x_max = std::max(x_max, p.x);
      y_max = std::max(y_max, p.y);
    }
  }
  if (x_max <= 0) x_max = 1;
  if (y_max <= 0) y_max = 1;
  x_max *= 1.08;
  y_max *= 1.08;
  auto X = [&](double x) { return left + pw * x / x_max; };
  auto Y = [&](double y) { return top + ph - ph * y / y_max; };

  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"12\">\n",
      width_px, height_px);
  s += fmt::format("<rect width=\"{}\" height=\"{}\" fill=\"white\"/>\n", width_px, height_px);
  s += fmt::format(
      "<text x=\"{:.1f}\" y=\"24\" font-size=\"15\" font-weight=\"bold\" "
      "text-anchor=\"middle\">{}</text>\n",
      left + pw / 2, xml_escape(title));
  for (double t : nice_ticks(0, x_max, 8)) {
    s += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" "
        "stroke=\"#e5e5e5\"/>\n",
        X(t), top, top + ph);
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{:g}</text>\n", X(t),
                     top + ph + 16, t);
  }
  for (double t : nice_ticks(0, y_max, 8)) {
    s += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" "
        "stroke=\"#e5e5e5\"/>\n",
        left, Y(t), left + pw);
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{:g}</text>\n", left - 6,
                     Y(t) + 4, t);
  }
  s += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" "
      "stroke=\"#333\"/>\n",
      left, top, pw, ph);
  s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n",
                   left + pw / 2, double(height_px) - 18, xml_escape(x_label));
  s += fmt::format(
      "<text transform=\"translate(18 {:.1f}) rotate(-90)\" "
      "text-anchor=\"middle\">{}</text>\n",
      top + ph / 2, xml_escape(y_label));
  for (size_t i = 0; i < series.size(); ++i) {
    const char* color = series_color(i);
    std::string path;
    for (const auto& p : series[i].points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
      path += fmt::format("{}{:.1f},{:.1f}", path.empty() ? "" : " ", X(p.x), Y(p.y));
    }
    if (!path.empty()) {
      s += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                       path, color);
    }
    for (const auto& p : series[i].points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
      s += fmt::format(
          "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\"><title>{}: "
          "{:g}, {:g}</title></circle>\n",
          X(p.x), Y(p.y), color, xml_escape(p.label), p.x, p.y);
      if (!p.label.empty()) {
        s += fmt::format(
            "<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"10\" fill=\"#333\">{}</text>\n",
            X(p.x) + 6, Y(p.y) - 6, xml_escape(p.label));
      }
    }
    const double ly = top + 10 + 20 * double(i);
    s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"14\" height=\"4\" fill=\"{}\"/>\n",
                     left + pw + 14, ly, color);
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n", left + pw + 34, ly + 5,
                     xml_escape(series[i].name));
  }
  s += "</svg>\n";
  return s;
}

}  // namespace pp::bench
