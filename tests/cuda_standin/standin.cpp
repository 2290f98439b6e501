// A stand-in for libcuda.so.1, built only for the tests: the handful of
// driver entry points the tests (and libkvpager.so) call, implemented on host
// memory, each logging one line. "Device" pointers are host addresses, so a
// test can look at the bytes; "kernels" are a few built-in host functions run
// synchronously at launch; streams and events complete at once.
//
// What it models faithfully enough to test the interposer against:
//  - cuGetProcAddress(_v2) by name, ABI version and per-thread-stream flag,
//    including for cuGetProcAddress itself;
//  - cuFuncGetParamInfo with real parameter layouts (a struct by value too);
//  - managed memory: residency per 64 KiB page (prefetch moves it, discard
//    drops it), counted in cuMemGetInfo like the real driver does;
//  - cuMemDiscardBatchAsync leaves garbage (0xDB) where the bytes were, so a
//    range read before it is restored shows it;
//  - cuIpcGetMemHandle refuses managed memory, as CUDA IPC does;
//  - graphs: kernel and memset nodes, instantiation, launch, node queries.
// Knobs (environment): CUDA_STANDIN_TOTAL_MEM (bytes, default 8 GiB),
// CUDA_STANDIN_VERSION (default 13000), CUDA_STANDIN_NO_PARAM_INFO=1 (a driver
// without cuFuncGetParamInfo), CUDA_STANDIN_REENTER=1 (cuMemAllocManaged calls
// back into cuMemGetInfo_v2 and cuMemAlloc_v2 through dlsym, as a driver that
// uses its own exported entry points would), CUDA_STANDIN_COPY_DELAY_MS (each
// asynchronous host-to-device copy -- a restore's copy-in -- takes this long
// before its bytes land, as over a slow link: a launch on another thread that
// does not wait for the restore reads what was there before),
// CUDA_STANDIN_MANAGED_OFFSET (managed allocations start this many bytes past
// a page boundary: only 256-byte alignment is documented).
// Stream capture interaction modes (cuda.h, cuThreadExchangeStreamCaptureMode):
// a thread in CU_STREAM_CAPTURE_MODE_GLOBAL (every thread's default) may not
// make potentially unsafe calls while another thread captures in that mode,
// nor may a thread in any mode but RELAXED while it captures itself; such a
// call fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the
// conflicting captures (cuStreamEndCapture then fails). Unsafe here: the
// allocations that are not stream ordered (the header's own example,
// cudaMalloc) and the host waits on work (event/stream/context queries and
// synchronizes: PyTorch leaves GLOBAL mode around its event queries for this).
#include "standin.h"

#include <cuda.h>
#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#undef cuGetProcAddress

