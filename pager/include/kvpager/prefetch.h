// Prefetchers: heuristics that stage chunks into HBM ahead of use. They see
// events and ask the pager, through a PrefetchSink, to stage chunks; the
// pager (the mechanism) decides whether there is room, attributes every staged
// chunk to its prefetcher, counts issued / used / wasted bytes and throttles a
// prefetcher whose waste ratio passes the configured ceiling. Heuristics stay
// out of the mechanism, as in the UVM driver's uvm_perf_prefetch.c.
//
// Events delivered: faults, prefetch hits (the first access to a chunk a
// prefetcher staged: the readahead marker of Linux, so a stream keeps its
// window ahead without every hit paying for a call), launches and hints. Plain
// hits on resident chunks are not delivered (they are the hot path: the pager
// only touches the policy); move completions drive the mechanism (queued
// prefetches are issued as room appears) rather than the heuristics.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "kvpager/config.h"
#include "kvpager/region.h"
#include "kvpager/types.h"

namespace kvpager {

// An access that had to wait (a fault), or the first use of a chunk a
// prefetcher staged (a prefetch hit: the stream is still going).
struct FaultEvent {
  const Region* region;
  uint32_t index;
  bool prefetch_hit;
};

// A kernel launch and the regions its parameters point into.
struct LaunchEvent {
  uint64_t signature;  // kernel and region set, hashed
  std::span<const RegionId> regions;
};

struct HintEvent {
  ContextId ctx;
  HintKind kind;
};

// A turn of a context began (a request of it arrived) or ended (it finished
// and the context went idle). Drives prestaging. `kvpager replay` emits these;
// the pager does not yet (it has no notion of turns without engine hints).
struct TurnEvent {
  ContextId ctx;
  uint64_t now_ns;
  bool start;
};

class PrefetchSink {
 public:
  virtual ~PrefetchSink() = default;
  // Stage chunks [first, first + count) of a region into HBM. Chunks already
  // there, on their way or never populated are skipped. Returns chunks queued.
  virtual uint32_t prefetch(RegionId region, uint32_t first, uint32_t count) = 0;
  virtual uint32_t prefetch_region(RegionId region) = 0;
  virtual uint32_t prefetch_context(ContextId ctx) = 0;
  // An instruction (a prefetch hint), not a guess: stage the whole context,
  // making room for it as a reference does (the eviction policy's victims go
  // to host RAM, a window at a time), where prefetch_context only takes free
  // room -- which an oversubscribed HBM never has.
  virtual uint32_t stage_context(ContextId ctx) { return prefetch_context(ctx); }
  virtual const Region* region(RegionId id) const = 0;
};

class Prefetcher {
 public:
  virtual ~Prefetcher() = default;
  virtual std::string_view name() const = 0;
  virtual void on_fault(const FaultEvent&, PrefetchSink&) {}
  virtual void on_launch(const LaunchEvent&, PrefetchSink&) {}
  virtual void on_hint(const HintEvent&, PrefetchSink&) {}
  virtual void on_turn(const TurnEvent&, PrefetchSink&) {}
  // Time passed; now_ns is the caller's clock. Lets a prefetcher act between
  // events (prestaging during the gap between turns).
  virtual void on_tick(uint64_t /*now_ns*/, PrefetchSink&) {}
  // A live change of prefetch_depth and friends.
  virtual void configure(const Config&) {}
  // Whether wasted staging mutes it (prefetch_waste_ceiling). A guess that
  // keeps missing is muted; an instruction is carried out, its waste counted.
  virtual bool throttled_by_waste() const { return true; }
};

// Sequential / density across chunks. On a fault at chunk i of a region:
//  - density: for aligned windows of 2, 4, ... up to 2 × depth chunks around
//    i, take the largest whose chunks are more than half resident or on their
//    way to HBM, and stage the rest of it (the UVM driver's 51 % rule, but
//    across chunks rather than inside one 2 MiB block);
//  - sequential: if the previous fault or prefetch hit in this region was at
//    i - 1, stage i + 1 .. i + depth; a prefetch hit at i keeps the window
//    depth chunks ahead by staging i + depth.
class SequentialPrefetcher final : public Prefetcher {
 public:
  explicit SequentialPrefetcher(const Config& cfg) { configure(cfg); }
  std::string_view name() const override { return "sequential"; }
  void on_fault(const FaultEvent& ev, PrefetchSink& sink) override;
  void configure(const Config& cfg) override { depth_ = cfg.prefetch_depth; }

 private:
  uint32_t depth_ = 4;
  // Last fault / prefetch hit per region slot (RegionId packed, chunk index).
  struct Last {
    uint64_t region = ~0ull;
    uint32_t index = 0;
  };
  std::vector<Last> last_;
};

// Launch correlation (DeepUM-style, in user space): remembers which regions
// the launch `depth` launches after each launch signature referenced, and on
// a launch stages what followed it last time. The table is a fixed-size,
// direct-mapped array (no allocation on the launch path).
class CorrelationPrefetcher final : public Prefetcher {
 public:
  static constexpr size_t kTableSize = 4096;   // power of two
  static constexpr size_t kMaxRegions = 8;     // regions remembered per entry
  static constexpr size_t kMaxDepth = 256;

  explicit CorrelationPrefetcher(const Config& cfg) { configure(cfg); }
  std::string_view name() const override { return "correlation"; }
  void on_launch(const LaunchEvent& ev, PrefetchSink& sink) override;
  void configure(const Config& cfg) override;

 private:
  struct Entry {
    uint64_t signature = 0;
    uint32_t count = 0;
    RegionId regions[kMaxRegions];
  };
  std::vector<Entry> table_ = std::vector<Entry>(kTableSize);
  std::vector<uint64_t> history_ = std::vector<uint64_t>(kMaxDepth, 0);  // ring of signatures
  uint64_t launches_ = 0;
  uint32_t depth_ = 4;
};

// Context hints: prefetch(context) stages the whole context.
class HintPrefetcher final : public Prefetcher {
 public:
  std::string_view name() const override { return "hint"; }
  void on_hint(const HintEvent& ev, PrefetchSink& sink) override;
  // The program (or `kvpager hint`) said "prefetch this": muting it would
  // answer kOk and do nothing, as the first H200 benchmark run found.
  bool throttled_by_waste() const override { return false; }
};

// The enabled prefetchers, in a fixed order (sequential, correlation, hint).
std::vector<std::unique_ptr<Prefetcher>> make_prefetchers(const Config& cfg);

}  // namespace kvpager
