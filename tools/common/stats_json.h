// JSON forms of the pager's snapshots, shared by `kvpager demo --json`, the
// control socket and the token filesystem.
#pragma once

#include <nlohmann/json.hpp>

#include "kvpager/pager.h"
#include "kvpager/stats.h"

namespace kvpager {

nlohmann::json to_json(const StatsSnapshot& s);
nlohmann::json to_json(const ContextInfo& c);
// Which moves failed, from to_json(StatsSnapshot)'s "moves": "demote 3, spill 1"
// in the order of MoveKind; "" when none did (or the JSON has no counts).
std::string failed_moves_by_kind(const nlohmann::json& stats);
// How fast the CUDA mover moved, from the stats JSON (bytes per kind) and
// libkvpager.so's counters (mover.promote_ns/_batches, demote_ns/_batches,
// issue_ns): "promotes 38.15 GiB at 21.3 GB/s in flight (812 batches);
// demotes ...; pager thread inside advise/prefetch calls 1.20 s"; "" when
// nothing was timed.
std::string mover_speed(const nlohmann::json& stats, const nlohmann::json& interposer);

}  // namespace kvpager
