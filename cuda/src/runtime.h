// The pager inside a CUDA program: configuration, the region map, the pager
// thread that owns the Pager and the CUDA mover, and what the intercepted
// entry points (hooks.cpp) ask of them.
//
// Threading. The Pager is single-threaded; it lives on one pager thread,
// which also makes every driver call the mover needs. Program threads never
// touch it: they read the region map without locks, push launch events into a
// ring (lossy, no allocation), and for the few things that must happen before
// they continue (register or free an allocation, restore a spilled region
// before a launch reads it, apply a hint) they post a request and wait for the
// pager thread to answer. No program thread holds a lock across a driver call
// on the launch path; the only waits on it are for restores of spilled data.
//
// Start-up. The configuration is read when the first intercepted call needs
// it; the pager thread starts with the first managed allocation (a context is
// current then). Threads that call CUDA before that simply see no managed
// regions. A bad configuration or a driver that cannot page managed memory
// disables the pager with one message on stderr: every call then passes
// through to the driver untouched.
//
// Fork. In a child the pager thread does not exist: every hook passes
// straight through (CUDA itself cannot be used in a child of an initialised
// process), and exit() does not wait for anything.
#pragma once

#include <unistd.h>

#include <cuda.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "driver.h"
#include "event_ring.h"
#include "kvpager/config.h"
#include "kvpager/types.h"
#include "quiescence.h"
#include "region_map.h"
#include "scan.h"
#include "streams.h"

namespace kvpager {
class Pager;
class Store;
}  // namespace kvpager

namespace kvpager::control {
class ControlServer;
}
namespace kvpager::store {
class TokenStore;
class TokenStoreQueue;
}

namespace kvpager::cuda {

class CudaMover;

enum class RuntimeState : uint8_t { kUninit, kStarting, kRunning, kDisabled, kForked };

// Result codes of the hint C API (kvpager.h).
enum HintResult : int {
  kHintOk = 0,
  kHintNotLoaded = 1,
  kHintInvalid = 2,
  kHintNotFound = 3,
  kHintBusy = 4,
  kHintError = 5,
  kHintNoRoom = 6,
};

// Graph executables and what their nodes reference (scanned once at
// instantiation). Looked up on every cuGraphLaunch without a lock.
class GraphTable {
 public:
  struct Info {
    std::vector<GraphRef> refs;  // what a launch reads: one pointer per region and chunk, every range
    bool unknown = false;        // something we cannot list: the launch reads everything
    // Every reference into managed memory, node by node, and the graph's own
    // nodes: what a change to one node is applied to.
    std::vector<GraphRef> by_node;
    std::vector<CUgraphNode> nodes;
  };
  static constexpr size_t kSlots = 8192;
  GraphTable();
  ~GraphTable();
  void set(CUgraphExec exec, std::unique_ptr<Info> info, Quiescence& q);
  void erase(CUgraphExec exec, Quiescence& q);
  // Inside a bracket: the info, or nullptr (never scanned: unknown).
  const Info* find(CUgraphExec exec) const;

 private:
  struct Slot {
    std::atomic<uintptr_t> key{0};
    std::atomic<Info*> info{nullptr};
  };
  void retire(Info* old, Quiescence& q);
  std::unique_ptr<Slot[]> slots_;
  std::mutex mu_;
  std::vector<std::pair<Info*, std::unique_ptr<Quiescence::Ticket>>> retired_;
};

class Runtime {
 public:
  // The running instance, or nullptr (not started, disabled, forked child).
  static Runtime* active() {
    return state_.load(std::memory_order_acquire) == RuntimeState::kRunning ? instance_ : nullptr;
  }
  static RuntimeState state() { return state_.load(std::memory_order_acquire); }
  // The instance, created (configuration read) on first use. Null if the
  // configuration or the driver is unusable (then everything passes through).
  static Runtime* get();

  // ---- allocations (program threads) ----
  // Whether an allocation of this size becomes a managed region.
  bool wants_managed(uint64_t size) const;
  // A managed region of `size` bytes; starts the pager on first use. Fails
  // with CUDA_ERROR_OUT_OF_MEMORY past cuda.managed_limit.
  CUresult alloc_managed(CUdeviceptr* dptr, uint64_t size);
  // Frees a managed allocation (p must be its base). false: not ours.
  bool free_managed(CUdeviceptr p, CUresult* result);
  // Frees it once the work queued on `stream` before now has run.
  bool free_managed_async(CUdeviceptr p, CUstream stream, CUresult* result);
  // Whether p lies in a managed allocation.
  bool is_managed(CUdeviceptr p) const;
  // Turns the driver's numbers into the virtual capacity's.
  void mem_info(size_t* free, size_t* total);