namespace {

std::mutex g_mu;
std::vector<std::string> g_log;

__attribute__((format(printf, 1, 2))) void logf(const char* fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::lock_guard lock(g_mu);
  g_log.emplace_back(buf);
}

uint64_t env_u64(const char* name, uint64_t dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : dflt;
}

int driver_version() { return static_cast<int>(env_u64("CUDA_STANDIN_VERSION", 13000)); }

// ---------------------------------------------------------------- memory

enum class Kind { kDevice, kManaged, kHost, kReserve };
constexpr uint64_t kPage = 64 * 1024;

struct Alloc {
  uint64_t size;
  Kind kind;
  std::vector<uint8_t> resident;  // managed: per 64 KiB page, 1 = on the device
  uint64_t offset = 0;            // bytes mapped below the base (CUDA_STANDIN_MANAGED_OFFSET)
};
std::map<uint64_t, Alloc> g_allocs;  // by base
uint64_t g_vmm_bytes = 0;

uint64_t u(CUdeviceptr p) { return static_cast<uint64_t>(p); }

void* map_bytes(uint64_t size) {
  void* p = mmap(nullptr, size ? size : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

CUresult add_alloc(CUdeviceptr* dptr, uint64_t size, Kind kind) {
  if (!dptr || size == 0) return CUDA_ERROR_INVALID_VALUE;
  // The documented guarantee is 256-byte alignment: a driver may hand out
  // managed memory that does not start on a page.
  const uint64_t offset = kind == Kind::kManaged ? env_u64("CUDA_STANDIN_MANAGED_OFFSET", 0) : 0;
  void* mapped = map_bytes(size + offset);
  if (!mapped) return CUDA_ERROR_OUT_OF_MEMORY;
  void* p = static_cast<char*>(mapped) + offset;
  std::lock_guard lock(g_mu);
  Alloc a{size, kind, {}, offset};
  if (kind == Kind::kManaged) a.resident.assign((size + kPage - 1) / kPage, 0);
  g_allocs[reinterpret_cast<uint64_t>(p)] = std::move(a);
  *dptr = reinterpret_cast<CUdeviceptr>(p);
  return CUDA_SUCCESS;
}

CUresult remove_alloc(uint64_t p) {
  std::unique_lock lock(g_mu);
  auto it = g_allocs.find(p);
  if (it == g_allocs.end()) return CUDA_ERROR_INVALID_VALUE;
  const uint64_t size = it->second.size, offset = it->second.offset;
  g_allocs.erase(it);
  lock.unlock();
  munmap(reinterpret_cast<void*>(p - offset), size + offset);
  return CUDA_SUCCESS;
}

// The allocation containing p (g_mu held).
Alloc* find(uint64_t p, uint64_t* base) {
  auto it = g_allocs.upper_bound(p);
  if (it == g_allocs.begin()) return nullptr;
  --it;
  if (p - it->first >= it->second.size) return nullptr;
  if (base) *base = it->first;
  return &it->second;
}

void set_resident(uint64_t p, uint64_t n, bool on) {
  std::lock_guard lock(g_mu);
  uint64_t base = 0;
  Alloc* a = find(p, &base);
  if (!a || a->kind != Kind::kManaged) return;
  for (uint64_t pg = (p - base) / kPage; pg < a->resident.size() && pg * kPage < p - base + n; ++pg)
    a->resident[pg] = on;
}

const char* where(CUmemLocation l) { return l.type == CU_MEM_LOCATION_TYPE_DEVICE ? "device" : "host"; }

// ---------------------------------------------------------------- contexts, streams, events

struct Context {
  int device = 0;
} g_ctx;
thread_local CUcontext t_current = nullptr;

struct Stream {
  bool capturing = false;
  bool invalidated = false;
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
  std::thread::id thread;
};
// An event recorded while an event lag is set (standin_set_event_lag) answers
// CUDA_ERROR_NOT_READY to that many queries before it completes, as work on a
// real stream takes time; cuEventSynchronize completes it at once.
struct Event {
  std::atomic<uint32_t> not_ready{0};
};
std::atomic<uint32_t> g_event_lag{0};
// standin_fail_event_create
std::atomic<bool> g_fail_event_create{false};
// standin_fail_event_query: what every cuEventQuery answers (0: as usual)
std::atomic<int> g_event_query_result{0};
// standin_fail_prefetch_at
std::atomic<uint64_t> g_fail_prefetch_addr{0};
std::atomic<int> g_fail_prefetch_result{0};
std::atomic<bool> g_fail_prefetch_partial{false};

CUresult need_context() { return t_current ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT; }

// Captures under way (g_mu), and this thread's capture interaction mode.
std::vector<Stream*> g_capturing;
thread_local CUstreamCaptureMode t_capture_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

// A potentially unsafe call: refused (and the captures it conflicts with
// invalidated) as described at the top.
CUresult unsafe_during_capture(const char* what) {
  if (t_capture_mode == CU_STREAM_CAPTURE_MODE_RELAXED) return CUDA_SUCCESS;
  std::lock_guard lock(g_mu);
  bool conflict = false;
  for (Stream* st : g_capturing) {
    const bool mine = st->thread == std::this_thread::get_id();
    if ((mine && st->mode != CU_STREAM_CAPTURE_MODE_RELAXED) ||
        (!mine && st->mode == CU_STREAM_CAPTURE_MODE_GLOBAL && t_capture_mode == CU_STREAM_CAPTURE_MODE_GLOBAL)) {
      st->invalidated = true;
      conflict = true;
    }
  }
  if (!conflict) return CUDA_SUCCESS;
  g_log.emplace_back(std::string(what) + " refused: it would break a stream capture");
  return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

// ---------------------------------------------------------------- kernels

struct Kernel {
  const char* name;
  std::vector<std::pair<size_t, size_t>> params;  // offset, size
  void (*run)(const unsigned char* buf);          // the packed parameter buffer
};

template <typename T>
T at(const unsigned char* buf, size_t off) {
  T v;
  std::memcpy(&v, buf + off, sizeof v);
  return v;
}

void run_fill(const unsigned char* b) {
  auto* p = reinterpret_cast<uint8_t*>(at<uint64_t>(b, 0));
  uint64_t len = at<uint64_t>(b, 8);
  uint32_t seed = at<uint32_t>(b, 16);
  for (uint64_t i = 0; i < len; ++i) p[i] = standin_pattern(i, seed);
}

uint64_t mismatches(uint64_t ptr, uint64_t len, uint32_t seed) {
  auto* p = reinterpret_cast<const uint8_t*>(ptr);
  uint64_t bad = 0;
  for (uint64_t i = 0; i < len; ++i) bad += p[i] != standin_pattern(i, seed);
  return bad;
}

void run_check(const unsigned char* b) {
  uint64_t bad = mismatches(at<uint64_t>(b, 0), at<uint64_t>(b, 8), at<uint32_t>(b, 16));
  *reinterpret_cast<uint64_t*>(at<uint64_t>(b, 24)) = bad;
}

// check_struct(int tag, struct { u32 n; u32 pad; u64 ptr; u64 len; u32 seed; u32 pad; u64 result; } s)
void run_check_struct(const unsigned char* b) {
  uint64_t bad = mismatches(at<uint64_t>(b, 16), at<uint64_t>(b, 24), at<uint32_t>(b, 32));
  *reinterpret_cast<uint64_t*>(at<uint64_t>(b, 40)) = bad;
}

void run_noop(const unsigned char*) {}

const Kernel kKernels[] = {
    {"fill", {{0, 8}, {8, 8}, {16, 4}}, run_fill},
    {"check", {{0, 8}, {8, 8}, {16, 4}, {24, 8}}, run_check},
    {"check_struct", {{0, 4}, {8, 40}}, run_check_struct},
    {"noop", {{0, 8}}, run_noop},
    // wide(u64 p0, ..., u64 p19): a kernel with many pointers (MoE scales, block tables).
    {"wide", {{0, 8},   {8, 8},   {16, 8},  {24, 8},  {32, 8},  {40, 8},  {48, 8},  {56, 8},  {64, 8},  {72, 8},
              {80, 8},  {88, 8},  {96, 8},  {104, 8}, {112, 8}, {120, 8}, {128, 8}, {136, 8}, {144, 8}, {152, 8}},
     run_noop},
};

const Kernel* kernel_of(CUfunction f) {
  for (const Kernel& k : kKernels)
    if (reinterpret_cast<const void*>(&k) == reinterpret_cast<const void*>(f)) return &k;
  return nullptr;
}

size_t buffer_size(const Kernel& k) {
  size_t n = 0;
  for (auto [off, size] : k.params) n = std::max(n, off + size);
  return n;
}

// Packs kernelParams (or takes the `extra` buffer) into one parameter buffer.
bool pack(const Kernel& k, void** params, void** extra, std::vector<unsigned char>& buf) {
  buf.assign(buffer_size(k), 0);
  if (params) {
    for (size_t i = 0; i < k.params.size(); ++i) std::memcpy(buf.data() + k.params[i].first, params[i], k.params[i].second);
    return true;
  }
  if (!extra) return k.params.empty();
  const unsigned char* src = nullptr;
  size_t size = 0;
  for (int i = 0; extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
    if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) src = static_cast<const unsigned char*>(extra[i + 1]);
    if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE) std::memcpy(&size, extra[i + 1], sizeof size);
  }
  if (!src || size < buf.size()) return false;
  std::memcpy(buf.data(), src, buf.size());
  return true;
}

CUresult launch(const char* entry, CUfunction f, void** params, void** extra) {
  const Kernel* k = kernel_of(f);
  if (!k) return CUDA_ERROR_INVALID_HANDLE;
  std::vector<unsigned char> buf;
  if (!pack(*k, params, extra, buf)) return CUDA_ERROR_INVALID_VALUE;
  logf("%s %s", entry, k->name);
  k->run(buf.data());
  return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- graphs

struct Graph;
struct Node {
  CUgraphNodeType type;
  const Kernel* kernel = nullptr;
  std::vector<unsigned char> buf;  // kernel parameters, packed
  std::vector<void*> param_ptrs;
  CUDA_MEMSET_NODE_PARAMS memset{};
  CUDA_MEMCPY3D memcpy{};  // 1D only: WidthInBytes from src to dst
  Graph* child = nullptr;  // the caller's graph (the driver would clone it)
  bool device_updatable = false;
};
struct Graph {
  std::vector<std::unique_ptr<Node>> nodes;
};
struct Exec {
  Graph* graph;
};

void set_kernel_params(Node& n, const CUDA_KERNEL_NODE_PARAMS& p) {
  n.kernel = kernel_of(p.func);
  pack(*n.kernel, p.kernelParams, p.extra, n.buf);
  n.param_ptrs.clear();
  for (auto [off, size] : n.kernel->params) n.param_ptrs.push_back(n.buf.data() + off);
}

}  // namespace

// ================================================================ exported

extern "C" {

void* standin_function(const char* name) {
  for (const Kernel& k : kKernels)
    if (std::strcmp(k.name, name) == 0) return const_cast<Kernel*>(&k);
  return nullptr;
}

size_t standin_log_count() {
  std::lock_guard lock(g_mu);
  return g_log.size();
}

size_t standin_log_line(size_t i, char* buf, size_t len) {
  std::lock_guard lock(g_mu);
  if (i >= g_log.size()) return 0;
  const std::string& s = g_log[i];
  if (buf && len) {
    size_t n = std::min(s.size(), len - 1);
    std::memcpy(buf, s.data(), n);
    buf[n] = '\0';
  }
  return s.size();
}

void standin_log_clear() {
  std::lock_guard lock(g_mu);
  g_log.clear();
}

void standin_set_event_lag(uint32_t queries) { g_event_lag = queries; }

void standin_fail_event_create(int fail) { g_fail_event_create = fail != 0; }

// Every cuEventQuery answers `result` (an error from work that failed on its
// stream, e.g. CUDA_ERROR_LAUNCH_FAILED) until it is set back to 0.
void standin_fail_event_query(int result) { g_event_query_result = result; }

void standin_fail_prefetch_at(uint64_t addr, int result) {
  g_fail_prefetch_result = addr ? result : 0;
  g_fail_prefetch_addr = addr;
  g_fail_prefetch_partial = false;
}

void standin_fail_prefetch_partly_at(uint64_t addr, int result) {
  standin_fail_prefetch_at(addr, result);
  g_fail_prefetch_partial = addr != 0;
}

uint64_t standin_resident_in(uint64_t p, uint64_t n) {
  std::lock_guard lock(g_mu);
  uint64_t base = 0, bytes = 0;
  Alloc* a = find(p, &base);
  if (!a || a->kind != Kind::kManaged) return 0;
  for (uint64_t pg = (p - base) / kPage; pg < a->resident.size() && pg * kPage < p - base + n; ++pg)
    bytes += a->resident[pg] ? kPage : 0;
  return bytes;
}

uint64_t standin_device_resident() {
  std::lock_guard lock(g_mu);
  uint64_t n = 0;
  for (auto& [base, a] : g_allocs)
    for (uint8_t r : a.resident) n += r ? kPage : 0;
  return n;
}

// ---- initialisation, devices, contexts

CUresult cuInit(unsigned int) {
  logf("cuInit");
  return CUDA_SUCCESS;
}
CUresult cuDriverGetVersion(int* v) {
  if (!v) return CUDA_ERROR_INVALID_VALUE;
  *v = driver_version();
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
  *n = 1;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
  if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *d = 0;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, CUdevice_attribute attr, CUdevice) {
  *v = attr == CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS || attr == CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY ? 1 : 0;
  return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
  *bytes = env_u64("CUDA_STANDIN_TOTAL_MEM", 8ull << 30);
  return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice) {
  *ctx = reinterpret_cast<CUcontext>(&g_ctx);
  return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext* ctx) {
  *ctx = t_current;
  return CUDA_SUCCESS;
}
CUresult cuCtxSetCurrent(CUcontext ctx) {
  t_current = ctx;
  return CUDA_SUCCESS;
}
CUresult cuCtxGetDevice(CUdevice* d) {
  if (CUresult r = need_context()) return r;
  *d = 0;
  return CUDA_SUCCESS;
}
CUresult cuCtxSynchronize() {
  if (CUresult r = unsafe_during_capture("cuCtxSynchronize")) return r;
  logf("cuCtxSynchronize");
  return CUDA_SUCCESS;
}

// ---- memory

CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
  if (!free || !total) return CUDA_ERROR_INVALID_VALUE;
  const uint64_t t = env_u64("CUDA_STANDIN_TOTAL_MEM", 8ull << 30);
  uint64_t used = standin_device_resident();
  {
    std::lock_guard lock(g_mu);
    used += g_vmm_bytes;
    for (auto& [base, a] : g_allocs)
      if (a.kind == Kind::kDevice) used += a.size;
  }
  *total = t;
  *free = used < t ? t - used : 0;
  return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t size) {
  if (CUresult r = need_context()) return r;
  if (CUresult r = unsafe_during_capture("cuMemAlloc_v2")) return r;
  CUresult r = add_alloc(dptr, size, Kind::kDevice);
  logf("cuMemAlloc_v2 %zu", size);
  return r;
}

CUresult cuMemAllocPitch_v2(CUdeviceptr* dptr, size_t* pitch, size_t width, size_t height, unsigned elem) {
  if (CUresult r = need_context()) return r;
  if (elem != 4 && elem != 8 && elem != 16) return CUDA_ERROR_INVALID_VALUE;
  *pitch = (width + 511) / 512 * 512;
  logf("cuMemAllocPitch_v2 %zu", *pitch * height);
  return add_alloc(dptr, *pitch * height, Kind::kDevice);
}

CUresult cuMemAllocManaged(CUdeviceptr* dptr, size_t size, unsigned flags) {
  if (CUresult r = need_context()) return r;
  if (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST) return CUDA_ERROR_INVALID_VALUE;
  if (CUresult r = unsafe_during_capture("cuMemAllocManaged")) return r;
  if (std::getenv("CUDA_STANDIN_REENTER")) {
    // A driver calling its own exported entry points from inside a call.
    using Info = CUresult (*)(size_t*, size_t*);
    using Alloc = CUresult (*)(CUdeviceptr*, size_t);
    auto info = reinterpret_cast<Info>(dlsym(RTLD_DEFAULT, "cuMemGetInfo_v2"));
    auto alloc = reinterpret_cast<Alloc>(dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"));
    size_t f = 0, t = 0;
    CUdeviceptr scratch = 0;
    if (info) info(&f, &t);
    if (alloc && alloc(&scratch, 4u << 20) == CUDA_SUCCESS) remove_alloc(u(scratch));
  }
  CUresult r = add_alloc(dptr, size, Kind::kManaged);
  logf("cuMemAllocManaged %zu 0x%llx", size, static_cast<unsigned long long>(r == CUDA_SUCCESS ? *dptr : 0));
  return r;
}

CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t size, CUstream) {
  if (CUresult r = need_context()) return r;
  logf("cuMemAllocAsync %zu", size);
  return add_alloc(dptr, size, Kind::kDevice);
}
CUresult cuMemAllocAsync_ptsz(CUdeviceptr* dptr, size_t size, CUstream s) { return cuMemAllocAsync(dptr, size, s); }
CUresult cuDeviceGetMemPool(CUmemoryPool* pool, CUdevice) {
  static int default_pool;
  *pool = reinterpret_cast<CUmemoryPool>(&default_pool);
  return CUDA_SUCCESS;
}
CUresult cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t size, CUmemoryPool, CUstream) {
  logf("cuMemAllocFromPoolAsync %zu", size);
  return add_alloc(dptr, size, Kind::kDevice);
}
CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr* dptr, size_t size, CUmemoryPool p, CUstream s) {
  return cuMemAllocFromPoolAsync(dptr, size, p, s);
}

