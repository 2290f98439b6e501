// kvpager config show [--json]: the effective configuration and where each
// value came from. kvpager config knobs [--markdown]: every knob, documented.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <vector>

#include "cli.h"
#include "control/runtime_dir.h"

namespace kvpager::cli {

namespace {

// What a value that means "work it out" stands for: 0 of a knob whose range
// says "0 (auto)" or "0 (unlimited)", the empty store_dir and runtime_dir
// (the directories they resolve to), an hbm_budget the pager rounds down to
// whole chunks. "" for an ordinary value.
std::string meaning(const Knob& k, const Config& cfg, const std::string& value) {
  if (value == "0" && k.range.starts_with("0 (")) return std::string(k.range.substr(3, k.range.find(')') - 3));
  if (k.name == "hbm_budget" && cfg.hbm_budget % cfg.chunk_size != 0)
    return fmt::format("-> {}: whole chunks of chunk_size {}",
                       format_bytes(std::max(cfg.chunk_size, cfg.hbm_budget / cfg.chunk_size * cfg.chunk_size)),
                       format_bytes(cfg.chunk_size));
  if (k.name == "store_dir" && value.empty()) return "-> " + cfg.effective_store_dir();
  if (k.name == "runtime_dir" && value.empty()) {
    control::RuntimeDir rd = control::resolve_runtime_dir(cfg, control::DirUse::kClient);
    return "-> " + rd.path;
  }
  return {};
}

void show(const Globals& g, bool json) {
  ConfigLoader loader = g.loader();
  Config cfg = loader.finish();
  if (json) {
    nlohmann::json out = nlohmann::json::object();
    for (const Knob& k : knobs()) {
      const KnobOrigin& o = loader.origin(k);
      const std::string value = k.format(cfg);
      out[std::string(k.name)] = {{"value", value},
                                  {"source", std::string(to_string(o.source))},
                                  {"from", o.detail},
                                  {"live", k.live}};
      if (std::string m = meaning(k, cfg, value); !m.empty()) out[std::string(k.name)]["means"] = m;
    }
    fmt::print("{}\n", out.dump(2));
    return;
  }
  struct Row {
    std::string_view name;
    std::string value, from;
  };
  std::vector<Row> rows;
  size_t name_w = 0, value_w = 14;
  for (const Knob& k : knobs()) {
    const KnobOrigin& o = loader.origin(k);
    std::string value = k.format(cfg);
    const std::string m = meaning(k, cfg, value);
    if (value.empty()) value = "\"\"";
    if (!m.empty()) value += " (" + m + ")";
    std::string from = o.source == ConfigSource::kDefault ? "default" : fmt::format("{} ({})", to_string(o.source), o.detail);
    name_w = std::max(name_w, k.name.size());
    value_w = std::max(value_w, value.size());
    rows.push_back({k.name, std::move(value), std::move(from)});
  }
  for (const Row& r : rows) fmt::print("{:<{}}  {:<{}} {}\n", r.name, name_w, r.value, value_w, r.from);
}

void list_knobs(bool markdown) {
  Config defaults;
  if (markdown) {
    fmt::print("| knob (TOML key / --set) | environment | flag | default | allowed | live | what it does |\n");
    fmt::print("| --- | --- | --- | --- | --- | --- | --- |\n");
  }
  for (const Knob& k : knobs()) {
    std::string def = k.format(defaults);
    if (def.empty()) def = "\"\"";
    if (markdown) {
      fmt::print("| `{}` | `{}` | `--{}` | `{}` | {} | {} | {} |\n", k.name, k.env_name(), k.cli_name(), def, k.range,
                 k.live ? "yes" : "no", k.help);
    } else {
      fmt::print("{}\n  env {}, flag --{}, default {}, allowed {}{}\n  {}\n", k.name, k.env_name(), k.cli_name(), def,
                 k.range, k.live ? ", live" : "", k.help);
    }
  }
}

}  // namespace

void add_config_command(CLI::App& app, Globals& g) {
  auto* cmd = app.add_subcommand("config", "Show the effective configuration or document the knobs");
  cmd->require_subcommand(1);
  auto* show_cmd = cmd->add_subcommand("show", "The effective configuration and where each value came from");
  static bool json = false;
  show_cmd->add_flag("--json", json, "Print JSON");
  show_cmd->callback([&g] { show(g, json); });
  auto* knobs_cmd = cmd->add_subcommand("knobs", "Every knob: names, default, allowed values");
  static bool markdown = false;
  knobs_cmd->add_flag("--markdown", markdown, "Print a Markdown table (as in the README)");
  knobs_cmd->callback([] { list_knobs(markdown); });
}

}  // namespace kvpager::cli
