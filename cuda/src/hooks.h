// The intercepted driver entry points: what each one does, how a launch is
// checked, and the tables cuGetProcAddress and dlsym hand wrappers out from.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "event_ring.h"
#include "region_map.h"

namespace kvpager::cuda {

class Runtime;

// What an operation (launch, copy, memset) touches, found on the launch path.
// Lives on the stack; no allocation.
class Scanner {
 public:
  static constexpr size_t kRestoreSlots = 16;
  // Launch events one operation may post: 16 x 16 references (a replayed
  // decode graph names dozens of regions); more are counted in refs_dropped.
  static constexpr uint32_t kEventsPerOp = 16;

  Scanner(Runtime& rt, const RegionMap::Snapshot& snap);
  // A kernel parameter word: if it points into a managed allocation, the
  // kernel may read any of it (but parked contexts, see kvpager.h).
  void pointer(uint64_t v);
  // The bytes [lo, hi) of a copy or memset.
  void range(uint64_t lo, uint64_t hi);
  // Cannot tell what it touches: restore everything that is spilled.
  void everything();
  // The instance the operation is guarded by. (Not Runtime::active() again:
  // at exit it turns null while other threads may still be launching.)
  Runtime& runtime() const { return rt_; }
  void stream(CUstream s) { stream_ = s; }
  void kernel(uint64_t k) { ev_[0].kernel = k; }
  // Set on rescans after a restore (counters count an operation once).
  void rescan() { rescan_ = true; }
  bool first_scan() const { return !rescan_; }

  bool need_restore() const { return need_restore_; }
  bool restore_all() const { return restore_all_; }
  const uint32_t* restore_slots() const { return slots_; }
  const uint32_t* restore_gens() const { return gens_; }
  size_t restore_count() const { return n_restore_; }
  // Notes the stream and posts the launch events (call once the operation may go).
  void publish();

 private:
  void hit(const MapItem& it, uint64_t offset);
  void check(const MapItem& it, bool direct);

  Runtime& rt_;
  const RegionMap& map_;
  const RegionMap::Snapshot& snap_;
  bool any_unsafe_;
  uint64_t whole_bytes_;  // regions up to this size count whole (Pager::whole_reference_bytes)
  unsigned chunk_shift_;  // log2 of the chunk size
  uint32_t refs_dropped_ = 0;  // references that found every event full
  bool touched_ = false;
  bool rescan_ = false;
  bool need_restore_ = false;
  bool restore_all_ = false;
  CUstream stream_ = nullptr;
  // ev_[0] carries the kernel; the others continue it with more references
  // (kernel 0: the launch correlation keeps the first event's regions).
  LaunchEvent ev_[kEventsPerOp];
  uint32_t n_ev_ = 1;
  uint32_t slots_[kRestoreSlots];
  uint32_t gens_[kRestoreSlots];
  size_t n_restore_ = 0;
  uint64_t allocs_[4] = {};  // allocations whose pieces were checked already
  size_t n_allocs_ = 0;
  ptrdiff_t last_item_ = -1;
};

// cuGetProcAddress: the wrapper for (symbol, version, flags), given the
// driver's own answer; `real` itself if we do not wrap it.
void* wrap_proc(const char* symbol, int version, cuuint64_t flags, void* real);
// dlsym: the wrapper for an exported libcuda symbol name; `real` otherwise.
void* wrap_export(const char* name, void* real);
// Whether p is one of our wrappers.
bool is_wrapper(const void* p);

// For the benchmark: the per-launch work of cuLaunchKernel (scan, checks,
// event) around a caller-supplied "real" launch.
CUresult bench_launch(CUfunction f, void** params, CUstream s, CUresult (*real)(void));

}  // namespace kvpager::cuda
