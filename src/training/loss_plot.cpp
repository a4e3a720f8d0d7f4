#include "training/loss_plot.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <system_error>

#include <fmt/format.h>

#include "core/error.h"
#include "training/bitmap_font.h"

namespace tessera::training {

namespace {

struct Rgb {
  uint8_t r, g, b;
};

// Distinct on white and for the common kinds of colour blindness (the "tab10" hues).
constexpr Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},  {148, 103, 189},
                            {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
constexpr Rgb kBackground{255, 255, 255};
constexpr Rgb kInk{34, 34, 34};
constexpr Rgb kFrame{90, 90, 90};
constexpr Rgb kGrid{225, 225, 225};

constexpr int kMinSide = 200, kMaxSide = 4000;
// Series with at most this many points also get a marker at each point (eval losses are sparse).
constexpr size_t kMarkerLimit = 60;

Rgb color_of(size_t i) { return kPalette[i % std::size(kPalette)]; }

std::string hex(Rgb c) { return fmt::format("#{:02x}{:02x}{:02x}", c.r, c.g, c.b); }

// ---- axes ------------------------------------------------------------------------------------

struct Axis {
  double lo = 0, hi = 1;
  double step = 0.2;
  std::vector<double> ticks;
  bool si = false;  // label thousands as k, M, G (steps)
};

// 1, 2 or 5 times a power of ten, giving about `target` intervals over `range`.
double nice_step(double range, int target) {
  const double raw = range / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double n = raw / magnitude;
  const double nice = n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10;
  return nice * magnitude;
}

// An axis over [lo, hi] of the data (none when lo > hi), padded by `pad` of the span on each side.
Axis make_axis(double lo, double hi, double pad, int target_ticks, bool si) {
  Axis a;
  a.si = si;
  if (!(lo <= hi)) {
    lo = 0;
    hi = 1;
  }
  // Spans beyond a double's range would make the arithmetic below infinite.
  lo = std::max(lo, -1e300);
  hi = std::min(hi, 1e300);
  const double magnitude = std::max(std::fabs(lo), std::fabs(hi));
  if (hi - lo <= magnitude * 1e-12) {
    // One value (or a flat line): a window around it.
    const double half = magnitude > 0 ? magnitude * 0.05 : 1.0;
    lo -= half;
    hi += half;
  } else {
    const double span = hi - lo;
    lo -= span * pad;
    hi += span * pad;
  }
  a.lo = lo;
  a.hi = hi;
  a.step = nice_step(hi - lo, target_ticks);
  const double first = std::ceil(lo / a.step);
  for (int k = 0; k < 40; ++k) {
    double t = (first + k) * a.step;
    if (t > hi + a.step * 1e-9) break;
    if (std::fabs(t) < a.step * 1e-9) t = 0;  // no "-0"
    a.ticks.push_back(t);
  }
  return a;
}

std::string tick_label(double v, const Axis& a) {
  if (v == 0) return "0";
  const double magnitude = std::max(std::fabs(a.lo), std::fabs(a.hi));
  const auto decimals = [](double step) {
    return std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 9);
  };
  if (a.si && magnitude >= 1e4) {
    const double unit = magnitude >= 1e10 ? 1e9 : magnitude >= 1e7 ? 1e6 : 1e3;
    const char* suffix = unit == 1e9 ? "G" : unit == 1e6 ? "M" : "k";
    return fmt::format("{:.{}f}{}", v / unit, decimals(a.step / unit), suffix);
  }
  if (magnitude >= 1e7 || a.step < 1e-5) return fmt::format("{:.3g}", v);
  return fmt::format("{:.{}f}", v, decimals(a.step));
}

// ---- layout (shared by the PNG and the SVG) --------------------------------------------------

struct Layout {
  int width = 0, height = 0, scale = 1;
  int left = 0, right = 0, top = 0, bottom = 0;  // the plot area, inclusive pixel bounds
  Axis x, y, y2;
  bool has_y2 = false, has_data = false;
  std::vector<std::vector<PlotPoint>> points;  // per series, prepared
  std::vector<std::string> x_labels, y_labels, y2_labels;

