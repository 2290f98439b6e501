#include "report.h"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#include "common/output_file.h"

namespace kvpager::replay {

nlohmann::json to_json(const RunResult& r, uint32_t block_tokens) {
  using nlohmann::json;
  auto tiers = [](const auto& a) { return json{{"hbm", a[0]}, {"host", a[1]}, {"nvme", a[2]}}; };
  json caps = json::object();
  for (size_t t = 0; t < kTiers; ++t) {
    const char* name = t == 0 ? "hbm" : t == 1 ? "host" : "nvme";
    if (r.capacity_blocks[t] == 0) continue;
    if (r.capacity_blocks[t] == kUnlimited) caps[name] = "unlimited";
    else caps[name] = json{{"blocks", r.capacity_blocks[t]}, {"tokens", r.capacity_blocks[t] * block_tokens}};
  }
  json pf = json::array();
  for (const auto& p : r.prefetchers) {
    pf.push_back({{"name", p.name},
                  {"issued_bytes", p.issued_bytes},
                  {"used_bytes", p.used_bytes},
                  {"wasted_bytes", p.wasted_bytes},
                  {"accuracy", p.accuracy()},
                  {"throttle_events", p.throttle_events}});
  }
  return json{
      {"policy", r.label},
      {"capacity", caps},
      {"requests", r.requests},
      {"input_tokens", r.input_tokens},
      {"block_refs", r.block_refs},
      {"hit_tokens", r.hit_tokens},
      {"hit_rate", r.hit_rate()},
      {"hit_tokens_from", tiers(r.hit_tokens_from)},
      {"hit_rate_from", json{{"hbm", r.tier_hit_rate(0)}, {"host", r.tier_hit_rate(1)}, {"nvme", r.tier_hit_rate(2)}}},
      {"miss_tokens",
       json{{"never_seen", r.miss_never_seen},
            {"evicted_from", tiers(r.miss_evicted_from)},
            {"not_admitted", r.miss_not_admitted},
            {"after_gap", r.miss_after_gap}}},
      {"prefill_tokens_saved", r.tokens_loaded},
      {"prefill_tokens_recomputed", r.tokens_recomputed},
      {"bytes_moved",
       json{{"hbm_to_host", r.moved.hbm_to_host},
            {"host_to_hbm", r.moved.host_to_hbm},
            {"host_to_nvme", r.moved.host_to_nvme},
            {"nvme_to_host", r.moved.nvme_to_host}}},
      {"ttft_s", json{{"mean", r.ttft_mean_s}, {"p50", r.ttft_p50_s}, {"p90", r.ttft_p90_s}, {"p99", r.ttft_p99_s}}},
      {"prefill_gpu_s", r.prefill_gpu_s},
      {"prefill_gpu_s_no_cache", r.prefill_gpu_s_no_cache},
      {"prefetchers", pf},
      {"resumed_turns", r.resumed_turns},
      {"resumed_prefix_in_top_tier", r.resumed_prefix_in_top},
      {"wall_s", r.wall_s},
  };
}

// ------------------------------------------------------------------ sweeps

std::vector<uint64_t> SweepSpec::points_tokens(uint32_t block_tokens) const {
  std::vector<uint64_t> out;
  if (steps == 0 || block_tokens == 0) return out;
  const double lo = static_cast<double>(lo_tokens), hi = static_cast<double>(hi_tokens);
  for (uint32_t k = 0; k < steps; ++k) {
    const double f = steps == 1 ? 0.0 : static_cast<double>(k) / static_cast<double>(steps - 1);
    uint64_t t = k == 0           ? lo_tokens
                 : k + 1 == steps ? hi_tokens
                                  : static_cast<uint64_t>(std::llround(lo * std::pow(hi / lo, f)));
    t = blocks_for_tokens(t, block_tokens) * block_tokens;  // as the replay sizes a tier
    if (out.empty() || out.back() != t) out.push_back(t);
  }
  return out;
}

std::optional<SweepSpec> parse_sweep(std::string_view s, uint64_t kv_bytes_per_token, std::string* why) {
  auto fail = [&](std::string msg) -> std::optional<SweepSpec> {
    if (why) *why = fmt::format("--sweep '{}': {}", s, msg);
    return std::nullopt;
  };
  const size_t eq = s.find('='), dots = s.find(".."), colon = s.rfind(':');
  if (eq == std::string_view::npos || dots == std::string_view::npos || colon == std::string_view::npos || dots < eq ||
      colon < dots)
    return fail("expected TIER=LO..HI:STEPS, e.g. hbm=1G..80G:12 or host=1Mtok..50Mtok:20");
  SweepSpec spec;
  const std::string_view tier = s.substr(0, eq);
  if (tier == "hbm") spec.tier = 0;
  else if (tier == "host") spec.tier = 1;
  else if (tier == "nvme") spec.tier = 2;
  else return fail(fmt::format("unknown tier '{}': allowed hbm, host, nvme", tier));
  std::string e;
  auto lo = parse_capacity_tokens(s.substr(eq + 1, dots - eq - 1), kv_bytes_per_token, &e);
  if (!lo) return fail(e);
  auto hi = parse_capacity_tokens(s.substr(dots + 2, colon - dots - 2), kv_bytes_per_token, &e);
  if (!hi) return fail(e);
  if (*lo == 0 || *lo == UINT64_MAX || *hi == UINT64_MAX || *hi <= *lo)
    return fail("need 0 < LO < HI, both finite (the capacities are spaced geometrically)");
  const std::string steps(s.substr(colon + 1));
  char* end = nullptr;
  const unsigned long n = std::strtoul(steps.c_str(), &end, 10);
  if (steps.empty() || *end != '\0' || n < 2 || n > 200) return fail("STEPS must be an integer 2..200");
  spec.lo_tokens = *lo;
  spec.hi_tokens = *hi;
  spec.steps = static_cast<uint32_t>(n);
  return spec;
}

// ------------------------------------------------------------------ plots

namespace {

std::string xml_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string tokens_label(double v) {
  if (v >= 1e9) return fmt::format("{:g}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:g}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:g}k", v / 1e3);
  return fmt::format("{:g}", v);
}

constexpr const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};

}  // namespace

