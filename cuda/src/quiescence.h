// Launch-path brackets and grace periods.
//
// Every intercepted operation that reads the region map or may reference a
// managed region (kernel launch, graph launch, copy, memset) runs inside a
// Bracket: opened before it looks at anything, closed after the real driver
// call returned (the work is then queued on its stream). The pager thread uses
// them two ways:
//   - spill fence: after marking a region unsafe it waits until every bracket
//     that was open at that moment has closed; brackets opened later see the
//     mark (both sides use sequentially consistent operations: Dekker's
//     pattern), so no operation can slip past it;
//   - grace period: a retired region-map snapshot is freed only when every
//     bracket that might still read it has closed.
// Each thread has its own counter pair (a slot, claimed on its first bracket
// and given back when it exits), so "closed" is exact: a bracket is two atomic
// increments on a cache line no other thread writes. No lock, no allocation,
// no system call. Threads beyond kSlots share one overflow counter, for which
// a grace period waits until it is seen at zero.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace kvpager::cuda {

class Quiescence {
 public:
  static constexpr size_t kSlots = 256;

  struct Ticket {
    std::array<uint64_t, kSlots> started{};
    bool overflow = false;  // an overflow thread was inside
  };

  class Bracket {
   public:
    explicit Bracket(Quiescence& q) : q_(q), slot_(q.my_slot()) { open(); }
    ~Bracket() { close(); }
    Bracket(const Bracket&) = delete;
    Bracket& operator=(const Bracket&) = delete;
    void open() {
      if (open_) return;
      open_ = true;
      if (slot_ < kSlots) q_.slots_[slot_].started.fetch_add(1);
      else q_.overflow_active_.fetch_add(1);
    }
    void close() {
      if (!open_) return;
      open_ = false;
      if (slot_ < kSlots) q_.slots_[slot_].finished.fetch_add(1);
      else q_.overflow_active_.fetch_sub(1);
    }

   private:
    Quiescence& q_;
    size_t slot_;
    bool open_ = false;
  };

  // The brackets open now.
  void take(Ticket& t) const {
    for (size_t i = 0; i < kSlots; ++i) t.started[i] = slots_[i].started.load();
    t.overflow = overflow_active_.load() != 0;
  }
  // Whether every bracket open when `t` was taken has closed.
  bool passed(const Ticket& t) const {
    for (size_t i = 0; i < kSlots; ++i)
      if (slots_[i].finished.load() < t.started[i]) return false;
    return !t.overflow || overflow_active_.load() == 0;
  }

  // The process-wide instance.
  static Quiescence& global();

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> started{0};
    std::atomic<uint64_t> finished{0};
    std::atomic<bool> owned{false};
  };
  size_t my_slot();
  static void release_slot(void* slot);

  std::array<Slot, kSlots> slots_{};
  alignas(64) std::atomic<uint64_t> overflow_active_{0};
};

}  // namespace kvpager::cuda
