// Launch events from the launch path to the pager thread: a bounded
// multi-producer ring of fixed-size records (Vyukov's bounded queue). Pushing
// never blocks and never allocates; when the pager thread falls behind, events
// are dropped and counted (they only feed heuristics: access order, launch
// correlation, idleness; safety never depends on them).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace kvpager::cuda {

struct LaunchRef {
  uint32_t slot;   // region map slot
  uint32_t gen;    // ... and its generation
  uint32_t chunk;  // the chunk of the region the pointer (or the copy) falls in
};

// What one launch, copy or memset referenced: one entry per region the pager
// counts whole (any pointer into it stands for all of it), one per chunk of a
// region it counts chunk by chunk (Pager::reference). Wide kernels (MoE
// scales, block tables) pass a dozen regions, a replayed graph dozens: an
// operation posts up to Scanner::kEventsPerOp events, the first with its
// kernel, the rest (kernel 0) with more references. What does not fit even
// then is counted (Runtime's refs_dropped) and looks idle to the pager.
struct LaunchEvent {
  static constexpr uint32_t kRefs = 16;
  uint64_t kernel = 0;  // function handle, or 0 for a copy or memset
  uint32_t n = 0;
  LaunchRef refs[kRefs];
};

class EventRing {
 public:
  explicit EventRing(size_t capacity_pow2) : mask_(capacity_pow2 - 1), cells_(new Cell[capacity_pow2]) {
    for (size_t i = 0; i <= mask_; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
  }

  bool push(const LaunchEvent& ev) {
    size_t pos = tail_.load(std::memory_order_relaxed);
    for (;;) {
      Cell& c = cells_[pos & mask_];
      size_t seq = c.seq.load(std::memory_order_acquire);
      auto dif = static_cast<intptr_t>(seq) - static_cast<intptr_t>(pos);
      if (dif == 0) {
        if (tail_.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
          c.ev = ev;
          c.seq.store(pos + 1, std::memory_order_release);
          return true;
        }
      } else if (dif < 0) {
        dropped_.fetch_add(1, std::memory_order_relaxed);
        return false;
      } else {
        pos = tail_.load(std::memory_order_relaxed);
      }
    }
  }

  // Single consumer.
  bool pop(LaunchEvent& out) {
    Cell& c = cells_[head_ & mask_];
    size_t seq = c.seq.load(std::memory_order_acquire);
    if (seq != head_ + 1) return false;
    out = c.ev;
    c.seq.store(head_ + mask_ + 1, std::memory_order_release);
    ++head_;
    return true;
  }

  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  struct Cell {
    std::atomic<size_t> seq;
    LaunchEvent ev;
  };
  const size_t mask_;
  std::unique_ptr<Cell[]> cells_;
  alignas(64) std::atomic<size_t> tail_{0};
  alignas(64) size_t head_ = 0;
  std::atomic<uint64_t> dropped_{0};
};

}  // namespace kvpager::cuda
