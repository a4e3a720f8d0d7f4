#pragma once
// Loss curves as a picture: a PNG drawn here pixel by pixel (axes, ticks, grid, one polyline per
// series, a legend, text in the built-in bitmap font), or an SVG / HTML page with the same plot
// as inline SVG. For people who would rather look at a run than read its numbers.
//
// Robust to what training produces: NaN and infinite values are left out, a single point still
// plots (as a marker), and a series of millions of steps is thinned to about 2000 points, keeping
// each stretch's minimum and maximum so that spikes stay visible.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "formats/png.h"

namespace tessera::training {

struct PlotPoint {
  double x = 0;  // the step
  double y = 0;
};

struct PlotSeries {
  std::string name;  // shown in the legend: "loss", "eval_loss", "lr"
  std::vector<PlotPoint> points;
  bool right_axis = false;  // on a second y axis at the right (for a learning rate next to losses)
};

struct PlotOptions {
  std::string title;
  std::string x_label = "step";
  std::string y_label = "loss";
  std::string right_label;  // the right axis, when a series uses it
  int width = 960, height = 540;  // pixels (PNG) or user units (SVG)
};

// At most this many points per series are drawn.
inline constexpr size_t kMaxPlotPoints = 2000;

// The finite points of a series in x order, thinned to at most max_points.
std::vector<PlotPoint> prepare_points(const std::vector<PlotPoint>& points, size_t max_points = kMaxPlotPoints);

PngImage render_plot_png(const std::vector<PlotSeries>& series, const PlotOptions& options);
// A standalone SVG document.
std::string render_plot_svg(const std::vector<PlotSeries>& series, const PlotOptions& options);
// An HTML page holding the plot as inline SVG and a table of each series' last and best value.
std::string render_plot_html(const std::vector<PlotSeries>& series, const PlotOptions& options);

// Chosen by the extension of `path`: .png, .svg, or .html/.htm; anything else is an error.
// Written atomically (a temporary file renamed over the target).
void write_plot(const std::filesystem::path& path, const std::vector<PlotSeries>& series, const PlotOptions& options);

}  // namespace tessera::training
