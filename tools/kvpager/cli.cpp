#include "cli.h"

#include <dlfcn.h>
#include <signal.h>

#include <atomic>
#include <charconv>
#include <cstdint>
#include <fmt/format.h>
#include <fmt/ranges.h>

namespace kvpager::cli {

ConfigLoader Globals::loader() const {
  ConfigLoader l = ConfigLoader::standard(config_file, {});
  for (size_t i = 0; i < sets.size(); ++i)
    l.set_assignment(sets[i], ConfigSource::kCli, i < typed.size() ? typed[i] : "--set " + sets[i]);
  for (const auto& w : l.warnings()) fmt::print(stderr, "kvpager: warning: {}\n", w);
  return l;
}

std::optional<std::string> pager_setting(const std::string& assignment) {
  const Knob* k = find_knob(assignment.substr(0, assignment.find('=')));
  if (!k || k->name == "runtime_dir") return std::nullopt;
  return fmt::format("{}={}", k->name, assignment.substr(assignment.find('=') + 1));
}

void refuse_settings(const Globals& g, std::string_view command, std::string_view instead) {
  std::vector<std::string> given;
  for (const std::string& s : g.sets)
    if (auto setting = pager_setting(s)) given.push_back(std::move(*setting));
  if (!given.empty())
    throw CLI::ValidationError("settings",
                               fmt::format("{} changes no setting ({}): {}", command, fmt::join(given, " "), instead));
}

// Every setting flag records its value as it is parsed (trigger_on_parse):
// CLI11 otherwise runs option callbacks in the order the options were
// defined, so --set always came before --<knob> whatever the command line
// said. Now the last setting of a knob on the command line wins, however it
// was spelled.
void add_global_options(CLI::App& app, Globals& g) {
  // Two files are not layered (nor is one silently dropped): refused by name.
  app.add_option_function<std::vector<std::string>>(
         "--config",
         [&g](const std::vector<std::string>& v) {
           if (v.size() > 1)
             throw CLI::ValidationError(
                 "--config", fmt::format("given {} times: one configuration file per run (settings on top of it: "
                                         "--set KEY=VALUE or --<knob> VALUE)",
                                         v.size()));
           g.config_file = v.front();
         },
         "TOML configuration file (default: $KVPAGER_CONFIG)")
      ->check(CLI::ExistingFile)
      ->type_name("TEXT")  // CLI11 appends ":FILE" (the check)
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option_function<std::vector<std::string>>(
         "--set",
         [&g](const std::vector<std::string>& v) {
           // Checked as it is read: "--set config show" took "config" and
           // then called "show" an unknown command.
           for (const auto& s : v) {
             if (s.find('=') == std::string::npos)
               throw CLI::ValidationError("--set", fmt::format("'{}' is not KEY=VALUE", s));
             g.add_set(s, "--set " + s);
           }
         },
         "Set any knob: --set KEY=VALUE (repeatable)")
      ->type_name("KEY=VALUE")
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->trigger_on_parse();
  for (const Knob& k : knobs()) {
    std::string name(k.name);
    app.add_option_function<std::string>(
           "--" + k.cli_name(),
           [&g, name, flag = "--" + k.cli_name()](const std::string& v) { g.add_set(name + "=" + v, flag + " " + v); },
           fmt::format("{} [{}] (env {})", k.help, k.range, k.env_name()))
        ->group("Configuration knobs")
        ->type_name("VALUE")
        ->trigger_on_parse();
  }
}

void check_unsigned_options(CLI::App& app) {
  // CLI11 converts "-1" or an out-of-range number for an unsigned option with
  // strtoull, which wraps: refuse anything but a decimal that fits.
  static const CLI::Validator kUnsignedText(
      [](std::string& v) -> std::string {
        uint64_t out = 0;
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
        if (v.empty() || ec == std::errc::result_out_of_range)
          return fmt::format("'{}' is not a whole number from 0 to {}", v, UINT64_MAX);
        if (ec != std::errc() || end != v.data() + v.size()) return fmt::format("'{}' is not a whole number", v);
        return {};
      },
      "", "unsigned");
  for (CLI::Option* opt : app.get_options())
    if (opt->get_type_name().starts_with("UINT")) opt->check(kUnsignedText);
  for (CLI::App* sub : app.get_subcommands({})) check_unsigned_options(*sub);
}

CLI::Validator number_range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& v) -> std::string {
        double x = 0;
        const char* begin = v.data() + (v.starts_with('+') ? 1 : 0);  // from_chars takes no '+'
        auto [end, ec] = std::from_chars(begin, v.data() + v.size(), x);
        if (v.empty() || ec != std::errc() || end != v.data() + v.size() || !(x >= lo && x <= hi))
          return fmt::format("'{}' is not a number from {} to {}", v, lo, hi);
        return {};
      },
      fmt::format("in [{} - {}]", lo, hi), "number_range");
}

CLI::Validator whole_range(uint64_t lo, uint64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& v) -> std::string {
        uint64_t x = 0;
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
        if (v.empty() || ec != std::errc() || end != v.data() + v.size() || x < lo || x > hi)
          return fmt::format("'{}' is not a whole number from {} to {}", v, lo, hi);
        return {};
      },
      fmt::format("in [{} - {}]", lo, hi), "whole_range");
}

void add_global_options_footer(CLI::App& app) {
  static const std::string kFooter =
      "\nAlso accepted, before or after the command word: --config FILE, --set KEY=VALUE and --<knob> VALUE for\n"
      "every configuration knob (kvpager --help lists them; kvpager config show prints the values in effect).";
  for (CLI::App* sub : app.get_subcommands({})) {
    if (sub->get_footer().empty()) sub->footer(kFooter);  // one that says otherwise keeps its own
    add_global_options_footer(*sub);
  }
}

std::string percent(double share) { return fmt::format("{:.1f}%", 100.0 * share); }

std::string accuracy_text(uint64_t used, uint64_t wasted) {
  if (used + wasted == 0) return "-";
  return percent(static_cast<double>(used) / static_cast<double>(used + wasted));
}

std::string duration_text(double s) {
  if (s >= 1.0) return fmt::format("{:.2f} s", s);
  if (s >= 1e-3) return fmt::format("{:.1f} ms", s * 1e3);
  return fmt::format("{:.0f} us", s * 1e6);
}

namespace {
std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) { g_stop_signal.store(sig); }
}  // namespace

void stop_on_signals(bool second_one_ends_it) {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  if (second_one_ends_it) sa.sa_flags = static_cast<int>(SA_RESETHAND);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() { return g_stop_signal.load() != 0; }
int stop_signal() { return g_stop_signal.load(); }

bool gpu_available(std::string* why) {
  auto say = [&](std::string s) {
    if (why) *why = std::move(s);
  };
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    say("no CUDA driver (libcuda.so.1 not found)");
    return false;
  }
  using InitFn = int (*)(unsigned);
  using CountFn = int (*)(int*);
  auto init = reinterpret_cast<InitFn>(dlsym(lib, "cuInit"));
  auto count = reinterpret_cast<CountFn>(dlsym(lib, "cuDeviceGetCount"));
  int n = 0;
  bool found = init && count && init(0) == 0 && count(&n) == 0 && n > 0;
  say(found ? fmt::format("{} CUDA device(s)", n) : "a CUDA driver but no usable device");
  dlclose(lib);
  return found;
}

}  // namespace kvpager::cli
