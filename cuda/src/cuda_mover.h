// The CUDA mover: carries chunks of managed regions between HBM, host RAM and
// the NVMe store with the driver's managed-memory calls.
//
//   promote  HOST/UNPOPULATED -> HBM: preferred location = the GPU, prefetch to
//            the GPU on the mover's up stream.
//   demote   HBM -> HOST: preferred location = CPU (accessed-by the GPU is set
//            for the whole region when it is allocated, so kernels keep reading
//            it remotely instead of migrating it back), prefetch to the CPU
//            on the mover's down stream.
//   spill    HOST -> NVME: fence (below), copy the bytes through a pinned
//            staging buffer into the store, then discard the range
//            (cuMemDiscardBatchAsync: its pages are released, its contents
//            become indeterminate).
//   restore  NVME -> HOST/HBM: read from the store into staging, copy into
//            the range, prefetch to the GPU if that is the target.
//   discard  drop the bytes (and the store copy if asked). Bytes in HBM or
//            host RAM (a drop hint) are released after the spill's fence:
//            work queued before may still read them; if no fence can be had
//            the discard fails as busy and the bytes stay. A region being
//            freed (MoveRequest::freeing) is not released at all: the
//            driver's free does that, in order with the program's work.
//   read     (read_chunk: publishing a context) copy a chunk's bytes out and
//            leave it where it is; below.
//
// Spill safety. A chunk is marked unsafe (its region's counter, read by the
// launch path) before anything happens to it, and stays unsafe until it has
// been restored or discarded. Before the bytes are copied out, a fence makes
// sure no operation queued earlier can still touch them: it waits until every
// launch-path bracket open at the mark has closed (later ones see the mark and
// restore first), then records an event on every stream that carried an
// operation on managed memory (and on the legacy stream) and waits for them.
// If that cannot be done (a stream capture is active, a record failed, the
// streams are not done within kFenceTimeoutNs), the spill fails with kBusy
// and the chunk stays in host RAM.
//
// Reading a chunk back (read_chunk). HBM and HOST chunks are copied out of
// the managed range without moving it: no advice, no prefetch, no discard,
// and the chunk is not marked unsafe (launches need not restore anything).
// The copy must not race work the program queued before the read, so a read
// fence comes first: the spill fence without the mark -- every launch-path
// bracket open now closes, then an event on every noted stream and on the
// legacy stream completes (spill fences already recorded are let finish
// first: they hold the events of streams destroyed before them). If it
// cannot be had (capture active, record failed, not done within
// kFenceTimeoutNs) the read fails kBusy and nothing is copied. Then
// cuMemcpyDtoHAsync on the side stream into a free staging slot (moves in
// flight are progressed until one frees, bounded the same way, else kBusy),
// a stream synchronize, and a memcpy into out; a driver failure is kIoError.
// NVME chunks are read from the store (kUnsupported without one). kInvalid
// if out.size() != ref.len, ref.len > chunk_size, the range is not the
// region's or the tier is not one of those; kNotFound for an unknown region;
// kBusy for a chunk marked unsafe (on its way to or from the store: the range
// does not hold its bytes -- the pager never asks for one in flight). One
// fence per chunk: work queued after it is concurrent with the read, and its
// writes may or may not be in the bytes (publish a context the program is
// not writing).
//
// Restores first. Spills and restores share the staging slots, and a restore
// is usually awaited (a launch that reads the range is held until it is back,
// or a fault or a prefetch of a resumed context wants it) while a spill is
// background work that may come by the thousand (a parked context). So a
// restore waiting for a slot gets the next one free: no spill takes a slot
// while a restore waits, and restores advance before other moves. A restore
// then waits for at most the copies already in flight, never for the spills
// queued ahead of it (on the simulated device reads and writes of the store
// run on separate links, which this matches).
//
// The store is driven through its queue (StoreQueue): a spill's write and a
// restore's read run while the pager thread goes on, up to one per staging
// slot at once, and a move waits in Stage::kStore for its completion. A spill
// never takes the last free staging slot, nor the last slot of the store's
// queue (StoreQueue::capacity, when above 1), so a restore never waits for
// the store writes of a parked context: only for its own read. (Another
// user of the same store -- a publication -- can still fill its queue.)
//
// Two streams (cuda.move_streams = 2, the default): promotes, restores'
// copies in and discards go on the up stream; demotes, spills' copies out
// and read_chunk's copies on the down stream. PCIe is full duplex: while a
// swap demotes one context and promotes another, both directions carry
// bytes, where one stream would run them one after the other. Nothing moves
// one chunk on both at once (the pager never moves a chunk in flight), and a
// move that follows another of the same chunk (a spill's discard after its
// copy out) is issued only after the host saw the first one's event. With
// cuda.move_streams = 1 both are the same stream.
//
// Moves are batched: everything submitted before the next poll()/wait() is
// issued together, contiguous chunks of a region as one range, and completes
// on one event. A range whose advice or prefetch the driver refuses fails its
// own chunks only (kIoError, once its advice is put back and a prefetch has
// taken back whatever part the refused one moved): the batch's other ranges
// moved, and complete as moved. All calls come from
// the pager thread.
#pragma once