  // ---- the launch path ----
  const Driver& driver() const { return drv_; }
  RegionMap& map() { return map_; }
  Quiescence& quiescence() { return q_; }
  StreamRegistry& streams() { return streams_; }
  ParamLayouts& layouts() { return *layouts_; }
  GraphTable& graphs() { return graphs_; }
  // Chunks anywhere that must not be read (sequentially consistent).
  uint32_t unsafe_chunks() const { return total_unsafe_.load(); }
  void post(const LaunchEvent& ev) { ring_.push(ev); }
  // Restores the listed regions (or every unsafe one) and waits. Called with
  // no bracket open. No allocation. false: a region could not be restored
  // (its bytes are lost); the operation must not run.
  bool restore(const uint32_t* slots, const uint32_t* gens, size_t n, bool all);
  void note_unscannable() { unscannable_.fetch_add(1, std::memory_order_relaxed); }
  void note_scanned() { scanned_.fetch_add(1, std::memory_order_relaxed); }
  // References an operation made that did not fit in its launch event.
  void note_refs_dropped(uint32_t n) { refs_dropped_.fetch_add(n, std::memory_order_relaxed); }
  // Regions up to this size count whole when referenced (the pager's
  // threshold, published by the pager thread; 0 until it runs).
  uint64_t whole_reference_bytes() const { return whole_ref_bytes_.load(std::memory_order_relaxed); }

  // ---- hints (kvpager.h) ----
  int tag(uint64_t addr, uint64_t size, const char* name);
  int hint(const char* name, HintKind kind);
  // Writes the context's current bytes into the token store under its name
  // (publish::publish_context, on the pager thread) and waits until that
  // publication is committed or failed.
  int publish(const char* name);
  std::string stats_text();
  // The interposer's counters, named as in stats_text. hook_counters: any
  // thread (atomics). mover_counters: the pager thread only.
  using Counters = std::vector<std::pair<const char*, uint64_t>>;
  Counters hook_counters() const;
  Counters mover_counters() const;

  // Where the control socket attaches (issue 4): called on the pager thread
  // after every tick, with the pager, while nothing else can touch it.
  void set_tick_hook(std::function<void(Pager&)> hook);

  // Tests and diagnostics.
  const Config& config() const { return cfg_; }
  void log(int level, const std::string& msg) const;

  ~Runtime() = delete;  // lives until the process ends

 private:
  struct Request;
  class RequestQueue;

  Runtime();
  bool start_pager();  // under init_mu_, with a current context
  void pager_main();
  void serve(Request& r);
  void serve_requests();  // everything posted so far, oldest first
  void handle_events();
  void reap_async_frees(bool block);
  void call(Request& r);  // post and wait
  int call_named(Request& r, const char* name);  // a hint's checks, then call
  void stop();            // atexit
  static void on_fork_child();
  void wake();
  std::atomic<uint32_t>* unsafe_counter(uint64_t base);
  void apply_parked(ContextId ctx, bool parked);
  RegionEntry* entry_of(uint32_t slot, uint32_t gen);

  static inline std::atomic<RuntimeState> state_{RuntimeState::kUninit};
  static inline Runtime* instance_ = nullptr;

  Config cfg_;
  std::vector<SizeRange> allow_, deny_;
  std::atomic<int> log_level_{2};  // 0 trace .. 5 off; log_level is live (kvpager tune)
  Driver drv_;
  Quiescence& q_;
  RegionMap map_;
  StreamRegistry streams_;
  GraphTable graphs_;
  std::unique_ptr<ParamLayouts> layouts_;
  EventRing ring_;

  std::mutex init_mu_;
  CUcontext ctx_ = nullptr;
  std::unique_ptr<store::TokenStore> store_;  // the NVMe tier; also what `publish` writes into
  std::unique_ptr<store::TokenStoreQueue> store_io_;  // its io_uring path: the mover's spills and restores
  std::unique_ptr<CudaMover> mover_;
  std::unique_ptr<Pager> pager_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> thread_exited_{false};
  std::atomic<uint32_t> wake_word_{0};
  std::unique_ptr<RequestQueue> requests_;
  std::function<void(Pager&)> tick_hook_;
  // The control socket (kvpager status/top/tune, kvpager-fs): built before
  // the pager thread starts, serviced by it after every tick.
  std::unique_ptr<control::ControlServer> control_;
  std::mutex hook_mu_;

  // Accounting (bytes).
  std::atomic<uint64_t> managed_bytes_{0};
  std::atomic<uint64_t> hbm_committed_{0};    // published by the pager thread
  std::atomic<uint64_t> whole_ref_bytes_{0};  // ... and so is this
  uint64_t virtual_capacity_ = 0;             // resolved on first use
  uint64_t managed_limit_ = 0;
  std::atomic<bool> limits_resolved_{false};
  std::mutex limits_mu_;
  std::atomic<uint32_t> total_unsafe_{0};
  std::atomic<uint32_t> async_frees_pending_{0};
  // Managed allocations must start on a page of this size (alloc_managed).
  const uint64_t page_align_ = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  std::atomic<bool> misaligned_warned_{false};

  // Counters.
  std::atomic<uint64_t> scanned_{0}, unscannable_{0}, restores_{0}, managed_allocs_{0}, passthrough_hits_{0};
  std::atomic<uint64_t> limit_refusals_{0}, refs_dropped_{0};

  // Pager-thread state.
  struct AsyncFree {
    uint64_t base;
    CUevent ev;
  };
  std::vector<AsyncFree> async_frees_;
  // Allocation base -> last sibling touch; an entry goes with its allocation.
  std::unordered_map<uint64_t, uint64_t> alloc_touch_ns_;
  std::vector<uint32_t> entry_of_pager_slot_;  // pager RegionId.slot -> map slot
  uint64_t failed_ranges_logged_ = 0;          // the mover's failed_ranges when last logged
};

}  // namespace kvpager::cuda
