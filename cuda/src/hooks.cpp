#include "hooks.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "api_table.h"
#include "runtime.h"

namespace kvpager::cuda {

namespace {

// The driver's functions behind each wrapper, per (api, variant): filled by
// cuGetProcAddress and dlsym answers, or on first call from libcuda itself.
constinit std::atomic<void*> g_real[kApiCount][2]{};

// Set while a hook runs on this thread: a driver that calls back into an
// exported entry point (through dlsym or its own tables) goes straight
// through instead of recursing into the hooks.
__attribute__((tls_model("initial-exec"))) thread_local bool t_in_hook = false;

struct InHook {
  InHook() { t_in_hook = true; }
  ~InHook() { t_in_hook = false; }
  InHook(const InHook&) = delete;
  InHook& operator=(const InHook&) = delete;
};

constexpr size_t idx(Api a) { return static_cast<size_t>(a); }

const char* export_name(Api a, int v) {
  const char* fallback = nullptr;
  for (const ExportInfo& e : kExports) {
    if (e.api != a) continue;
    if (e.variant == v) return e.name;
    if (e.variant == 0) fallback = e.name;
  }
  return fallback;
}

bool has_variant(Api a, int v) {
  for (const ExportInfo& e : kExports)
    if (e.api == a && e.variant == v) return true;
  return false;
}

void* wrapper_of(Api a, int v);

// Whether p is code of this library (a wrapper, or an exported stub that
// jumps to one): never to be called as "the driver".
bool is_ours(const void* p) {
  if (is_wrapper(p)) return true;
  Dl_info mine{}, theirs{};
  return dladdr(reinterpret_cast<void*>(&is_wrapper), &mine) && dladdr(p, &theirs) &&
         mine.dli_fbase == theirs.dli_fbase;
}

void* install(Api a, int v, void* real) {
  if (is_ours(real)) return real;  // never call ourselves as "the driver"
  void* expected = nullptr;
  if (g_real[idx(a)][v].compare_exchange_strong(expected, real) || expected == real) return wrapper_of(a, v);
  // The slot holds another function: maybe the other variant's (the driver
  // may answer a default-stream lookup with the per-thread one).
  const int w = 1 - v;
  if (has_variant(a, w)) {
    expected = nullptr;
    if (g_real[idx(a)][w].compare_exchange_strong(expected, real) || expected == real) return wrapper_of(a, w);
  }
  return real;  // a third function under this name: hand it out untouched
}

void* resolve_real(Api a, int v) {
  const char* name = export_name(a, v);
  if (!name) return nullptr;
  void* lib = Driver::loaded_libcuda();
  if (!lib) return nullptr;
  void* p = real_dlsym(lib, name);
  dlclose(lib);
  if (p && !is_ours(p)) {
    void* expected = nullptr;
    g_real[idx(a)][v].compare_exchange_strong(expected, p);
  }
  return g_real[idx(a)][v].load(std::memory_order_acquire);
}

template <int V>
constexpr CUstream default_stream() {
  return V ? CU_STREAM_PER_THREAD : CU_STREAM_LEGACY;
}

// The stream argument of a call (its last CUstream parameter), if any.
inline CUstream stream_or(CUstream, CUstream s) { return s; }
template <typename T>
CUstream stream_or(CUstream s, T) {
  return s;
}

// ---------------------------------------------------------------- the launch-path protocol

constexpr int kMaxRestoreRounds = 64;

// Scans what an operation touches; if something it may read is spilled,
// restores it (with no bracket open) and scans again; then issues the
// operation inside the bracket, so a spill that starts now waits for it.
template <typename Scan, typename Call>
CUresult guarded(Scan&& scan, Call&& call) {
  Runtime* rt = Runtime::active();
  if (!rt) return call();
  Quiescence::Bracket bracket(rt->quiescence());
  for (int round = 0;; ++round) {
    const RegionMap::Snapshot& snap = rt->map().snapshot();
    if (snap.n == 0) break;
    Scanner s(*rt, snap);
    if (round > 0) s.rescan();
    scan(s);
    if (!s.need_restore()) {
      s.publish();
      break;
    }
    bracket.close();
    // Restored, then spilled again before we got back, round after round:
    // the pager spills only what looks idle, so this does not happen unless
    // something is wrong; fail rather than spin or run on garbage.
    if (round >= kMaxRestoreRounds ||
        !rt->restore(s.restore_slots(), s.restore_gens(), s.restore_count(), s.restore_all()))
      return CUDA_ERROR_UNKNOWN;  // its bytes could not be brought back: never run on garbage
    bracket.open();
  }
  return call();
}

void scan_kernel(Runtime& rt, Scanner& s, CUfunction f, void** params, void** extra) {
  uint32_t scratch[ParamLayouts::kScratchWords];
  s.kernel(reinterpret_cast<uint64_t>(f));
  ParamLayouts::Layout layout = params ? rt.layouts().get(f, scratch) : ParamLayouts::Layout{};
  if (!scan_launch(layout, params, extra, [&](uint64_t v) { s.pointer(v); })) {
    if (s.first_scan()) rt.note_unscannable();
    s.everything();
  }
}

// Keeps, of `all` (a graph's references), what points into managed memory
// now (a graph's arguments are fixed when it is instantiated or set), and
// all[0, kept) whatever is there now (they did when they were kept: the
// other nodes' references when one node changes). info.by_node gets every
// one of them; info.refs one pointer per region and chunk (regions are cut
// at chunk boundaries, which may be closer than 2 MiB, so two pointers into
// different regions are never one) and every range as it is.
void keep_managed(Runtime& rt, const std::vector<GraphRef>& all, size_t kept, GraphTable::Info& info) {
  Quiescence::Bracket b(rt.quiescence());
  const RegionMap::Snapshot& snap = rt.map().snapshot();
  const uint64_t cs = rt.config().chunk_size;
  std::vector<std::pair<ptrdiff_t, uint64_t>> seen;  // (region item, chunk) of the pointers kept
  for (size_t n = 0; n < all.size(); ++n) {
    const GraphRef& r = all[n];
    ptrdiff_t i = RegionMap::locate(snap, r.lo);
    bool hits = i >= 0;
    for (size_t k = 0; !hits && !r.point && k < snap.n; ++k)
      hits = snap.items[k].base < r.hi && snap.items[k].end > r.lo;
    if (!hits && n >= kept) continue;
    info.by_node.push_back(r);
    if (!hits) {  // nothing there now; what comes there later is scanned at launch
      info.refs.push_back(r);
      continue;
    }
    bool dup;
    if (r.point) {
      const std::pair<ptrdiff_t, uint64_t> key{i, (r.lo - snap.items[i].base) / cs};
      dup = std::find(seen.begin(), seen.end(), key) != seen.end();
      if (!dup) seen.push_back(key);
    } else {
      dup = std::any_of(info.refs.begin(), info.refs.end(),
                        [&](const GraphRef& o) { return !o.point && o.lo == r.lo && o.hi == r.hi; });
    }
    if (!dup) info.refs.push_back(r);
  }
}

void record_graph(CUgraphExec exec, CUgraph graph) {
  Runtime* rt = Runtime::get();
  if (!rt || !exec) return;
  auto info = std::make_unique<GraphTable::Info>();
  std::vector<GraphRef> all;
  if (scan_graph(rt->driver(), rt->layouts(), graph, all, &info->nodes)) keep_managed(*rt, all, 0, *info);
  else info->unknown = true;
  rt->graphs().set(exec, std::move(info), rt->quiescence());
}

// One node of an executable got new parameters: its references are replaced
// by those `scan` lists (the other nodes' stay). What cannot be applied (a
// node we did not see at instantiation, parameters we cannot describe) makes
// the executable read everything from now on.
// scan(Runtime&, std::vector<GraphRef>& out) -> bool: appends the node's new
// references, false if they cannot be listed.
template <typename Scan>
void node_changed(CUgraphExec exec, CUgraphNode node, Scan&& scan) {
  Runtime* rt = Runtime::get();
  if (!rt || !exec) return;
  auto info = std::make_unique<GraphTable::Info>();
  std::vector<GraphRef> all;  // the other nodes' references, then this one's
  {
    Quiescence::Bracket b(rt->quiescence());
    const GraphTable::Info* old = rt->graphs().find(exec);
    if (old && !old->unknown && std::find(old->nodes.begin(), old->nodes.end(), node) != old->nodes.end()) {
      info->nodes = old->nodes;
      for (const GraphRef& r : old->by_node)
        if (r.node != node) all.push_back(r);
    } else {
      info->unknown = true;
    }
  }
  const size_t kept = all.size();
  if (!info->unknown && scan(*rt, all)) keep_managed(*rt, all, kept, *info);
  else info->unknown = true;
  rt->graphs().set(exec, std::move(info), rt->quiescence());
}

// Streams being captured (to keep StreamRegistry's count exact). Never
// destroyed: a capture may end while the process exits.
std::mutex g_capture_mu;
std::vector<std::pair<uintptr_t, pthread_t>>& capturing_streams() {
  static auto* v = new std::vector<std::pair<uintptr_t, pthread_t>>();
  return *v;
}

std::pair<uintptr_t, pthread_t> capture_key(CUstream s) {
  // A default stream is per thread (per-thread default stream) or invalid.
  return StreamRegistry::is_default(s) ? std::pair{uintptr_t{0}, pthread_self()}
                                       : std::pair{reinterpret_cast<uintptr_t>(s), pthread_t{}};
}

void capture_begun(CUstream s) {
  Runtime* rt = Runtime::get();
  if (!rt) return;
  std::lock_guard lock(g_capture_mu);
  capturing_streams().push_back(capture_key(s));
  rt->streams().capture_begins();
}

void capture_ended(CUstream s) {
  Runtime* rt = Runtime::get();
  if (!rt) return;
  std::lock_guard lock(g_capture_mu);
  auto key = capture_key(s);
  auto& list = capturing_streams();
  auto it = std::find_if(list.begin(), list.end(),
                         [&](const auto& k) { return k.first == key.first && pthread_equal(k.second, key.second); });
  if (it == list.end()) return;
  list.erase(it);
  rt->streams().capture_ends();
}

bool warned_ipc = false;

}  // namespace

// ---------------------------------------------------------------- scanner

Scanner::Scanner(Runtime& rt, const RegionMap::Snapshot& snap)
    : rt_(rt),
      map_(rt.map()),
      snap_(snap),
      any_unsafe_(rt.unsafe_chunks() != 0),
      whole_bytes_(rt.whole_reference_bytes()),
      chunk_shift_(static_cast<unsigned>(std::countr_zero(rt.config().chunk_size))) {}

void Scanner::hit(const MapItem& it, uint64_t offset) {
  touched_ = true;
  // The pager counts a region up to whole_bytes_ as used all at once: one
  // entry stands for every pointer into it (q, k and v slices of one tensor
  // take one). A bigger one is used chunk by chunk: an entry per chunk.
  // (A threshold a tick old only costs slots or chunk detail, never safety:
  // restores are decided by check(), not by what is recorded here.)
  const bool whole = it.end - it.base <= whole_bytes_;
  const auto chunk = static_cast<uint32_t>(std::min<uint64_t>(offset >> chunk_shift_, UINT32_MAX));
  for (uint32_t e = 0; e < n_ev_; ++e)
    for (uint32_t k = 0; k < ev_[e].n; ++k)
      if (ev_[e].refs[k].slot == it.slot && (whole || ev_[e].refs[k].chunk == chunk)) return;
  if (ev_[n_ev_ - 1].n == LaunchEvent::kRefs) {
    if (n_ev_ == kEventsPerOp) {
      ++refs_dropped_;
      return;
    }
    ++n_ev_;  // a continuation (kernel 0)
  }
  LaunchEvent& ev = ev_[n_ev_ - 1];
  ev.refs[ev.n++] = LaunchRef{it.slot, it.gen, chunk};
}

void Scanner::check(const MapItem& it, bool direct) {
  RegionEntry* e = map_.live_entry(it);
  if (!e || e->unsafe.load() == 0) return;
  // A parked context is promised not to be read until prefetched, unless an
  // argument points right into it.
  if (!direct && e->parked.load()) return;
  need_restore_ = true;
  for (size_t k = 0; k < n_restore_; ++k)
    if (slots_[k] == it.slot) return;
  if (n_restore_ < kRestoreSlots) {
    slots_[n_restore_] = it.slot;
    gens_[n_restore_] = it.gen;
    ++n_restore_;
  } else {
    restore_all_ = true;
  }
}

void Scanner::pointer(uint64_t v) {
  if (v - snap_.lo >= snap_.hi - snap_.lo) return;  // below or above every region
  ptrdiff_t i = last_item_;
  if (i < 0 || v < snap_.items[i].base || v >= snap_.items[i].end) {
    i = RegionMap::locate(snap_, v);
    if (i < 0) return;
    last_item_ = i;
  }
  const MapItem& it = snap_.items[i];
  hit(it, v - it.base);
  if (!any_unsafe_) return;  // nothing is spilled anywhere (and a spill starting now waits for us)
  check(it, true);
  if (it.base == it.alloc_base && it.end == it.alloc_end) return;  // the allocation is one region
  for (size_t k = 0; k < n_allocs_; ++k)
    if (allocs_[k] == it.alloc_base) return;
  if (n_allocs_ < std::size(allocs_)) allocs_[n_allocs_++] = it.alloc_base;
  ptrdiff_t first = 0, end = 0;
  RegionMap::alloc_span(snap_, i, &first, &end);
  for (ptrdiff_t j = first; j < end; ++j)
    if (j != i) check(snap_.items[j], false);
}

void Scanner::range(uint64_t lo, uint64_t hi) {
  if (hi <= lo || hi <= snap_.lo || lo >= snap_.hi) return;
  ptrdiff_t i = RegionMap::locate(snap_, lo);
  if (i < 0) i = std::lower_bound(snap_.bases, snap_.bases + snap_.n, lo) - snap_.bases;
  for (auto n = static_cast<ptrdiff_t>(snap_.n); i < n && snap_.items[i].base < hi; ++i) {
    const MapItem& it = snap_.items[i];
    if (it.end <= lo) continue;
    hit(it, std::max(lo, it.base) - it.base);
    if (any_unsafe_) check(it, true);
  }
}

void Scanner::everything() {
  touched_ = true;
  if (rt_.unsafe_chunks() != 0) need_restore_ = restore_all_ = true;
}

void Scanner::publish() {
  if (!touched_) return;
  rt_.streams().note(stream_);
  for (uint32_t e = 0; e < n_ev_; ++e)
    if (ev_[e].n) rt_.post(ev_[e]);
  if (refs_dropped_) rt_.note_refs_dropped(refs_dropped_);
}

// ---------------------------------------------------------------- what each entry point does

template <Api A>
struct Body;

template <Api A, int V, typename F>
struct Wrapper;
template <Api A, int V, typename... Args>
struct Wrapper<A, V, CUresult (*)(Args...)> {
  static CUresult fn(Args... args) {
    using F = CUresult (*)(Args...);
    void* p = g_real[idx(A)][V].load(std::memory_order_acquire);
    if (!p) [[unlikely]]
      p = resolve_real(A, V);
    if (!p) return CUDA_ERROR_NOT_INITIALIZED;
    auto real = reinterpret_cast<F>(p);
    // Nested inside a hook (the driver calling back), or in a forked child
    // (no pager thread; a lock may be held by a thread that is gone): the
    // driver's own function, nothing else.
    if (t_in_hook || Runtime::state() == RuntimeState::kForked) return real(args...);
    InHook guard;
    return Body<A>::template call<V>(real, args...);
  }
};

template <>
struct Body<Api::kGetProcAddress> {
  template <int V, typename R>
  static CUresult call(R real, const char* symbol, void** pfn, int version, cuuint64_t flags) {
    CUresult r = real(symbol, pfn, version, flags);
    if (r == CUDA_SUCCESS && pfn && *pfn) *pfn = wrap_proc(symbol, version, flags, *pfn);
    return r;
  }
};

template <>
struct Body<Api::kGetProcAddressV2> {
  template <int V, typename R>
  static CUresult call(R real, const char* symbol, void** pfn, int version, cuuint64_t flags,
                       CUdriverProcAddressQueryResult* status) {
    CUresult r = real(symbol, pfn, version, flags, status);
    if (r == CUDA_SUCCESS && pfn && *pfn) *pfn = wrap_proc(symbol, version, flags, *pfn);
    return r;
  }
};

// --- allocations

namespace {
CUresult try_managed(CUdeviceptr* dptr, uint64_t size, bool* handled) {
  *handled = false;
  Runtime* rt = Runtime::get();
  if (!rt || !dptr || !rt->wants_managed(size)) return CUDA_SUCCESS;
  CUresult r = rt->alloc_managed(dptr, size);
  *handled = r != CUDA_ERROR_NOT_SUPPORTED;
  return r;
}

bool capturing(const Driver& d, CUstream s) {
  CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
  return d.streamIsCapturing(s, &st) != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_NONE;
}
}  // namespace

template <>
struct Body<Api::kMemAlloc> {
  template <int V, typename R>
  static CUresult call(R real, CUdeviceptr* dptr, size_t size) {
    bool handled = false;
    CUresult r = try_managed(dptr, size, &handled);
    return handled ? r : real(dptr, size);
  }
};

template <>
struct Body<Api::kMemAllocPitch> {
  static constexpr size_t kPitchAlign = 512;
  template <int V, typename R>
  static CUresult call(R real, CUdeviceptr* dptr, size_t* pitch, size_t width, size_t height, unsigned elem) {
    if (pitch && width && height && (elem == 4 || elem == 8 || elem == 16)) {
      const size_t p = (width + kPitchAlign - 1) / kPitchAlign * kPitchAlign;
      bool handled = false;
      CUresult r = try_managed(dptr, uint64_t{p} * height, &handled);
      if (handled) {
        if (r == CUDA_SUCCESS) *pitch = p;
        return r;
      }
    }
    return real(dptr, pitch, width, height, elem);
  }
};

template <>
struct Body<Api::kMemAllocAsync> {
  template <int V, typename R>
  static CUresult call(R real, CUdeviceptr* dptr, size_t size, CUstream s) {
    Runtime* rt = Runtime::get();
    // Managed, and so usable at once (stronger than stream order); inside a
    // capture the allocation belongs to the graph: the driver's own.
    if (rt && rt->config().cuda_async_alloc == AsyncAlloc::kManaged && !capturing(rt->driver(), s)) {
      bool handled = false;
      CUresult r = try_managed(dptr, size, &handled);
      if (handled) return r;
    }
    return real(dptr, size, s);
  }
};

template <>
struct Body<Api::kMemAllocFromPoolAsync> {
  template <int V, typename R>
  static CUresult call(R real, CUdeviceptr* dptr, size_t size, CUmemoryPool pool, CUstream s) {
    // Only the device's current pool; a pool the program made is its own
    // (it may be exportable to other processes).
    Runtime* rt = Runtime::get();
    if (rt && rt->config().cuda_async_alloc == AsyncAlloc::kManaged && rt->driver().deviceGetMemPool &&
        !capturing(rt->driver(), s)) {
      CUdevice dev = 0;
      CUmemoryPool current = nullptr;
      if (rt->driver().ctxGetDevice(&dev) == CUDA_SUCCESS &&
          rt->driver().deviceGetMemPool(&current, dev) == CUDA_SUCCESS && current == pool) {
        bool handled = false;
        CUresult r = try_managed(dptr, size, &handled);
        if (handled) return r;
      }
    }
    return real(dptr, size, pool, s);
  }
};

template <>
struct Body<Api::kMemFree> {
  template <int V, typename R>
  static CUresult call(R real, CUdeviceptr p) {
    CUresult r = CUDA_SUCCESS;
    if (Runtime* rt = Runtime::active(); rt && rt->free_managed(p, &r)) return r;
    return real(p);
  }
};

template <>
struct Body<Api::kMemFreeAsync> {
  template <int V, typename R>
  static CUresult call(R real, CUdeviceptr p, CUstream s) {
    CUresult r = CUDA_SUCCESS;
    if (Runtime* rt = Runtime::active(); rt && rt->free_managed_async(p, s, &r)) return r;
    return real(p, s);
  }
};

template <>
struct Body<Api::kMemGetInfo> {
  template <int V, typename R>
  static CUresult call(R real, size_t* free, size_t* total) {
    CUresult r = real(free, total);
    if (r == CUDA_SUCCESS && free && total)
      if (Runtime* rt = Runtime::get()) rt->mem_info(free, total);
    return r;
  }
};

template <>
struct Body<Api::kIpcGetMemHandle> {
  template <int V, typename R>
  static CUresult call(R real, CUipcMemHandle* h, CUdeviceptr p) {
    CUresult r = real(h, p);
    Runtime* rt = Runtime::active();
    if (rt && rt->is_managed(p) && !warned_ipc) {
      warned_ipc = true;
      uint64_t size = 0;
      rt->log(4, fmt::format("cuIpcGetMemHandle on {:#x}, a managed region (CUDA IPC cannot export managed memory; "
                             "the driver said {}): keep such buffers out with cuda.deny_sizes or cuda.min_size",
                             p, error_name(r)));
      (void)size;
    }
    return r;
  }
};

// --- launches

template <>
struct Body<Api::kLaunchKernel> {
  template <int V, typename R>
  static CUresult call(R real, CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                       unsigned bz, unsigned shmem, CUstream s, void** params, void** extra) {
    return guarded(
        [&](Scanner& sc) {
          sc.stream(s);
          scan_kernel(sc.runtime(), sc, f, params, extra);
        },
        [&] { return real(f, gx, gy, gz, bx, by, bz, shmem, s, params, extra); });
  }
};

template <>
struct Body<Api::kLaunchKernelEx> {
  template <int V, typename R>
  static CUresult call(R real, const CUlaunchConfig* cfg, CUfunction f, void** params, void** extra) {
    return guarded(
        [&](Scanner& sc) {
          sc.stream(cfg ? cfg->hStream : nullptr);
          scan_kernel(sc.runtime(), sc, f, params, extra);
        },
        [&] { return real(cfg, f, params, extra); });
  }
};

template <>
struct Body<Api::kLaunchCooperativeKernel> {
  template <int V, typename R>
  static CUresult call(R real, CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                       unsigned bz, unsigned shmem, CUstream s, void** params) {
    return guarded(
        [&](Scanner& sc) {
          sc.stream(s);
          scan_kernel(sc.runtime(), sc, f, params, nullptr);
        },
        [&] { return real(f, gx, gy, gz, bx, by, bz, shmem, s, params); });
  }
};

template <>
struct Body<Api::kGraphLaunch> {
  template <int V, typename R>
  static CUresult call(R real, CUgraphExec exec, CUstream s) {
    return guarded(
        [&](Scanner& sc) {
          sc.stream(s);
          const GraphTable::Info* info = sc.runtime().graphs().find(exec);
          if (!info || info->unknown) {
            if (sc.first_scan()) sc.runtime().note_unscannable();
            sc.everything();
            return;
          }
          for (const GraphRef& r : info->refs) {
            if (r.point) sc.pointer(r.lo);
            else sc.range(r.lo, r.hi);
          }
        },
        [&] { return real(exec, s); });
  }
};

template <>
struct Body<Api::kGraphInstantiateWithFlags> {
  template <int V, typename R>
  static CUresult call(R real, CUgraphExec* exec, CUgraph g, unsigned long long flags) {
    CUresult r = real(exec, g, flags);
    if (r == CUDA_SUCCESS && exec) record_graph(*exec, g);
    return r;
  }
};

template <>
struct Body<Api::kGraphInstantiateWithParams> {
  template <int V, typename R>
  static CUresult call(R real, CUgraphExec* exec, CUgraph g, CUDA_GRAPH_INSTANTIATE_PARAMS* p) {
    CUresult r = real(exec, g, p);
    if (r == CUDA_SUCCESS && exec) record_graph(*exec, g);
    return r;
  }
};

template <>
struct Body<Api::kGraphExecDestroy> {
  template <int V, typename R>
  static CUresult call(R real, CUgraphExec exec) {
    CUresult r = real(exec);
    if (Runtime* rt = Runtime::get()) rt->graphs().erase(exec, rt->quiescence());
    return r;
  }
};

// Changes to one node of an executable graph: the node's new parameters are
// scanned (node_changed), so its launches restore what it reads now, and no
// longer what it read before.
// A kernel node, in the CUDA 12 form or the CUDA 11 one (a program built
// against cudart 11 asks for version 10010: unhooked, its changes would leave
// the executable restoring what the node read before).
template <typename P>
struct KernelNodeChanged {
  template <int V, typename R>
  static CUresult call(R real, CUgraphExec exec, CUgraphNode node, const P* p) {
    CUresult r = real(exec, node, p);
    if (r == CUDA_SUCCESS)
      node_changed(exec, node, [&](Runtime& rt, std::vector<GraphRef>& out) {
        return p && scan_kernel_node(rt.layouts(), kernel_params(*p), node, out);
      });
    return r;
  }
};
template <>
struct Body<Api::kGraphExecKernelNodeSetParams> : KernelNodeChanged<CUDA_KERNEL_NODE_PARAMS> {};
template <>
struct Body<Api::kGraphExecKernelNodeSetParams1> : KernelNodeChanged<CUDA_KERNEL_NODE_PARAMS_v1> {};
// A copy or memset node: its parameters and a context.
template <typename P, void (*Scan)(const P&, CUgraphNode, std::vector<GraphRef>&)>
struct RangeNodeChanged {
  template <int V, typename R>
  static CUresult call(R real, CUgraphExec exec, CUgraphNode node, const P* p, CUcontext ctx) {
    CUresult r = real(exec, node, p, ctx);
    if (r == CUDA_SUCCESS)
      node_changed(exec, node, [&](Runtime&, std::vector<GraphRef>& out) {
        if (p) Scan(*p, node, out);
        return p != nullptr;
      });
    return r;
  }
};
template <>
struct Body<Api::kGraphExecMemcpyNodeSetParams> : RangeNodeChanged<CUDA_MEMCPY3D, scan_memcpy_node> {};
template <>
struct Body<Api::kGraphExecMemsetNodeSetParams> : RangeNodeChanged<CUDA_MEMSET_NODE_PARAMS, scan_memset_node> {};
template <>
struct Body<Api::kGraphExecChildGraphNodeSetParams> {
  template <int V, typename R>
  static CUresult call(R real, CUgraphExec exec, CUgraphNode node, CUgraph child) {
    CUresult r = real(exec, node, child);
    if (r == CUDA_SUCCESS)
      node_changed(exec, node, [&](Runtime& rt, std::vector<GraphRef>& out) {
        return scan_child_graph(rt.driver(), rt.layouts(), child, node, out);
      });
    return r;
  }
};
template <>
struct Body<Api::kGraphExecNodeSetParams> {
  template <int V, typename R>
  static CUresult call(R real, CUgraphExec exec, CUgraphNode node, CUgraphNodeParams* p) {
    CUresult r = real(exec, node, p);
    if (r == CUDA_SUCCESS)
      node_changed(exec, node, [&](Runtime& rt, std::vector<GraphRef>& out) {
        return p && scan_node_params(rt.driver(), rt.layouts(), *p, node, out);
      });
    return r;
  }
};
// The executable now runs hGraph's parameters (llama.cpp updates its graphs
// this way every step): scan those, as at instantiation, instead of treating
// every later launch as one that reads everything and names nothing.
template <>
struct Body<Api::kGraphExecUpdate> {
  template <int V, typename R, typename... A>
  static CUresult call(R real, CUgraphExec exec, CUgraph graph, A... args) {
    CUresult r = real(exec, graph, args...);
    if (r == CUDA_SUCCESS) record_graph(exec, graph);
    return r;
  }
};
template <>
struct Body<Api::kGraphExecUpdate1> : Body<Api::kGraphExecUpdate> {};  // the CUDA 11 form

// Unloading code: function handles may be reused for other kernels.
struct CodeUnloaded {
  template <int V, typename R, typename H>
  static CUresult call(R real, H handle) {
    CUresult r = real(handle);
    if (Runtime* rt = Runtime::get()) rt->layouts().invalidate();
    return r;
  }
};
template <> struct Body<Api::kModuleUnload> : CodeUnloaded {};
template <> struct Body<Api::kLibraryUnload> : CodeUnloaded {};

// --- streams

template <>
struct Body<Api::kStreamDestroy> {
  template <int V, typename R>
  static CUresult call(R real, CUstream s) {
    if (Runtime* rt = Runtime::get()) {
      rt->streams().destroying(&rt->driver(), s);
      capture_ended(s);  // a capture left unfinished ends with its stream
    }
    return real(s);
  }
};

template <>
struct Body<Api::kStreamBeginCapture> {
  template <int V, typename R>
  static CUresult call(R real, CUstream s, CUstreamCaptureMode mode) {
    CUresult r = real(s, mode);
    if (r == CUDA_SUCCESS) capture_begun(s);
    return r;
  }
};

template <>
struct Body<Api::kStreamBeginCaptureToGraph> {
  template <int V, typename R, typename... A>
  static CUresult call(R real, CUstream s, A... args) {
    CUresult r = real(s, args...);
    if (r == CUDA_SUCCESS) capture_begun(s);
    return r;
  }
};

template <>
struct Body<Api::kStreamEndCapture> {
  template <int V, typename R>
  static CUresult call(R real, CUstream s, CUgraph* g) {
    CUresult r = real(s, g);
    capture_ended(s);  // ends even when it failed (an invalidated capture)
    return r;
  }
};

// --- copies and memsets: their operands

#define KVP_GUARDED(api, params, args, strm, ...)                          \
  template <>                                                              \
  struct Body<Api::api> {                                                  \
    template <int V, typename R>                                           \
    static CUresult call(R real, KVP_UNPAREN params) {                     \
      return guarded(                                                      \
          [&](Scanner& sc) {                                               \
            sc.stream(strm);                                               \
            __VA_ARGS__;                                                   \
          },                                                               \
          [&] { return real(KVP_UNPAREN args); });                         \
    }                                                                      \
  };
#define KVP_UNPAREN(...) __VA_ARGS__

KVP_GUARDED(kMemcpy, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), default_stream<V>(),
            sc.range(d, d + n), sc.range(s, s + n))
