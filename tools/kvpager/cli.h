// Shared plumbing of the `kvpager` subcommands: global options (config file,
// per-knob flags, --set), exit codes, and how errors reach the user.
//
// Exit status: 0 success, 2 bad usage or configuration, 1 runtime failure.
// Each subcommand lives in its own cmd_*.cpp and registers itself with an
// add_*_command(app, globals) function called from main.cpp.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kvpager/config_loader.h"

namespace kvpager::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;
// What a program that starts another says when it could not (env(1),
// nohup(1), timeout(1)): found but not executable, or not found.
inline constexpr int kExitCannotExecute = 126;
inline constexpr int kExitNotFound = 127;

// A failure while doing the work (exit 1). Bad usage or configuration throws
// ConfigError or CLI::ValidationError instead (exit 2).
class RuntimeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Globals {
  std::string config_file;        // --config FILE
  std::vector<std::string> sets;  // KEY=VALUE from --set and the per-knob flags, in order
  std::vector<std::string> typed; // for each, the flag as the user typed it (named in errors)
  int exit_code = kExitOk;        // set by a subcommand that wants a non-zero status

  void add_set(std::string assignment, std::string as_typed) {
    sets.push_back(std::move(assignment));
    typed.push_back(std::move(as_typed));
  }

  // defaults < file < environment < command line. Prints the loader's
  // warnings (unknown KVPAGER_* variables) to stderr.
  ConfigLoader loader() const;
  // The same, validated.
  Config config() const { return loader().finish(); }
};

// "name=value" when `assignment` (KEY=VALUE from --set or a --<knob> flag)
// sets a pager's knob; nullopt for runtime_dir, which says where the pagers
// are, and for what is no knob.
std::optional<std::string> pager_setting(const std::string& assignment);
// For a command that changes no setting and only looks for pagers (hint,
// status, top): throws CLI::ValidationError naming the knobs given on the
// command line, which it would otherwise ignore, and `instead`. runtime_dir
// (where the pagers are) is allowed.
void refuse_settings(const Globals& g, std::string_view command, std::string_view instead);

// --config, --set and one --<knob> flag per knob, on `app` (inherited by every
// subcommand through fallthrough).
void add_global_options(CLI::App& app, Globals& g);
// Every unsigned option of app and its subcommands refuses "-1" and numbers
// beyond 64 bits (CLI11 would wrap them). Call after all options exist.
void check_unsigned_options(CLI::App& app);
// Every subcommand's --help ends by naming the global options it accepts
// (CLI11 lists only a subcommand's own). Call after all subcommands exist.
void add_global_options_footer(CLI::App& app);

void add_config_command(CLI::App& app, Globals& g);
void add_demo_command(CLI::App& app, Globals& g);
void add_replay_command(CLI::App& app, Globals& g);
void add_store_command(CLI::App& app, Globals& g);
// The token filesystem (issue 5): mount, umount.
void add_mount_commands(CLI::App& app, Globals& g);
// Live control (issue 4): status, top, tune, hint, run.
void add_status_commands(CLI::App& app, Globals& g);
void add_tune_commands(CLI::App& app, Globals& g);
void add_run_command(CLI::App& app, Globals& g);
inline void add_control_commands(CLI::App& app, Globals& g) {
  add_status_commands(app, g);
  add_tune_commands(app, g);
  add_run_command(app, g);
}

// A number from lo to hi, for floating-point options: CLI::Range lets NaN
// through (every comparison with it is false) and calls "abc" out of range.
CLI::Validator number_range(double lo, double hi);

// A whole number from lo to hi, for integer options: CLI::Range called
// "abc", "1.5" and "1e2" all "not in range".
CLI::Validator whole_range(uint64_t lo, uint64_t hi);

// For --pid options: a process id, 1 and up.
inline const CLI::Validator kPidRange = whole_range(1, std::numeric_limits<int32_t>::max());

// A share (0..1) as a percentage with one decimal: 0.125 -> "12.5%".
std::string percent(double share);
// A prefetcher's accuracy, used / (used + wasted); "-" while neither is
// known (it issued nothing, or nothing it issued was judged yet).
std::string accuracy_text(uint64_t used_bytes, uint64_t wasted_bytes);
// A duration in the unit that reads best: "1.25 s", "12.3 ms", "40 us".
std::string duration_text(double seconds);
inline std::string duration_text_ns(uint64_t ns) { return duration_text(static_cast<double>(ns) / 1e9); }

// SIGINT and SIGTERM set a flag instead of ending the process, so a long
// running subcommand (demo, top) can leave cleanly: restore the terminal,
// remove its socket and its spilled objects, print what it did. With
// second_one_ends_it, a second signal ends the process at once (for work
// that may take a while to reach a stop; not for one that must restore the
// terminal). Idempotent.
void stop_on_signals(bool second_one_ends_it = false);
// Whether one of them arrived since stop_on_signals(), and which (0: none).
bool stop_requested();
int stop_signal();
// The exit status of a run that signal cut short, as a shell reports it: 128 + the signal.
inline int stopped_exit_code() { return 128 + stop_signal(); }

// Whether a CUDA device is usable here: loads libcuda.so.1 (if present) and
// asks it. Never links against CUDA. `why` says what was found.
bool gpu_available(std::string* why = nullptr);

}  // namespace kvpager::cli
