// The CUDA mover and a pager in one process, over a driver loaded by path:
// the stand-in (tests) or the real libcuda.so.1 (GPU tests). Managed regions
// are allocated and advised the way libkvpager.so does it; the program's
// bytes are read and written from the host (managed memory is host
// accessible), so a test can check every byte after any sequence of moves.
#pragma once

#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_mover.h"
#include "driver.h"
#include "kvpager/pager.h"
#include "kvpager/sim/file_store.h"
#include "kvpager/store/token_store.h"
#include "kvpager/store/token_store_queue.h"
#include "quiescence.h"
#include "streams.h"

namespace kvpager::testing {

// The NVMe tier a rig's mover drives.
struct RigStore {
  using QueueMaker = std::function<std::unique_ptr<StoreQueue>(Store&)>;
  uint64_t capacity = 0;  // file store: the bytes it takes (0: unlimited)
  // The token store (by default through its io_uring queue, what
  // libkvpager.so runs) instead of the file store.
  bool token = false;
  // The queue the mover drives over the store; none: the file store's
  // blocking calls, the token store's own queue.
  QueueMaker queue;
};

struct MoverRig {
  void* lib = nullptr;
  cuda::Driver drv;
  CUcontext ctx = nullptr;
  Config cfg;
  std::string dir;
  std::unique_ptr<FileStore> store;                 // the file store, or
  std::unique_ptr<store::TokenStore> token;         // the token store (RigStore::token)
  std::unique_ptr<StoreQueue> io;                   // the queue the mover drives, if not blocking calls
  cuda::Quiescence q;
  cuda::StreamRegistry streams;
  std::map<uint64_t, std::unique_ptr<std::atomic<uint32_t>>> counters;  // per region base
  std::atomic<uint32_t> total_unsafe{0};
  std::unique_ptr<cuda::CudaMover> mover;
  std::unique_ptr<Pager> pager;
  std::string why;  // set when the driver cannot be used

  // path: a libcuda to dlopen ("libcuda.so.1" for the real one).
  MoverRig(const std::string& path, Config c, uint64_t store_capacity = 0)
      : MoverRig(path, std::move(c), RigStore{store_capacity, false, {}}) {}
  MoverRig(const std::string& path, Config c, RigStore rs) : cfg(std::move(c)) {
    lib = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
      why = std::string("cannot load ") + path + ": " + dlerror();
      return;
    }
    auto init = reinterpret_cast<PFN_cuInit_v2000>(cuda::real_dlsym(lib, "cuInit"));
    auto count = reinterpret_cast<PFN_cuDeviceGetCount_v2000>(cuda::real_dlsym(lib, "cuDeviceGetCount"));
    auto retain = reinterpret_cast<PFN_cuDevicePrimaryCtxRetain_v7000>(cuda::real_dlsym(lib, "cuDevicePrimaryCtxRetain"));
    auto set = reinterpret_cast<PFN_cuCtxSetCurrent_v4000>(cuda::real_dlsym(lib, "cuCtxSetCurrent"));
    int n = 0;
    if (!init || init(0) != CUDA_SUCCESS || !count || count(&n) != CUDA_SUCCESS || n == 0) {
      why = "no CUDA device (cuInit / cuDeviceGetCount)";
      return;
    }
    if (retain(&ctx, 0) != CUDA_SUCCESS || set(ctx) != CUDA_SUCCESS) {
      why = "cannot make a context current";
      return;
    }
    if (!drv.load(lib, &why)) return;
    if (auto clear = standin<void (*)()>("standin_log_clear")) clear();  // the stand-in's log, per test
    // The store: under cfg.store_dir if the caller named one (the benchmark
    // measures the NVMe tier there), else in the temporary directory.
    const std::filesystem::path parent =
        cfg.store_dir.empty() ? std::filesystem::temp_directory_path() : std::filesystem::path(cfg.store_dir);
    dir = (parent / ("kvpager-mover-" + std::to_string(getpid()))).string();
    cfg.store_dir = dir;
    Store* s = nullptr;
    if (rs.token) {
      token = std::make_unique<store::TokenStore>(store::StoreOptions::from_config(cfg));
      io = rs.queue ? rs.queue(*token) : std::make_unique<store::TokenStoreQueue>(*token);
      s = token.get();
    } else {
      store = std::make_unique<FileStore>(dir, cfg.chunk_size, rs.capacity);
      if (rs.queue) io = rs.queue(*store);
      s = store.get();
    }
    mover = std::make_unique<cuda::CudaMover>(
        drv, cfg, ctx, s, q, streams, [this](uint64_t base) { return counter(base); }, io.get());
    mover->set_total_unsafe(&total_unsafe);
    pager = std::make_unique<Pager>(cfg, *mover);
  }
  ~MoverRig() {
    pager.reset();
    mover.reset();
    io.reset();
    token.reset();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
  bool ok() const { return pager != nullptr; }

  std::atomic<uint32_t>* counter(uint64_t base) {
    auto& c = counters[base];
    if (!c) c = std::make_unique<std::atomic<uint32_t>>(0);
    return c.get();
  }

  // A managed region as libkvpager.so makes one: host RAM preferred, the GPU
  // reading it remotely, registered with the pager in host RAM.
  struct Region {
    RegionId id;
    uint64_t base;
    uint64_t size;
    std::byte* bytes() const { return reinterpret_cast<std::byte*>(base); }
  };
  Region alloc(uint64_t size, const std::string& context) {
    CUdeviceptr p = 0;
    if (drv.memAllocManaged(&p, size, CU_MEM_ATTACH_GLOBAL) != CUDA_SUCCESS) return Region{};
    CUmemLocation host{}, gpu{};
    host.type = CU_MEM_LOCATION_TYPE_HOST;
    gpu.type = CU_MEM_LOCATION_TYPE_DEVICE;
    gpu.id = mover->device();
    drv.memAdvise(p, size, CU_MEM_ADVISE_SET_PREFERRED_LOCATION, host);
    drv.memAdvise(p, size, CU_MEM_ADVISE_SET_ACCESSED_BY, gpu);
    return Region{pager->add_region(p, size, context, Tier::kHost), p, size};
  }

  template <typename T>
  T standin(const char* name) const {
    return reinterpret_cast<T>(cuda::real_dlsym(lib, name));
  }
};

}  // namespace kvpager::testing