KVP_GUARDED(kMemcpyAsync, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), st,
            sc.range(d, d + n), sc.range(s, s + n))
KVP_GUARDED(kMemcpyHtoD, (CUdeviceptr d, const void* h, size_t n), (d, h, n), default_stream<V>(), sc.range(d, d + n))
KVP_GUARDED(kMemcpyDtoH, (void* h, CUdeviceptr s, size_t n), (h, s, n), default_stream<V>(), sc.range(s, s + n))
KVP_GUARDED(kMemcpyDtoD, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n), default_stream<V>(),
            sc.range(d, d + n), sc.range(s, s + n))
KVP_GUARDED(kMemcpyHtoDAsync, (CUdeviceptr d, const void* h, size_t n, CUstream st), (d, h, n, st), st,
            sc.range(d, d + n))
KVP_GUARDED(kMemcpyDtoHAsync, (void* h, CUdeviceptr s, size_t n, CUstream st), (h, s, n, st), st, sc.range(s, s + n))
KVP_GUARDED(kMemcpyDtoDAsync, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st), st,
            sc.range(d, d + n), sc.range(s, s + n))
KVP_GUARDED(kMemcpyPeer, (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext scx, size_t n), (d, dc, s, scx, n),
            default_stream<V>(), sc.range(d, d + n), sc.range(s, s + n))