  double px(double v) const { return left + (v - x.lo) / (x.hi - x.lo) * (right - left); }
  double py(double v, bool second) const {
    const Axis& a = second ? y2 : y;
    return bottom - (v - a.lo) / (a.hi - a.lo) * (bottom - top);
  }
};

void check_options(const PlotOptions& o) {
  if (o.width < kMinSide || o.width > kMaxSide || o.height < kMinSide || o.height > kMaxSide)
    fail("plot: size {}x{} is out of range (each side {} to {})", o.width, o.height, kMinSide, kMaxSide);
}

Layout make_layout(const std::vector<PlotSeries>& series, const PlotOptions& o) {
  check_options(o);
  Layout l;
  l.width = o.width;
  l.height = o.height;
  l.scale = (o.width >= 1600 && o.height >= 900) ? 2 : 1;
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY, y2lo = INFINITY, y2hi = -INFINITY;
  for (const auto& s : series) {
    l.points.push_back(prepare_points(s.points));
    for (const auto& p : l.points.back()) {
      xlo = std::min(xlo, p.x), xhi = std::max(xhi, p.x);
      if (s.right_axis) {
        y2lo = std::min(y2lo, p.y), y2hi = std::max(y2hi, p.y);
        l.has_y2 = true;
      } else {
        ylo = std::min(ylo, p.y), yhi = std::max(yhi, p.y);
      }
      l.has_data = true;
    }
  }
  l.x = make_axis(xlo, xhi, 0.0, 8, true);
  l.y = make_axis(ylo, yhi, 0.05, 6, false);
  l.y2 = make_axis(y2lo, y2hi, 0.05, 6, false);
  for (double t : l.x.ticks) l.x_labels.push_back(tick_label(t, l.x));
  for (double t : l.y.ticks) l.y_labels.push_back(tick_label(t, l.y));
  if (l.has_y2)
    for (double t : l.y2.ticks) l.y2_labels.push_back(tick_label(t, l.y2));

  const int s = l.scale, cw = kCellWidth * s, ch = kCellHeight * s;
  const auto widest = [&](const std::vector<std::string>& labels) {
    int cells = 0;
    for (const auto& t : labels) cells = std::max(cells, text_cells(t));
    return cells * cw;
  };
  l.top = 10 * s + (o.title.empty() ? 0 : 2 * ch + 8 * s) + ch + 6 * s;
  l.bottom = o.height - 1 - (10 * s + ch + 8 * s + ch + 6 * s);
  l.left = 10 * s + widest(l.y_labels) + 10 * s;
  l.right = o.width - 1 - (l.has_y2 ? 10 * s + widest(l.y2_labels) + 10 * s : 20 * s);
  // Very long labels on a small canvas: the plot keeps at least a third of each side.
  l.left = std::min(l.left, o.width / 3);
  l.right = std::max(l.right, l.left + o.width / 3);
  return l;
}

// ---- PNG drawing -----------------------------------------------------------------------------

class Canvas {
 public:
  Canvas(int width, int height) : w_(width), h_(height), pixels_(static_cast<size_t>(width) * height * 3) {
    for (size_t i = 0; i < pixels_.size(); i += 3) {
      pixels_[i] = kBackground.r;
      pixels_[i + 1] = kBackground.g;
      pixels_[i + 2] = kBackground.b;
    }
  }

