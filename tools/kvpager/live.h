// Shared by the live-control subcommands (status, top, tune, hint): finding
// the pagers that serve in the runtime directory, and reading their replies.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.h"
#include "control/client.h"
#include "control/runtime_dir.h"

namespace kvpager::cli {

struct LivePagers {
  std::string dir;
  std::string note;  // the runtime directory is a fallback: why
  std::vector<control::Endpoint> pagers;
  std::vector<std::string> notes;  // stale sockets removed, problems: for stderr
};

// The pagers serving in the configured runtime directory. Sockets of dead
// processes are removed on the way (and listed in notes).
LivePagers find_live_pagers(const Globals& g);
void print_notes(const LivePagers& live);

// "no live pagers in DIR" (+ the fallback note); "none of the N pager(s) in
// DIR answered" when some were found (status and top, when none replied).
std::string nobody_text(const LivePagers& live);

// The one pager a command acts on: --pid, else the only one serving.
// Throws RuntimeError (none) or CLI::ValidationError (several: choose).
control::Endpoint choose_one(const LivePagers& live, std::optional<pid_t> pid, std::string_view what);

// Replies are read defensively: j[key] if it is a string, else "";
// j[key] if it is an object or array, else null (which reads as empty).
const std::string& text(const nlohmann::json& j, const char* key);
const nlohmann::json& field(const nlohmann::json& j, const char* key);

// A stats reply, as one row of `status` / `top`.
struct PagerRow {
  pid_t pid = 0;
  std::string command;
  uint64_t budget = 0;
  uint64_t hbm = 0, host = 0, nvme = 0;
  double hit_rate = 0, prefetch_accuracy = 0;
  uint64_t stall_ns = 0;
  uint64_t accesses = 0, faults = 0;
};
PagerRow row_from(const nlohmann::json& stats_reply);

// Failures the user should hear about, as "pid N: why" on stderr. Replies of
// pagers that exited meanwhile are dropped (and their sockets removed if
// stale). Returns how many failed for another reason.
// A socket that gave no answer because nothing listens on it (kGone):
// removed if it is stale, with a line that says so; "" if it was left.
std::string forget_gone(const control::Endpoint& e);
size_t report_failures(const std::vector<control::Endpoint>& pagers, const std::vector<control::Reply>& replies);

}  // namespace kvpager::cli
