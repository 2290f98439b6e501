// Promote and demote bandwidth of the CUDA mover against pinned
// cudaMemcpyAsync-equivalent copies (cuMemcpyHtoDAsync / DtoH from pinned host
// memory) of the same bytes, in the same run, on a real GPU; also spill and
// restore through the store. Run by scripts/bench-gpu-mover; needs a GPU
// (exits 2 saying why otherwise). Prints a markdown table.
//   bench_gpu_mover [--mib N] [--reps R] [--store DIR]
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mover_rig.h"

using namespace kvpager;
using WallClock = std::chrono::steady_clock;

namespace {
double seconds(WallClock::time_point t) { return std::chrono::duration<double>(WallClock::now() - t).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  uint64_t mib = 4096;
  int reps = 5;
  std::string store = "/tmp/kvpager-bench-gpu";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--mib") mib = std::strtoull(argv[i + 1], nullptr, 10);
    else if (k == "--reps") reps = std::atoi(argv[i + 1]);
    else if (k == "--store") store = argv[i + 1];
  }
  const uint64_t bytes = mib << 20;
  Config c;
  c.chunk_size = 2 * MiB;
  c.hbm_budget = bytes / 9 * 10 / c.chunk_size * c.chunk_size + 4 * c.chunk_size;  // all of it fits below 95 %
  c.host_capacity = 4 * bytes;
  c.prefetchers = kPrefetchHint;
  c.spill_idle_ns = 3'600'000'000'000;
  c.store_dir = store;
  testing::MoverRig rig("libcuda.so.1", c, testing::RigStore{0, true, {}});  // the token store, as in production
  if (!rig.ok()) {
    std::fprintf(stderr, "bench_gpu_mover: no usable GPU: %s\n", rig.why.c_str());
    return 2;
  }
  size_t free = 0, total = 0;
  rig.drv.memGetInfo(&free, &total);
  if (bytes * 3 > free) {  // managed region + device buffer + margin (GPU safety rule)
    std::fprintf(stderr, "bench_gpu_mover: %llu MiB is too much for %zu MiB free\n",
                 static_cast<unsigned long long>(mib), free >> 20);
    return 2;
  }
  char name[256] = {};
  auto get_name = reinterpret_cast<PFN_cuDeviceGetName_v2000>(cuda::real_dlsym(rig.lib, "cuDeviceGetName"));
  if (get_name) get_name(name, sizeof name, rig.mover->device());

  // The mover's moves: one context of `bytes`, prefetched in and parked out.
  auto region = rig.alloc(bytes, "bench");
  std::memset(region.bytes(), 1, bytes);  // pages exist in host RAM
  const ContextId ctx = rig.pager->find_context("bench");
  std::vector<double> promote, demote, h2d, d2h;
  for (int r = 0; r < reps; ++r) {
    auto t = WallClock::now();
    rig.pager->hint(ctx, HintKind::kPrefetch);
    rig.pager->drain();
    promote.push_back(seconds(t));
    if (rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes < bytes) {
      std::fprintf(stderr, "bench_gpu_mover: the prefetch did not bring it all in\n");
      return 1;
    }
    t = WallClock::now();
    rig.pager->hint(ctx, HintKind::kPark);
    rig.pager->drain();
    demote.push_back(seconds(t));
  }
  // The baseline: pinned host memory <-> a device buffer, same bytes, one stream.
  void* pinned = nullptr;
  CUdeviceptr dev = 0;
  auto alloc = reinterpret_cast<PFN_cuMemAlloc_v3020>(cuda::real_dlsym(rig.lib, "cuMemAlloc_v2"));
  auto free_dev = reinterpret_cast<PFN_cuMemFree_v3020>(cuda::real_dlsym(rig.lib, "cuMemFree_v2"));
  if (rig.drv.memHostAlloc(&pinned, bytes, 0) != CUDA_SUCCESS || alloc(&dev, bytes) != CUDA_SUCCESS) {
    std::fprintf(stderr, "bench_gpu_mover: cannot allocate the baseline buffers\n");
    return 1;
  }
  std::memset(pinned, 1, bytes);
  CUstream s = nullptr;
  rig.drv.streamCreate(&s, CU_STREAM_NON_BLOCKING);
  for (int r = 0; r < reps; ++r) {
    auto t = WallClock::now();
    rig.drv.memcpyHtoDAsync(dev, pinned, bytes, s);
    rig.drv.streamSynchronize(s);
    h2d.push_back(seconds(t));
    t = WallClock::now();
    rig.drv.memcpyDtoHAsync(pinned, dev, bytes, s);
    rig.drv.streamSynchronize(s);
    d2h.push_back(seconds(t));
  }
  free_dev(dev);
  rig.drv.memFreeHost(pinned);
  rig.drv.streamDestroy(s);

  // Spill and restore through the store (the NVMe tier): a quarter of it.
  const uint64_t part = std::max<uint64_t>(bytes / 4 / c.chunk_size * c.chunk_size, c.chunk_size);
  auto small = rig.alloc(part, "spill");
  std::memset(small.bytes(), 2, part);
  Config tight = rig.pager->config();
  tight.host_capacity = c.chunk_size;
  std::string why;
  rig.pager->apply(tight, &why);
  auto t = WallClock::now();
  rig.pager->hint(rig.pager->find_context("spill"), HintKind::kPark);
  rig.pager->drain();
  rig.pager->tick();
  rig.pager->drain();
  const double spill = seconds(t);
  const uint64_t spilled = rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes;
  t = WallClock::now();
  rig.pager->restore(small.id);
  rig.pager->drain();
  const double restore = seconds(t);

  auto gbs = [&](double secs, uint64_t n) { return double(n) / secs / 1e9; };
  const double p = gbs(median(promote), bytes), d = gbs(median(demote), bytes);
  const double hd = gbs(median(h2d), bytes), dh = gbs(median(d2h), bytes);
  std::printf("device: %s, driver %d, %llu MiB, median of %d\n\n", name, rig.drv.version,
              static_cast<unsigned long long>(mib), reps);
  std::printf("| move | mover GB/s | pinned copy GB/s | ratio |\n| --- | ---: | ---: | ---: |\n");
  std::printf("| promote (host -> HBM) | %.1f | %.1f (HtoD) | %.2f |\n", p, hd, p / hd);
  std::printf("| demote (HBM -> host) | %.1f | %.1f (DtoH) | %.2f |\n", d, dh, d / dh);
  std::printf("| spill (host -> store, %s) | %.2f | | |\n", store.c_str(), gbs(spill, spilled ? spilled : 1));
  std::printf("| restore (store -> host) | %.2f | | |\n", gbs(restore, spilled ? spilled : 1));
  std::printf("\nstore: %s, at most %llu reads/writes in flight\n", rig.token->stats().engine.c_str(),
              static_cast<unsigned long long>(rig.mover->stats().store_peak));
  std::printf("mover: %llu batches, %llu ranges, %llu fences, %llu driver errors\n",
              static_cast<unsigned long long>(rig.mover->stats().batches),
              static_cast<unsigned long long>(rig.mover->stats().ranges),
              static_cast<unsigned long long>(rig.mover->stats().fences),
              static_cast<unsigned long long>(rig.mover->stats().driver_errors));
  return rig.mover->stats().driver_errors ? 1 : 0;
}
