// A Mover for tests and benchmarks that carries no bytes: every move
// completes after a fixed virtual delay (0: at the next poll). It can refuse
// or fail moves on demand, and records every request it saw.
#pragma once

#include <deque>
#include <functional>
#include <vector>

#include "kvpager/mover.h"
#include "kvpager/sim/sim_mover.h"

namespace kvpager::testing {

class NullMover final : public Mover {
 public:
  explicit NullMover(uint64_t device_bytes, uint64_t delay_ns = 0) : device_(device_bytes), delay_(delay_ns) {}

  std::string_view name() const override { return "null mover"; }
  bool simulated() const override { return true; }
  uint64_t device_hbm_bytes() const override { return device_; }
  Clock& clock() override { return clock_; }
  VirtualClock& vclock() { return clock_; }
  void region_added(RegionId, uint64_t, uint64_t) override {}
  void region_removed(RegionId) override {}
  Status region_split(RegionId, RegionId, uint32_t) override { return Status::kOk; }  // no per-region state

  Status submit(const MoveRequest& req) override {
    if (refuse && refuse(req)) return Status::kNoSpace;
    if (record) log.push_back(req);
    queue_.push_back({clock_.now_ns() + delay_, req});
    return Status::kOk;
  }
  size_t poll(std::span<MoveCompletion> out) override {
    size_t n = 0;
    while (n < out.size() && !queue_.empty() && queue_.front().done <= clock_.now_ns()) {
      const MoveRequest& r = queue_.front().req;
      out[n++] = MoveCompletion{r.tag, fail ? fail(r) : Status::kOk};
      queue_.pop_front();
    }
    return n;
  }
  size_t wait(std::span<MoveCompletion> out) override {
    if (queue_.empty()) return 0;
    clock_.advance_to(queue_.front().done);
    return poll(out);
  }
  size_t pending() const override { return queue_.size(); }
  double estimate_ns(MoveKind, Tier, Tier, uint64_t len) const override { return 1000.0 + static_cast<double>(len); }

  std::function<bool(const MoveRequest&)> refuse;  // submit() returns kNoSpace when true
  std::function<Status(const MoveRequest&)> fail;  // completion status
  bool record = false;
  std::vector<MoveRequest> log;

 private:
  struct Item {
    uint64_t done;
    MoveRequest req;
  };
  uint64_t device_;
  uint64_t delay_;
  VirtualClock clock_;
  std::deque<Item> queue_;
};

}  // namespace kvpager::testing
