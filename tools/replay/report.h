// What `kvpager replay` prints: JSON for every result, capacity sweeps and
// their hit-rate curves as a picture (SVG written directly, PNG via gnuplot).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "replay.h"

namespace kvpager::tools {
class OutputFile;  // common/output_file.h
}

namespace kvpager::replay {

nlohmann::json to_json(const RunResult& r, uint32_t block_tokens);

// --sweep TIER=LO..HI:STEPS: STEPS capacities of TIER from LO to HI,
// geometrically spaced (LO > 0), each in bytes or tokens.
struct SweepSpec {
  size_t tier = 0;  // index(Tier)
  uint64_t lo_tokens = 0, hi_tokens = 0;
  uint32_t steps = 0;
  // The capacities the replay really runs: each point rounded down to whole
  // blocks of block_tokens (a tier holds whole blocks), duplicates dropped,
  // ascending. Fewer than `steps` when the range is narrow for the block.
  std::vector<uint64_t> points_tokens(uint32_t block_tokens) const;
};
std::optional<SweepSpec> parse_sweep(std::string_view s, uint64_t kv_bytes_per_token, std::string* why);

struct Curve {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (capacity in tokens, hit rate 0..1)
};

struct PlotSpec {
  std::string title;
  std::string x_label;
  std::vector<Curve> curves;  // a curve labelled "belady" is drawn as the ceiling
  double infinite_rate = -1;  // a horizontal line when >= 0
};

// The curves as an SVG document (log-scale x axis).
std::string render_svg(const PlotSpec& plot);
// Why `path` cannot name a plot (it must end in .svg or .png), or nullopt.
std::optional<std::string> plot_path_problem(const std::string& path);
// Writes FILE.svg directly or FILE.png through gnuplot into `out`, opened on
// `path` (before the work, so a path that cannot be written fails at once),
// and commits it. Returns the problem, or nullopt.
std::optional<std::string> write_plot(tools::OutputFile& out, const std::string& path, const PlotSpec& plot);

}  // namespace kvpager::replay
