#include "streams.h"

namespace kvpager::cuda {

void StreamRegistry::destroying(const Driver* driver, CUstream s) {
  if (is_default(s)) return;
  const auto v = reinterpret_cast<uintptr_t>(s);
  std::lock_guard lock(mu_);
  bool found = false;
  size_t i = hash(v);
  for (size_t probe = 0; probe < kSlots; ++probe, i = (i + 1) & (kSlots - 1)) {
    uintptr_t cur = slots_[i].load(std::memory_order_acquire);
    if (cur == kEmpty) break;
    if (cur == v) {
      slots_[i].store(kGone, std::memory_order_release);
      found = true;
    }
  }
  if (!found || !driver) return;
  CUevent ev = nullptr;
  if (driver->eventCreate(&ev, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) {
    fence_failures_.fetch_add(1, std::memory_order_relaxed);
    overflow_.store(true);  // we cannot prove its work finished: no spill from now on
    return;
  }
  if (driver->eventRecord(ev, s) != CUDA_SUCCESS) {
    driver->eventDestroy(ev);
    fence_failures_.fetch_add(1, std::memory_order_relaxed);
    overflow_.store(true);
    return;
  }
  destroyed_.push_back(ev);
}

bool StreamRegistry::record_fence(const Driver& d, std::vector<CUevent>& pool, std::vector<CUevent>& out) {
  if (captures() > 0 || overflow_.load()) return false;
  std::lock_guard lock(mu_);
  auto take = [&]() -> CUevent {
    if (!pool.empty()) {
      CUevent ev = pool.back();
      pool.pop_back();
      return ev;
    }
    CUevent ev = nullptr;
    return d.eventCreate(&ev, CU_EVENT_DISABLE_TIMING) == CUDA_SUCCESS ? ev : nullptr;
  };
  auto record = [&](CUstream s) {
    CUevent ev = take();
    if (!ev) return false;
    if (d.eventRecord(ev, s) != CUDA_SUCCESS) {
      pool.push_back(ev);
      return false;
    }
    out.push_back(ev);
    return true;
  };
  bool ok = true;
  for (auto& slot : slots_) {
    uintptr_t v = slot.load(std::memory_order_acquire);
    if (v == kEmpty || v == kGone) continue;
    ok = record(reinterpret_cast<CUstream>(v)) && ok;
  }
  if (default_used_.load()) ok = record(CU_STREAM_LEGACY) && ok;
  if (!ok) {
    pool.insert(pool.end(), out.begin(), out.end());
    out.clear();
    fence_failures_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  // The streams destroyed since the last fence: their events stand in for
  // them (the caller destroys these once they have completed).
  out.insert(out.end(), destroyed_.begin(), destroyed_.end());
  destroyed_count_ = destroyed_.size();
  destroyed_.clear();
  return true;
}

}  // namespace kvpager::cuda