  void blend(int x, int y, Rgb c, double alpha) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_ || alpha <= 0) return;
    alpha = std::min(alpha, 1.0);
    uint8_t* p = &pixels_[(static_cast<size_t>(y) * w_ + x) * 3];
    p[0] = static_cast<uint8_t>(std::lround(p[0] * (1 - alpha) + c.r * alpha));
    p[1] = static_cast<uint8_t>(std::lround(p[1] * (1 - alpha) + c.g * alpha));
    p[2] = static_cast<uint8_t>(std::lround(p[2] * (1 - alpha) + c.b * alpha));
  }

  void fill(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = std::max(0, y0); y <= std::min(h_ - 1, y1); ++y)
      for (int x = std::max(0, x0); x <= std::min(w_ - 1, x1); ++x) blend(x, y, c, 1.0);
  }

  // Text with its top-left corner at (x, y), each font pixel a scale x scale block.
  void text(int x, int y, std::string_view s, Rgb c, int scale) {
    int cell = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const auto u = static_cast<unsigned char>(s[i]);
      if ((u & 0xC0) == 0x80) continue;  // the rest of a UTF-8 sequence: drawn as one '?'
      const auto& rows = glyph(u < 0x80 ? s[i] : '?');
      const int cx = x + cell * kCellWidth * scale;
      for (int r = 0; r < kGlyphHeight; ++r)
        for (int col = 0; col < kGlyphWidth; ++col)
          if (rows[r] & (0x10 >> col))
            fill(cx + col * scale, y + r * scale, cx + col * scale + scale - 1, y + r * scale + scale - 1, c);
      ++cell;
    }
  }

  int width() const { return w_; }
  int height() const { return h_; }
  std::vector<uint8_t> take() { return std::move(pixels_); }

 private:
  int w_, h_;
  std::vector<uint8_t> pixels_;
};

// Antialiased strokes of one series: coverage is accumulated as a maximum over a mask and blended
// once, so that joints where segments overlap are not drawn darker than the line.
class StrokeMask {
 public:
  StrokeMask(int left, int top, int right, int bottom)
      : x0_(left), y0_(top), x1_(right), y1_(bottom), w_(right - left + 1),
        cover_(static_cast<size_t>(right - left + 1) * (bottom - top + 1), 0.0f) {}

  void segment(double ax, double ay, double bx, double by, double half_width) {
    const int minx = std::max(x0_, static_cast<int>(std::floor(std::min(ax, bx) - half_width - 1)));
    const int maxx = std::min(x1_, static_cast<int>(std::ceil(std::max(ax, bx) + half_width + 1)));
    const int miny = std::max(y0_, static_cast<int>(std::floor(std::min(ay, by) - half_width - 1)));
    const int maxy = std::min(y1_, static_cast<int>(std::ceil(std::max(ay, by) + half_width + 1)));
    const double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
    for (int y = miny; y <= maxy; ++y)
      for (int x = minx; x <= maxx; ++x) {
        const double cx = x + 0.5, cy = y + 0.5;
        double t = len2 > 0 ? ((cx - ax) * dx + (cy - ay) * dy) / len2 : 0;
        t = std::clamp(t, 0.0, 1.0);
        const double ex = ax + t * dx - cx, ey = ay + t * dy - cy;
        cover(x, y, half_width + 0.5 - std::sqrt(ex * ex + ey * ey));
      }
  }

  void disc(double cx, double cy, double radius) { segment(cx, cy, cx, cy, radius); }

  void paint(Canvas& canvas, Rgb c) const {
    for (int y = y0_; y <= y1_; ++y)
      for (int x = x0_; x <= x1_; ++x) {
        const float a = cover_[static_cast<size_t>(y - y0_) * w_ + (x - x0_)];
        if (a > 0) canvas.blend(x, y, c, a);
      }
  }

 private:
  void cover(int x, int y, double amount) {
    if (amount <= 0) return;
    float& v = cover_[static_cast<size_t>(y - y0_) * w_ + (x - x0_)];
    v = std::max(v, static_cast<float>(std::min(amount, 1.0)));
  }
  int x0_, y0_, x1_, y1_, w_;
  std::vector<float> cover_;
};

// Keeps a coordinate far outside the canvas finite and small enough for int conversion.
double clamp_coord(double v) { return std::clamp(v, -1e6, 1e6); }

// ---- SVG -------------------------------------------------------------------------------------

std::string xml_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default:
        // Control characters are not allowed in XML 1.0.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') out += ' ';
        else out += c;
    }
  }
  return out;
}

