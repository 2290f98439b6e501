// The pager: decides where every chunk of KV memory lives.
//
// It keeps the hot chunks in HBM within a budget, demotes cold ones to host
// RAM, spills idle contexts to NVMe and stages chunks back ahead of use. It
// knows nothing of CUDA, FUSE or files: a Mover carries the bytes.
//
// Threading: a Pager is driven by one thread at a time (its owner serialises
// calls); stats() copies a snapshot and may be called by the owner to publish.
//
// Budget controller (balance()):
//   HBM:  committed > high × budget  →  demote victims until ≤ low × budget.
//         A fault that finds no room evicts synchronously first, so HBM never
//         holds more than the budget (committed = resident + inbound).
//   Tiers are accounted in whole chunks (chunk_size each, also for a region's
//   short last chunk): memory is handed out per chunk, and a budget in bytes
//   must bound the slots a device really uses.
//   HOST: committed > high × host_capacity  →  spill chunks of contexts that
//         may spill (parked, or idle ≥ spill_idle), least recently used
//         context first, until ≤ low × host_capacity. Nothing else leaves HOST.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvpager/config.h"
#include "kvpager/mover.h"
#include "kvpager/policy.h"
#include "kvpager/prefetch.h"
#include "kvpager/region.h"
#include "kvpager/stats.h"

namespace kvpager {

// Bytes of one context in each tier.
struct ContextInfo {
  ContextId id = kNoContext;
  std::string name;
  uint64_t size_bytes = 0;
  std::array<uint64_t, kNumTiers> tier_bytes{};  // hbm, host, nvme, unpopulated
  uint32_t regions = 0;
  bool parked = false;
  bool pinned = false;
  uint64_t last_access_ns = 0;
  uint64_t hits = 0;  // accesses that found a chunk of it in HBM (kvpager-fs info)
  bool dropped = false;  // dropped (hint) and not used since: its bytes are gone
};

// How the pager's owner reports writes, which decides whether a chunk brought
// back from the store may later spill again by only dropping its bytes (its
// store copy still being right).
enum class WriteTracking : uint8_t {
  // Every write to a chunk comes through access(..., write = true): the
  // simulated device and replay. A restored chunk stays clean until written.
  kEveryChunk,
  // The program may write any chunk it can reach without the pager hearing
  // which (a CUDA kernel writes wherever its pointers lead; launch events are
  // lossy and name one chunk per pointer). A restored chunk counts as written
  // at once: every spill writes its bytes back.
  kUnobserved,
};

class Pager final : private PrefetchSink, private RestoreCost {
 public:
  // cfg must validate (throws ConfigError otherwise); its auto values are
  // resolved against the mover's device. The mover must outlive the pager.
  Pager(const Config& cfg, Mover& mover, WriteTracking writes = WriteTracking::kEveryChunk);
  ~Pager() override;
  Pager(const Pager&) = delete;
  Pager& operator=(const Pager&) = delete;

  // --- regions and contexts ---
  // Registers an allocation. With an empty context name it gets a context of
  // its own; otherwise it joins (or creates) the named context. `initial`:
  // where its chunks start, kUnpopulated (first touch zero-fills them in HBM,
  // the simulated device) or kHost (their bytes exist in host RAM from the
  // start: CUDA managed memory the program may have written already).
  RegionId add_region(uint64_t base, uint64_t size, std::string_view context = {},
                      Tier initial = Tier::kUnpopulated);
  // Waits for its moves, discards its chunks everywhere, forgets it.
  Status remove_region(RegionId id);
  const Region* region(RegionId id) const override;
  // Cuts a region in two at `offset` (a multiple of chunk_size, inside it):
  // the head keeps the id and [0, offset); the tail, returned in *tail, is a
  // new region for the rest, in the same context, right after the head. Every
  // chunk keeps its tier, flags and store name. kInvalid for a bad offset,
  // kUnsupported if the mover cannot follow.
  Status split_region(RegionId id, uint64_t offset, RegionId* tail);
  // Moves a region into the named context (created if needed). kBusy if any
  // of its chunks has a copy in the store (its store name would change);
  // kNoSpace if the context is pinned and the region would take the pinned
  // bytes past pin_limit().
  Status set_context(RegionId id, std::string_view name);
  // Brings every chunk of the region that is in the NVMe tier (or on its way
  // there) back to host RAM, and waits: afterwards nothing of it needs the
  // store to be read. Counts as a use of the region. The first failure is
  // returned (the chunk stays in the store, its bytes are never invented).
  Status restore(RegionId id);
  ContextId find_context(std::string_view name) const;
  // Copies a context's bytes to sink, in order -- its regions in the order
  // they joined, each region's chunks in order; never-touched chunks read as
  // zeros -- one chunk per call, without moving anything: a chunk in flight is
  // waited for, then read where it rests (Mover::read_chunk). Not a use of
  // the context (heat, idle time and prefetchers are unchanged). The first
  // failure, the mover's or the sink's, stops it and is returned; kNotFound
  // for a bad id; kInvalid for a context dropped (HintKind::kDrop) and not
  // used since: its bytes are gone, and reading them would hand out
  // whatever the memory holds now as the context. Publishing a context into
  // the token store is built on it.
  Status read_context(ContextId ctx, const std::function<Status(std::span<const std::byte>)>& sink);
  std::vector<ContextInfo> contexts() const;

