// The demo workload (`kvpager demo`): agent sessions with long contexts on
// the simulated device, their total KV a multiple of the HBM budget.
//
// Each session is a context of `layers` regions (one per layer's KV). A turn
// on a session launches one kernel per layer that reads every chunk of that
// layer's region (verifying the bytes), spends compute time, then appends:
// it rewrites one chunk per layer with a new version of its pattern. Which
// session runs next follows a seeded schedule: mostly round-robin over an
// active set that drifts, sometimes a random session coming back. With hints
// on, the server (which knows whose tool result arrives next) asks the pager
// to prefetch the next session during the current turn, and parks sessions
// whose next turn is far away, so they may spill to NVMe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <random>
#include <vector>

#include "kvpager/sim/sim_device.h"
#include "kvpager/stats.h"

namespace kvpager::demo {

struct DemoOptions {
  uint32_t sessions = 16;
  uint32_t layers = 4;
  uint32_t turns = 120;  // 0: run until stopped
  uint64_t seed = 42;
  double kv_factor = 4.0;  // total KV = kv_factor × HBM budget
  uint64_t turn_ns = 1'000'000'000;  // virtual compute time per turn
  bool hints = true;
  uint32_t park_horizon = 0;  // park sessions not due within this many turns; 0 = sessions / 2
};

struct DemoResult {
  StatsSnapshot stats;
  uint64_t turns = 0;
  uint64_t total_kv_bytes = 0;
  uint64_t verified_bytes = 0;
  uint64_t corrupt_chunks = 0;
  uint64_t recomputed_chunks = 0;  // dropped by a hint from outside, found as zeros and rewritten
  uint64_t failed_accesses = 0;
};

// Bytes of one KV region (one layer of one session): kv_factor x budget
// split over sessions x layers, in whole chunks, at least one chunk. With
// many sessions and layers the total (region x sessions x layers) is more
// than kv_factor x budget: one chunk each is the least a region takes.
uint64_t region_bytes_for(const DemoOptions& opt, uint64_t hbm_budget, uint64_t chunk_size);

class DemoWorkload {
 public:
  DemoWorkload(SimDevice& dev, const DemoOptions& opt);
  // Builds every session's context (the first prefill). `between`, if given,
  // runs after each session with the number built so far; false stops the
  // prefill there (a stop request: run_turn() must not be called then).
  // Returns whether every session was built.
  bool prefill(const std::function<bool(uint32_t sessions_done)>& between = {});
  // Runs one turn. False once opt.turns have run (never with turns == 0).
  bool run_turn();
  DemoResult result() const;
  const DemoOptions& options() const { return opt_; }
  uint64_t region_bytes() const { return region_bytes_; }
  uint64_t recomputed_chunks() const { return recomputed_chunks_; }

 private:
  struct Session {
    std::vector<RegionId> layers;
    ContextId ctx = kNoContext;
    uint32_t appends = 0;
    bool parked = false;
  };
  uint32_t next_scheduled();
  void fill(uint32_t s, uint32_t layer, uint32_t chunk, std::span<std::byte> out) const;
  void write_chunk(uint32_t s, uint32_t layer, uint32_t chunk);
  void verify_chunk(uint32_t s, uint32_t layer, uint32_t chunk, bool full);

  SimDevice& dev_;
  DemoOptions opt_;
  uint64_t chunk_size_;
  uint64_t region_bytes_;
  uint32_t chunks_per_region_;
  std::vector<Session> sessions_;
  std::vector<uint32_t> versions_;  // [session][layer][chunk]
  std::deque<uint32_t> upcoming_;   // schedule lookahead
  std::mt19937_64 rng_;
  std::vector<uint32_t> active_;
  uint32_t rr_ = 0;
  uint64_t turns_ = 0;
  uint64_t verified_bytes_ = 0;
  uint64_t corrupt_chunks_ = 0;
  uint64_t recomputed_chunks_ = 0;
  uint64_t failed_accesses_ = 0;
  uint64_t reads_ = 0;
  std::vector<std::byte> buf_, expect_;
};

}  // namespace kvpager::demo