std::string svg_document(const std::vector<PlotSeries>& series, const PlotOptions& o, const Layout& l) {
  const int s = l.scale;
  const int font = 12 * s;
  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\""
      " font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\" font-size=\"{2}\">\n",
      o.width, o.height, font);
  out += fmt::format("<rect width=\"{}\" height=\"{}\" fill=\"{}\"/>\n", o.width, o.height, hex(kBackground));
  const int pw = l.right - l.left, ph = l.bottom - l.top;
  // Grid and ticks.
  out += "<g stroke=\"" + hex(kGrid) + "\" stroke-width=\"1\">\n";
  for (double t : l.x.ticks)
    out += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\"/>\n", l.px(t), l.top, l.bottom);
  for (double t : l.y.ticks)
    out += fmt::format("<line x1=\"{1}\" y1=\"{0:.1f}\" x2=\"{2}\" y2=\"{0:.1f}\"/>\n", l.py(t, false), l.left, l.right);
  out += "</g>\n";
  out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"{}\"/>\n", l.left, l.top,
                     pw, ph, hex(kFrame));
  out += "<g fill=\"" + hex(kInk) + "\">\n";
  for (size_t i = 0; i < l.x.ticks.size(); ++i)
    out += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", l.px(l.x.ticks[i]),
                       l.bottom + 16 * s, xml_escape(l.x_labels[i]));
  for (size_t i = 0; i < l.y.ticks.size(); ++i)
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\" dominant-baseline=\"middle\">{}</text>\n",
                       l.left - 6 * s, l.py(l.y.ticks[i], false), xml_escape(l.y_labels[i]));
  if (l.has_y2)
    for (size_t i = 0; i < l.y2.ticks.size(); ++i)
      out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" dominant-baseline=\"middle\">{}</text>\n", l.right + 6 * s,
                         l.py(l.y2.ticks[i], true), xml_escape(l.y2_labels[i]));
  if (!o.title.empty())
    out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"{}\" font-weight=\"bold\">{}</text>\n",
                       o.width / 2, 10 * s + 2 * font, 2 * font - 4 * s, xml_escape(o.title));
  out += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", l.left, l.top - 6 * s, xml_escape(o.y_label));
  if (l.has_y2)
    out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", l.right, l.top - 6 * s,
                       xml_escape(o.right_label));
  out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", (l.left + l.right) / 2,
                     o.height - 6 * s, xml_escape(o.x_label));
  if (!l.has_data)
    out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>\n", (l.left + l.right) / 2,
                       (l.top + l.bottom) / 2);
  out += "</g>\n";
  // The curves, clipped to the plot area.
  out += fmt::format("<clipPath id=\"plot-area\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath>\n",
                     l.left, l.top, pw, ph);
  out += "<g clip-path=\"url(#plot-area)\" fill=\"none\" stroke-linejoin=\"round\" stroke-linecap=\"round\">\n";
  for (size_t i = 0; i < series.size(); ++i) {
    const auto& pts = l.points[i];
    if (pts.empty()) continue;
    const bool second = series[i].right_axis;
    std::string coords;
    for (const auto& p : pts)
      coords += fmt::format("{}{:.1f},{:.1f}", coords.empty() ? "" : " ", clamp_coord(l.px(p.x)),
                            clamp_coord(l.py(p.y, second)));
    out += fmt::format("<polyline data-series=\"{}\" stroke=\"{}\" stroke-width=\"{}\" points=\"{}\"/>\n",
                       xml_escape(series[i].name), hex(color_of(i)), 2 * s, coords);
    if (pts.size() <= kMarkerLimit)
      for (const auto& p : pts)
        out += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"{}\" fill=\"{}\" stroke=\"none\"/>\n",
                           clamp_coord(l.px(p.x)), clamp_coord(l.py(p.y, second)), 3 * s, hex(color_of(i)));
  }
  out += "</g>\n";
  // The legend, top right inside the plot.
  if (!series.empty()) {
    int cells = 0;
    for (const auto& se : series) cells = std::max(cells, text_cells(se.name));
    const int row = 16 * s, box_w = cells * 8 * s + 40 * s, box_h = static_cast<int>(series.size()) * row + 8 * s;
    const int bx = l.right - 8 * s - box_w, by = l.top + 8 * s;
    out += fmt::format("<g><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#ffffff\" fill-opacity=\"0.9\""
                       " stroke=\"{}\"/>\n",
                       bx, by, box_w, box_h, hex(kFrame));
    for (size_t i = 0; i < series.size(); ++i) {
      const int cy = by + 4 * s + static_cast<int>(i) * row + row / 2;
      out += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"{}\"/>\n", bx + 6 * s,
                         cy, bx + 26 * s, cy, hex(color_of(i)), 2 * s);
      out += fmt::format("<text x=\"{}\" y=\"{}\" dominant-baseline=\"middle\" fill=\"{}\">{}</text>\n", bx + 32 * s, cy,
                         hex(kInk), xml_escape(series[i].name));
    }
    out += "</g>\n";
  }
  out += "</svg>\n";
  return out;
}

