// Mover: carries a chunk's bytes between tiers. The pager decides, a mover
// moves. Moves are asynchronous: submit() queues one, poll()/wait() hand back
// completions. Implementations: SimMover (pager/sim, the simulated device used
// by tests, `kvpager demo` and `kvpager replay`) and the CUDA mover (cuda/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "kvpager/status.h"
#include "kvpager/store.h"
#include "kvpager/types.h"

namespace kvpager {

// Time as the pager sees it: virtual for the simulated device, real for CUDA.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual uint64_t now_ns() const = 0;
};

struct MoveRequest {
  uint64_t tag = 0;  // opaque to the mover; handed back in the completion
  MoveKind kind = MoveKind::kPromote;
  Tier from = Tier::kUnpopulated;
  Tier to = Tier::kUnpopulated;
  RegionId region;
  uint32_t chunk = 0;   // chunk index within the region
  uint64_t addr = 0;    // device address of the chunk's first byte
  uint64_t len = 0;     // bytes (the last chunk of a region may be short)
  bool demand = false;  // a fault is waiting on this move
  // Spill: false when the store already holds these exact bytes (clean chunk
  // with a store copy): the mover only releases the source.
  bool write_back = true;
  // Discard: the store copy (if any) must be erased too. Restore: once the
  // bytes are in, the store copy is erased (not on failure).
  bool drop_store_copy = false;
  // Discard: the region is being freed, its memory goes back to its owner
  // whole; a mover need not release the bytes (work queued before the free
  // may still read them), only drop what it keeps of them.
  bool freeing = false;
  ObjectKey key;  // the chunk's name in the store (spill, restore, discard)
};

// Where one chunk rests, for Mover::read_chunk().
struct ChunkRef {
  RegionId region;
  uint32_t chunk = 0;
  uint64_t addr = 0;  // device address of its first byte
  uint64_t len = 0;
  Tier tier = Tier::kUnpopulated;  // kHbm, kHost or kNvme (never in flight)
  ObjectKey key;                   // its name in the store (kNvme)
};

struct MoveCompletion {
  uint64_t tag = 0;
  Status status = Status::kOk;
};

class Mover {
 public:
  virtual ~Mover() = default;
  virtual std::string_view name() const = 0;
  virtual bool simulated() const = 0;
  // HBM the device offers the pager (the budget's upper bound).
  virtual uint64_t device_hbm_bytes() const = 0;
  virtual Clock& clock() = 0;

  virtual void region_added(RegionId id, uint64_t base, uint64_t size) = 0;
  virtual void region_removed(RegionId id) = 0;
  // The pager cut a region in two at chunk `at`: chunks [at, n) of `head` are
  // now chunks [0, n - at) of `tail`, whose base is head's base + at chunks.
  // No chunk of it is in flight. A mover that keeps per-region state moves it
  // over; kUnsupported (the default) makes the pager refuse the split.
  virtual Status region_split(RegionId /*head*/, RegionId /*tail*/, uint32_t /*at*/) { return Status::kUnsupported; }

  // Queues a move. Fails without side effects (e.g. kNoSpace, kUnsupported).
  virtual Status submit(const MoveRequest& req) = 0;
  // Completions ready now, without blocking. Returns how many were written.
  virtual size_t poll(std::span<MoveCompletion> out) = 0;
  // Blocks until at least one move completes (returns 0 at once if none is
  // pending). On the simulated device this advances the virtual clock.
  virtual size_t wait(std::span<MoveCompletion> out) = 0;
  // Moves submitted and not yet handed back.
  virtual size_t pending() const = 0;
  // Copies a chunk's bytes into out (out.size() == ref.len) and leaves the
  // chunk where it is: from HBM or host RAM, or from the store for kNvme.
  // Synchronous; the pager calls it from its owner thread for a chunk not in
  // flight (publishing a context). The bytes are a snapshot: whatever the
  // program writes into the chunk meanwhile may or may not be in them.
  // kUnsupported (the default) if the mover cannot read chunks back.
  virtual Status read_chunk(const ChunkRef& /*ref*/, std::span<std::byte> /*out*/) { return Status::kUnsupported; }
  // Expected duration of a move of len bytes, from the mover's cost model.
  virtual double estimate_ns(MoveKind kind, Tier from, Tier to, uint64_t len) const = 0;
};

}  // namespace kvpager
