// The simulated device: a Mover that really copies bytes between an "HBM"
// arena the size of the simulated card, a host arena and an NVMe tier (a
// Store), and charges every move time on a virtual clock from a cost model
// (bandwidth and latency per link, plus a fault cost for demand moves). Runs
// are deterministic, so policies and prefetchers can be compared exactly.
//
// Timing: each link (PCIe up, PCIe down, NVMe read, NVMe write) is a FIFO
// pipe: a move starts when the link is free, occupies it len / bandwidth, and
// completes latency later. A restore straight to HBM crosses NVMe read, then
// PCIe up. The bytes are copied when the move completes, in completion order;
// until then the source holds them (the pager lets nothing touch a chunk in
// flight).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <queue>
#include <span>
#include <vector>

#include "kvpager/config.h"
#include "kvpager/mover.h"
#include "kvpager/store.h"

namespace kvpager {

class VirtualClock final : public Clock {
 public:
  uint64_t now_ns() const override { return now_; }
  void advance(uint64_t ns) { now_ += ns; }
  void advance_to(uint64_t t) {
    if (t > now_) now_ = t;
  }

 private:
  uint64_t now_ = 0;
};

// Fixed-size slots of chunk_size bytes, allocated in slabs on demand, up to a
// limit (UINT32_MAX slots: unlimited).
class SlotArena {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;
  SlotArena(uint64_t slot_bytes, uint64_t max_slots);
  uint32_t alloc();  // kNone when full
  void release(uint32_t slot);
  std::span<std::byte> bytes(uint32_t slot, uint64_t len);
  uint64_t used() const { return used_; }
  uint64_t max_slots() const { return max_slots_; }

 private:
  uint64_t slot_bytes_;
  uint64_t max_slots_;
  uint64_t slab_slots_;
  std::vector<std::unique_ptr<std::byte[]>> slabs_;
  std::vector<uint32_t> free_;
  uint64_t total_ = 0;
  uint64_t used_ = 0;
};

class SimMover final : public Mover {
 public:
  // store: the NVMe tier; may be null (then spills fail with kUnsupported).
  SimMover(const Config& cfg, Store* store);
  ~SimMover() override;

  std::string_view name() const override { return "simulated device"; }
  bool simulated() const override { return true; }
  uint64_t device_hbm_bytes() const override { return hbm_bytes_; }
  Clock& clock() override { return clock_; }
  VirtualClock& virtual_clock() { return clock_; }

  void region_added(RegionId id, uint64_t base, uint64_t size) override;
  void region_removed(RegionId id) override;
  Status region_split(RegionId head, RegionId tail, uint32_t at) override;
  Status submit(const MoveRequest& req) override;
  size_t poll(std::span<MoveCompletion> out) override;
  size_t wait(std::span<MoveCompletion> out) override;
  size_t pending() const override { return jobs_.size(); }
  double estimate_ns(MoveKind kind, Tier from, Tier to, uint64_t len) const override;
  Status read_chunk(const ChunkRef& ref, std::span<std::byte> out) override;

  // The bytes of a chunk resting in HBM: what a kernel would read and write.
  // Empty if the chunk is not in HBM.
  std::span<std::byte> hbm_bytes(RegionId id, uint32_t chunk, uint64_t len);
  uint64_t hbm_slots_used() const { return hbm_.used(); }
  uint64_t host_slots_used() const { return host_.used(); }

 private:
  struct Link {
    double bytes_per_ns;
    uint64_t latency_ns;
    uint64_t free_at = 0;
    uint64_t schedule(uint64_t start, uint64_t len);
    double estimate(uint64_t len) const { return static_cast<double>(latency_ns) + static_cast<double>(len) / bytes_per_ns; }
  };
  struct Loc {
    uint32_t hbm = SlotArena::kNone;
    uint32_t host = SlotArena::kNone;
  };
  struct Job {
    uint64_t done_at;
    uint64_t seq;
    MoveRequest req;
    bool operator>(const Job& o) const { return done_at != o.done_at ? done_at > o.done_at : seq > o.seq; }
  };

  Loc* loc(RegionId id, uint32_t chunk);
  std::span<std::byte> host_bytes(Loc& l, uint64_t len);
  Status execute(const MoveRequest& req);

  uint64_t chunk_size_;
  uint64_t hbm_bytes_;
  uint64_t fault_ns_;
  Store* store_;
  VirtualClock clock_;
  SlotArena hbm_;
  SlotArena host_;
  Link pcie_up_, pcie_down_, nvme_read_, nvme_write_;
  std::vector<std::vector<Loc>> locs_;  // by region slot
  std::vector<uint32_t> gens_;
  std::priority_queue<Job, std::vector<Job>, std::greater<>> jobs_;
  uint64_t seq_ = 0;
};

}  // namespace kvpager
