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

}  // namespace kvpager