CUresult cuMemFree_v2(CUdeviceptr p) {
  logf("cuMemFree_v2 0x%llx", static_cast<unsigned long long>(p));
  return remove_alloc(u(p));
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) {
  logf("cuMemFreeAsync 0x%llx", static_cast<unsigned long long>(p));
  return remove_alloc(u(p));
}
CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { return cuMemFreeAsync(p, s); }

CUresult cuMemHostAlloc(void** p, size_t size, unsigned) {
  if (CUresult r = unsafe_during_capture("cuMemHostAlloc")) return r;
  CUdeviceptr d = 0;
  CUresult r = add_alloc(&d, size, Kind::kHost);
  *p = reinterpret_cast<void*>(d);
  logf("cuMemHostAlloc %zu", size);
  return r;
}
CUresult cuMemAllocHost_v2(void** p, size_t size) { return cuMemHostAlloc(p, size, 0); }
CUresult cuMemFreeHost(void* p) { return remove_alloc(reinterpret_cast<uint64_t>(p)); }

// Virtual memory management: only what a pass-through test needs.
CUresult cuMemCreate(CUmemGenericAllocationHandle* h, size_t size, const CUmemAllocationProp*, unsigned long long) {
  std::lock_guard lock(g_mu);
  g_vmm_bytes += size;
  *h = size;
  g_log.emplace_back("cuMemCreate " + std::to_string(size));
  return CUDA_SUCCESS;
}
CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
  std::lock_guard lock(g_mu);
  g_vmm_bytes -= h;
  return CUDA_SUCCESS;
}
CUresult cuMemAddressReserve(CUdeviceptr* p, size_t size, size_t, CUdeviceptr, unsigned long long) {
  logf("cuMemAddressReserve %zu", size);
  return add_alloc(p, size, Kind::kReserve);
}
CUresult cuMemAddressFree(CUdeviceptr p, size_t) { return remove_alloc(u(p)); }
CUresult cuMemMap(CUdeviceptr p, size_t size, size_t, CUmemGenericAllocationHandle, unsigned long long) {
  logf("cuMemMap 0x%llx %zu", static_cast<unsigned long long>(p), size);
  return CUDA_SUCCESS;
}
CUresult cuMemUnmap(CUdeviceptr, size_t) { return CUDA_SUCCESS; }

