// JSON forms of the pager's snapshots, shared by `kvpager demo --json`, the
// control socket and the token filesystem.
#pragma once

#include <nlohmann/json.hpp>

#include "kvpager/pager.h"
#include "kvpager/stats.h"

namespace kvpager {

nlohmann::json to_json(const StatsSnapshot& s);
nlohmann::json to_json(const ContextInfo& c);

}  // namespace kvpager
