// kvpager tune [--pid N | --all] KEY=VALUE...: change live tunables of
// running pagers (all or none per pager, validated as at start-up).
// kvpager hint [--pid N] HINT CONTEXT: prefetch / park / drop / pin / unpin /
// publish a context of a running pager.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "kvpager/config_loader.h"
#include "live.h"

namespace kvpager::cli {

namespace {

using nlohmann::json;

struct TuneArgs {
  std::optional<pid_t> pid;
  bool all = false;
  std::vector<std::string> assignments;
};

// Exit status for a pager's refusal: a bad knob or value is a usage error.
int exit_for(control::Errc e) {
  return e == control::Errc::kRefused || e == control::Errc::kBadRequest ? kExitUsage : kExitRuntime;
}

// `kvpager tune --prefetch-depth 4` and `--set prefetch_depth=4` mean what
// `prefetch_depth=4` means: a knob given on tune's command line is meant for
// the pagers (ignoring it would be silent; one that cannot change live is
// refused below, naming it). Only runtime_dir, which says where the pagers
// are, configures this client.
std::vector<std::string> take_knob_flags(Globals& g) {
  std::vector<std::string> settings, sets, typed;
  for (size_t i = 0; i < g.sets.size(); ++i) {
    const std::string& s = g.sets[i];
    if (auto setting = pager_setting(s)) {
      settings.push_back(std::move(*setting));
    } else {
      sets.push_back(s);
      typed.push_back(i < g.typed.size() ? g.typed[i] : s);
    }
  }
  g.sets = std::move(sets);
  g.typed = std::move(typed);
  return settings;
}

// `kvpager tune --config FILE`: the live knobs the file sets, as KEY=VALUE
// (before the command line's, which win). Its start-up knobs cannot change
// in a running pager: named on stderr and left alone, so a pager's own
// start-up file can be re-applied after an edit. Only an explicit --config:
// $KVPAGER_CONFIG says how pagers start, not what to change in running ones.
std::vector<std::string> take_config_file(Globals& g) {
  std::vector<std::string> settings, skipped;
  if (g.config_file.empty()) return settings;
  ConfigLoader file;
  file.load_file(g.config_file);  // ConfigError naming FILE:LINE
  for (const Knob& k : knobs()) {
    if (file.origin(k).source != ConfigSource::kFile) continue;
    if (k.live) settings.push_back(fmt::format("{}={}", k.name, k.format(file.config())));
    else if (k.name != "runtime_dir") skipped.push_back(std::string(k.name));
  }
  if (!skipped.empty())
    fmt::print(stderr, "kvpager: {}: not changed in running pagers (start-up knobs): {}\n", g.config_file,
               fmt::join(skipped, ", "));
  return settings;
}

void tune(Globals& g, TuneArgs a) {
  std::vector<std::string> flags = take_knob_flags(g);
  a.assignments.insert(a.assignments.begin(), flags.begin(), flags.end());
  std::vector<std::string> from_file = take_config_file(g);
  a.assignments.insert(a.assignments.begin(), from_file.begin(), from_file.end());
  if (a.assignments.empty())
    throw CLI::ValidationError("settings", "nothing to change: give KEY=VALUE (or --<knob> VALUE) for a live knob (kvpager config knobs)");
  // What can be known without a pager is checked first: the knob exists, may
  // change live, and the value parses (a pager still checks it against its
  // own configuration, e.g. the watermarks together).
  ConfigLoader scratch;
  for (const auto& s : a.assignments) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0)
      throw CLI::ValidationError("KEY=VALUE", fmt::format("'{}' is not KEY=VALUE", s));
    const Knob* k = find_knob(s.substr(0, eq));
    if (!k)
      throw ConfigError(fmt::format("{}: unknown knob '{}' (live knobs: {})", s, s.substr(0, eq),
                                    control::live_knob_names()));
    scratch.set_assignment(s, ConfigSource::kCli, s);  // a bad value: ConfigError naming it
    if (!k->live)
      throw ConfigError(fmt::format("{}: {} cannot change while a pager runs (set it at start-up)", s, s.substr(0, eq)));
  }
  LivePagers live = find_live_pagers(g);
  print_notes(live);
  std::vector<control::Endpoint> targets;
  if (a.all) {
    if (live.pagers.empty()) throw RuntimeError(nobody_text(live));
    targets = live.pagers;
  } else {
    targets.push_back(choose_one(live, a.pid, " or use --all"));
  }
  json request = {{"op", "set"}, {"set", a.assignments}};
  auto replies = control::call_all(targets, request, control::kDefaultTimeout);
  int worst = kExitOk;
  size_t took = 0;
  for (size_t i = 0; i < replies.size(); ++i) {
    const auto& r = replies[i];
    if (!r.ok()) {
      std::fflush(stdout);  // the lines stay in pid order on a terminal
      fmt::print(stderr, "kvpager: pid {}: {}\n", targets[i].pid, r.error);
      worst = std::max(worst, exit_for(r.code));
      continue;
    }
    ++took;
    for (const auto& c : field(r.body, "changes")) {
      fmt::print("pid {}: {} {} \u2192 {}\n", targets[i].pid, text(c, "knob"), text(c, "old"),
                 text(c, "new"));
    }
  }
  if (a.all && took == targets.size()) {
    fmt::print("applied on {} of {} pager(s)\n", took, targets.size());
  } else if (a.all) {
    std::fflush(stdout);
    fmt::print(stderr, "kvpager: applied on {} of {} pager(s); the others did not take it (above)\n", took,
               targets.size());
  }
  g.exit_code = worst;
}