KVP_GUARDED(kMemcpyPeerAsync, (CUdeviceptr d, CUcontext dc, CUdeviceptr s, CUcontext scx, size_t n, CUstream st),
            (d, dc, s, scx, n, st), st, sc.range(d, d + n), sc.range(s, s + n))

namespace {
template <typename P>
void copy_operands(Scanner& sc, const P* p) {
  if (!p) return;
  uint64_t lo = 0, hi = 0;
  if (copy_range(*p, true, &lo, &hi)) sc.range(lo, hi);
  if (copy_range(*p, false, &lo, &hi)) sc.range(lo, hi);
}
uint64_t rows_end(CUdeviceptr d, size_t pitch, size_t width_bytes, size_t height) {
  return d + (height ? height - 1 : 0) * pitch + width_bytes;
}
}  // namespace

KVP_GUARDED(kMemcpy2D, (const CUDA_MEMCPY2D* p), (p), default_stream<V>(), copy_operands(sc, p))
KVP_GUARDED(kMemcpy2DUnaligned, (const CUDA_MEMCPY2D* p), (p), default_stream<V>(), copy_operands(sc, p))
KVP_GUARDED(kMemcpy2DAsync, (const CUDA_MEMCPY2D* p, CUstream st), (p, st), st, copy_operands(sc, p))
KVP_GUARDED(kMemcpy3D, (const CUDA_MEMCPY3D* p), (p), default_stream<V>(), copy_operands(sc, p))
KVP_GUARDED(kMemcpy3DAsync, (const CUDA_MEMCPY3D* p, CUstream st), (p, st), st, copy_operands(sc, p))
KVP_GUARDED(kMemsetD8, (CUdeviceptr d, unsigned char v, size_t n), (d, v, n), default_stream<V>(), sc.range(d, d + n))
KVP_GUARDED(kMemsetD16, (CUdeviceptr d, unsigned short v, size_t n), (d, v, n), default_stream<V>(),
            sc.range(d, d + 2 * n))