CUresult cuIpcGetMemHandle(CUipcMemHandle* h, CUdeviceptr p) {
  std::lock_guard lock(g_mu);
  Alloc* a = find(u(p), nullptr);
  if (!a || a->kind != Kind::kDevice) {
    g_log.emplace_back("cuIpcGetMemHandle refused");
    return CUDA_ERROR_INVALID_VALUE;  // CUDA IPC exports device allocations only
  }
  std::memset(h, 0, sizeof *h);
  std::memcpy(h->reserved, &p, sizeof p);
  g_log.emplace_back("cuIpcGetMemHandle ok");
  return CUDA_SUCCESS;
}

CUresult cuMemAdvise_v2(CUdeviceptr p, size_t n, CUmem_advise advice, CUmemLocation loc) {
  logf("cuMemAdvise_v2 0x%llx %zu %d %s", static_cast<unsigned long long>(p), n, static_cast<int>(advice), where(loc));
  return CUDA_SUCCESS;
}

CUresult cuMemPrefetchAsync_v2(CUdeviceptr p, size_t n, CUmemLocation loc, unsigned, CUstream s) {
  logf("cuMemPrefetchAsync_v2 0x%llx %zu %s on 0x%llx", static_cast<unsigned long long>(p), n, where(loc),
       reinterpret_cast<unsigned long long>(s));
  if (const uint64_t bad = g_fail_prefetch_addr.load(); bad && bad >= u(p) && bad < u(p) + n && g_fail_prefetch_result) {
    logf("cuMemPrefetchAsync_v2 refused (%d)", g_fail_prefetch_result.load());
    if (g_fail_prefetch_partial.exchange(false)) {  // once: a transient failure half way
      set_resident(u(p), bad - u(p), loc.type == CU_MEM_LOCATION_TYPE_DEVICE);
      const int r = g_fail_prefetch_result.exchange(0);
      g_fail_prefetch_addr = 0;
      return static_cast<CUresult>(r);
    }
    return static_cast<CUresult>(g_fail_prefetch_result.load());
  }
  set_resident(u(p), n, loc.type == CU_MEM_LOCATION_TYPE_DEVICE);
  return CUDA_SUCCESS;
}
CUresult cuMemPrefetchAsync_v2_ptsz(CUdeviceptr p, size_t n, CUmemLocation loc, unsigned f, CUstream s) {
  return cuMemPrefetchAsync_v2(p, n, loc, f, s);
}

CUresult cuMemDiscardBatchAsync(CUdeviceptr* ptrs, size_t* sizes, size_t count, unsigned long long, CUstream) {
  for (size_t i = 0; i < count; ++i) {
    logf("cuMemDiscardBatchAsync 0x%llx %zu", static_cast<unsigned long long>(ptrs[i]), sizes[i]);
    std::memset(reinterpret_cast<void*>(ptrs[i]), 0xDB, sizes[i]);  // indeterminate: make it visible
    set_resident(u(ptrs[i]), sizes[i], false);
  }
  return CUDA_SUCCESS;
}
CUresult cuMemDiscardBatchAsync_ptsz(CUdeviceptr* p, size_t* s, size_t n, unsigned long long f, CUstream st) {
  return cuMemDiscardBatchAsync(p, s, n, f, st);
}

// ---- copies and memsets

namespace {
void slow_link() {
  static const uint64_t ms = env_u64("CUDA_STANDIN_COPY_DELAY_MS", 0);
  if (ms) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}
}  // namespace

#define STANDIN_COPY(name, dst, src, n)                                                      \
  logf("%s 0x%llx 0x%llx %zu", name, reinterpret_cast<unsigned long long>(dst),             \
       reinterpret_cast<unsigned long long>(src), static_cast<size_t>(n));                  \
  std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);       \
  return CUDA_SUCCESS;

CUresult cuMemcpy(CUdeviceptr d, CUdeviceptr s, size_t n) { STANDIN_COPY("cuMemcpy", d, s, n) }
CUresult cuMemcpyAsync(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream) { STANDIN_COPY("cuMemcpyAsync", d, s, n) }
CUresult cuMemcpyAsync_ptsz(CUdeviceptr d, CUdeviceptr s, size_t n, CUstream) {
  STANDIN_COPY("cuMemcpyAsync_ptsz", d, s, n)
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { STANDIN_COPY("cuMemcpyHtoD_v2", d, h, n) }
CUresult cuMemcpyDtoH_v2(void* h, CUdeviceptr s, size_t n) { STANDIN_COPY("cuMemcpyDtoH_v2", h, s, n) }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) { STANDIN_COPY("cuMemcpyDtoD_v2", d, s, n) }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, CUstream) {
  slow_link();
  STANDIN_COPY("cuMemcpyHtoDAsync_v2", d, h, n)
}
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr d, const void* h, size_t n, CUstream) {
  slow_link();
  STANDIN_COPY("cuMemcpyHtoDAsync_v2_ptsz", d, h, n)
}
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr s, size_t n, CUstream) {
  STANDIN_COPY("cuMemcpyDtoHAsync_v2", h, s, n)
}
CUresult cuMemcpyDtoHAsync_v2_ptsz(void* h, CUdeviceptr s, size_t n, CUstream) {
  STANDIN_COPY("cuMemcpyDtoHAsync_v2_ptsz", h, s, n)
}
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) {
  logf("cuMemsetD8_v2 0x%llx %zu", static_cast<unsigned long long>(d), n);
  std::memset(reinterpret_cast<void*>(d), v, n);
  return CUDA_SUCCESS;
}
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) {
  logf("cuMemsetD32_v2 0x%llx %zu", static_cast<unsigned long long>(d), n);
  auto* p = reinterpret_cast<unsigned*>(d);
  std::fill(p, p + n, v);
  return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream) { return cuMemsetD8_v2(d, v, n); }
