#include "cuda_mover.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <thread>

namespace kvpager::cuda {

namespace {

CUmemLocation host_location() {
  CUmemLocation l{};
  l.type = CU_MEM_LOCATION_TYPE_HOST;
  l.id = 0;
  return l;
}

CUmemLocation device_location(CUdevice dev) {
  CUmemLocation l{};
  l.type = CU_MEM_LOCATION_TYPE_DEVICE;
  l.id = dev;
  return l;
}

// Link speeds for the cost model (only the cost-aware policy uses it).
constexpr double kPcieBytesPerNs = 25.0;   // 25 GB/s
constexpr double kNvmeReadBytesPerNs = 3.0;
constexpr double kNvmeWriteBytesPerNs = 2.0;
constexpr double kLaunchNs = 10'000;
constexpr double kNvmeLatencyNs = 80'000;

// Between two looks at something that has no event to block on (a fence
// still waiting for launches to close, no staging slot).
void nap() { std::this_thread::sleep_for(std::chrono::microseconds(20)); }

}  // namespace

CudaMover::CudaMover(const Driver& d, const Config& cfg, CUcontext ctx, Store* store, Quiescence& q,
                     StreamRegistry& streams, UnsafeCounter counters, StoreQueue* io)
    : d_(d), ctx_(ctx), store_(store), io_(io), q_(q), streams_(streams), counters_(std::move(counters)),
      chunk_size_(cfg.chunk_size) {
  if (store_ && !io_) {
    own_io_ = std::make_unique<BlockingStoreQueue>(*store_);
    io_ = own_io_.get();
  }
  if (!d_.can_page())
    throw ConfigError(fmt::format("the CUDA driver ({}) cannot prefetch managed memory to a location (needs 12.2+)",
                                  d_.version));
  if (d_.ctxGetDevice(&device_) != CUDA_SUCCESS) throw ConfigError("no current CUDA context for the pager");
  int concurrent = 0;
  d_.deviceGetAttribute(&concurrent, CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS, device_);
  if (!concurrent)
    throw ConfigError(fmt::format("device {} has no concurrent managed access: the pager cannot move memory", device_));
  size_t free = 0, total = 0;
  if (d_.memGetInfo(&free, &total) != CUDA_SUCCESS) throw ConfigError("cuMemGetInfo failed");
  // auto budget: 90 % of the memory free now, in whole chunks.
  hbm_bytes_ = std::max<uint64_t>(chunk_size_, static_cast<uint64_t>(free) / 10 * 9 / chunk_size_ * chunk_size_);
  if (d_.streamCreate(&stream_, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS) throw ConfigError("cuStreamCreate failed");
  down_ = stream_;
  if (cfg.cuda_move_streams > 1 && d_.streamCreate(&down_, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS) {
    d_.streamDestroy(stream_);
    throw ConfigError("cuStreamCreate failed (the mover's second stream)");
  }
  void* host = nullptr;
  if (d_.memHostAlloc(&host, kStagingChunks * chunk_size_, 0) != CUDA_SUCCESS) {
    if (down_ != stream_) d_.streamDestroy(down_);
    d_.streamDestroy(stream_);
    throw ConfigError(fmt::format("cannot pin {} of host memory for staging", format_bytes(kStagingChunks * chunk_size_)));
  }
  staging_ = static_cast<std::byte*>(host);
  for (int i = static_cast<int>(kStagingChunks) - 1; i >= 0; --i) staging_free_.push_back(i);
}

CudaMover::~CudaMover() {
  // The pager drained before: nothing is in flight. Should a store I/O still
  // be, it reads or writes the staging buffer: wait for it first.
  while (io_inflight_ > 0 && io_->pending() > 0) collect_io(true);
  for (CUevent ev : events_) d_.eventDestroy(ev);
  if (staging_) d_.memFreeHost(staging_);
  if (down_ && down_ != stream_) d_.streamDestroy(down_);
  if (stream_) d_.streamDestroy(stream_);
}

bool CudaMover::check(CUresult r) {
  if (r == CUDA_SUCCESS) return true;
  ++stats_.driver_errors;
  stats_.last_driver_error = static_cast<uint64_t>(r);
  return false;
}

double CudaMover::estimate_ns(MoveKind kind, Tier from, Tier to, uint64_t len) const {
  const auto bytes = static_cast<double>(len);
  switch (kind) {
    case MoveKind::kPromote: return from == Tier::kUnpopulated ? kLaunchNs : kLaunchNs + bytes / kPcieBytesPerNs;
    case MoveKind::kDemote: return kLaunchNs + bytes / kPcieBytesPerNs;
    case MoveKind::kSpill: return kNvmeLatencyNs + bytes / kNvmeWriteBytesPerNs + bytes / kPcieBytesPerNs;
    case MoveKind::kRestore:
      return kNvmeLatencyNs + bytes / kNvmeReadBytesPerNs + (to == Tier::kHbm ? 2.0 : 1.0) * bytes / kPcieBytesPerNs;
    case MoveKind::kDiscard: return kLaunchNs;
  }
  return 0.0;
}

// ---------------------------------------------------------------- regions

CudaMover::RegionState* CudaMover::region(RegionId id) {
  if (id.slot >= regions_.size()) return nullptr;
  RegionState& r = regions_[id.slot];
  return r.live && r.gen == id.gen ? &r : nullptr;
}

void CudaMover::region_added(RegionId id, uint64_t base, uint64_t size) {
  if (regions_.size() <= id.slot) regions_.resize(id.slot + 1);
  RegionState& r = regions_[id.slot];
  r.gen = id.gen;
  r.live = true;
  r.base = base;
  r.size = size;
  r.unsafe = counters_ ? counters_(base) : nullptr;
  r.unsafe_chunk.assign((size + chunk_size_ - 1) / chunk_size_, 0);
}

void CudaMover::region_removed(RegionId id) {
  RegionState* r = region(id);
  if (!r) return;
  for (uint8_t& u : r->unsafe_chunk) {
    if (u && r->unsafe) r->unsafe->fetch_sub(1);
    if (u && total_) total_->fetch_sub(1);
    u = 0;
  }
  r->live = false;
}

Status CudaMover::region_split(RegionId head, RegionId tail, uint32_t at) {
  RegionState* h = region(head);
  if (!h || at >= h->unsafe_chunk.size()) return Status::kInvalid;
  const uint64_t offset = uint64_t{at} * chunk_size_;
  const uint64_t base = h->base + offset, size = h->size - offset;
  std::vector<uint8_t> moved(h->unsafe_chunk.begin() + at, h->unsafe_chunk.end());
  h->unsafe_chunk.resize(at);
  h->size = offset;
  region_added(tail, base, size);  // may reallocate regions_: h is stale below
  RegionState& t = regions_[tail.slot];
  RegionState& hh = regions_[head.slot];
  t.unsafe_chunk = std::move(moved);
  // No counter of its own yet: the head's, which still covers the tail for
  // whoever reads it, goes on counting the tail's chunks (bind_counter).
  if (!t.unsafe) t.unsafe = hh.unsafe;
  if (t.unsafe != hh.unsafe) move_count(t, hh.unsafe, t.unsafe);
  return Status::kOk;
}

void CudaMover::bind_counter(RegionId id) {
  RegionState* r = region(id);
  if (!r || !counters_) return;
  std::atomic<uint32_t>* c = counters_(r->base);
  if (c && c != r->unsafe) move_count(*r, r->unsafe, c);
}

void CudaMover::move_count(RegionState& r, std::atomic<uint32_t>* from, std::atomic<uint32_t>* to) {
  const auto n = static_cast<uint32_t>(std::count(r.unsafe_chunk.begin(), r.unsafe_chunk.end(), uint8_t{1}));
  // `to` counts nothing else (it may start higher, never lower: see
  // bind_counter); it is set before `from` drops, so whoever reads either
  // never sees fewer than the chunks it covers.
  to->store(n);
  if (from) from->fetch_sub(n);
  r.unsafe = to;
}

void CudaMover::mark_unsafe(const MoveRequest& req, bool unsafe) {
  RegionState* r = region(req.region);
  if (!r || req.chunk >= r->unsafe_chunk.size()) return;
  uint8_t& u = r->unsafe_chunk[req.chunk];
  if (u == static_cast<uint8_t>(unsafe)) return;
  u = unsafe;
  // Sequentially consistent: the spill fence relies on it (quiescence.h).
  // The total goes up first and down last, so it is never below a region's.
  if (unsafe) {
    if (total_) total_->fetch_add(1);
    if (r->unsafe) r->unsafe->fetch_add(1);
  } else {
    if (r->unsafe) r->unsafe->fetch_sub(1);
    if (total_) total_->fetch_sub(1);
  }
}

// ---------------------------------------------------------------- events

CUevent CudaMover::take_event() {
  if (!events_.empty()) {
    CUevent ev = events_.back();
    events_.pop_back();
    return ev;
  }
  CUevent ev = nullptr;
  return check(d_.eventCreate(&ev, CU_EVENT_DISABLE_TIMING)) ? ev : nullptr;
}

void CudaMover::give_event(CUevent ev) {
  if (ev) events_.push_back(ev);
}

CudaMover::EventState CudaMover::event_state(CUevent ev) {
  if (!ev) return EventState::kDone;
  CUresult r = d_.eventQuery(ev);
  if (r == CUDA_ERROR_NOT_READY) return EventState::kPending;
  return check(r) ? EventState::kDone : EventState::kFailed;
}

bool CudaMover::event_done(CUevent ev) { return event_state(ev) != EventState::kPending; }

std::shared_ptr<CudaMover::Batch> CudaMover::record_batch(CUstream on) {
  auto b = std::make_shared<Batch>();
  b->ev = take_event();
  if (!b->ev || !check(d_.eventRecord(b->ev, on))) {
    // No event: wait here instead. A batch without one counts as done at
    // once, and with two streams the chunk's next move may go on the other
    // one: it must not start before this one has finished.
    give_event(b->ev);
    b->ev = nullptr;
    check(d_.streamSynchronize(on));
  }
  ++stats_.batches;
  return b;
}

bool CudaMover::batch_done(Batch& b) {
  if (b.done) return true;
  if (b.pending_at == round_) return false;
  if (!event_done(b.ev)) {
    b.pending_at = round_;
    return false;
  }
  b.done = true;
  if (b.kind >= 0) {  // the first job to see it done times it
    const uint64_t ns = clock_.now_ns() - b.recorded_ns;
    if (b.kind == 0) {
      stats_.promote_ns += ns;
      ++stats_.promote_batches;
    } else {
      stats_.demote_ns += ns;
      ++stats_.demote_batches;
    }
    b.kind = -1;
  }
  return true;
}

// ---------------------------------------------------------------- moves

Status CudaMover::submit(const MoveRequest& req) {
  RegionState* r = region(req.region);
  if (!r || req.chunk >= r->unsafe_chunk.size() || req.len > chunk_size_) return Status::kInvalid;
  switch (req.kind) {
    case MoveKind::kSpill:
      if (!store_ || !d_.can_spill()) return Status::kUnsupported;
      mark_unsafe(req, true);  // before anything else: launches from now on restore it first
      break;
    case MoveKind::kRestore:
      if (!store_) return Status::kUnsupported;
      break;
    default:
      break;
  }
  Job j;
  j.req = req;
  jobs_.push_back(std::move(j));
  return Status::kOk;
}

void CudaMover::finish(Job& j, Status s) {
  // A restore that landed may give its store copy up (MoveRequest).
  if (ok(s) && j.req.kind == MoveKind::kRestore && j.req.drop_store_copy && store_) store_->erase(j.req.key);
  j.done = true;
  j.status = s;
  give_event(j.copy_ev);
  j.copy_ev = nullptr;
  if (j.staging >= 0) staging_free_.push_back(j.staging);
  j.staging = -1;
  if (j.batch && --j.batch->users == 0) give_event(j.batch->ev);
  j.batch.reset();
  j.fence.reset();
  ready_.push_back(MoveCompletion{j.req.tag, s});
}

void CudaMover::released(Job& j) {
  if (j.req.drop_store_copy && store_) store_->erase(j.req.key);
  mark_unsafe(j.req, false);
  finish(j, Status::kOk);
}

void CudaMover::flush() {
  // Queued promotes and demotes go out as coalesced ranges; spills and drops
  // share one fence taken now (after the spills' chunks were marked).
  struct Range {
    uint64_t addr, len;
    bool ok;
  };
  std::vector<Job*> moves[2];  // promote, demote
  std::shared_ptr<Fence> fence;
  auto fenced = [&](Job& j) {
    if (!fence) {
      fence = std::make_shared<Fence>();
      fence->started_ns = clock_.now_ns();
      q_.take(fence->ticket);
    }
    j.fence = fence;
    j.stage = Stage::kFence;
  };
  for (Job& j : jobs_) {
    if (j.done || j.stage != Stage::kQueued) continue;
    switch (j.req.kind) {
      case MoveKind::kPromote: moves[0].push_back(&j); break;
      case MoveKind::kDemote: moves[1].push_back(&j); break;
      case MoveKind::kDiscard:
        // Releasing bytes in HBM or host RAM (a drop) waits for the work
        // queued before it, like a spill; a freed region's memory goes back
        // whole (the free waits for that work), and a spilled range holds
        // nothing: only the store copy goes.
        if (!j.req.freeing && (j.req.from == Tier::kHbm || j.req.from == Tier::kHost) && d_.memDiscardBatchAsync)
          fenced(j);
        else
          released(j);
        break;
      case MoveKind::kSpill:
        fenced(j);
        break;
      case MoveKind::kRestore:
        j.stage = Stage::kStaging;
        ++restores_waiting_;
        break;
    }
  }
  // Promotes first: a prefetch to the CPU may not return until its bytes
  // have moved (the UVM driver makes the CPU's mappings after the copy, so
  // its migrate ioctl waits for it), and promotes queued before it on the
  // up stream move meanwhile.
  for (int k = 0; k < 2; ++k) {
    auto& list = moves[k];
    if (list.empty()) continue;
    std::sort(list.begin(), list.end(), [](const Job* a, const Job* b) { return a->req.addr < b->req.addr; });
    // Contiguous chunks of one region make a range; each job keeps its range.
    std::vector<Range> ranges;
    std::vector<size_t> range_of(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      const MoveRequest& req = list[i]->req;
      if (i > 0 && list[i - 1]->req.region == req.region && ranges.back().addr + ranges.back().len == req.addr)
        ranges.back().len += req.len;
      else
        ranges.push_back(Range{req.addr, req.len, true});
      range_of[i] = ranges.size() - 1;
    }
    // A range the driver refuses fails its own chunks only: the other ranges
    // did move, and the pager must see them where they now are (a demote
    // reported failed would be believed in HBM while kernels read it from
    // host RAM). The refused range is put back where the pager believes it
    // is: its advice, and a prefetch back in case the refused one moved part
    // of it (with accessed-by set, kernels would read such a part remotely
    // for good, the pager never knowing). Its chunks complete, failed, when
    // that put-back is done, so no later move of them can race it.
    const CUmemLocation where = k == 0 ? device_location(device_) : host_location();
    const CUmemLocation from = k == 0 ? host_location() : device_location(device_);
    const CUstream on = k == 0 ? stream_ : down_;
    const CUstream back = k == 0 ? down_ : stream_;
    const uint64_t t0 = clock_.now_ns();
    bool refused_any = false;
    for (Range& r : ranges) {
      r.ok = check(d_.memAdvise(r.addr, r.len, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, where)) &&
             check(d_.memPrefetchAsync(r.addr, r.len, where, 0, on));
      if (!r.ok) {
        ++stats_.failed_ranges;
        refused_any = true;
        const uint64_t refused = stats_.last_driver_error;
        check(d_.memAdvise(r.addr, r.len, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, from));
        check(d_.memPrefetchAsync(r.addr, r.len, from, 0, back));
        stats_.last_driver_error = refused;  // what refused the range, not the put-back
      }
    }
    stats_.ranges += ranges.size();
    stats_.issue_ns += clock_.now_ns() - t0;
    auto batch = record_batch(on);
    batch->kind = k;
    batch->recorded_ns = clock_.now_ns();
    std::shared_ptr<Batch> put_back = refused_any ? record_batch(back) : nullptr;
    for (size_t i = 0; i < list.size(); ++i) {
      Job* j = list[i];
      const bool moved = ranges[range_of[i]].ok;
      if (!moved) j->status = Status::kIoError;  // left where it was, once the put-back is done
      j->batch = moved ? batch : put_back;
      ++j->batch->users;
      j->stage = Stage::kIssued;
    }
    if (batch->users == 0) give_event(batch->ev);
    if (put_back && put_back->users == 0) give_event(put_back->ev);
  }
}

bool CudaMover::fence_ready(Fence& f) {
  if (f.done) return true;
  if (!f.recorded) {
    if (!q_.passed(f.ticket)) {
      if (clock_.now_ns() - f.started_ns < kFenceTimeoutNs) return false;
      f.failed = f.done = true;  // a launch still in its bracket after a second: not now
      ++stats_.fence_refusals;
      return true;
    }
    if (!streams_.record_fence(d_, events_, f.events)) {
      f.failed = f.done = true;
      ++stats_.fence_refusals;
      return true;
    }
    f.destroyed = streams_.destroyed_count();
    f.recorded = true;
  }
  if (f.pending_at == round_) return false;
  for (CUevent ev : f.events) {
    if (event_done(ev)) continue;
    if (clock_.now_ns() - f.started_ns < kFenceTimeoutNs) {
      f.pending_at = round_;
      return false;
    }
    // Gave up: the events go back (re-recording them later is fine).
    const size_t own = f.events.size() - f.destroyed;
    for (size_t i = 0; i < own; ++i) give_event(f.events[i]);
    for (size_t i = own; i < f.events.size(); ++i) streams_.keep_destroyed(f.events[i]);
    f.events.clear();
    f.failed = f.done = true;
    ++stats_.fence_refusals;
    return true;
  }
  const size_t own = f.events.size() - f.destroyed;
  for (size_t i = 0; i < f.events.size(); ++i) {
    if (i < own) give_event(f.events[i]);
    else d_.eventDestroy(f.events[i]);
  }
  f.events.clear();
  f.done = true;
  ++stats_.fences;
  return true;
}

// One step of a job; true if it moved on (call again).
bool CudaMover::advance(Job& j) {
  const MoveRequest& req = j.req;
  switch (j.stage) {
    case Stage::kQueued:
      return false;
    case Stage::kFence: {
      if (!fence_ready(*j.fence)) return false;
      if (j.fence->failed) {
        mark_unsafe(req, false);
        finish(j, Status::kBusy);  // stays where it is; the pager tries again later
        return false;
      }
      j.fence.reset();
      if (req.kind == MoveKind::kDiscard || !req.write_back) {
        // A drop, or a spill whose bytes the store already holds: only
        // release the range.
        CUdeviceptr p = req.addr;
        size_t n = req.len;
        check(d_.memDiscardBatchAsync(&p, &n, 1, 0, stream_));
        j.batch = record_batch(stream_);
        j.batch->users = 1;
        j.stage = Stage::kIssued;
        return true;
      }
      j.stage = Stage::kStaging;
      return true;
    }
    case Stage::kStaging: {
      // A waiting restore has the next free slot, and a spill never takes
      // the last one (see "Restores first").
      if (staging_free_.empty() ||
          (req.kind != MoveKind::kRestore && (restores_waiting_ > 0 || staging_free_.size() == 1)))
        return false;
      j.staging = staging_free_.back();
      staging_free_.pop_back();
      if (req.kind == MoveKind::kRestore) {
        Status s = submit_io(j);
        if (s == Status::kAgain) {  // the store's queue is full: the slot goes back, the restore keeps its turn
          staging_free_.push_back(j.staging);
          j.staging = -1;
          return false;
        }
        --restores_waiting_;
        if (!ok(s)) {
          finish(j, s);  // still only in the store: stays unsafe
          return false;
        }
        j.stage = Stage::kStore;
        return true;
      }
      if (!check(d_.memcpyDtoHAsync(staging(j.staging), req.addr, req.len, down_))) {
        mark_unsafe(req, false);
        finish(j, Status::kIoError);
        return false;
      }
      record_copy(j, down_);
      return true;
    }
    case Stage::kCopy: {
      // A copy that failed is not done: a spill would store whatever the
      // staging buffer held, a restore would report (and, under a finite
      // nvme_capacity, erase its store copy for) bytes that never arrived.
      const EventState copied = event_state(j.copy_ev);
      if (copied == EventState::kPending) return false;
      if (copied == EventState::kFailed) {
        if (req.kind != MoveKind::kRestore) mark_unsafe(req, false);  // a spill's bytes are still in the range
        finish(j, Status::kIoError);  // a restore's are still only in the store: it stays unsafe
        return false;
      }
      if (req.kind == MoveKind::kRestore) {
        mark_unsafe(req, false);  // the bytes are back in the range
        finish(j, Status::kOk);
        return false;
      }
      // The store's last slot is a restore's (see "Restores first").
      if (const size_t cap = io_->capacity(); cap > 1 && spills_in_store_ + 1 >= cap) return false;
      Status s = submit_io(j);
      if (s == Status::kAgain) return false;  // the store's queue is full: again on a later pass
      if (!ok(s)) {
        mark_unsafe(req, false);  // nothing was discarded: the bytes are still in host RAM
        finish(j, s);
        return false;
      }
      give_event(j.copy_ev);
      j.copy_ev = nullptr;
      j.stage = Stage::kStore;
      ++spills_in_store_;
      return true;
    }
    case Stage::kStore: {
      auto it = io_done_.find(j.seq);
      if (it == io_done_.end()) return false;
      const Status s = it->second;
      io_done_.erase(it);
      if (req.kind == MoveKind::kRestore) {
        if (!ok(s)) {
          finish(j, s);  // still only in the store: stays unsafe
          return false;
        }
        bool good = check(d_.memcpyHtoDAsync(req.addr, staging(j.staging), req.len, stream_));
        if (good && req.to == Tier::kHbm) {
          const CUmemLocation dev = device_location(device_);
          good = check(d_.memAdvise(req.addr, req.len, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, dev)) &&
                 check(d_.memPrefetchAsync(req.addr, req.len, dev, 0, stream_));
        }
        if (!good) {
          finish(j, Status::kIoError);
          return false;
        }
        record_copy(j, stream_);
        return true;
      }
      staging_free_.push_back(j.staging);
      j.staging = -1;
      --spills_in_store_;
      if (!ok(s)) {
        mark_unsafe(req, false);  // nothing was discarded: the bytes are still in host RAM
        finish(j, s);
        return false;
      }
      CUdeviceptr p = req.addr;
      size_t n = req.len;
      check(d_.memDiscardBatchAsync(&p, &n, 1, 0, stream_));
      j.batch = record_batch(stream_);
      j.batch->users = 1;
      j.stage = Stage::kIssued;
      return true;
    }
    case Stage::kIssued: {
      if (!batch_done(*j.batch)) return false;
      if (req.kind == MoveKind::kDiscard) released(j);
      else finish(j, j.status);  // kIoError: a refused range, put back
      return false;
    }
  }
  return false;
}

void CudaMover::record_copy(Job& j, CUstream on) {
  j.copy_ev = take_event();
  if (!j.copy_ev || !check(d_.eventRecord(j.copy_ev, on))) {
    give_event(j.copy_ev);
    j.copy_ev = nullptr;
    check(d_.streamSynchronize(on));
  }
  j.stage = Stage::kCopy;
}

Status CudaMover::submit_io(Job& j) {
  j.seq = ++next_seq_;
  const std::span<std::byte> buf(staging(j.staging), j.req.len);
  const Status s = j.req.kind == MoveKind::kRestore ? io_->submit_get(j.seq, j.req.key, buf)
                                                    : io_->submit_put(j.seq, j.req.key, buf);
  if (s == Status::kAgain) ++stats_.store_full;
  if (ok(s)) {
    ++io_inflight_;
    stats_.store_peak = std::max<uint64_t>(stats_.store_peak, io_->in_flight());
  }
  return s;
}

void CudaMover::collect_io(bool block) {
  // Poll even with nothing of ours in flight: the store's queue may be full
  // of another user's I/O (a publication's writer on this thread), which
  // only moves on when somebody reaps -- a spill refused with kAgain would
  // otherwise wait for it forever.
  if (!io_ || (block && io_inflight_ == 0)) return;
  std::array<StoreCompletion, 32> got;
  size_t n = block ? io_->wait(got) : io_->poll(got);
  while (n > 0) {
    for (size_t i = 0; i < n; ++i) io_done_[got[i].tag] = got[i].status;
    io_inflight_ -= std::min<uint64_t>(io_inflight_, n);
    n = io_->poll(got);
  }
  // Reaping moved other I/O on to its next step (a write's file opened, its
  // bytes written): hand that to the device before the copies that follow.
  io_->flush();
}

void CudaMover::rest() {
  ++round_;  // the next look at a batch or fence asks the driver again
  nap();
}

void CudaMover::progress() {
  ++round_;
  collect_io(false);
  flush();
  // Restores first, and again after the others have given back the staging
  // slots they were done with (spills do not take one while a restore waits).
  auto step = [this](bool restores_only) {
    for (Job& j : jobs_) {
      if (restores_only && j.req.kind != MoveKind::kRestore) continue;
      while (!j.done && advance(j)) {
      }
    }
  };
  step(true);
  step(false);
  if (restores_waiting_ > 0 && !staging_free_.empty()) step(true);
  if (io_) {
    io_->flush();
    // What finished meanwhile (or at once, for a blocking store) moves on now.
    const size_t before = io_done_.size();
    collect_io(false);
    if (io_done_.size() > before) {
      step(true);
      step(false);
      io_->flush();
    }
  }
  while (!jobs_.empty() && jobs_.front().done) jobs_.pop_front();
  // Jobs finish out of order; compact when done ones pile up behind a slow one.
  if (jobs_.size() > 64) std::erase_if(jobs_, [](const Job& j) { return j.done; });
}

size_t CudaMover::poll(std::span<MoveCompletion> out) {
  progress();
  size_t n = 0;
  while (n < out.size() && !ready_.empty()) {
    out[n++] = ready_.front();
    ready_.pop_front();
  }
  return n;
}

size_t CudaMover::wait(std::span<MoveCompletion> out) {
  if (out.empty()) return 0;
  for (;;) {
    size_t n = poll(out);
    if (n > 0 || jobs_.empty()) return n;
    // Block on the first event something waits for that is not done yet;
    // else on the store (a copy done whose write the full queue refused
    // waits for the store too); otherwise (a fence still waiting for
    // launches to close, no staging slot) yield briefly.
    CUevent ev = nullptr;
    for (const Job& j : jobs_) {
      if (j.done) continue;
      if (j.stage == Stage::kCopy && j.copy_ev) ev = j.copy_ev;
      else if (j.stage == Stage::kIssued && j.batch && j.batch->ev) ev = j.batch->ev;
      if (ev && !event_done(ev)) break;
      ev = nullptr;
    }
    if (ev) check(d_.eventSynchronize(ev));
    else if (io_inflight_ > 0) collect_io(true);
    else rest();
  }
}

// ---------------------------------------------------------------- reads

Status CudaMover::read_fence() {
  // A spill fence already recorded took the events of the streams destroyed
  // before it: ours would not wait for them. Let such fences finish (or give
  // up, which hands those events back to the registry for ours).
  for (;;) {
    bool waiting = false;
    for (Job& j : jobs_)
      if (!j.done && j.fence && j.fence->recorded && !fence_ready(*j.fence)) waiting = true;
    if (!waiting) break;
    rest();
  }
  Fence f;
  f.started_ns = clock_.now_ns();
  q_.take(f.ticket);
  while (!fence_ready(f)) rest();
  return f.failed ? Status::kBusy : Status::kOk;
}

int CudaMover::take_staging_waiting() {
  const uint64_t start = clock_.now_ns();
  while (staging_free_.empty()) {
    if (clock_.now_ns() - start >= kFenceTimeoutNs) return -1;
    progress();  // spills and restores in flight give their slots back as they finish
    if (staging_free_.empty()) rest();
  }
  const int slot = staging_free_.back();
  staging_free_.pop_back();
  return slot;
}

Status CudaMover::read_chunk(const ChunkRef& ref, std::span<std::byte> out) {
  if (out.size() != ref.len || ref.len > chunk_size_) return Status::kInvalid;
  const RegionState* r = region(ref.region);
  if (!r) return Status::kNotFound;
  if (ref.chunk >= r->unsafe_chunk.size() || ref.addr < r->base || ref.addr + ref.len > r->base + r->size)
    return Status::kInvalid;
  if (ref.tier == Tier::kNvme) return store_ ? store_->get(ref.key, out) : Status::kUnsupported;
  if (ref.tier != Tier::kHbm && ref.tier != Tier::kHost) return Status::kInvalid;
  if (r->unsafe_chunk[ref.chunk]) return Status::kBusy;  // the range does not hold its bytes now
  if (Status s = read_fence(); !ok(s)) return s;
  const int slot = take_staging_waiting();
  if (slot < 0) return Status::kBusy;
  std::byte* buf = staging(slot);
  const bool good =
      check(d_.memcpyDtoHAsync(buf, ref.addr, ref.len, down_)) && check(d_.streamSynchronize(down_));
  if (good) {
    std::memcpy(out.data(), buf, ref.len);
    ++stats_.reads;
  }
  staging_free_.push_back(slot);
  return good ? Status::kOk : Status::kIoError;
}

}  // namespace kvpager::cuda