KVP_GUARDED(kMemsetD32, (CUdeviceptr d, unsigned v, size_t n), (d, v, n), default_stream<V>(), sc.range(d, d + 4 * n))
KVP_GUARDED(kMemsetD8Async, (CUdeviceptr d, unsigned char v, size_t n, CUstream st), (d, v, n, st), st,
            sc.range(d, d + n))
KVP_GUARDED(kMemsetD16Async, (CUdeviceptr d, unsigned short v, size_t n, CUstream st), (d, v, n, st), st,
            sc.range(d, d + 2 * n))
KVP_GUARDED(kMemsetD32Async, (CUdeviceptr d, unsigned v, size_t n, CUstream st), (d, v, n, st), st,
            sc.range(d, d + 4 * n))
KVP_GUARDED(kMemsetD2D8, (CUdeviceptr d, size_t p, unsigned char v, size_t w, size_t h), (d, p, v, w, h),
            default_stream<V>(), sc.range(d, rows_end(d, p, w, h)))
KVP_GUARDED(kMemsetD2D16, (CUdeviceptr d, size_t p, unsigned short v, size_t w, size_t h), (d, p, v, w, h),
            default_stream<V>(), sc.range(d, rows_end(d, p, 2 * w, h)))
KVP_GUARDED(kMemsetD2D32, (CUdeviceptr d, size_t p, unsigned v, size_t w, size_t h), (d, p, v, w, h),
            default_stream<V>(), sc.range(d, rows_end(d, p, 4 * w, h)))