CUresult cuMemsetD8Async_ptsz(CUdeviceptr d, unsigned char v, size_t n, CUstream) { return cuMemsetD8_v2(d, v, n); }

// ---- kernels

CUresult cuFuncGetParamInfo(CUfunction f, size_t i, size_t* off, size_t* size) {
  if (std::getenv("CUDA_STANDIN_NO_PARAM_INFO")) return CUDA_ERROR_NOT_SUPPORTED;
  const Kernel* k = kernel_of(f);
  if (!k) return CUDA_ERROR_INVALID_HANDLE;
  if (i >= k->params.size()) return CUDA_ERROR_INVALID_VALUE;
  *off = k->params[i].first;
  *size = k->params[i].second;
  return CUDA_SUCCESS;
}
CUresult cuKernelGetParamInfo(CUkernel, size_t, size_t*, size_t*) { return CUDA_ERROR_NOT_SUPPORTED; }

CUresult cuLaunchKernel(CUfunction f, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void** params, void** extra) {
  return launch("cuLaunchKernel", f, params, extra);
}
CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             CUstream, void** params, void** extra) {
  return launch("cuLaunchKernel_ptsz", f, params, extra);
}
CUresult cuLaunchKernelEx(const CUlaunchConfig*, CUfunction f, void** params, void** extra) {
  return launch("cuLaunchKernelEx", f, params, extra);
}
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig*, CUfunction f, void** params, void** extra) {
  return launch("cuLaunchKernelEx_ptsz", f, params, extra);
}

// ---- streams and events