void write_text_atomically(const std::filesystem::path& path, const std::string& text) {
  const auto tmp = std::filesystem::path(path.string() + fmt::format(".tmp{}", getpid()));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("{}: cannot write", path.string());
    out << text;
    out.flush();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      fail("{}: cannot write (disk full?)", path.string());
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    fail("{}: cannot write: {}", path.string(), ec.message());
  }
}

std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

}  // namespace

std::vector<PlotPoint> prepare_points(const std::vector<PlotPoint>& points, size_t max_points) {
  std::vector<PlotPoint> finite;
  finite.reserve(points.size());
  for (const auto& p : points)
    if (std::isfinite(p.x) && std::isfinite(p.y)) finite.push_back(p);
  std::stable_sort(finite.begin(), finite.end(), [](const PlotPoint& a, const PlotPoint& b) { return a.x < b.x; });
  max_points = std::max<size_t>(max_points, 2);
  if (finite.size() <= max_points) return finite;
  // Buckets of consecutive points, each giving its lowest and highest point in x order: the
  // envelope of a noisy curve survives, where taking every n-th point would drop the spikes.
  const size_t buckets = max_points / 2;
  std::vector<PlotPoint> out;
  out.reserve(buckets * 2);
  for (size_t b = 0; b < buckets; ++b) {
    const size_t begin = b * finite.size() / buckets, end = (b + 1) * finite.size() / buckets;
    if (begin >= end) continue;
    size_t lo = begin, hi = begin;
    for (size_t i = begin; i < end; ++i) {
      if (finite[i].y < finite[lo].y) lo = i;
      if (finite[i].y > finite[hi].y) hi = i;
    }
    out.push_back(finite[std::min(lo, hi)]);
    if (lo != hi) out.push_back(finite[std::max(lo, hi)]);
  }
  return out;
}

