#include "stats_json.h"

namespace kvpager {

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
  const auto moves = stats.find("moves");
  if (moves == stats.end() || !moves->is_object()) return out;
  for (size_t k = 0; k < kNumMoveKinds; ++k) {
    const std::string kind(to_string(static_cast<MoveKind>(k)));
    const auto m = moves->find(kind);
    if (m == moves->end() || !m->is_object()) continue;
    const auto f = m->find("failed");
    if (f == m->end() || !f->is_number_unsigned() || f->get<uint64_t>() == 0) continue;
    out += (out.empty() ? "" : ", ") + kind + " " + std::to_string(f->get<uint64_t>());
  }
  return out;
}

nlohmann::json to_json(const ContextInfo& c) {
  nlohmann::json tiers = nlohmann::json::object();
  for (size_t t = 0; t < kNumTiers; ++t) tiers[std::string(to_string(static_cast<Tier>(t)))] = c.tier_bytes[t];
  return {{"name", c.name},         {"size_bytes", c.size_bytes}, {"tier_bytes", tiers},
          {"regions", c.regions},   {"parked", c.parked},         {"pinned", c.pinned},
          {"last_access_ns", c.last_access_ns}, {"hits", c.hits}};
}

}  // namespace kvpager