  // --- the hot path ---
  // The program touches chunk `index` of a region. Returns once the chunk is
  // resting in HBM (a hit), after waiting for it if it was not (a fault).
  // kInvalid for a bad region/index, kNoSpace if HBM is full of pinned chunks,
  // kIoError/kCorrupt if the chunk could not be brought back.
  Status access(RegionId id, uint32_t index, bool write);

  // A running program referenced chunk `index` of a region (a kernel launch
  // or a copy carried a pointer into it; the CUDA runtime's events) and may
  // read or write all of it, where it lies now: nothing waits. Every chunk of
  // the region in HBM counts as used; the others are queued to come to HBM,
  // evicting the least recently used chunks of other regions to make room
  // (up to the high watermark). A region larger than half of that counts
  // chunk by chunk: only the referenced chunk is used and queued (a pool
  // bigger than the budget would otherwise evict itself in turn). Counted as
  // an access: a hit if the referenced chunk was resting in HBM, else a fault
  // (the kernel read it remotely) that prefetchers see. kInvalid for a bad
  // region or index.
  Status reference(RegionId id, uint32_t index);
  // The largest region (in bytes) that reference() counts whole; a bigger one
  // counts chunk by chunk. Changes when the HBM budget or the high watermark
  // is tuned.
  uint64_t whole_reference_bytes() const;
  // A kernel launch referencing these regions (feeds launch correlation).
  void launch(uint64_t kernel, std::span<const RegionId> regions);
  // The program used the region without saying which chunks (a launch read
  // the allocation it belongs to): it is not idle.
  void touch(RegionId id);
  // A hint about a whole context. kBusy: park or drop of a pinned context.
  // kNoSpace: a pin that would take the pinned bytes past pin_limit().
  Status hint(ContextId ctx, HintKind kind);
  // Bytes of pinned chunks (whole chunks, as HBM counts them), and the most
  // they may be: low_watermark of the HBM budget. The rest of HBM serves
  // every other access; with HBM full of pinned chunks, an access elsewhere
  // would find no room (kNoSpace).
  uint64_t pinned_bytes() const;
  static uint64_t pin_limit(const Config& resolved);

  // Background work: collect finished moves, keep the watermarks, spill idle
  // contexts, issue queued prefetches. Call it periodically.
  void tick();
  // Waits until no move is in flight and the watermarks hold.
  void drain();

  // --- configuration ---
  const Config& config() const { return cfg_; }
  // Applies a live change. Validated exactly as at start-up; a knob that
  // cannot change live, or a value refused, leaves everything as it was and
  // the message says why.
  Status apply(const Config& next, std::string* why = nullptr);

  StatsSnapshot stats() const;
  uint64_t now_ns() const { return mover_.clock().now_ns(); }
  uint64_t committed_bytes(Tier t) const { return resident_[index(t)] + inbound_[index(t)]; }

  // For tests: every chunk's invariants and every counter recomputed from the
  // chunks agree. Returns a description of the first mismatch, or "".
  std::string audit() const;

 private:
  struct Pending {
    uint32_t region_slot;
    uint32_t region_gen;
    uint32_t index;
    uint8_t prefetcher;  // 1-based
  };
  struct Wanted {  // chunks [next, end) of a referenced (or hinted) region, still to stage
    RegionId id;
    uint32_t first;  // where the range began
    uint32_t next;
    uint32_t end;
    bool whole;  // the whole region (its reference_queued), else chunk `first` alone (its wanted bit)
    // 1-based: queued by this prefetcher's instruction (stage_context), whose
    // moves it is credited with; 0: by a reference. Either makes room alike.
    uint8_t prefetcher = 0;
  };
  struct Throttle {
    uint64_t used = 0, wasted = 0;  // this window
    uint32_t muted_events = 0;      // events still to skip
  };