CUresult cuStreamCreate(CUstream* s, unsigned) {
  *s = reinterpret_cast<CUstream>(new Stream());
  logf("cuStreamCreate 0x%llx", reinterpret_cast<unsigned long long>(*s));
  return CUDA_SUCCESS;
}
CUresult cuStreamDestroy_v2(CUstream s) {
  logf("cuStreamDestroy_v2 0x%llx", reinterpret_cast<unsigned long long>(s));
  {
    std::lock_guard lock(g_mu);
    std::erase(g_capturing, reinterpret_cast<Stream*>(s));
  }
  delete reinterpret_cast<Stream*>(s);
  return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream s) {
  logf("cuStreamSynchronize 0x%llx", reinterpret_cast<unsigned long long>(s));
  return unsafe_during_capture("cuStreamSynchronize");
}
CUresult cuStreamSynchronize_ptsz(CUstream) { return unsafe_during_capture("cuStreamSynchronize_ptsz"); }
CUresult cuStreamQuery(CUstream) { return unsafe_during_capture("cuStreamQuery"); }
CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode* mode) {
  if (!mode) return CUDA_ERROR_INVALID_VALUE;
  std::swap(*mode, t_capture_mode);
  logf("cuThreadExchangeStreamCaptureMode %d", static_cast<int>(t_capture_mode));
  return CUDA_SUCCESS;
}
namespace {
bool is_default(CUstream s) { return !s || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD; }
}  // namespace
CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus* st) {
  *st = !is_default(s) && reinterpret_cast<Stream*>(s)->capturing ? CU_STREAM_CAPTURE_STATUS_ACTIVE
                                                                     : CU_STREAM_CAPTURE_STATUS_NONE;
  return CUDA_SUCCESS;
}
CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode) {
  if (is_default(s)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  auto* st = reinterpret_cast<Stream*>(s);
  {
    std::lock_guard lock(g_mu);
    st->capturing = true;
    st->invalidated = false;
    st->mode = mode;
    st->thread = std::this_thread::get_id();
    g_capturing.push_back(st);
  }
  logf("cuStreamBeginCapture_v2");
  return CUDA_SUCCESS;
}
CUresult cuStreamEndCapture(CUstream s, CUgraph* g) {
  if (is_default(s) || !reinterpret_cast<Stream*>(s)->capturing) return CUDA_ERROR_ILLEGAL_STATE;
  auto* st = reinterpret_cast<Stream*>(s);
  bool invalidated = false;
  {
    std::lock_guard lock(g_mu);
    st->capturing = false;
    invalidated = st->invalidated;
    std::erase(g_capturing, st);
  }
  if (invalidated) {
    *g = nullptr;
    logf("cuStreamEndCapture invalidated");
    return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  }
  *g = reinterpret_cast<CUgraph>(new Graph());
  logf("cuStreamEndCapture");
  return CUDA_SUCCESS;
}
CUresult cuEventCreate(CUevent* e, unsigned) {
  if (g_fail_event_create) {
    logf("cuEventCreate refused");
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  *e = reinterpret_cast<CUevent>(new Event());
  return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent e, CUstream s) {
  if (!is_default(s) && reinterpret_cast<Stream*>(s)->capturing) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  logf("cuEventRecord 0x%llx", reinterpret_cast<unsigned long long>(s));
  reinterpret_cast<Event*>(e)->not_ready = g_event_lag.load();
  return CUDA_SUCCESS;
}
CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { return cuEventRecord(e, s); }
CUresult cuEventQuery(CUevent e) {
  if (CUresult r = unsafe_during_capture("cuEventQuery")) return r;
  if (int r = g_event_query_result.load()) return static_cast<CUresult>(r);
  auto& left = reinterpret_cast<Event*>(e)->not_ready;
  for (uint32_t n = left.load(); n > 0;)
    if (left.compare_exchange_weak(n, n - 1)) return CUDA_ERROR_NOT_READY;
  return CUDA_SUCCESS;
}
CUresult cuEventSynchronize(CUevent e) {
  if (CUresult r = unsafe_during_capture("cuEventSynchronize")) return r;
  reinterpret_cast<Event*>(e)->not_ready = 0;
  return CUDA_SUCCESS;
}
CUresult cuEventDestroy_v2(CUevent e) {
  delete reinterpret_cast<Event*>(e);
  return CUDA_SUCCESS;
}

// ---- graphs

CUresult cuGraphCreate(CUgraph* g, unsigned) {
  *g = reinterpret_cast<CUgraph>(new Graph());
  return CUDA_SUCCESS;
}
CUresult cuGraphDestroy(CUgraph g) {
  delete reinterpret_cast<Graph*>(g);
  return CUDA_SUCCESS;
}
CUresult cuGraphAddKernelNode_v2(CUgraphNode* out, CUgraph g, const CUgraphNode*, size_t,
                                 const CUDA_KERNEL_NODE_PARAMS* p) {
  if (!kernel_of(p->func)) return CUDA_ERROR_INVALID_HANDLE;
  auto n = std::make_unique<Node>();
  n->type = CU_GRAPH_NODE_TYPE_KERNEL;
  set_kernel_params(*n, *p);
  *out = reinterpret_cast<CUgraphNode>(n.get());
  reinterpret_cast<Graph*>(g)->nodes.push_back(std::move(n));
  return CUDA_SUCCESS;
}
CUresult cuGraphAddMemsetNode(CUgraphNode* out, CUgraph g, const CUgraphNode*, size_t,
                              const CUDA_MEMSET_NODE_PARAMS* p, CUcontext) {
  auto n = std::make_unique<Node>();
  n->type = CU_GRAPH_NODE_TYPE_MEMSET;
  n->memset = *p;
  *out = reinterpret_cast<CUgraphNode>(n.get());
  reinterpret_cast<Graph*>(g)->nodes.push_back(std::move(n));
  return CUDA_SUCCESS;
}
CUresult cuGraphAddHostNode(CUgraphNode* out, CUgraph g, const CUgraphNode*, size_t, const CUDA_HOST_NODE_PARAMS*) {
  auto n = std::make_unique<Node>();
  n->type = CU_GRAPH_NODE_TYPE_HOST;
  *out = reinterpret_cast<CUgraphNode>(n.get());
  reinterpret_cast<Graph*>(g)->nodes.push_back(std::move(n));
  return CUDA_SUCCESS;
}
CUresult cuGraphAddBatchMemOpNode(CUgraphNode* out, CUgraph g, const CUgraphNode*, size_t,
                                  const CUDA_BATCH_MEM_OP_NODE_PARAMS*) {
  auto n = std::make_unique<Node>();
  n->type = CU_GRAPH_NODE_TYPE_BATCH_MEM_OP;
  *out = reinterpret_cast<CUgraphNode>(n.get());
  reinterpret_cast<Graph*>(g)->nodes.push_back(std::move(n));
  return CUDA_SUCCESS;
}
CUresult cuGraphGetNodes(CUgraph g, CUgraphNode* nodes, size_t* n) {
  auto& list = reinterpret_cast<Graph*>(g)->nodes;
  if (nodes)
    for (size_t i = 0; i < std::min(*n, list.size()); ++i) nodes[i] = reinterpret_cast<CUgraphNode>(list[i].get());
  *n = list.size();
  return CUDA_SUCCESS;
}
CUresult cuGraphNodeGetType(CUgraphNode n, CUgraphNodeType* t) {
  *t = reinterpret_cast<Node*>(n)->type;
  return CUDA_SUCCESS;
}
CUresult cuGraphKernelNodeGetParams_v2(CUgraphNode node, CUDA_KERNEL_NODE_PARAMS* p) {
  Node& n = *reinterpret_cast<Node*>(node);
  if (n.type != CU_GRAPH_NODE_TYPE_KERNEL) return CUDA_ERROR_INVALID_VALUE;
  std::memset(p, 0, sizeof *p);
  p->func = reinterpret_cast<CUfunction>(const_cast<Kernel*>(n.kernel));
  p->kernelParams = n.param_ptrs.data();
  return CUDA_SUCCESS;
}
// Only the device-updatable attribute (an unknown one: what an old driver says).
CUresult cuGraphKernelNodeGetAttribute(CUgraphNode node, CUkernelNodeAttrID attr, CUkernelNodeAttrValue* v) {
  Node& n = *reinterpret_cast<Node*>(node);
  if (n.type != CU_GRAPH_NODE_TYPE_KERNEL || attr != CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE)
    return CUDA_ERROR_INVALID_VALUE;
  std::memset(v, 0, sizeof *v);
  v->deviceUpdatableKernelNode.deviceUpdatable = n.device_updatable ? 1 : 0;
  return CUDA_SUCCESS;
}
CUresult cuGraphKernelNodeSetAttribute(CUgraphNode node, CUkernelNodeAttrID attr, const CUkernelNodeAttrValue* v) {
  Node& n = *reinterpret_cast<Node*>(node);
  if (n.type != CU_GRAPH_NODE_TYPE_KERNEL || attr != CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE)
    return CUDA_ERROR_INVALID_VALUE;
  n.device_updatable = v->deviceUpdatableKernelNode.deviceUpdatable != 0;
  return CUDA_SUCCESS;
}
CUresult cuGraphMemsetNodeGetParams(CUgraphNode node, CUDA_MEMSET_NODE_PARAMS* p) {
  *p = reinterpret_cast<Node*>(node)->memset;
  return CUDA_SUCCESS;
}
CUresult cuGraphAddMemcpyNode(CUgraphNode* out, CUgraph g, const CUgraphNode*, size_t, const CUDA_MEMCPY3D* p,
                              CUcontext) {
  auto n = std::make_unique<Node>();
  n->type = CU_GRAPH_NODE_TYPE_MEMCPY;
  n->memcpy = *p;
  *out = reinterpret_cast<CUgraphNode>(n.get());
  reinterpret_cast<Graph*>(g)->nodes.push_back(std::move(n));
  return CUDA_SUCCESS;
}
CUresult cuGraphAddChildGraphNode(CUgraphNode* out, CUgraph g, const CUgraphNode*, size_t, CUgraph child) {
  auto n = std::make_unique<Node>();
  n->type = CU_GRAPH_NODE_TYPE_GRAPH;
  n->child = reinterpret_cast<Graph*>(child);
  *out = reinterpret_cast<CUgraphNode>(n.get());
  reinterpret_cast<Graph*>(g)->nodes.push_back(std::move(n));
  return CUDA_SUCCESS;
}
CUresult cuGraphMemcpyNodeGetParams(CUgraphNode node, CUDA_MEMCPY3D* p) {
  Node& n = *reinterpret_cast<Node*>(node);
  if (n.type != CU_GRAPH_NODE_TYPE_MEMCPY) return CUDA_ERROR_INVALID_VALUE;
  *p = n.memcpy;
  return CUDA_SUCCESS;
}
CUresult cuGraphChildGraphNodeGetGraph(CUgraphNode node, CUgraph* g) {
  Node& n = *reinterpret_cast<Node*>(node);
  if (n.type != CU_GRAPH_NODE_TYPE_GRAPH) return CUDA_ERROR_INVALID_VALUE;
  *g = reinterpret_cast<CUgraph>(n.child);
  return CUDA_SUCCESS;
}
CUresult cuGraphInstantiateWithFlags(CUgraphExec* e, CUgraph g, unsigned long long) {
  *e = reinterpret_cast<CUgraphExec>(new Exec{reinterpret_cast<Graph*>(g)});
  logf("cuGraphInstantiateWithFlags");
  return CUDA_SUCCESS;
}
CUresult cuGraphExecDestroy(CUgraphExec e) {
  delete reinterpret_cast<Exec*>(e);
  return CUDA_SUCCESS;
}
CUresult cuGraphExecKernelNodeSetParams_v2(CUgraphExec, CUgraphNode node, const CUDA_KERNEL_NODE_PARAMS* p) {
  set_kernel_params(*reinterpret_cast<Node*>(node), *p);
  return CUDA_SUCCESS;
}
// The executable shares its graph's nodes here: a change to one is a change
// to the other (the driver keeps them apart; no test looks at the graph after).
CUresult cuGraphExecMemsetNodeSetParams(CUgraphExec, CUgraphNode node, const CUDA_MEMSET_NODE_PARAMS* p, CUcontext) {
  Node& n = *reinterpret_cast<Node*>(node);
  if (n.type != CU_GRAPH_NODE_TYPE_MEMSET) return CUDA_ERROR_INVALID_VALUE;
  n.memset = *p;
  return CUDA_SUCCESS;
}
CUresult cuGraphExecMemcpyNodeSetParams(CUgraphExec, CUgraphNode node, const CUDA_MEMCPY3D* p, CUcontext) {
  Node& n = *reinterpret_cast<Node*>(node);
  if (n.type != CU_GRAPH_NODE_TYPE_MEMCPY) return CUDA_ERROR_INVALID_VALUE;
  n.memcpy = *p;
  return CUDA_SUCCESS;
}
CUresult cuGraphExecChildGraphNodeSetParams(CUgraphExec, CUgraphNode node, CUgraph child) {
  Node& n = *reinterpret_cast<Node*>(node);
  if (n.type != CU_GRAPH_NODE_TYPE_GRAPH) return CUDA_ERROR_INVALID_VALUE;
  n.child = reinterpret_cast<Graph*>(child);
  return CUDA_SUCCESS;
}
CUresult cuGraphExecNodeSetParams(CUgraphExec e, CUgraphNode node, CUgraphNodeParams* p) {
  Node& n = *reinterpret_cast<Node*>(node);
  if (p->type != n.type) return CUDA_ERROR_INVALID_VALUE;
  switch (p->type) {
    case CU_GRAPH_NODE_TYPE_MEMCPY: return cuGraphExecMemcpyNodeSetParams(e, node, &p->memcpy.copyParams, nullptr);
    case CU_GRAPH_NODE_TYPE_GRAPH: return cuGraphExecChildGraphNodeSetParams(e, node, p->graph.graph);
    default: return CUDA_ERROR_NOT_SUPPORTED;
  }
}
// The CUDA 11 forms (what a program built against cudart 11 gets for
// version 10010 / 10020): the same, in the older structures. Their C names
// are the plain ones, which cuda.h maps to the _v2 forms.
static CUresult graph_exec_kernel_node_set_params_v1(CUgraphExec, CUgraphNode node, const CUDA_KERNEL_NODE_PARAMS_v1* p) {
  CUDA_KERNEL_NODE_PARAMS v2{};
  v2.func = p->func;
  v2.kernelParams = p->kernelParams;
  v2.extra = p->extra;
  set_kernel_params(*reinterpret_cast<Node*>(node), v2);
  return CUDA_SUCCESS;
}
static CUresult graph_exec_update_v1(CUgraphExec e, CUgraph g, CUgraphNode*, CUgraphExecUpdateResult*) {
  logf("cuGraphExecUpdate (v1)");
  reinterpret_cast<Exec*>(e)->graph = reinterpret_cast<Graph*>(g);
  return CUDA_SUCCESS;
}
CUresult cuGraphExecUpdate_v2(CUgraphExec e, CUgraph g, CUgraphExecUpdateResultInfo*) {
  logf("cuGraphExecUpdate");
  reinterpret_cast<Exec*>(e)->graph = reinterpret_cast<Graph*>(g);
  return CUDA_SUCCESS;
}
void run_graph(const Graph& g) {
  for (auto& n : g.nodes) {
    if (n->type == CU_GRAPH_NODE_TYPE_KERNEL) {
      logf("graph kernel %s", n->kernel->name);
      n->kernel->run(n->buf.data());
    } else if (n->type == CU_GRAPH_NODE_TYPE_MEMSET) {
      const CUDA_MEMSET_NODE_PARAMS& m = n->memset;
      std::memset(reinterpret_cast<void*>(m.dst), static_cast<int>(m.value), uint64_t{m.width} * m.elementSize);
    } else if (n->type == CU_GRAPH_NODE_TYPE_MEMCPY) {
      const CUDA_MEMCPY3D& c = n->memcpy;
      const void* src = c.srcMemoryType == CU_MEMORYTYPE_HOST ? c.srcHost : reinterpret_cast<const void*>(c.srcDevice);
      void* dst = c.dstMemoryType == CU_MEMORYTYPE_HOST ? c.dstHost : reinterpret_cast<void*>(c.dstDevice);
      logf("graph memcpy %zu", static_cast<size_t>(c.WidthInBytes));
      std::memcpy(dst, src, c.WidthInBytes);
    } else if (n->type == CU_GRAPH_NODE_TYPE_GRAPH) {
      run_graph(*n->child);
    }
  }
}
CUresult cuGraphLaunch(CUgraphExec e, CUstream) {
  logf("cuGraphLaunch");
  run_graph(*reinterpret_cast<Exec*>(e)->graph);
  return CUDA_SUCCESS;
}
CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream s) { return cuGraphLaunch(e, s); }

// ---- cuGetProcAddress

CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult* status);