KVP_GUARDED(kMemsetD2D8Async, (CUdeviceptr d, size_t p, unsigned char v, size_t w, size_t h, CUstream st),
            (d, p, v, w, h, st), st, sc.range(d, rows_end(d, p, w, h)))
KVP_GUARDED(kMemsetD2D16Async, (CUdeviceptr d, size_t p, unsigned short v, size_t w, size_t h, CUstream st),
            (d, p, v, w, h, st), st, sc.range(d, rows_end(d, p, 2 * w, h)))
KVP_GUARDED(kMemsetD2D32Async, (CUdeviceptr d, size_t p, unsigned v, size_t w, size_t h, CUstream st),
            (d, p, v, w, h, st), st, sc.range(d, rows_end(d, p, 4 * w, h)))

// Copies whose operands we do not take apart (peer 3D, batches): they read
// everything that is spilled.
struct Conservative {
  template <int V, typename R, typename... A>
  static CUresult call(R real, A... args) {
    CUstream s = default_stream<V>();
    ((s = stream_or(s, args)), ...);
    return guarded(
        [&](Scanner& sc) {
          sc.stream(s);
          sc.everything();
        },
        [&] { return real(args...); });
  }
};
template <> struct Body<Api::kMemcpy3DPeer> : Conservative {};
template <> struct Body<Api::kMemcpy3DPeerAsync> : Conservative {};
template <> struct Body<Api::kMemcpyBatchAsync12> : Conservative {};
template <> struct Body<Api::kMemcpyBatchAsync13> : Conservative {};
template <> struct Body<Api::kMemcpy3DBatchAsync12> : Conservative {};
template <> struct Body<Api::kMemcpy3DBatchAsync13> : Conservative {};