  Region* lookup(RegionId id) const;
  uint32_t alloc_slot();
  void wait_region_idle(const Region& r);
  void wait_context_idle(const Context& ctx);
  void forget_wanted(const Context& ctx);
  void unqueue(const Wanted& w);
  Chunk& chunk_of(const Region& r, uint32_t i) const { return r.chunks[i]; }
  Status access_slow(Region& r, Chunk& c, bool write);
  void note_use(Region& r, Chunk& c, bool write);
  void warm(Chunk& c);  // the hottest in the HBM policy now (note_use without counting a use)

  // Moves
  Status start_move(Region& r, Chunk& c, MoveKind kind, Tier to, bool demand, uint8_t prefetcher = 0,
                    bool freeing = false);
  void on_complete(const MoveCompletion& done);
  // One chunk's footprint (a whole chunk) now rests in `to`, not `from`.
  void count_moved(Tier from, Tier to);
  size_t collect(bool block);  // poll (or wait for) completions and apply them
  Status wait_for(const Chunk& c);
  EvictionPolicy* policy_for(Tier t) const;
  void make_evictable(Chunk& c);
  void make_unevictable(Chunk& c);

  // Budget
  Status make_room_sync(uint64_t bytes);
  // `more` bytes of newly pinned chunks keep the pins within pin_limit().
  bool pins_fit(uint64_t more) const;
  void balance();
  void balance_hbm();
  void balance_host();
  void spills_refused();
  bool spill_room(uint64_t len, bool take);
  bool may_spill(const Context& ctx) const;
  uint64_t context_last_access(const Context& ctx) const;
  bool bytes_dropped(const Context& ctx) const;
  ObjectKey key_for(const Region& r, uint32_t index) const;

  // Prefetch mechanism
  uint32_t prefetch(RegionId region, uint32_t first, uint32_t count) override;
  uint32_t prefetch_region(RegionId region) override;
  uint32_t prefetch_context(ContextId ctx) override;
  uint32_t stage_context(ContextId ctx) override;
  bool stage(Region& r, Chunk& c, uint8_t prefetcher);
  Status bring_in(Region& r, Chunk& c, uint8_t prefetcher);
  void issue_pending();
  void issue_wanted();
  void prefetch_used(Chunk& c, uint64_t len);
  void prefetch_wasted(Chunk& c, uint64_t len);
  template <typename Fn>
  void dispatch(Fn&& fn);

  double restore_ns(const Chunk& c) const override;
  void rebuild_policies();
  void release_region(Region& r);
  ContextId context_for(std::string_view name, RegionId first);
  // The region joins the named context (or one of its own for ""), taking the
  // next store names; leaving drops a context left empty.
  Context& join_context(Region& r, std::string_view name);
  void leave_context(Region& r);

  Config cfg_;
  Mover& mover_;
  WriteTracking writes_;
  uint64_t hbm_limit_ = 0;   // = cfg_.hbm_budget (resolved)
  uint64_t host_limit_ = 0;  // = cfg_.host_capacity (resolved)
  uint64_t epoch_ = 0;
  uint64_t now_ = 0;  // mover clock, refreshed on slow paths and in tick()

  std::vector<std::unique_ptr<Region>> regions_;  // by slot; null = free
  std::vector<uint32_t> free_slots_;
  std::vector<uint32_t> generations_;
  std::vector<std::unique_ptr<Context>> contexts_;  // by id; null = free
  std::unordered_map<std::string, ContextId> context_names_;
  uint64_t region_serial_ = 0;

  std::unique_ptr<EvictionPolicy> policies_[2];  // HBM, HOST
  std::array<uint64_t, kNumTiers> resident_{};
  std::array<uint64_t, kNumTiers> inbound_{};
  std::array<uint64_t, kNumTiers> outbound_{};
  std::array<uint64_t, kNumTiers> chunks_in_{};

  std::vector<std::unique_ptr<Prefetcher>> prefetchers_;
  std::vector<PrefetcherStats> prefetch_stats_;
  std::vector<Throttle> throttles_;
  uint8_t current_prefetcher_ = 0;  // 1-based while dispatching an event
  std::vector<Pending> pending_;    // prefetches waiting for room (ring)
  size_t pending_head_ = 0;
  size_t pending_count_ = 0;
  std::deque<Wanted> wanted_;  // referenced regions waiting for room in HBM (each once)

  StatsSnapshot counters_;  // the counting part of the snapshot
  static constexpr uint64_t kNoCeiling = UINT64_MAX;
  uint64_t spill_ceiling_ = kNoCeiling;  // committed NVMe bytes when the tier last refused a spill for room
  uint64_t next_spill_probe_ns_ = 0;     // when one spill may next try past that ceiling
  uint64_t next_spill_check_ns_ = 0;
  std::vector<MoveCompletion> completions_;
  const Chunk* last_error_chunk_ = nullptr;  // the last failed move, for wait_for()
  Status last_error_ = Status::kOk;
};

}  // namespace kvpager
