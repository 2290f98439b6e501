// kvpager config show [--json]: the effective configuration and where each
// value came from. kvpager config knobs [--markdown]: every knob, documented.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "cli.h"

namespace kvpager::cli {

namespace {

void show(const Globals& g, bool json) {
  ConfigLoader loader = g.loader();
  Config cfg = loader.finish();
  if (json) {
    nlohmann::json out = nlohmann::json::object();
    for (const Knob& k : knobs()) {
      const KnobOrigin& o = loader.origin(k);
      out[std::string(k.name)] = {{"value", k.format(cfg)},
                                  {"source", std::string(to_string(o.source))},
                                  {"from", o.detail},
                                  {"live", k.live}};
    }
    fmt::print("{}\n", out.dump(2));
    return;
  }
  size_t width = 0;
  for (const Knob& k : knobs()) width = std::max(width, k.name.size());
  for (const Knob& k : knobs()) {
    const KnobOrigin& o = loader.origin(k);
    std::string value = k.format(cfg);
    if (value.empty()) value = "\"\"";
    std::string from = o.source == ConfigSource::kDefault ? "default" : fmt::format("{} ({})", to_string(o.source), o.detail);
    fmt::print("{:<{}}  {:<14} {}\n", k.name, width, value, from);
  }
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
