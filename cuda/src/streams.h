// Which streams operations on managed regions went to, so that a spill can
// wait for every such operation already queued (the fence).
//
// The launch path notes the stream of each operation that referenced a
// managed region: a lock-free probe of a fixed open-addressing table (no
// allocation; the usual case is one load that finds the stream already there).
// The legacy default stream and the per-thread default streams are not
// entered: one flag says "some such operation happened", and the fence then
// records an event on the legacy stream, which runs after all earlier work of
// every blocking stream, per-thread default streams included.
//
// cuStreamDestroy of a noted stream records an event on it first (the fence
// waits for that event instead) and takes the stream out, under a mutex the
// fence holds while it records its own events: a stream handle is never used
// after the program destroyed it. While a stream capture is active anywhere
// in the process the fence refuses (an event on the legacy stream could join
// or break the capture); the spill is simply tried again later.
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "driver.h"

namespace kvpager::cuda {

class StreamRegistry {
 public:
  static constexpr size_t kSlots = 4096;  // power of two

  static bool is_default(CUstream s) {
    auto v = reinterpret_cast<uintptr_t>(s);
    return v == 0 || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD;
  }

  // Launch path.
  void note(CUstream s) {
    if (is_default(s)) {
      if (!default_used_.load(std::memory_order_relaxed)) default_used_.store(true, std::memory_order_seq_cst);
      return;
    }
    const auto v = reinterpret_cast<uintptr_t>(s);
    size_t i = hash(v);
    for (size_t probe = 0; probe < kSlots; ++probe, i = (i + 1) & (kSlots - 1)) {
      uintptr_t cur = slots_[i].load(std::memory_order_acquire);
      if (cur == v) return;
      if (cur == kEmpty) {
        if (slots_[i].compare_exchange_strong(cur, v, std::memory_order_acq_rel)) return;
        if (cur == v) return;
      }
    }
    overflow_.store(true, std::memory_order_seq_cst);  // the fence will refuse: never spill blind
  }

  // cuStreamDestroy, before the real call. `driver` may be null (not loaded yet).
  void destroying(const Driver* driver, CUstream s);

  // Captures (cuStreamBeginCapture* / cuStreamEndCapture).
  void capture_begins() { captures_.fetch_add(1, std::memory_order_seq_cst); }
  void capture_ends() { captures_.fetch_sub(1, std::memory_order_seq_cst); }
  int captures() const { return captures_.load(std::memory_order_seq_cst); }

  // Pager thread: records one event on every noted stream (and the legacy
  // stream if needed) and hands them out, with the events recorded by
  // cuStreamDestroy. false if the fence cannot be built now (capture active,
  // table overflow, a record failed): the caller tries again later.
  // The last destroyed_count() events of `out` belong to destroyed streams:
  // destroy them after use rather than returning them to the pool.
  bool record_fence(const Driver& d, std::vector<CUevent>& pool, std::vector<CUevent>& out);
  size_t destroyed_count() const { return destroyed_count_; }
  uint64_t fence_failures() const { return fence_failures_.load(std::memory_order_relaxed); }
  // A fence that gave up hands back an event of a destroyed stream: the next
  // fence must still wait for it.
  void keep_destroyed(CUevent ev) {
    std::lock_guard lock(mu_);
    destroyed_.push_back(ev);
  }

 private:
  static constexpr uintptr_t kEmpty = 0;
  static constexpr uintptr_t kGone = 1;  // a destroyed stream's slot; probes pass over it
  static size_t hash(uintptr_t v) { return static_cast<size_t>((v * 0x9E3779B97F4A7C15ull) >> 52) & (kSlots - 1); }

  std::atomic<uintptr_t> slots_[kSlots]{};
  std::atomic<bool> default_used_{false};
  std::atomic<bool> overflow_{false};
  std::atomic<int> captures_{0};
  std::atomic<uint64_t> fence_failures_{0};
  std::mutex mu_;
  std::vector<CUevent> destroyed_;  // events recorded on streams as they were destroyed
  size_t destroyed_count_ = 0;      // pager thread only
};

}  // namespace kvpager::cuda