#include <cuda.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "driver.h"
#include "kvpager/config.h"
#include "kvpager/mover.h"
#include "kvpager/store.h"
#include "quiescence.h"
#include "streams.h"

namespace kvpager::cuda {

class SteadyClock final : public Clock {
 public:
  uint64_t now_ns() const override {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
  }
};

struct CudaMoverStats {
  uint64_t batches = 0;          // driver submissions (one per flush and kind)
  uint64_t ranges = 0;           // coalesced ranges prefetched or discarded
  uint64_t fences = 0;           // fences completed
  uint64_t fence_refusals = 0;   // spills refused because no fence could be built
  uint64_t driver_errors = 0;
  uint64_t last_driver_error = 0;  // the CUresult of the latest driver call that failed
  uint64_t failed_ranges = 0;      // ranges whose advice or prefetch the driver refused (their chunks' moves failed)
  // Where a promote/demote's time goes (for the GPU runs): issue_ns, the
  // pager thread's time inside the advice and prefetch calls (a driver that
  // migrates in the call blocks the pager thread that long); promote_ns and
  // demote_ns, summed over batches, from the batch's event being recorded to
  // the pager seeing it done (the side stream's work behind it included).
  uint64_t issue_ns = 0;
  uint64_t promote_ns = 0, promote_batches = 0;
  uint64_t demote_ns = 0, demote_batches = 0;
  uint64_t reads = 0;            // HBM/host chunks copied out by read_chunk (publishing)
  uint64_t store_peak = 0;       // most store reads and writes submitted and not yet reaped (StoreQueue::in_flight)
  uint64_t store_full = 0;       // submits the store's queue refused as full (retried)
};

class CudaMover final : public Mover {
 public:
  // The counter of chunks of the region at `base` that must not be read (the
  // interposer's region map); nullptr if the region is unknown (yet: the
  // tail of a region_split then counts in its head's until bind_counter).
  using UnsafeCounter = std::function<std::atomic<uint32_t>*(uint64_t base)>;

  static constexpr uint32_t kStagingChunks = 8;
  // A fence not complete after this long gives up (the spill fails as busy,
  // the chunk stays in host RAM): a stream may be waiting on the host for
  // something that waits on the pager.
  static constexpr uint64_t kFenceTimeoutNs = 1'000'000'000;

  // ctx: the context whose device the mover serves (current on the calling
  // thread while it runs). store may be null: spills then fail kUnsupported.
  // io: the store's queue (spills and restores; see above); null: the
  // store's blocking calls, one at a time (BlockingStoreQueue). Both outlive
  // the mover. Throws ConfigError if the driver cannot page managed memory.
  CudaMover(const Driver& d, const Config& cfg, CUcontext ctx, Store* store, Quiescence& q, StreamRegistry& streams,
            UnsafeCounter counters, StoreQueue* io = nullptr);
  ~CudaMover() override;
  CudaMover(const CudaMover&) = delete;
  CudaMover& operator=(const CudaMover&) = delete;

  std::string_view name() const override { return "CUDA device"; }
  bool simulated() const override { return false; }
  uint64_t device_hbm_bytes() const override { return hbm_bytes_; }
  Clock& clock() override { return clock_; }

  void region_added(RegionId id, uint64_t base, uint64_t size) override;
  void region_removed(RegionId id) override;
  Status region_split(RegionId head, RegionId tail, uint32_t at) override;
  Status submit(const MoveRequest& req) override;
  size_t poll(std::span<MoveCompletion> out) override;
  size_t wait(std::span<MoveCompletion> out) override;
  size_t pending() const override { return jobs_.size() + ready_.size(); }
  double estimate_ns(MoveKind kind, Tier from, Tier to, uint64_t len) const override;
  // See "Reading a chunk back" above. Synchronous; from the pager thread.
  Status read_chunk(const ChunkRef& ref, std::span<std::byte> out) override;

  // Region `id` (the tail of a region_split) has a counter of its own now
  // (counters_(its base) answers one): the counter it shared with its head
  // stops counting its chunks, and the new one is set to exactly them. The
  // new counter may already hold more than that, never less: a caller that
  // makes it while the tail still counts in the head's starts it at the
  // head's value (RegionMap::split), so no reader sees too few in between.
  void bind_counter(RegionId id);
  // Also counts every unsafe chunk here (the launch path's fast check).
  void set_total_unsafe(std::atomic<uint32_t>* total) { total_ = total; }
  CUdevice device() const { return device_; }
  // The stream promotes go on, and the one demotes go on (the same with
  // cuda.move_streams = 1).
  CUstream up_stream() const { return stream_; }
  CUstream down_stream() const { return down_; }
  const CudaMoverStats& stats() const { return stats_; }

