#include "runtime.h"

#include <fmt/format.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <new>

#include "cuda_mover.h"
#include "kvpager/config_loader.h"
#include "kvpager/pager.h"
#include "control/runtime_dir.h"
#include "control/server.h"
#include "kvpager/store/token_store.h"
#include "kvpager/store/token_store_queue.h"
#include "publish/publisher.h"

namespace kvpager::cuda {

namespace {

void append_lines(std::string& out, const Runtime::Counters& cs) {
  for (const auto& [name, value] : cs) out += fmt::format("{}={}\n", name, value);
}

RegionId unpack(uint64_t packed) {
  return RegionId{static_cast<uint32_t>(packed), static_cast<uint32_t>(packed >> 32)};
}

void futex_wait(std::atomic<uint32_t>& word, uint32_t expected, uint64_t timeout_ns) {
  timespec ts{static_cast<time_t>(timeout_ns / 1'000'000'000), static_cast<long>(timeout_ns % 1'000'000'000)};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, &ts, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

int level_of(std::string_view name) {
  static constexpr std::string_view kLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
  for (int i = 0; i < 6; ++i)
    if (kLevels[i] == name) return i;
  return 2;
}

// The NVMe tier: the token store in store_dir. The pager's spills are this
// process's private objects there, reclaimed when it ends (or by the next
// open of the store if it dies).
std::unique_ptr<store::TokenStore> make_store(const Config& cfg) {
  return std::make_unique<store::TokenStore>(store::StoreOptions::from_config(cfg));
}

// Inside hooks: the pager's own calls must not come back through them.
__attribute__((tls_model("initial-exec"))) thread_local bool t_pager_thread = false;

}  // namespace

// ---------------------------------------------------------------- requests

struct Runtime::Request {
  enum Kind : uint8_t { kAdd, kFree, kRestore, kTag, kHint, kPublish, kStats, kReap, kAsyncFree };
  explicit Request(Kind k) : kind(k) {}
  Kind kind;
  Request* next = nullptr;
  std::atomic<uint32_t> done{0};
  bool owned = false;  // heap-allocated and not waited for: the pager thread deletes it
  uint32_t slot = 0, gen = 0;
  uint64_t base = 0, size = 0;
  const uint32_t* slots = nullptr;
  const uint32_t* gens = nullptr;
  size_t n = 0;
  bool all = false;
  std::vector<uint32_t> slot_list;
  const char* name = nullptr;
  HintKind hint = HintKind::kPrefetch;
  CUevent ev = nullptr;
  int result = 0;
  std::string* text = nullptr;
};

// Lock-free, allocation-free: a Treiber stack the pager thread empties whole.
class Runtime::RequestQueue {
 public:
  void push(Request* r) {
    Request* head = head_.load(std::memory_order_relaxed);
    do {
      r->next = head;
    } while (!head_.compare_exchange_weak(head, r, std::memory_order_release, std::memory_order_relaxed));
  }
  // Everything pushed so far, oldest first.
  Request* take() {
    Request* list = head_.exchange(nullptr, std::memory_order_acquire);
    Request* fifo = nullptr;
    while (list) {
      Request* next = list->next;
      list->next = fifo;
      fifo = list;
      list = next;
    }
    return fifo;
  }
  bool empty() const { return head_.load(std::memory_order_acquire) == nullptr; }