PngImage render_plot_png(const std::vector<PlotSeries>& series, const PlotOptions& options) {
  const Layout l = make_layout(series, options);
  const int s = l.scale, cw = kCellWidth * s, ch = kCellHeight * s;
  Canvas canvas(options.width, options.height);

  // Grid, frame, ticks and their labels.
  for (double t : l.x.ticks) {
    const int x = static_cast<int>(std::lround(clamp_coord(l.px(t))));
    canvas.fill(x, l.top, x + s - 1, l.bottom, kGrid);
    canvas.fill(x, l.bottom + 1, x + s - 1, l.bottom + 5 * s, kFrame);
  }
  for (double t : l.y.ticks) {
    const int y = static_cast<int>(std::lround(clamp_coord(l.py(t, false))));
    canvas.fill(l.left, y, l.right, y + s - 1, kGrid);
    canvas.fill(l.left - 5 * s, y, l.left - 1, y + s - 1, kFrame);
  }
  if (l.has_y2)
    for (double t : l.y2.ticks) {
      const int y = static_cast<int>(std::lround(clamp_coord(l.py(t, true))));
      canvas.fill(l.right + 1, y, l.right + 5 * s, y + s - 1, kFrame);
    }
  canvas.fill(l.left, l.top, l.right, l.top + s - 1, kFrame);
  canvas.fill(l.left, l.bottom - s + 1, l.right, l.bottom, kFrame);
  canvas.fill(l.left, l.top, l.left + s - 1, l.bottom, kFrame);
  canvas.fill(l.right - s + 1, l.top, l.right, l.bottom, kFrame);
  for (size_t i = 0; i < l.x.ticks.size(); ++i) {
    const int x = static_cast<int>(std::lround(clamp_coord(l.px(l.x.ticks[i]))));
    canvas.text(x - text_cells(l.x_labels[i]) * cw / 2, l.bottom + 8 * s, l.x_labels[i], kInk, s);
  }
  for (size_t i = 0; i < l.y.ticks.size(); ++i) {
    const int y = static_cast<int>(std::lround(clamp_coord(l.py(l.y.ticks[i], false))));
    canvas.text(l.left - 8 * s - text_cells(l.y_labels[i]) * cw, y - ch / 2 + s, l.y_labels[i], kInk, s);
  }
  for (size_t i = 0; i < l.y2_labels.size(); ++i) {
    const int y = static_cast<int>(std::lround(clamp_coord(l.py(l.y2.ticks[i], true))));
    canvas.text(l.right + 8 * s, y - ch / 2 + s, l.y2_labels[i], kInk, s);
  }
  if (!options.title.empty()) {
    const int ts = 2 * s;
    std::string title = options.title;
    const int max_cells = (options.width - 20 * s) / (kCellWidth * ts);
    if (text_cells(title) > max_cells && max_cells > 3) title = title.substr(0, static_cast<size_t>(max_cells - 2)) + "..";
    canvas.text(options.width / 2 - text_cells(title) * kCellWidth * ts / 2, 10 * s, title, kInk, ts);
  }
  canvas.text(l.left, l.top - 6 * s - ch, options.y_label, kInk, s);
  if (l.has_y2)
    canvas.text(l.right - text_cells(options.right_label) * cw, l.top - 6 * s - ch, options.right_label, kInk, s);
  canvas.text((l.left + l.right) / 2 - text_cells(options.x_label) * cw / 2, options.height - 10 * s - ch,
              options.x_label, kInk, s);
  if (!l.has_data)
    canvas.text((l.left + l.right) / 2 - 7 * cw / 2, (l.top + l.bottom) / 2 - ch / 2, "no data", kInk, s);

  // The curves, inside the frame.
  const int inner_left = l.left + s, inner_top = l.top + s, inner_right = l.right - s, inner_bottom = l.bottom - s;
  for (size_t i = 0; i < series.size(); ++i) {
    const auto& pts = l.points[i];
    if (pts.empty()) continue;
    const bool second = series[i].right_axis;
    StrokeMask mask(inner_left, inner_top, inner_right, inner_bottom);
    const double half = 1.0 * s;
    for (size_t k = 0; k + 1 < pts.size(); ++k)
      mask.segment(clamp_coord(l.px(pts[k].x)), clamp_coord(l.py(pts[k].y, second)), clamp_coord(l.px(pts[k + 1].x)),
                   clamp_coord(l.py(pts[k + 1].y, second)), half);
    if (pts.size() <= kMarkerLimit)
      for (const auto& p : pts) mask.disc(clamp_coord(l.px(p.x)), clamp_coord(l.py(p.y, second)), 3.0 * s);
    mask.paint(canvas, color_of(i));
  }

  // The legend, top right inside the plot.
  if (!series.empty()) {
    int cells = 0;
    for (const auto& se : series) cells = std::max(cells, text_cells(se.name));
    const int row = ch + 6 * s;
    const int box_w = cells * cw + 40 * s, box_h = static_cast<int>(series.size()) * row + 8 * s;
    const int bx = std::max(l.left + s, l.right - 8 * s - box_w), by = l.top + 8 * s;
    canvas.fill(bx, by, bx + box_w, by + box_h, kBackground);
    canvas.fill(bx, by, bx + box_w, by, kFrame);
    canvas.fill(bx, by + box_h, bx + box_w, by + box_h, kFrame);
    canvas.fill(bx, by, bx, by + box_h, kFrame);
    canvas.fill(bx + box_w, by, bx + box_w, by + box_h, kFrame);
    for (size_t i = 0; i < series.size(); ++i) {
      const int cy = by + 4 * s + static_cast<int>(i) * row + row / 2;
      canvas.fill(bx + 6 * s, cy - s, bx + 26 * s, cy + s - 1, color_of(i));
      canvas.text(bx + 32 * s, cy - ch / 2 + s, series[i].name, kInk, s);
    }
  }

  PngImage image;
  image.width = options.width;
  image.height = options.height;
  image.channels = 3;
  image.pixels = canvas.take();
  if (!options.title.empty()) image.text.emplace_back("Title", options.title);
  image.text.emplace_back("Software", "tessera");
  return image;
}

