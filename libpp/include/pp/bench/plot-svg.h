// Small SVG drawing helpers for pp-bench's pictures, and the sweep's plot: throughput against
// latency, one line per series (points joined in the order given), each point labelled.
// Plain SVG 1.1 text, no script, opens in any browser.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace pp::bench {

// Escapes &, <, >, " and ' for SVG text and attributes.
std::string xml_escape(std::string_view s);
// A colour of a fixed palette of distinguishable colours ("#1f77b4", ...), cycling.
const char* series_color(size_t i);
// About `n` round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart).
std::vector<double> nice_ticks(double lo, double hi, int n);

struct PlotPoint {
  double x = 0, y = 0;
  std::string label;  // drawn beside the point (may be empty)
};
struct PlotSeries {
  std::string name;  // in the legend
  std::vector<PlotPoint> points;
};

// A line plot; non-finite points are skipped. Axes start at 0.
std::string line_plot_svg(const std::vector<PlotSeries>& series, const std::string& title,
                          const std::string& x_label, const std::string& y_label,
                          int width_px = 900, int height_px = 600);

}  // namespace pp::bench