std::string render_svg(const PlotSpec& plot) {
  constexpr double W = 860, H = 520, L = 70, R = 200, T = 50, B = 60;
  double xmin = INFINITY, xmax = 0, ymax = std::max(0.0, plot.infinite_rate);
  for (const Curve& c : plot.curves) {
    for (auto [x, y] : c.points) {
      if (x > 0) xmin = std::min(xmin, x), xmax = std::max(xmax, x);
      ymax = std::max(ymax, y);
    }
  }
  if (!(xmin < xmax)) xmin = 1, xmax = 10;
  ymax = std::clamp(std::ceil(ymax * 10.0 + 0.5) / 10.0, 0.1, 1.0);
  const double lx0 = std::log10(xmin), lx1 = std::log10(xmax);
  auto px = [&](double x) { return L + (std::log10(x) - lx0) / (lx1 - lx0) * (W - L - R); };
  auto py = [&](double y) { return H - B - y / ymax * (H - T - B); };

  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {0} {1}\" width=\"{0}\" height=\"{1}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      W, H);
  s += fmt::format("<text x=\"{}\" y=\"28\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n", (W - R + L) / 2,
                   xml_escape(plot.title));
  // Grid and y axis (hit rate).
  for (int k = 0; k <= 10; ++k) {
    const double y = ymax * k / 10.0;
    s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e5e5e5\"/>\n", L, py(y),
                     W - R, py(y));
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{:.0f}%</text>\n", L - 6, py(y) + 4, y * 100);
  }
  // x axis: 1-2-5 ticks per decade (log scale).
  for (double dec = std::pow(10.0, std::floor(lx0)); dec <= xmax * 1.0001; dec *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      const double x = dec * m;
      if (x < xmin * 0.9999 || x > xmax * 1.0001) continue;
      s += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"#e5e5e5\"/>\n", px(x), T,
                       H - B);
      s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", px(x), H - B + 16,
                       tokens_label(x));
    }
  }
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", L, T,
                   W - L - R, H - T - B);
  s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", (W - R + L) / 2, H - 18,
                   xml_escape(plot.x_label));
  s += fmt::format(
      "<text x=\"18\" y=\"{0:.1f}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {0:.1f})\">prefix hit rate "
      "(hit tokens / input tokens)</text>\n",
      (H - B + T) / 2);
  // Curves and legend.
  double ly = T + 10;
  auto legend = [&](const std::string& label, const std::string& style) {
    s += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" {3}/>\n", W - R + 14, ly, W - R + 44,
                     style);
    s += fmt::format("<text x=\"{}\" y=\"{:.1f}\">{}</text>\n", W - R + 50, ly + 4, xml_escape(label));
    ly += 20;
  };
  if (plot.infinite_rate >= 0) {
    const std::string style = "stroke=\"#777\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"";
    s += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" {}/>\n", L, py(plot.infinite_rate), W - R,
                     py(plot.infinite_rate), style);
    legend(fmt::format("infinite ({:.1f}%)", plot.infinite_rate * 100), style);
  }
  size_t color = 0;
  for (const Curve& c : plot.curves) {
    const bool ceiling = c.label == "belady";
    const std::string stroke = ceiling ? "#000" : kColors[color++ % std::size(kColors)];
    const std::string style = fmt::format("stroke=\"{}\" stroke-width=\"{}\" fill=\"none\"", stroke, ceiling ? 3 : 2);
    std::string pts;
    for (auto [x, y] : c.points)
      if (x > 0) pts += fmt::format("{:.1f},{:.1f} ", px(x), py(y));
    s += fmt::format("<polyline points=\"{}\" {}/>\n", pts, style);
    for (auto [x, y] : c.points)
      if (x > 0) s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>\n", px(x), py(y), stroke);
    legend(c.label, style);
  }
  s += "</svg>\n";
  return s;
}