// ---------------------------------------------------------------- the tables

}  // namespace kvpager::cuda

// Statically initialised (relocations, no constructor): dlsym and
// cuGetProcAddress may be called before any of our constructors ran.
extern "C" __attribute__((visibility("hidden"))) void* const kvp_wrappers[kvpager::cuda::kApiCount][2] = {
#define KVP_WRAPPERS(e, pfn, name, lo, hi)                                                          \
  {reinterpret_cast<void*>(&kvpager::cuda::Wrapper<kvpager::cuda::Api::e, 0, pfn>::fn),              \
   reinterpret_cast<void*>(&kvpager::cuda::Wrapper<kvpager::cuda::Api::e, 1, pfn>::fn)},
    KVP_APIS(KVP_WRAPPERS)
#undef KVP_WRAPPERS
};

// One pointer per exported libcuda name: libkvpager.so's exported symbols
// (exports.cpp) jump through these.
#define KVP_EXPORT_PTR(name, api, v)                                                              \
  extern "C" __attribute__((visibility("hidden"), used)) void* const kvp_x_##name =              \
      reinterpret_cast<void*>(&kvpager::cuda::Wrapper<kvpager::cuda::Api::api, v,                \
                                                      kvpager::cuda::ApiPfn<kvpager::cuda::Api::api>::type>::fn);