 private:
  enum class Stage : uint8_t {
    kQueued,    // submitted, not issued
    kFence,     // spill: waiting for its fence
    kStaging,   // spill/restore: waiting for a staging slot
    kCopy,      // spill: copying out; restore: copying in (event)
    kStore,     // spill: writing into the store; restore: reading from it
    kIssued,    // promote/demote/discard/restore tail: waiting for the batch event
  };
  struct Fence {
    uint64_t started_ns = 0;
    Quiescence::Ticket ticket;
    std::vector<CUevent> events;
    size_t destroyed = 0;  // the last `destroyed` events are owned by it
    bool recorded = false;
    bool failed = false;
    bool done = false;
    uint64_t pending_at = 0;  // the round_ that last found it pending
  };
  // Many jobs share one batch (or fence): the driver is asked about its
  // events once per progress() round, not once per job.
  struct Batch {
    CUevent ev = nullptr;
    int users = 0;
    int kind = -1;  // 0 promote, 1 demote (timed in stats_); -1 other
    uint64_t recorded_ns = 0;
    bool done = false;
    uint64_t pending_at = 0;  // the round_ that last found it pending
  };
  struct Job {
    MoveRequest req;
    Stage stage = Stage::kQueued;
    std::shared_ptr<Fence> fence;
    std::shared_ptr<Batch> batch;
    CUevent copy_ev = nullptr;
    uint64_t seq = 0;  // its tag in the store's queue
    int staging = -1;
    bool done = false;
    Status status = Status::kOk;
  };
  struct RegionState {
    uint32_t gen = 0;
    bool live = false;
    uint64_t base = 0;
    uint64_t size = 0;
    std::atomic<uint32_t>* unsafe = nullptr;
    std::vector<uint8_t> unsafe_chunk;  // 1 while chunk i may not be read
  };

  RegionState* region(RegionId id);
  void mark_unsafe(const MoveRequest& req, bool unsafe);
  void move_count(RegionState& r, std::atomic<uint32_t>* from, std::atomic<uint32_t>* to);
  void progress();
  void rest();  // a short sleep between two looks at the same events
  void flush();
  bool advance(Job& j);
  bool fence_ready(Fence& f);
  Status read_fence();
  int take_staging_waiting();
  // Store completions into io_done_; block: wait for one if none is there.
  void collect_io(bool block);
  // The job's store read or write, from/into its staging slot; kAgain: the
  // queue is full (nothing happened).
  Status submit_io(Job& j);
  // Stage::kCopy: an event after the copy just issued on stream `on`.
  void record_copy(Job& j, CUstream on);
  void finish(Job& j, Status s);
  // A discard is done: its store copy (if asked) and its unsafe mark go.
  void released(Job& j);
  CUevent take_event();
  void give_event(CUevent ev);
  // An event after the work queued on stream `on` so far.
  std::shared_ptr<Batch> record_batch(CUstream on);
  bool batch_done(Batch& b);
  // An event's work: still under way, done, or failed on its stream (the
  // error is counted). event_done: not under way any more, either way.
  enum class EventState { kPending, kDone, kFailed };
  EventState event_state(CUevent ev);
  bool event_done(CUevent ev);
  std::byte* staging(int slot) { return staging_ + static_cast<size_t>(slot) * chunk_size_; }
  bool check(CUresult r);

  const Driver& d_;
  CUcontext ctx_;
  CUdevice device_ = 0;
  Store* store_;
  std::unique_ptr<StoreQueue> own_io_;  // io_ when the owner gave none
  StoreQueue* io_ = nullptr;
  std::unordered_map<uint64_t, Status> io_done_;  // completed store I/O by job seq, not yet seen by its job
  uint64_t io_inflight_ = 0;
  uint64_t round_ = 1;  // rounds of looking: progress() and rest() (Batch/Fence::pending_at)
  uint64_t next_seq_ = 0;
  Quiescence& q_;
  StreamRegistry& streams_;
  UnsafeCounter counters_;
  std::atomic<uint32_t>* total_ = nullptr;
  uint64_t chunk_size_;
  uint64_t hbm_bytes_ = 0;
  SteadyClock clock_;
  CUstream stream_ = nullptr;  // up: promotes, restores' copies in, discards
  CUstream down_ = nullptr;    // down: demotes, spills' copies out, reads (== stream_ with one stream)
  std::byte* staging_ = nullptr;
  std::vector<int> staging_free_;
  uint32_t restores_waiting_ = 0;  // restores queued for a staging slot
  uint64_t spills_in_store_ = 0;   // spills in Stage::kStore: their writes in the store's queue
  std::vector<CUevent> events_;
  std::deque<Job> jobs_;
  std::deque<MoveCompletion> ready_;
  std::vector<RegionState> regions_;
  CudaMoverStats stats_;
};

}  // namespace kvpager::cuda