constexpr std::chrono::milliseconds kPublishTimeout{10 * 60 * 1000};

struct HintArgs {
  std::optional<pid_t> pid;
  std::string hint;
  std::string context;
};

void hint(Globals& g, const HintArgs& a) {
  if (a.context.empty()) throw CLI::ValidationError("context", "a context name (kvpager status --pid N lists them)");
  // A setting given here would be silently ignored: hints change no knob.
  // (--config and --runtime-dir still say where the pagers are.)
  refuse_settings(g, "hint", "use kvpager tune");
  LivePagers live = find_live_pagers(g);
  print_notes(live);
  control::Endpoint e = choose_one(live, a.pid, "");
  // Publishing writes the whole context to the store: give it the time a
  // large one takes (the pager carries it out once it has taken it).
  const bool publish = a.hint == "publish";
  control::Reply r = control::call(e.socket, {{"op", "hint"}, {"context", a.context}, {"hint", a.hint}},
                                   publish ? kPublishTimeout : control::kDefaultTimeout);
  if (!r.ok()) {
    fmt::print(stderr, "kvpager: pid {}: {}\n", e.pid, r.error);
    g.exit_code = exit_for(r.code);
    return;
  }
  if (publish)
    fmt::print("pid {}: published {} ({} bytes in {} chunks, generation {}) into {}\n", e.pid, a.context,
               r.body.value("bytes", uint64_t{0}), r.body.value("chunks", uint64_t{0}),
               r.body.value("generation", std::string("?")), r.body.value("store", std::string("?")));
  else
    fmt::print("pid {}: {} {}\n", e.pid, a.hint, a.context);
  if (r.body.contains("note")) {
    std::fflush(stdout);
    fmt::print(stderr, "kvpager: pid {}: {}\n", e.pid, r.body.value("note", std::string()));
  }
}

}  // namespace

void add_tune_commands(CLI::App& app, Globals& g) {
  static TuneArgs t;
  auto* tune_cmd = app.add_subcommand(
      "tune",
      "Change tunables of running pagers without a restart: KEY=VALUE for any live knob (kvpager config knobs).\n"
      "Several in one call are applied together or not at all on each pager (with --all, each pager decides:\n"
      "the output ends with how many took them); a refused value leaves the old one and says why.\n"
      "Prints old \u2192 new. Example: kvpager tune prefetchers=correlation prefetch_depth=4\n"
      "(or: kvpager tune --prefetchers correlation --prefetch-depth 4). With --config FILE, the live knobs\n"
      "the file sets are applied too (the command line's win); its start-up knobs are named and left alone.");
  auto* pid_opt = tune_cmd->add_option("--pid", t.pid, "The pager to change (default: the only one running)")
                      ->check(kPidRange);
  auto* all_opt = tune_cmd->add_flag("--all", t.all, "Change every live pager");
  pid_opt->excludes(all_opt);
  tune_cmd->add_option("settings", t.assignments,
                       "KEY=VALUE ... (a live knob's --<knob> VALUE or --set KEY=VALUE means the same here)");
  tune_cmd->callback([&g] { tune(g, t); });

  static HintArgs h;
  auto* hint_cmd = app.add_subcommand(
      "hint", "Tell a running pager about a context: prefetch (stage it into HBM; with the hint prefetcher),\n"
              "park (demote it, let it spill), drop (discard its bytes), pin / unpin (never evict it; pinned\n"
              "contexts may hold at most low_watermark of hbm_budget, so that other accesses find room; a pinned\n"
              "context is neither parked nor dropped), publish (write its current bytes into the token store\n"
              "under its name: kvpager store ls and kvpager-fs show it; publish a context the program is not\n"
              "writing, e.g. after park). A hint that cannot take effect is refused with the reason and changes nothing; a prefetch "
              "while the hint prefetcher is off still ends a park, and says that nothing is staged.");
  hint_cmd->add_option("--pid", h.pid, "The pager (default: the only one running)")->check(kPidRange);
  hint_cmd->add_option("hint", h.hint, "prefetch, park, drop, pin, unpin or publish")
      ->required()
      ->check(CLI::IsMember({"prefetch", "park", "drop", "pin", "unpin", "publish"}));
  hint_cmd->add_option("context", h.context, "Context name (kvpager status --pid N lists them)")->required();
  hint_cmd->footer(
      "\nA hint changes no setting: --set and --<knob> are refused here (kvpager tune changes knobs);\n"
      "--config FILE and --runtime-dir say where the pagers are (runtime_dir).");
  hint_cmd->callback([&g] { hint(g, h); });
}

}  // namespace kvpager::cli
