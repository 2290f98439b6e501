#include "kvpager/sim/sim_mover.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace kvpager {

// ---------------------------------------------------------------- arena

SlotArena::SlotArena(uint64_t slot_bytes, uint64_t max_slots)
    : slot_bytes_(slot_bytes),
      max_slots_(max_slots),
      slab_slots_(std::clamp<uint64_t>(32 * MiB / slot_bytes, 1, std::max<uint64_t>(max_slots, 1))) {}

uint32_t SlotArena::alloc() {
  if (free_.empty()) {
    if (total_ >= max_slots_) return kNone;
    uint64_t n = std::min(slab_slots_, max_slots_ - total_);
    slabs_.push_back(std::unique_ptr<std::byte[]>(new std::byte[n * slot_bytes_]));  // uninitialised: every slot is written before it is read
    // Slots are numbered slab by slab; hand out the lowest first.
    for (uint64_t i = n; i > 0; --i) free_.push_back(static_cast<uint32_t>(total_ + i - 1));
    total_ += n;
  }
  uint32_t s = free_.back();
  free_.pop_back();
  ++used_;
  return s;
}

void SlotArena::release(uint32_t slot) {
  free_.push_back(slot);
  --used_;
}

std::span<std::byte> SlotArena::bytes(uint32_t slot, uint64_t len) {
  // Slabs all hold slab_slots_ slots except possibly the last.
  uint64_t slab = slot / slab_slots_;
  uint64_t within = slot % slab_slots_;
  return {slabs_[slab].get() + within * slot_bytes_, len};
}

// ---------------------------------------------------------------- mover

uint64_t SimMover::Link::schedule(uint64_t start, uint64_t len) {
  uint64_t begin = std::max(start, free_at);
  free_at = begin + static_cast<uint64_t>(std::ceil(static_cast<double>(len) / bytes_per_ns));
  return free_at + latency_ns;
}

SimMover::SimMover(const Config& cfg, Store* store)
    : chunk_size_(cfg.chunk_size),
      hbm_bytes_(std::max(cfg.chunk_size, cfg.sim_hbm_capacity / cfg.chunk_size * cfg.chunk_size)),
      fault_ns_(cfg.sim_fault_ns),
      store_(store),
      hbm_(cfg.chunk_size, hbm_bytes_ / cfg.chunk_size),
      host_(cfg.chunk_size, UINT32_MAX - 1),
      pcie_up_{cfg.sim_pcie_gbps, cfg.sim_pcie_latency_ns},
      pcie_down_{cfg.sim_pcie_gbps, cfg.sim_pcie_latency_ns},
      nvme_read_{cfg.sim_nvme_read_gbps, cfg.sim_nvme_latency_ns},
      nvme_write_{cfg.sim_nvme_write_gbps, cfg.sim_nvme_latency_ns} {}

SimMover::~SimMover() = default;

void SimMover::region_added(RegionId id, uint64_t, uint64_t size) {
  if (locs_.size() <= id.slot) {
    locs_.resize(id.slot + 1);
    gens_.resize(id.slot + 1);
  }
  locs_[id.slot].assign((size + chunk_size_ - 1) / chunk_size_, Loc{});
  gens_[id.slot] = id.gen;
}

void SimMover::region_removed(RegionId id) {
  if (id.slot >= locs_.size() || gens_[id.slot] != id.gen) return;
  for (Loc& l : locs_[id.slot]) {
    if (l.hbm != SlotArena::kNone) hbm_.release(l.hbm);
    if (l.host != SlotArena::kNone) host_.release(l.host);
  }
  locs_[id.slot].clear();
}

Status SimMover::region_split(RegionId head, RegionId tail, uint32_t at) {
  if (head.slot >= locs_.size() || gens_[head.slot] != head.gen || at >= locs_[head.slot].size())
    return Status::kInvalid;
  if (locs_.size() <= tail.slot) {
    locs_.resize(tail.slot + 1);
    gens_.resize(tail.slot + 1);
  }
  auto& from = locs_[head.slot];
  locs_[tail.slot].assign(from.begin() + at, from.end());
  from.resize(at);
  gens_[tail.slot] = tail.gen;
  return Status::kOk;
}

SimMover::Loc* SimMover::loc(RegionId id, uint32_t chunk) {
  if (id.slot >= locs_.size() || gens_[id.slot] != id.gen || chunk >= locs_[id.slot].size()) return nullptr;
  return &locs_[id.slot][chunk];
}

std::span<std::byte> SimMover::hbm_bytes(RegionId id, uint32_t chunk, uint64_t len) {
  Loc* l = loc(id, chunk);
  if (!l || l->hbm == SlotArena::kNone) return {};
  return hbm_.bytes(l->hbm, len);
}

Status SimMover::read_chunk(const ChunkRef& ref, std::span<std::byte> out) {
  if (out.size() != ref.len || ref.len > chunk_size_) return Status::kInvalid;
  if (ref.tier == Tier::kNvme) return store_ ? store_->get(ref.key, out) : Status::kUnsupported;
  Loc* l = loc(ref.region, ref.chunk);
  if (!l) return Status::kNotFound;
  uint32_t slot = ref.tier == Tier::kHbm ? l->hbm : ref.tier == Tier::kHost ? l->host : SlotArena::kNone;
  if (slot == SlotArena::kNone) return Status::kNotFound;  // the pager and the mover disagree
  SlotArena& arena = ref.tier == Tier::kHbm ? hbm_ : host_;
  std::memcpy(out.data(), arena.bytes(slot, ref.len).data(), ref.len);
  return Status::kOk;
}