std::string render_plot_svg(const std::vector<PlotSeries>& series, const PlotOptions& options) {
  const Layout l = make_layout(series, options);
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + svg_document(series, options, l);
}

std::string render_plot_html(const std::vector<PlotSeries>& series, const PlotOptions& options) {
  // The page's heading carries the title, so the picture leaves it out.
  PlotOptions untitled = options;
  untitled.title.clear();
  const Layout l = make_layout(series, untitled);
  const std::string title = options.title.empty() ? "loss curves" : options.title;
  std::string out = fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{0}</title>\n"
      "<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}"
      "svg{{max-width:100%;height:auto;border:1px solid #ddd}}"
      "table{{border-collapse:collapse;margin-top:16px}}td,th{{padding:4px 12px;text-align:right;"
      "border-bottom:1px solid #eee}}td:first-child,th:first-child{{text-align:left}}</style>\n"
      "</head>\n<body>\n<h1>{0}</h1>\n",
      xml_escape(title));
  out += svg_document(series, untitled, l);
  out += "<table>\n<tr><th>series</th><th>points</th><th>last step</th><th>last value</th><th>lowest</th></tr>\n";
  for (size_t i = 0; i < series.size(); ++i) {
    const auto& pts = l.points[i];
    if (pts.empty()) {
      out += fmt::format("<tr><td>{}</td><td>0</td><td>-</td><td>-</td><td>-</td></tr>\n", xml_escape(series[i].name));
      continue;
    }
    // The last point in step order, from the series before thinning.
    const auto all = prepare_points(series[i].points, SIZE_MAX);
    double lowest = all.front().y;
    for (const auto& p : all) lowest = std::min(lowest, p.y);
    out += fmt::format("<tr><td><span style=\"color:{}\">&#9632;</span> {}</td><td>{}</td><td>{}</td><td>{:.6g}</td>"
                       "<td>{:.6g}</td></tr>\n",
                       hex(color_of(i)), xml_escape(series[i].name), all.size(), all.back().x, all.back().y, lowest);
  }
  out += "</table>\n</body>\n</html>\n";
  return out;
}

void write_plot(const std::filesystem::path& path, const std::vector<PlotSeries>& series, const PlotOptions& options) {
  const std::string ext = lower(path.extension().string());
  if (ext == ".png") {
    write_png(path, render_plot_png(series, options));
  } else if (ext == ".svg") {
    write_text_atomically(path, render_plot_svg(series, options));
  } else if (ext == ".html" || ext == ".htm") {
    write_text_atomically(path, render_plot_html(series, options));
  } else {
    fail("{}: cannot tell the plot format from {} (use a .png, .svg or .html file name)", path.string(),
         ext.empty() ? std::string("a name without an extension") : "'" + ext + "'");
  }
}

}  // namespace tessera::training