namespace {

// A gnuplot string literal holding `text` as it is: single quotes (no escape
// processing; a quote is doubled), control characters shown as '?' (a newline
// would end the command). The title holds the trace's file name: a name with a
// quote must neither break the plot nor run gnuplot commands (system()).
std::string gnuplot_quote(std::string_view text) {
  std::string out = "'";
  for (char ch : text) {
    if (ch == '\'') out += "''";
    else if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) out += '?';
    else out += ch;
  }
  return out + "'";
}

// The PNG, drawn by gnuplot in a private temporary directory (the data, the
// script and the image), then read back. nullopt or why not.
std::optional<std::string> render_png(const std::string& path, const PlotSpec& plot, std::string* png) {
  char dir_template[] = "/tmp/kvpager-plot-XXXXXX";
  const char* dir = mkdtemp(dir_template);
  if (!dir) return "cannot create a temporary directory for gnuplot";
  const std::string data = std::string(dir) + "/curves.dat", script = std::string(dir) + "/plot.gp",
                    image = std::string(dir) + "/plot.png";
  {
    std::ofstream d(data);
    for (const Curve& c : plot.curves) {
      d << "# " << c.label << "\n";
      for (auto [x, y] : c.points) d << x << ' ' << y * 100 << "\n";
      d << "\n\n";
    }
    std::ofstream g(script);
    g << "set terminal pngcairo size 1000,600 noenhanced\nset output '" << image << "'\n"
      << "set title " << gnuplot_quote(plot.title) << "\nset logscale x\nset xlabel " << gnuplot_quote(plot.x_label)
      << "\n"
      << "set ylabel 'prefix hit rate (%)'\nset key outside right\nset grid\nset yrange [0:*]\nplot ";
    size_t color = 0;
    for (size_t i = 0; i < plot.curves.size(); ++i) {
      const bool ceiling = plot.curves[i].label == "belady";
      g << (i ? ", " : "") << "'" << data << "' index " << i << " with linespoints title " << gnuplot_quote(plot.curves[i].label)
        << " lw " << (ceiling ? 3 : 2) << " lc rgb '"
        << (ceiling ? "#000000" : kColors[color++ % std::size(kColors)]) << "'";
    }
    if (plot.infinite_rate >= 0) g << ", " << plot.infinite_rate * 100 << " title 'infinite' dt 2 lc rgb 'gray'";
    g << "\n";
  }
  const std::string cmd = "gnuplot '" + script + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  {
    std::ifstream in(image, std::ios::binary);
    png->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  for (const std::string& f : {data, script, image}) std::remove(f.c_str());
  rmdir(dir);
  if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 127)
      return fmt::format("{}: PNG plots need gnuplot (apt-get install gnuplot-nox); or write a .svg", path);
    return fmt::format("{}: gnuplot failed (exit {})", path, WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
  }
  if (png->empty()) return fmt::format("{}: gnuplot wrote no image", path);
  return std::nullopt;
}

// ".svg" or ".SVG": file name extensions are compared without case.
bool has_extension(std::string_view path, std::string_view ext) {
  if (path.size() < ext.size()) return false;
  const std::string_view tail = path.substr(path.size() - ext.size());
  return std::equal(tail.begin(), tail.end(), ext.begin(), [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
  });
}
}  // namespace

std::optional<std::string> plot_path_problem(const std::string& path) {
  if (has_extension(path, ".svg") || has_extension(path, ".png")) return std::nullopt;
  return fmt::format("--plot {}: the plot must be a .svg or .png file", path);
}

std::optional<std::string> write_plot(tools::OutputFile& out, const std::string& path, const PlotSpec& plot) {
  if (auto e = plot_path_problem(path)) return e;
  std::string bytes;
  if (has_extension(path, ".svg")) {
    bytes = render_svg(plot);
  } else if (auto e = render_png(path, plot, &bytes)) {
    return e;
  }
  // Never a half-written plot over an old one, never through a stray link
  // (common/output_file.h).
  std::string err;
  if (!out.write(bytes)) return fmt::format("writing {}: {}", out.target(), std::strerror(errno));
  if (!out.commit(&err)) return err;
  return std::nullopt;
}

}  // namespace kvpager::replay