CUresult cuGetProcAddress(const char* symbol, void** pfn, int version, cuuint64_t flags) {
  return cuGetProcAddress_v2(symbol, pfn, version, flags, nullptr);
}

}  // extern "C"

namespace {

struct Proc {
  const char* name;
  int since;        // ABI version of this entry
  void* fn;         // default (legacy stream)
  void* ptsz;       // per-thread default stream, or null
};

#define P(name, since, fn) {name, since, reinterpret_cast<void*>(&fn), nullptr}
#define PS(name, since, fn, ptsz) {name, since, reinterpret_cast<void*>(&fn), reinterpret_cast<void*>(&ptsz)}
const Proc kProcs[] = {
    P("cuGetProcAddress", 11030, cuGetProcAddress),
    P("cuGetProcAddress", 12000, cuGetProcAddress_v2),
    P("cuInit", 2000, cuInit),
    P("cuDriverGetVersion", 2020, cuDriverGetVersion),
    P("cuDeviceGet", 2000, cuDeviceGet),
    P("cuDeviceGetCount", 2000, cuDeviceGetCount),
    P("cuDeviceGetAttribute", 2000, cuDeviceGetAttribute),
    P("cuDeviceTotalMem", 3020, cuDeviceTotalMem_v2),
    P("cuDeviceGetMemPool", 11020, cuDeviceGetMemPool),
    P("cuDevicePrimaryCtxRetain", 7000, cuDevicePrimaryCtxRetain),
    P("cuCtxGetCurrent", 4000, cuCtxGetCurrent),
    P("cuCtxSetCurrent", 4000, cuCtxSetCurrent),
    P("cuCtxGetDevice", 2000, cuCtxGetDevice),
    P("cuCtxSynchronize", 2000, cuCtxSynchronize),
    P("cuMemGetInfo", 3020, cuMemGetInfo_v2),
    P("cuMemAlloc", 3020, cuMemAlloc_v2),
    P("cuMemAllocPitch", 3020, cuMemAllocPitch_v2),
    P("cuMemAllocManaged", 6000, cuMemAllocManaged),
    PS("cuMemAllocAsync", 11020, cuMemAllocAsync, cuMemAllocAsync_ptsz),
    PS("cuMemAllocFromPoolAsync", 11020, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync_ptsz),
    P("cuMemFree", 3020, cuMemFree_v2),
    PS("cuMemFreeAsync", 11020, cuMemFreeAsync, cuMemFreeAsync_ptsz),
    P("cuMemHostAlloc", 2020, cuMemHostAlloc),
    P("cuMemAllocHost", 3020, cuMemAllocHost_v2),
    P("cuMemFreeHost", 2000, cuMemFreeHost),
    P("cuMemCreate", 10020, cuMemCreate),
    P("cuMemRelease", 10020, cuMemRelease),
    P("cuMemAddressReserve", 10020, cuMemAddressReserve),
    P("cuMemAddressFree", 10020, cuMemAddressFree),
    P("cuMemMap", 10020, cuMemMap),
    P("cuMemUnmap", 10020, cuMemUnmap),
    P("cuIpcGetMemHandle", 4010, cuIpcGetMemHandle),
    P("cuMemAdvise", 12020, cuMemAdvise_v2),
    PS("cuMemPrefetchAsync", 12020, cuMemPrefetchAsync_v2, cuMemPrefetchAsync_v2_ptsz),
    PS("cuMemDiscardBatchAsync", 13000, cuMemDiscardBatchAsync, cuMemDiscardBatchAsync_ptsz),
    P("cuMemcpy", 4000, cuMemcpy),
    PS("cuMemcpyAsync", 4000, cuMemcpyAsync, cuMemcpyAsync_ptsz),
    P("cuMemcpyHtoD", 3020, cuMemcpyHtoD_v2),
    P("cuMemcpyDtoH", 3020, cuMemcpyDtoH_v2),
    P("cuMemcpyDtoD", 3020, cuMemcpyDtoD_v2),
    PS("cuMemcpyHtoDAsync", 3020, cuMemcpyHtoDAsync_v2, cuMemcpyHtoDAsync_v2_ptsz),
    PS("cuMemcpyDtoHAsync", 3020, cuMemcpyDtoHAsync_v2, cuMemcpyDtoHAsync_v2_ptsz),
    P("cuMemsetD8", 3020, cuMemsetD8_v2),
    P("cuMemsetD32", 3020, cuMemsetD32_v2),
    PS("cuMemsetD8Async", 3020, cuMemsetD8Async, cuMemsetD8Async_ptsz),
    P("cuFuncGetParamInfo", 12040, cuFuncGetParamInfo),
    P("cuKernelGetParamInfo", 12040, cuKernelGetParamInfo),
    PS("cuLaunchKernel", 4000, cuLaunchKernel, cuLaunchKernel_ptsz),
    PS("cuLaunchKernelEx", 11060, cuLaunchKernelEx, cuLaunchKernelEx_ptsz),
    P("cuStreamCreate", 2000, cuStreamCreate),
    P("cuStreamDestroy", 4000, cuStreamDestroy_v2),
    PS("cuStreamSynchronize", 2000, cuStreamSynchronize, cuStreamSynchronize_ptsz),
    P("cuStreamQuery", 2000, cuStreamQuery),
    P("cuStreamIsCapturing", 10000, cuStreamIsCapturing),
    P("cuStreamBeginCapture", 10010, cuStreamBeginCapture_v2),
    P("cuStreamEndCapture", 10000, cuStreamEndCapture),
    P("cuThreadExchangeStreamCaptureMode", 10010, cuThreadExchangeStreamCaptureMode),
    P("cuEventCreate", 2000, cuEventCreate),
    PS("cuEventRecord", 2000, cuEventRecord, cuEventRecord_ptsz),
    P("cuEventQuery", 2000, cuEventQuery),
    P("cuEventSynchronize", 2000, cuEventSynchronize),
    P("cuEventDestroy", 4000, cuEventDestroy_v2),
    P("cuGraphCreate", 10000, cuGraphCreate),
    P("cuGraphDestroy", 10000, cuGraphDestroy),
    P("cuGraphAddKernelNode", 12000, cuGraphAddKernelNode_v2),
    P("cuGraphAddMemsetNode", 10000, cuGraphAddMemsetNode),
    P("cuGraphAddMemcpyNode", 10000, cuGraphAddMemcpyNode),
    P("cuGraphAddChildGraphNode", 10000, cuGraphAddChildGraphNode),
    P("cuGraphAddHostNode", 10000, cuGraphAddHostNode),
    P("cuGraphAddBatchMemOpNode", 11070, cuGraphAddBatchMemOpNode),
    P("cuGraphGetNodes", 10000, cuGraphGetNodes),
    P("cuGraphNodeGetType", 10000, cuGraphNodeGetType),
    P("cuGraphKernelNodeGetParams", 12000, cuGraphKernelNodeGetParams_v2),
    P("cuGraphMemsetNodeGetParams", 10000, cuGraphMemsetNodeGetParams),
    P("cuGraphKernelNodeGetAttribute", 11000, cuGraphKernelNodeGetAttribute),
    P("cuGraphKernelNodeSetAttribute", 11000, cuGraphKernelNodeSetAttribute),
    P("cuGraphMemcpyNodeGetParams", 10000, cuGraphMemcpyNodeGetParams),
    P("cuGraphChildGraphNodeGetGraph", 10000, cuGraphChildGraphNodeGetGraph),
    P("cuGraphInstantiateWithFlags", 11040, cuGraphInstantiateWithFlags),
    P("cuGraphExecUpdate", 10020, graph_exec_update_v1),
    P("cuGraphExecUpdate", 12000, cuGraphExecUpdate_v2),
    P("cuGraphExecKernelNodeSetParams", 10010, graph_exec_kernel_node_set_params_v1),
    P("cuGraphExecKernelNodeSetParams", 12000, cuGraphExecKernelNodeSetParams_v2),
    P("cuGraphExecDestroy", 10000, cuGraphExecDestroy),
    P("cuGraphExecMemsetNodeSetParams", 10020, cuGraphExecMemsetNodeSetParams),
    P("cuGraphExecMemcpyNodeSetParams", 10020, cuGraphExecMemcpyNodeSetParams),
    P("cuGraphExecChildGraphNodeSetParams", 11010, cuGraphExecChildGraphNodeSetParams),
    P("cuGraphExecNodeSetParams", 12020, cuGraphExecNodeSetParams),
    PS("cuGraphLaunch", 10000, cuGraphLaunch, cuGraphLaunch_ptsz),
};
#undef P
#undef PS

}  // namespace

extern "C" CUresult cuGetProcAddress_v2(const char* symbol, void** pfn, int version, cuuint64_t flags,
                                        CUdriverProcAddressQueryResult* status) {
  if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
  if (version > driver_version()) return CUDA_ERROR_INVALID_VALUE;
  logf("cuGetProcAddress_v2 %s %d %llu", symbol, version, static_cast<unsigned long long>(flags));
  const Proc* best = nullptr;
  bool named = false;
  for (const Proc& p : kProcs) {
    if (std::strcmp(p.name, symbol) != 0) continue;
    named = true;
    if (p.since <= version && (!best || p.since > best->since)) best = &p;
  }
  *pfn = nullptr;
  if (!best) {
    if (status) *status = named ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_SUCCESS;
  }
  *pfn = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && best->ptsz ? best->ptsz : best->fn;
  if (status) *status = CU_GET_PROC_ADDRESS_SUCCESS;
  return CUDA_SUCCESS;
}
