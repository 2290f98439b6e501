// One snapshot of everything the pager counts. Served by the CLI, the control
// socket and the token filesystem.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "kvpager/types.h"

namespace kvpager {

struct TierStats {
  uint64_t capacity_bytes = 0;  // budget / capacity (0 = unlimited)
  // Whole chunks (chunk_size each), the unit tier memory is handed out in.
  uint64_t resident_bytes = 0;  // chunks whose bytes are in this tier (incl. moving out)
  uint64_t inbound_bytes = 0;   // chunks on their way in
  uint64_t chunks = 0;          // chunks resident
};

struct PrefetcherStats {
  std::string name;
  uint64_t issued_bytes = 0;  // staged into HBM
  uint64_t used_bytes = 0;    // accessed before leaving HBM
  uint64_t wasted_bytes = 0;  // left HBM (or were dropped) unused
  uint64_t throttle_events = 0;
  bool throttled = false;
  double accuracy() const {
    uint64_t judged = used_bytes + wasted_bytes;
    return judged ? static_cast<double>(used_bytes) / static_cast<double>(judged) : 0.0;
  }
};

struct StatsSnapshot {
  uint64_t now_ns = 0;
  std::array<TierStats, 3> tiers{};  // indexed by index(Tier): hbm, host, nvme
  uint64_t accesses = 0;
  uint64_t hits = 0;    // access found the chunk resting in HBM
  // An access had to wait for the chunk; or a live program's reference
  // (Pager::reference) found it outside HBM: the kernel read it remotely, and
  // nothing waited (stall_ns does not grow).
  uint64_t faults = 0;
  // Where faults were served from: host, nvme, unpopulated (first touch), or
  // hbm (the chunk was on its way: a late prefetch).
  std::array<uint64_t, kNumTiers> faults_from{};
  std::array<uint64_t, kNumMoveKinds> moves{};       // completed moves per kind
  std::array<uint64_t, kNumMoveKinds> move_bytes{};  // bytes per kind (= per link direction)
  uint64_t move_failures = 0;  // moves that failed (Pager::stats: the sum of the next)
  std::array<uint64_t, kNumMoveKinds> move_failures_by_kind{};  // the same, per kind of move
  uint64_t stall_ns = 0;  // time accesses spent waiting for chunks
  uint64_t evictions = 0; // demotes and spills chosen by the budget controller
  uint64_t prefetch_dropped = 0;  // prefetch requests dropped (no room, queue full)
  bool spill_disabled = false;    // the NVMe tier refused a write (no space): spills wait until it frees a chunk
  uint32_t regions = 0;
  uint32_t contexts = 0;
  std::vector<PrefetcherStats> prefetchers;

  double hit_rate() const { return accesses ? static_cast<double>(hits) / static_cast<double>(accesses) : 0.0; }
  // Used / (used + wasted) over every prefetcher.
  double prefetch_accuracy() const;
  uint64_t total_moves() const;
};

}  // namespace kvpager