 private:
  std::atomic<Request*> head_{nullptr};
};

// ---------------------------------------------------------------- graph table

GraphTable::GraphTable() : slots_(new Slot[kSlots]) {}

GraphTable::~GraphTable() {
  for (size_t i = 0; i < kSlots; ++i) delete slots_[i].info.load();
  for (auto& r : retired_) delete r.first;
}

namespace {
size_t graph_hash(uintptr_t k) { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 40); }
constexpr uintptr_t kGraphGone = 1;
}  // namespace

void GraphTable::retire(Info* old, Quiescence& q) {
  if (!old) return;
  auto t = std::make_unique<Quiescence::Ticket>();
  q.take(*t);
  retired_.emplace_back(old, std::move(t));
  std::erase_if(retired_, [&](auto& r) {
    if (!q.passed(*r.second)) return false;
    delete r.first;
    return true;
  });
}

void GraphTable::set(CUgraphExec exec, std::unique_ptr<Info> info, Quiescence& q) {
  const auto key = reinterpret_cast<uintptr_t>(exec);
  std::lock_guard lock(mu_);
  size_t i = graph_hash(key) & (kSlots - 1);
  Slot* free_slot = nullptr;
  for (size_t probe = 0; probe < kSlots; ++probe, i = (i + 1) & (kSlots - 1)) {
    uintptr_t k = slots_[i].key.load(std::memory_order_relaxed);
    if (k == key) {
      retire(slots_[i].info.exchange(info.release(), std::memory_order_acq_rel), q);
      return;
    }
    if ((k == 0 || k == kGraphGone) && !free_slot) free_slot = &slots_[i];
    if (k == 0) break;
  }
  if (!free_slot) return;  // full: launches of this graph are treated as reading everything
  free_slot->info.store(info.release(), std::memory_order_release);
  free_slot->key.store(key, std::memory_order_release);
}

void GraphTable::erase(CUgraphExec exec, Quiescence& q) {
  const auto key = reinterpret_cast<uintptr_t>(exec);
  std::lock_guard lock(mu_);
  size_t i = graph_hash(key) & (kSlots - 1);
  for (size_t probe = 0; probe < kSlots; ++probe, i = (i + 1) & (kSlots - 1)) {
    uintptr_t k = slots_[i].key.load(std::memory_order_relaxed);
    if (k == 0) return;
    if (k == key) {
      slots_[i].key.store(kGraphGone, std::memory_order_release);
      retire(slots_[i].info.exchange(nullptr, std::memory_order_acq_rel), q);
      return;
    }
  }
}

const GraphTable::Info* GraphTable::find(CUgraphExec exec) const {
  const auto key = reinterpret_cast<uintptr_t>(exec);
  size_t i = graph_hash(key) & (kSlots - 1);
  for (size_t probe = 0; probe < kSlots; ++probe, i = (i + 1) & (kSlots - 1)) {
    uintptr_t k = slots_[i].key.load(std::memory_order_acquire);
    if (k == 0) return nullptr;
    if (k == key) return slots_[i].info.load(std::memory_order_acquire);
  }
  return nullptr;
}

// ---------------------------------------------------------------- start-up

Runtime::Runtime() : q_(Quiescence::global()), ring_(16384), requests_(std::make_unique<RequestQueue>()) {}

Runtime* Runtime::get() {
  static Runtime* const rt = []() -> Runtime* {
    auto* r = new Runtime();
    try {
      r->cfg_ = ConfigLoader::standard("", {}).finish();
      r->allow_ = *parse_size_ranges(r->cfg_.cuda_allow_sizes);
      r->deny_ = *parse_size_ranges(r->cfg_.cuda_deny_sizes);
      r->log_level_.store(level_of(r->cfg_.log_level), std::memory_order_relaxed);
    } catch (const ConfigError& e) {
      r->log(4, fmt::format("{}\nkvpager: configuration refused: the pager is off, CUDA calls pass through", e.what()));
      state_.store(RuntimeState::kDisabled, std::memory_order_release);
      return nullptr;
    }
    std::string why;
    void* lib = Driver::loaded_libcuda();
    if (!lib || !r->drv_.load(lib, &why)) {
      r->log(4, fmt::format("cannot use the CUDA driver ({}): the pager is off, CUDA calls pass through",
                            lib ? why : "libcuda.so.1 is not loaded"));
      state_.store(RuntimeState::kDisabled, std::memory_order_release);
      return nullptr;
    }
    r->layouts_ = std::make_unique<ParamLayouts>(r->drv_);
    pthread_atfork(nullptr, nullptr, &Runtime::on_fork_child);
    instance_ = r;
    return r;
  }();
  return state_.load(std::memory_order_acquire) == RuntimeState::kDisabled ? nullptr : rt;
}

void Runtime::on_fork_child() {
  // Only the forking thread exists here: no pager thread, maybe a lock held
  // by a thread that is gone. A pager that never started can still start in
  // the child (it may use CUDA if the parent never did).
  RuntimeState s = state_.load(std::memory_order_relaxed);
  if (s == RuntimeState::kRunning || s == RuntimeState::kStarting)
    state_.store(RuntimeState::kForked, std::memory_order_release);
  if (instance_) new (&instance_->init_mu_) std::mutex();
}

void Runtime::log(int level, const std::string& msg) const {
  if (level < log_level_.load(std::memory_order_relaxed)) return;
  std::string line = fmt::format("kvpager[{}]: {}\n", getpid(), msg);
  ssize_t n = ::write(2, line.data(), line.size());
  (void)n;
}

bool Runtime::wants_managed(uint64_t size) const {
  for (const SizeRange& r : deny_)
    if (r.contains(size)) return false;
  if (size >= cfg_.cuda_min_size && size > 0) return true;
  for (const SizeRange& r : allow_)
    if (r.contains(size)) return true;
  return false;
}

std::atomic<uint32_t>* Runtime::unsafe_counter(uint64_t base) {
  Quiescence::Bracket b(q_);
  const auto& snap = map_.snapshot();
  ptrdiff_t i = RegionMap::locate(snap, base);
  if (i < 0 || snap.items[i].base != base) return nullptr;
  return &map_.entry(snap.items[i].slot).unsafe;
}

bool Runtime::start_pager() {
  CUcontext ctx = nullptr;
  if (drv_.ctxGetCurrent(&ctx) != CUDA_SUCCESS || !ctx) return false;  // no context: stay unstarted
  state_.store(RuntimeState::kStarting, std::memory_order_release);
  try {
    // A store that cannot be used (a read-only file system, a path that
    // cannot be created) costs the NVMe tier, not the pager: HBM and host RAM
    // are still paged, nothing is spilled.
    try {
      store_ = make_store(cfg_);
    } catch (const ConfigError& e) {
      log(3, fmt::format("no NVMe tier: {}; the pager runs on HBM and host RAM, spilling nothing", e.what()));
    }
    if (store_) store_io_ = std::make_unique<store::TokenStoreQueue>(*store_);
    mover_ = std::make_unique<CudaMover>(
        drv_, cfg_, ctx, store_.get(), q_, streams_, [this](uint64_t base) { return unsafe_counter(base); },
        store_io_.get());
    mover_->set_total_unsafe(&total_unsafe_);
    // A kernel writes wherever its pointers lead: the pager cannot know which
    // chunks a launch wrote, so no restored chunk is trusted to be clean.
    pager_ = std::make_unique<Pager>(cfg_, *mover_, WriteTracking::kUnobserved);
  } catch (const std::exception& e) {
    // ConfigError mostly (a driver or device that cannot page, a bad store);
    // anything else (no memory, a filesystem error) must not leave this hook
    // either: it would unwind through the driver's caller (cudart is C) and
    // terminate the program, where the pager being off is what is promised.
    log(4, fmt::format("{}\nkvpager: the pager is off, CUDA calls pass through", e.what()));
    pager_.reset();
    mover_.reset();
    store_io_.reset();
    store_.reset();
    state_.store(RuntimeState::kDisabled, std::memory_order_release);
    return false;
  }
  ctx_ = ctx;
  whole_ref_bytes_.store(pager_->whole_reference_bytes(), std::memory_order_relaxed);  // for the first launches
  try {
    control::RuntimeDir dir = control::resolve_runtime_dir(cfg_, control::DirUse::kServe);
    control::ControlServer::Options o;
    o.runtime_dir = dir.path;
    o.device = fmt::format("CUDA device {}", mover_->device());
    if (store_) o.publish = publish::control_handler(*store_);  // `kvpager hint publish NAME`
    o.interposer_stats = [this] {  // on the pager thread (or here, before it starts)
      nlohmann::json j = nlohmann::json::object();
      for (const Counters& cs : {hook_counters(), mover_counters()})
        for (const auto& [name, value] : cs) j[name] = value;
      return j;
    };
    o.applied = [this](const Config& c) { log_level_.store(level_of(c.log_level), std::memory_order_relaxed); };
    control_ = std::make_unique<control::ControlServer>(std::move(o), *pager_);
  } catch (const std::exception& e) {  // the pager runs on; it is just not visible
    log(3, fmt::format("no control socket ({}): kvpager status/tune will not see this process", e.what()));
  }
  const Config& pc = pager_->config();
  log(1, fmt::format("pager on device {}: HBM budget {}, host {}, store {}, managed at >= {}", mover_->device(),
                     human_bytes(static_cast<double>(pc.hbm_budget)), human_bytes(static_cast<double>(pc.host_capacity)),
                     cfg_.effective_store_dir(), format_bytes(cfg_.cuda_min_size)));
  thread_ = std::thread([this] { pager_main(); });
  std::atexit([] {
    if (instance_) instance_->stop();
  });
  state_.store(RuntimeState::kRunning, std::memory_order_release);
  return true;
}

void Runtime::stop() {
  if (state_.load() != RuntimeState::kRunning) return;
  state_.store(RuntimeState::kDisabled, std::memory_order_release);  // hooks pass through from here on
  stop_.store(true);
  wake();
  if (thread_.joinable()) thread_.join();
  control_.reset();  // removes the socket
}

void Runtime::set_tick_hook(std::function<void(Pager&)> hook) {
  std::lock_guard lock(hook_mu_);
  tick_hook_ = std::move(hook);
}

// ---------------------------------------------------------------- allocations

void Runtime::mem_info(size_t* free, size_t* total) {
  const uint64_t real_total = *total, real_free = *free;
  if (!limits_resolved_.load(std::memory_order_acquire)) {
    std::lock_guard lock(limits_mu_);
    if (!limits_resolved_.load(std::memory_order_relaxed)) {
      Config r = cfg_.resolved(real_total, physical_ram());
      virtual_capacity_ = cfg_.cuda_virtual_capacity ? cfg_.cuda_virtual_capacity : real_total + r.host_capacity;
      managed_limit_ = cfg_.cuda_managed_limit ? cfg_.cuda_managed_limit : virtual_capacity_;
      limits_resolved_.store(true, std::memory_order_release);
    }
  }
  // Used = what the device uses, less the managed chunks the pager keeps in
  // HBM (the driver counts those already), plus every managed byte.
  const uint64_t device_used = real_total > real_free ? real_total - real_free : 0;
  const uint64_t hbm = std::min(hbm_committed_.load(std::memory_order_relaxed), device_used);
  const uint64_t used = device_used - hbm + managed_bytes_.load(std::memory_order_relaxed);
  *total = virtual_capacity_;
  *free = virtual_capacity_ > used ? virtual_capacity_ - used : 0;
}

CUresult Runtime::alloc_managed(CUdeviceptr* dptr, uint64_t size) {
  if (RuntimeState st = state_.load(std::memory_order_acquire);
      st == RuntimeState::kUninit || st == RuntimeState::kStarting) {
    // The first one starts the pager; the others wait for it (a big
    // allocation must not slip past as unmanaged because it came early).
    std::lock_guard lock(init_mu_);
    if (state_.load(std::memory_order_acquire) == RuntimeState::kUninit) start_pager();
  }
  if (state_.load(std::memory_order_acquire) != RuntimeState::kRunning) return CUDA_ERROR_NOT_SUPPORTED;
  CUdevice dev = 0;
  if (drv_.ctxGetDevice(&dev) != CUDA_SUCCESS || dev != mover_->device()) return CUDA_ERROR_NOT_SUPPORTED;
  if (!limits_resolved_.load(std::memory_order_acquire)) {
    size_t f = 0, t = 0;
    if (drv_.memGetInfo(&f, &t) == CUDA_SUCCESS) mem_info(&f, &t);
  }
  // The ceiling: reserve first, so concurrent allocations cannot pass it together.
  for (int attempt = 0;; ++attempt) {
    const uint64_t before = managed_bytes_.fetch_add(size);
    if (before + size <= managed_limit_) break;
    managed_bytes_.fetch_sub(size);
    if (attempt == 0 && async_frees_pending_.load() > 0) {
      Request r(Request::kReap);  // frees already requested may make room
      call(r);
      continue;
    }
    limit_refusals_.fetch_add(1, std::memory_order_relaxed);
    log(3, fmt::format("allocation of {} refused: {} managed, cuda.managed_limit = {}", format_bytes(size),
                       format_bytes(managed_bytes_.load()), format_bytes(managed_limit_)));
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  CUresult r = drv_.memAllocManaged(dptr, size, CU_MEM_ATTACH_GLOBAL);
  if (r != CUDA_SUCCESS) {
    managed_bytes_.fetch_sub(size);
    return r;
  }
  if (*dptr % page_align_ != 0) {
    // Only 256-byte alignment is documented. Chunks are cut at chunk_size
    // steps from the base, and a discard or prefetch works on whole pages: a
    // chunk that does not start on a page would take part of its neighbour's
    // page with it (a spill's discard would lose live bytes). Such memory is
    // not paged; the program gets the driver's own allocation instead.
    drv_.memFree(*dptr);
    managed_bytes_.fetch_sub(size);
    if (!misaligned_warned_.exchange(true))
      log(3, fmt::format("cuMemAllocManaged returned 0x{:x}, not on a {}-byte page: allocations that do so are "
                         "left to the driver, unpaged", static_cast<uint64_t>(*dptr), page_align_));
    *dptr = 0;
    return CUDA_ERROR_NOT_SUPPORTED;
  }
  // Lives in host RAM until the pager promotes it; the GPU reads it remotely
  // meanwhile, so a first touch by a kernel cannot fill HBM behind the budget.
  CUmemLocation host{}, gpu{};
  host.type = CU_MEM_LOCATION_TYPE_HOST;
  gpu.type = CU_MEM_LOCATION_TYPE_DEVICE;
  gpu.id = dev;
  drv_.memAdvise(*dptr, size, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, host);
  drv_.memAdvise(*dptr, size, CU_MEM_ADVISE_SET_ACCESSED_BY, gpu);
  auto* req = new Request(Request::kAdd);
  req->owned = true;
  req->slot = map_.add(*dptr, size);
  req->gen = map_.entry(req->slot).gen.load();
  req->base = *dptr;
  req->size = size;
  requests_->push(req);
  wake();
  managed_allocs_.fetch_add(1, std::memory_order_relaxed);
  return CUDA_SUCCESS;
}

bool Runtime::is_managed(CUdeviceptr p) const {
  uint64_t base = 0, size = 0;
  return map_.find_alloc(p, &base, &size);
}

bool Runtime::free_managed(CUdeviceptr p, CUresult* result) {
  uint64_t base = 0, size = 0;
  if (!map_.find_alloc(p, &base, &size) || base != p) return false;
  // Out of the map first (launches stop finding it), then out of the pager
  // (its moves finish, its store objects go), then back to the driver.
  Request r(Request::kFree);
  r.base = base;
  r.slot_list = map_.remove_alloc(base);
  if (r.slot_list.empty()) return false;  // freed concurrently
  call(r);
  *result = drv_.memFree(p);
  for (uint32_t slot : r.slot_list) map_.retire(slot);
  managed_bytes_.fetch_sub(size);
  return true;
}

bool Runtime::free_managed_async(CUdeviceptr p, CUstream stream, CUresult* result) {
  uint64_t base = 0, size = 0;
  if (!map_.find_alloc(p, &base, &size) || base != p) return false;
  CUstreamCaptureStatus capturing = CU_STREAM_CAPTURE_STATUS_NONE;
  drv_.streamIsCapturing(stream, &capturing);
  if (capturing != CU_STREAM_CAPTURE_STATUS_NONE) {
    // A free inside a graph would run at every replay; a managed region is
    // not the graph's to free.
    *result = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return true;
  }
  CUevent ev = nullptr;
  if (drv_.eventCreate(&ev, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS || drv_.eventRecord(ev, stream) != CUDA_SUCCESS) {
    if (ev) drv_.eventDestroy(ev);
    drv_.streamSynchronize(stream);  // no event: wait here, then free
    return free_managed(p, result);
  }
  auto* req = new Request(Request::kAsyncFree);
  req->owned = true;
  req->base = base;
  req->ev = ev;
  async_frees_pending_.fetch_add(1);
  requests_->push(req);
  wake();
  *result = CUDA_SUCCESS;
  return true;
}

// ---------------------------------------------------------------- requests

void Runtime::wake() {
  wake_word_.fetch_add(1, std::memory_order_release);
  futex_wake(wake_word_);
}

void Runtime::call(Request& r) {
  if (t_pager_thread) {  // a hook called from the pager thread itself: serve inline
    serve(r);
    return;
  }
  requests_->push(&r);
  wake();
  while (r.done.load(std::memory_order_acquire) == 0) {
    if (thread_exited_.load(std::memory_order_acquire)) {
      r.result = kHintError;  // the pager thread is gone (exit): nothing will answer
      return;
    }
    futex_wait(r.done, 0, 10'000'000);
  }
}

bool Runtime::restore(const uint32_t* slots, const uint32_t* gens, size_t n, bool all) {
  Request r(Request::kRestore);
  r.slots = slots;
  r.gens = gens;
  r.n = n;
  r.all = all;
  call(r);
  return r.result == kHintOk;
}

RegionEntry* Runtime::entry_of(uint32_t slot, uint32_t gen) {
  RegionEntry& e = map_.entry(slot);
  return e.gen.load(std::memory_order_acquire) == gen ? &e : nullptr;
}

void Runtime::apply_parked(ContextId ctx, bool parked) {
  for (uint32_t slot : entry_of_pager_slot_) {
    if (slot == UINT32_MAX) continue;
    RegionEntry& e = map_.entry(slot);
    const Region* r = pager_->region(unpack(e.pager_id));
    if (r && r->ctx == ctx) e.parked.store(parked, std::memory_order_seq_cst);
  }
}

namespace {
int hint_result(Status s) {
  switch (s) {
    case Status::kOk: return kHintOk;
    case Status::kNotFound: return kHintNotFound;
    case Status::kBusy: return kHintBusy;
    case Status::kInvalid: return kHintInvalid;
    case Status::kNoSpace: return kHintNoRoom;
    default: return kHintError;
  }
}
}  // namespace

void Runtime::serve(Request& r) {
  switch (r.kind) {
    case Request::kAdd: {
      RegionEntry* e = entry_of(r.slot, r.gen);
      if (!e) break;  // freed before we got here
      RegionId id = pager_->add_region(r.base, r.size, {}, Tier::kHost);  // managed: in host RAM from the start
      e->pager_id = id.packed();
      if (entry_of_pager_slot_.size() <= id.slot) entry_of_pager_slot_.resize(id.slot + 1, UINT32_MAX);
      entry_of_pager_slot_[id.slot] = r.slot;
      break;
    }
    case Request::kFree:
      alloc_touch_ns_.erase(r.base);  // every region of the allocation goes
      for (uint32_t slot : r.slot_list) {
        RegionEntry& e = map_.entry(slot);
        if (e.pager_id == ~0ull) continue;
        RegionId id = unpack(e.pager_id);
        pager_->remove_region(id);
        if (id.slot < entry_of_pager_slot_.size()) entry_of_pager_slot_[id.slot] = UINT32_MAX;
        e.pager_id = ~0ull;
      }
      break;
    case Request::kRestore: {
      auto restore_one = [&](RegionEntry& e) {
        if (e.pager_id == ~0ull || e.unsafe.load() == 0) return;
        Status s = pager_->restore(unpack(e.pager_id));
        restores_.fetch_add(1, std::memory_order_relaxed);
        if (!ok(s)) {
          log(4, fmt::format("region {:#x}+{}: cannot restore its spilled chunks ({}): launches reading it fail",
                             e.base, format_bytes(e.size), to_string(s)));
          r.result = kHintError;
        }
      };
      if (r.all) {
        for (uint32_t slot : entry_of_pager_slot_)
          if (slot != UINT32_MAX) restore_one(map_.entry(slot));
      } else {
        for (size_t i = 0; i < r.n; ++i)
          if (RegionEntry* e = entry_of(r.slots[i], r.gens[i])) restore_one(*e);
      }
      break;
    }
    case Request::kHint: {
      ContextId ctx = pager_->find_context(r.name);
      if (ctx == kNoContext) {
        r.result = kHintNotFound;
        break;
      }
      if (r.hint == HintKind::kPrefetch || r.hint == HintKind::kDrop) apply_parked(ctx, false);
      r.result = hint_result(pager_->hint(ctx, r.hint));
      if (r.hint == HintKind::kPark && r.result == kHintOk) apply_parked(ctx, true);
      break;
    }
    case Request::kPublish: {
      if (pager_->find_context(r.name) == kNoContext) {
        r.result = kHintNotFound;
        break;
      }
      std::string why = "no token store";
      Status s = store_ ? publish::publish_context(*pager_, *store_, r.name, publish::PublishOptions{}, nullptr, &why)
                        : Status::kUnsupported;
      if (!ok(s)) log(3, fmt::format("kvpager_publish_context: {}", why));
      // Busy: the program's streams did not go quiet in time; worth another try.
      r.result = ok(s) ? kHintOk : s == Status::kBusy ? kHintBusy : kHintError;
      break;
    }
    case Request::kTag: {
      // [base, base + size) inside one allocation, cut at chunk boundaries
      // (rounded inwards; the allocation's own end counts as a boundary).
      uint64_t abase = 0, asize = 0;
      if (!map_.find_alloc(r.base, &abase, &asize) || r.size == 0 || r.base + r.size > abase + asize) {
        r.result = kHintInvalid;
        break;
      }
      const uint64_t cs = pager_->config().chunk_size;
      const uint64_t lo = (r.base - abase + cs - 1) / cs * cs;
      const uint64_t end = r.base + r.size - abase;
      const uint64_t hi = end == asize ? asize : end / cs * cs;
      if (lo >= hi) {
        r.result = kHintInvalid;  // smaller than a chunk
        break;
      }
      // Cut the pieces that straddle lo or hi, then move the ones inside.
      auto cut_at = [&](uint64_t at) -> Status {
        for (uint32_t slot : map_.alloc_regions(abase)) {
          RegionEntry& e = map_.entry(slot);
          const uint64_t off = e.base - abase;
          if (at <= off || at >= off + e.size) continue;
          if (e.pager_id == ~0ull) return Status::kBusy;
          // The pager (and its mover) first, then the map: until the map has
          // the tail's entry, the head's counts the tail's spilled chunks;
          // once it has, the mover moves them over (never too few in either).
          RegionId tail;
          Status s = pager_->split_region(unpack(e.pager_id), at - off, &tail);
          if (!ok(s)) return s;
          uint32_t tail_slot = map_.split(slot, at - off);
          mover_->bind_counter(tail);
          map_.entry(tail_slot).pager_id = tail.packed();
          if (entry_of_pager_slot_.size() <= tail.slot) entry_of_pager_slot_.resize(tail.slot + 1, UINT32_MAX);
          entry_of_pager_slot_[tail.slot] = tail_slot;
          return Status::kOk;
        }
        return Status::kOk;
      };
      Status s = cut_at(lo);
      if (ok(s)) s = cut_at(hi);
      for (uint32_t slot : map_.alloc_regions(abase)) {
        if (!ok(s)) break;
        RegionEntry& e = map_.entry(slot);
        const uint64_t off = e.base - abase;
        if (off < lo || off + e.size > hi) continue;
        s = pager_->set_context(unpack(e.pager_id), r.name);
        if (ok(s)) {
          ContextId ctx = pager_->region(unpack(e.pager_id))->ctx;
          bool parked = false;
          for (const ContextInfo& ci : pager_->contexts())
            if (ci.id == ctx) parked = ci.parked;
          e.parked.store(parked, std::memory_order_seq_cst);
        }
      }
      r.result = hint_result(s);
      break;
    }
    case Request::kStats: {
      StatsSnapshot st = pager_->stats();
      std::string& out = *r.text;
      out += fmt::format("pager.regions={}\npager.contexts={}\n", st.regions, st.contexts);
      static constexpr const char* kTierNames[] = {"hbm", "host", "nvme"};
      for (size_t t = 0; t < 3; ++t)
        out += fmt::format("pager.{}_bytes={}\npager.{}_capacity={}\n", kTierNames[t], st.tiers[t].resident_bytes,
                           kTierNames[t], st.tiers[t].capacity_bytes);
      for (size_t k = 0; k < kNumMoveKinds; ++k)
        out += fmt::format("pager.moves.{0}={1}\npager.move_failures.{0}={2}\n", to_string(static_cast<MoveKind>(k)),
                           st.moves[k], st.move_failures_by_kind[k]);
      out += fmt::format("pager.accesses={}\npager.hits={}\npager.faults={}\npager.move_failures={}\n", st.accesses,
                         st.hits, st.faults, st.move_failures);
      // Live allocations launches touched (the pager thread's table of when
      // it last marked their pieces used; it must not outgrow them).
      out += fmt::format("touched_allocs={}\n", alloc_touch_ns_.size());
      append_lines(out, mover_counters());
      for (const ContextInfo& ci : pager_->contexts())
        out += fmt::format("context.{}={} hbm={} host={} nvme={} parked={}\n", ci.name, ci.size_bytes,
                           ci.tier_bytes[index(Tier::kHbm)], ci.tier_bytes[index(Tier::kHost)],
                           ci.tier_bytes[index(Tier::kNvme)], ci.parked ? 1 : 0);
      break;
    }
    case Request::kReap:
      reap_async_frees(true);
      break;
    case Request::kAsyncFree:
      async_frees_.push_back(AsyncFree{r.base, r.ev});
      break;
  }
  if (r.owned) {
    delete &r;
    return;
  }
  r.done.store(1, std::memory_order_release);
  futex_wake(r.done);
}

void Runtime::reap_async_frees(bool block) {
  std::erase_if(async_frees_, [&](AsyncFree& f) {
    CUresult q = block ? drv_.eventSynchronize(f.ev) : drv_.eventQuery(f.ev);
    if (q == CUDA_ERROR_NOT_READY) return false;
    drv_.eventDestroy(f.ev);
    uint64_t base = 0, size = 0;
    if (map_.find_alloc(f.base, &base, &size)) {
      alloc_touch_ns_.erase(base);
      std::vector<uint32_t> slots = map_.remove_alloc(base);
      for (uint32_t slot : slots) {
        RegionEntry& e = map_.entry(slot);
        if (e.pager_id != ~0ull) {
          RegionId id = unpack(e.pager_id);
          pager_->remove_region(id);
          if (id.slot < entry_of_pager_slot_.size()) entry_of_pager_slot_[id.slot] = UINT32_MAX;
        }
      }
      drv_.memFree(base);
      for (uint32_t slot : slots) map_.retire(slot);
      managed_bytes_.fetch_sub(size);
    }
    async_frees_pending_.fetch_sub(1);
    return true;
  });
}

// ---------------------------------------------------------------- pager thread

void Runtime::serve_requests() {
  for (Request* r = requests_->take(); r;) {
    Request* next = r->next;
    serve(*r);
    r = next;
  }
}

void Runtime::handle_events() {
  LaunchEvent ev;
  std::vector<RegionId> ids;
  const uint64_t now = pager_->now_ns();
  const uint64_t touch_period = std::max<uint64_t>(cfg_.spill_idle_ns / 4, 1'000'000);
  for (int budget = 4096; budget > 0 && ring_.pop(ev); --budget) {
    // A region not registered yet: its allocation's request was posted
    // before this launch but after this tick took the requests (a tensor used
    // right after cuMemAlloc). Serve them first, or the reference is lost.
    for (uint32_t k = 0; k < ev.n && !requests_->empty(); ++k) {
      const RegionEntry* e = entry_of(ev.refs[k].slot, ev.refs[k].gen);
      if (e && e->pager_id == ~0ull) serve_requests();
    }
    ids.clear();
    for (uint32_t k = 0; k < ev.n; ++k) {
      RegionEntry* e = entry_of(ev.refs[k].slot, ev.refs[k].gen);
      if (!e || e->pager_id == ~0ull) continue;
      RegionId id = unpack(e->pager_id);
      const Region* r = pager_->region(id);
      if (!r) continue;
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
      const auto chunk = std::min(ev.refs[k].chunk, r->nchunks - 1);
      pager_->reference(id, chunk);
      // The rest of the allocation may be read too (through this pointer):
      // its pieces are in use, not idle (parked ones excepted).
      uint64_t& last = alloc_touch_ns_[e->alloc_base];
      if (now - last >= touch_period) {
        last = now;
        for (uint32_t slot : map_.alloc_regions(e->alloc_base)) {
          RegionEntry& s = map_.entry(slot);
          if (s.pager_id != ~0ull && !s.parked.load(std::memory_order_relaxed)) pager_->touch(unpack(s.pager_id));
        }
      }
    }
    if (ev.kernel && !ids.empty()) pager_->launch(ev.kernel, ids);
  }
}

void Runtime::pager_main() {
  t_pager_thread = true;
  drv_.ctxSetCurrent(ctx_);
  // This thread never captures, and what it calls (event queries and
  // synchronizes, prefetches on its own stream) must not break the
  // program's captures. In the default mode, CU_STREAM_CAPTURE_MODE_GLOBAL, a
  // thread is "prohibited from potentially unsafe API calls" while any other
  // thread captures in that mode (cuda.h, cuThreadExchangeStreamCaptureMode),
  // and such a call invalidates the capture (PyTorch's graph capture uses
  // that mode; its own event-querying threads switch away from it). The
  // spill fence still refuses while any capture is active (streams.h).
  if (drv_.threadExchangeStreamCaptureMode) {
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    drv_.threadExchangeStreamCaptureMode(&mode);
  }
  const uint64_t tick = cfg_.cuda_tick_ns;
  while (!stop_.load(std::memory_order_acquire)) {
    const uint32_t seen = wake_word_.load(std::memory_order_acquire);
    serve_requests();
    handle_events();
    pager_->tick();
    reap_async_frees(false);
    if (const CudaMoverStats& ms = mover_->stats(); ms.failed_ranges > failed_ranges_logged_) {
      // Said the first time and then at every doubling: a move the driver
      // refuses leaves its chunks where they were (remote reads, if in host RAM).
      if (failed_ranges_logged_ == 0 || ms.failed_ranges >= 2 * failed_ranges_logged_) {
        log(3, fmt::format("the driver refused {} move range(s) so far (last CUresult {}): their chunks stay where "
                           "they were",
                           ms.failed_ranges, ms.last_driver_error));
        failed_ranges_logged_ = ms.failed_ranges;
      }
    }
    hbm_committed_.store(pager_->committed_bytes(Tier::kHbm), std::memory_order_relaxed);
    whole_ref_bytes_.store(pager_->whole_reference_bytes(), std::memory_order_relaxed);
    map_.reclaim();
    {
      std::lock_guard lock(hook_mu_);
      if (tick_hook_) tick_hook_(*pager_);
    }
    if (control_) control_->service(*pager_);
    if (!requests_->empty()) continue;
    // Moves in flight: look again soon; otherwise sleep a tick or until woken.
    futex_wait(wake_word_, seen, mover_->pending() > 0 ? std::min<uint64_t>(tick, 50'000) : tick);
  }
  // Answer whoever is still waiting; then nothing runs here any more.
  thread_exited_.store(true, std::memory_order_release);
  for (Request* r = requests_->take(); r;) {
    Request* next = r->next;
    if (r->owned) {
      if (r->kind == Request::kAsyncFree) drv_.eventDestroy(r->ev);
      delete r;
    } else {
      r->result = kHintError;
      r->done.store(1, std::memory_order_release);
      futex_wake(r->done);
    }
    r = next;
  }
}

// ---------------------------------------------------------------- hints

int Runtime::tag(uint64_t addr, uint64_t size, const char* name) {
  if (!name || !*name) return kHintInvalid;
  if (state_.load() != RuntimeState::kRunning) return kHintNotFound;
  Request r(Request::kTag);
  r.base = addr;
  r.size = size;
  r.name = name;
  call(r);
  return r.result;
}

int Runtime::call_named(Request& r, const char* name) {
  if (!name || !*name) return kHintInvalid;
  if (state_.load() != RuntimeState::kRunning) return kHintNotFound;
  r.name = name;
  call(r);
  return r.result;
}

int Runtime::hint(const char* name, HintKind kind) {
  Request r(Request::kHint);
  r.hint = kind;
  return call_named(r, name);
}

int Runtime::publish(const char* name) {
  Request r(Request::kPublish);
  return call_named(r, name);
}

Runtime::Counters Runtime::hook_counters() const {
  return {{"regions", map_.regions()},
          {"managed_bytes", managed_bytes_.load()},
          // Resolved once, on first use (published by limits_resolved_).
          {"managed_limit", limits_resolved_.load(std::memory_order_acquire) ? managed_limit_ : 0},
          {"virtual_capacity", limits_resolved_.load(std::memory_order_acquire) ? virtual_capacity_ : 0},
          {"hbm_committed", hbm_committed_.load()},
          {"managed_allocs", managed_allocs_.load()},
          {"limit_refusals", limit_refusals_.load()},
          {"launches_scanned", scanned_.load()},
          {"launches_unscannable", unscannable_.load()},
          {"restores", restores_.load()},
          {"unsafe_chunks", total_unsafe_.load()},
          {"events_dropped", ring_.dropped()},
          {"refs_dropped", refs_dropped_.load()},
          {"fence_failures", streams_.fence_failures()},
          {"layouts_cached", layouts_ ? layouts_->cached() : 0}};
}

Runtime::Counters Runtime::mover_counters() const {
  const CudaMoverStats& ms = mover_->stats();
  return {{"mover.batches", ms.batches},         {"mover.ranges", ms.ranges},
          {"mover.fences", ms.fences},           {"mover.fence_refusals", ms.fence_refusals},
          {"mover.driver_errors", ms.driver_errors}, {"mover.last_driver_error", ms.last_driver_error},
          {"mover.failed_ranges", ms.failed_ranges},     {"mover.reads", ms.reads},
          {"mover.issue_ns", ms.issue_ns},               {"mover.promote_ns", ms.promote_ns},
          {"mover.promote_batches", ms.promote_batches}, {"mover.demote_ns", ms.demote_ns},
          {"mover.demote_batches", ms.demote_batches},
          {"mover.store_peak", ms.store_peak},   {"mover.store_full", ms.store_full}};
}

std::string Runtime::stats_text() {
  if (state_.load() == RuntimeState::kForked) return "state=forked-child\n";  // touch no lock: see on_fork_child
  std::string out;
  static constexpr const char* kStates[] = {"idle", "starting", "running", "off", "forked-child"};
  out += fmt::format("state={}\n", kStates[static_cast<int>(state_.load())]);
  append_lines(out, hook_counters());
  if (state_.load() == RuntimeState::kRunning) {
    Request r(Request::kStats);
    r.text = &out;
    call(r);
  }
  return out;
}

}  // namespace kvpager::cuda