KVP_EXPORTS(KVP_EXPORT_PTR)
#undef KVP_EXPORT_PTR

namespace kvpager::cuda {

namespace {
void* wrapper_of(Api a, int v) { return kvp_wrappers[idx(a)][v]; }
}  // namespace

bool is_wrapper(const void* p) {
  for (const auto& w : kvp_wrappers)
    if (w[0] == p || w[1] == p) return true;
  return false;
}

void* wrap_proc(const char* symbol, int version, cuuint64_t flags, void* real) {
  if (!symbol || !real) return real;
  for (size_t a = 0; a < kApiCount; ++a) {
    const ApiInfo& info = kApiInfo[a];
    if (version < info.lo || version >= info.hi || std::strcmp(symbol, info.name) != 0) continue;
    const auto api = static_cast<Api>(a);
    const int v = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && has_variant(api, 1) ? 1 : 0;
    return install(api, v, real);
  }
  return real;
}

void* wrap_export(const char* name, void* real) {
  if (!name || !real || name[0] != 'c' || name[1] != 'u') return real;
  for (const ExportInfo& e : kExports)
    if (std::strcmp(name, e.name) == 0) return install(e.api, e.variant, real);
  return real;
}

CUresult bench_launch(CUfunction f, void** params, CUstream s, CUresult (*real)(void)) {
  InHook guard;
  return guarded(
      [&](Scanner& sc) {
        sc.stream(s);
        scan_kernel(sc.runtime(), sc, f, params, nullptr);
      },
      [&] { return real(); });
}

}  // namespace kvpager::cuda
