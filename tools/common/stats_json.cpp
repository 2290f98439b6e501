#include "stats_json.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>

#include "kvpager/config.h"

namespace kvpager {

namespace {

// A counter read back from JSON: j[key] as a non-negative integer, else 0.
uint64_t counter(const nlohmann::json& j, const std::string& key) {
  const auto it = j.is_object() ? j.find(key) : j.end();
  if (it == j.end() || !it->is_number_integer()) return 0;
  return it->is_number_unsigned() ? it->get<uint64_t>() : static_cast<uint64_t>(std::max<int64_t>(0, it->get<int64_t>()));
}

// stats["moves"][kind] (an empty object when absent).
const nlohmann::json& moves_of(const nlohmann::json& stats, const std::string& kind) {
  static const nlohmann::json kNone = nlohmann::json::object();
  const auto moves = stats.is_object() ? stats.find("moves") : stats.end();
  if (moves == stats.end() || !moves->is_object()) return kNone;
  const auto m = moves->find(kind);
  return m == moves->end() ? kNone : *m;
}

}  // namespace

nlohmann::json to_json(const StatsSnapshot& s) {
  using nlohmann::json;
  json tiers = json::object();
  for (Tier t : kStorageTiers) {
    const TierStats& ts = s.tiers[index(t)];
    tiers[std::string(to_string(t))] = {{"capacity_bytes", ts.capacity_bytes},
                                        {"resident_bytes", ts.resident_bytes},
                                        {"inbound_bytes", ts.inbound_bytes},
                                        {"chunks", ts.chunks}};
  }
  json faults_from = json::object();
  for (size_t t = 0; t < kNumTiers; ++t) faults_from[std::string(to_string(static_cast<Tier>(t)))] = s.faults_from[t];
  json moves = json::object();
  for (size_t k = 0; k < kNumMoveKinds; ++k) {
    moves[std::string(to_string(static_cast<MoveKind>(k)))] = {
        {"count", s.moves[k]}, {"bytes", s.move_bytes[k]}, {"failed", s.move_failures_by_kind[k]}};
  }
  json prefetchers = json::array();
  for (const auto& p : s.prefetchers) {
    prefetchers.push_back({{"name", p.name},
                           {"issued_bytes", p.issued_bytes},
                           {"used_bytes", p.used_bytes},
                           {"wasted_bytes", p.wasted_bytes},
                           {"accuracy", p.accuracy()},
                           {"throttled", p.throttled},
                           {"throttle_events", p.throttle_events}});
  }
  return {{"now_ns", s.now_ns},
          {"tiers", tiers},
          {"accesses", s.accesses},
          {"hits", s.hits},
          {"faults", s.faults},
          {"hit_rate", s.hit_rate()},
          {"faults_from", faults_from},
          {"moves", moves},
          {"move_failures", s.move_failures},
          {"stall_ns", s.stall_ns},
          {"evictions", s.evictions},
          {"prefetch_dropped", s.prefetch_dropped},
          {"prefetch_accuracy", s.prefetch_accuracy()},
          {"prefetchers", prefetchers},
          {"spill_disabled", s.spill_disabled},
          {"regions", s.regions},
          {"contexts", s.contexts}};
}

std::string failed_moves_by_kind(const nlohmann::json& stats) {
  std::string out;
  for (size_t k = 0; k < kNumMoveKinds; ++k) {
    const std::string kind(to_string(static_cast<MoveKind>(k)));
    if (const uint64_t n = counter(moves_of(stats, kind), "failed"))
      out += (out.empty() ? "" : ", ") + kind + " " + std::to_string(n);
  }
  return out;
}

std::string mover_speed(const nlohmann::json& stats, const nlohmann::json& interposer) {
  std::string out;
  for (const MoveKind kind : {MoveKind::kPromote, MoveKind::kDemote}) {
    const std::string name(to_string(kind));
    const uint64_t ns = counter(interposer, "mover." + name + "_ns");
    const uint64_t batches = counter(interposer, "mover." + name + "_batches");
    const uint64_t moved = counter(moves_of(stats, name), "bytes");
    if (ns == 0 || batches == 0 || moved == 0) continue;
    out += fmt::format("{}{}s {} at {:.1f} GB/s in flight ({} batches)", out.empty() ? "" : "; ", name,
                       human_bytes(static_cast<double>(moved)), static_cast<double>(moved) / static_cast<double>(ns),
                       batches);
  }
  if (!out.empty())
    out += fmt::format("; pager thread inside advise/prefetch calls {:.2f} s",
                       static_cast<double>(counter(interposer, "mover.issue_ns")) / 1e9);
  return out;
}

nlohmann::json to_json(const ContextInfo& c) {
  nlohmann::json tiers = nlohmann::json::object();
  for (size_t t = 0; t < kNumTiers; ++t) tiers[std::string(to_string(static_cast<Tier>(t)))] = c.tier_bytes[t];
  return {{"name", c.name},         {"size_bytes", c.size_bytes}, {"tier_bytes", tiers},
          {"regions", c.regions},   {"parked", c.parked},         {"pinned", c.pinned},
          {"last_access_ns", c.last_access_ns}, {"hits", c.hits}, {"dropped", c.dropped}};
}

}  // namespace kvpager
