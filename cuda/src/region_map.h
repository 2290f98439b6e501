// The managed regions, as the launch path looks them up.
//
// A region here is a managed allocation the interposer made, or a piece of one
// (kvpager_tag_context cuts an allocation into pieces, one per context). Its
// RegionEntry lives in a slot that is never freed, so the launch path can read
// it through a slot index at any time; `gen` says whether the slot still holds
// the same region. The launch path reads:
//   unsafe  chunks whose bytes only the NVMe store holds (or that are on their
//           way there): reading the region now would read indeterminate bytes,
//           so it must be restored first;
//   parked  its context is parked: the program promised not to read it until
//           it prefetches it (see kvpager.h).
//
// Lookup by address goes through an immutable Snapshot: a sorted array of
// bases (binary search without branches, ~log2(n) loads that stay in cache)
// plus the items, published with one atomic pointer. Writers (allocation,
// free, tagging) build a new snapshot under a mutex and retire the old one; it
// is freed after a grace period (Quiescence), so readers inside a Bracket never
// see freed memory. Readers take no lock and allocate nothing.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "quiescence.h"

namespace kvpager::cuda {

struct RegionEntry {
  std::atomic<uint32_t> gen{0};
  std::atomic<uint32_t> unsafe{0};
  std::atomic<bool> parked{false};
  // Set before the entry is published, then only by the pager thread.
  uint64_t base = 0;
  uint64_t size = 0;
  uint64_t alloc_base = 0;
  // kvpager::RegionId::packed(): set and read by the pager thread, reset to
  // ~0 by the freeing thread (retire, add on a reused slot) while the pager
  // thread may still be looking at an event naming the old one (its gen
  // check turns it away): an atomic, so the two never race.
  std::atomic<uint64_t> pager_id{~0ull};
};

struct MapItem {
  uint64_t base;
  uint64_t end;
  uint64_t alloc_base;
  uint64_t alloc_end;
  uint32_t slot;
  uint32_t gen;
};

class RegionMap {
 public:
  struct Snapshot {
    size_t n = 0;
    uint64_t lo = 0;  // lowest base
    uint64_t hi = 0;  // highest end
    uint64_t version = 0;
    const uint64_t* bases = nullptr;
    const MapItem* items = nullptr;
  };

  explicit RegionMap(Quiescence& q = Quiescence::global());
  ~RegionMap();
  RegionMap(const RegionMap&) = delete;
  RegionMap& operator=(const RegionMap&) = delete;

  // --- readers: inside a Quiescence::Bracket ---
  const Snapshot& snapshot() const { return *current_.load(std::memory_order_seq_cst); }
  // Index of the item that contains addr, or -1.
  static ptrdiff_t locate(const Snapshot& s, uint64_t addr) {
    if (addr - s.lo >= s.hi - s.lo) return -1;  // also s.n == 0 (lo == hi)
    const uint64_t* b = s.bases;
    size_t n = s.n;
    while (n > 1) {
      size_t half = n / 2;
      b = b[half] <= addr ? b + half : b;
      n -= half;
    }
    auto i = b - s.bases;
    return addr < s.items[i].end && addr >= *b ? i : -1;
  }
  // The items [*first, *end) of the allocation item i belongs to (adjacent:
  // an allocation's pieces are contiguous in address order).
  static void alloc_span(const Snapshot& s, ptrdiff_t i, ptrdiff_t* first, ptrdiff_t* end) {
    const uint64_t a = s.items[i].alloc_base;
    ptrdiff_t f = i, e = i + 1;
    while (f > 0 && s.items[f - 1].alloc_base == a) --f;
    while (static_cast<size_t>(e) < s.n && s.items[e].alloc_base == a) ++e;
    *first = f;
    *end = e;
  }
  RegionEntry& entry(uint32_t slot) const {
    return blocks_[slot / kBlock].load(std::memory_order_acquire)[slot % kBlock];
  }
  // The entry of an item, if the slot still holds that region.
  RegionEntry* live_entry(const MapItem& it) const {
    RegionEntry& e = entry(it.slot);
    return e.gen.load(std::memory_order_acquire) == it.gen ? &e : nullptr;
  }

  // --- writers (serialised inside) ---
  // A new allocation [base, base + size), one region. Returns its slot.
  uint32_t add(uint64_t base, uint64_t size);
  // Takes every region of the allocation at alloc_base out of the map (the
  // launch path stops finding them); their slots stay valid until retire().
  std::vector<uint32_t> remove_alloc(uint64_t alloc_base);
  // Cuts region `slot` at `offset` bytes: the slot keeps the head, the
  // returned slot is the tail. The tail starts with the head's `unsafe`
  // count (never too few for the launch path); whoever keeps the counts
  // sets both exactly afterwards (CudaMover::bind_counter).
  uint32_t split(uint32_t slot, uint64_t offset);
  // The slot is free for reuse (its entry's gen changes).
  void retire(uint32_t slot);
  // Allocation containing addr: its base and size, or false.
  bool find_alloc(uint64_t addr, uint64_t* base, uint64_t* size) const;
  // Slots of the regions of an allocation, in address order.
  std::vector<uint32_t> alloc_regions(uint64_t alloc_base) const;
  size_t regions() const;
  // Frees retired snapshots whose grace period has passed.
  void reclaim();

 private:
  static constexpr size_t kBlock = 4096;
  static constexpr size_t kMaxBlocks = 1024;  // 4 M regions
  struct Alloc {
    uint64_t size;
    std::vector<uint32_t> slots;  // in address order
  };
  struct Retired {
    Snapshot* snap;
    std::unique_ptr<Quiescence::Ticket> ticket;
  };

  uint32_t new_slot();
  void publish();  // under mu_
  static Snapshot* build(const std::map<uint64_t, Alloc>& allocs, const RegionMap& m, uint64_t version);
  static void destroy(Snapshot* s);

  Quiescence& q_;
  std::atomic<Snapshot*> current_;
  mutable std::atomic<RegionEntry*> blocks_[kMaxBlocks]{};
  mutable std::mutex mu_;
  std::map<uint64_t, Alloc> allocs_;  // by base
  std::vector<uint32_t> free_slots_;
  uint32_t next_slot_ = 0;
  uint64_t version_ = 0;
  std::vector<Retired> retired_;
};

}  // namespace kvpager::cuda