double SimMover::estimate_ns(MoveKind kind, Tier from, Tier to, uint64_t len) const {
  switch (kind) {
    case MoveKind::kPromote: return from == Tier::kUnpopulated ? 0.0 : pcie_up_.estimate(len);
    case MoveKind::kDemote: return pcie_down_.estimate(len);
    case MoveKind::kSpill: return nvme_write_.estimate(len);
    case MoveKind::kRestore:
      return nvme_read_.estimate(len) + (to == Tier::kHbm ? pcie_up_.estimate(len) : 0.0);
    case MoveKind::kDiscard: return 0.0;
  }
  return 0.0;
}

Status SimMover::submit(const MoveRequest& req) {
  Loc* l = loc(req.region, req.chunk);
  if (!l || req.len > chunk_size_) return Status::kInvalid;
  const uint64_t now = clock_.now_ns();
  uint64_t done = now;
  // Reserve the destination now, so a full arena is refused at submit.
  auto reserve = [&](SlotArena& arena, uint32_t& slot) {
    if (slot != SlotArena::kNone) return true;
    slot = arena.alloc();
    return slot != SlotArena::kNone;
  };
  switch (req.kind) {
    case MoveKind::kPromote:
      if (!reserve(hbm_, l->hbm)) return Status::kNoSpace;
      if (req.from == Tier::kHost) done = pcie_up_.schedule(now, req.len);
      break;
    case MoveKind::kDemote:
      if (!reserve(host_, l->host)) return Status::kNoSpace;
      done = pcie_down_.schedule(now, req.len);
      break;
    case MoveKind::kSpill:
      if (!store_) return Status::kUnsupported;
      if (req.write_back) done = nvme_write_.schedule(now, req.len);
      break;
    case MoveKind::kRestore:
      if (!store_) return Status::kUnsupported;
      if (!reserve(req.to == Tier::kHbm ? hbm_ : host_, req.to == Tier::kHbm ? l->hbm : l->host))
        return Status::kNoSpace;
      done = nvme_read_.schedule(now, req.len);
      if (req.to == Tier::kHbm) done = pcie_up_.schedule(done, req.len);
      break;
    case MoveKind::kDiscard:
      break;
  }
  if (req.demand) done += fault_ns_;
  jobs_.push(Job{done, seq_++, req});
  return Status::kOk;
}

// A chunk of a region that started in host RAM has no host slot until it is
// first moved: its bytes are zeros (fresh memory).
std::span<std::byte> SimMover::host_bytes(Loc& l, uint64_t len) {
  if (l.host == SlotArena::kNone) {
    l.host = host_.alloc();
    std::memset(host_.bytes(l.host, len).data(), 0, len);
  }
  return host_.bytes(l.host, len);
}

Status SimMover::execute(const MoveRequest& req) {
  Loc& l = *loc(req.region, req.chunk);
  auto drop = [](SlotArena& arena, uint32_t& slot) {
    if (slot == SlotArena::kNone) return;
    arena.release(slot);
    slot = SlotArena::kNone;
  };
  switch (req.kind) {
    case MoveKind::kPromote:
      if (req.from == Tier::kUnpopulated) {
        std::memset(hbm_.bytes(l.hbm, req.len).data(), 0, req.len);
      } else {
        std::memcpy(hbm_.bytes(l.hbm, req.len).data(), host_bytes(l, req.len).data(), req.len);
        drop(host_, l.host);
      }
      return Status::kOk;
    case MoveKind::kDemote:
      std::memcpy(host_.bytes(l.host, req.len).data(), hbm_.bytes(l.hbm, req.len).data(), req.len);
      drop(hbm_, l.hbm);
      return Status::kOk;
    case MoveKind::kSpill:
      if (req.write_back) {
        Status s = store_->put(req.key, host_bytes(l, req.len));
        if (!ok(s)) return s;  // the host copy stays: nothing is lost
      }
      drop(host_, l.host);
      return Status::kOk;
    case MoveKind::kRestore: {
      SlotArena& arena = req.to == Tier::kHbm ? hbm_ : host_;
      uint32_t& slot = req.to == Tier::kHbm ? l.hbm : l.host;
      Status s = store_->get(req.key, arena.bytes(slot, req.len));
      if (!ok(s)) drop(arena, slot);
      else if (req.drop_store_copy) store_->erase(req.key);
      return s;
    }
    case MoveKind::kDiscard:
      drop(hbm_, l.hbm);
      drop(host_, l.host);
      if (req.drop_store_copy && store_) store_->erase(req.key);
      return Status::kOk;
  }
  return Status::kInvalid;
}

size_t SimMover::poll(std::span<MoveCompletion> out) {
  size_t n = 0;
  const uint64_t now = clock_.now_ns();
  while (n < out.size() && !jobs_.empty() && jobs_.top().done_at <= now) {
    Job job = jobs_.top();
    jobs_.pop();
    out[n++] = MoveCompletion{job.req.tag, execute(job.req)};
  }
  return n;
}

size_t SimMover::wait(std::span<MoveCompletion> out) {
  if (jobs_.empty() || out.empty()) return 0;
  clock_.advance_to(jobs_.top().done_at);
  return poll(out);
}

}  // namespace kvpager
