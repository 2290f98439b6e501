// Promote and demote bandwidth of the CUDA mover against pinned
// cudaMemcpyAsync-equivalent copies (cuMemcpyHtoDAsync / DtoH from pinned host
// memory) of the same bytes, in the same run, on a real GPU; also spill and
// restore through the store. Run by scripts/bench-gpu-mover; needs a GPU
// (exits 2 saying why otherwise). Prints a markdown table. The swap rows: one
// context parked while another of the same size is prefetched (a resumed
// session), with the mover's promotes and demotes on a stream each
// (cuda.move_streams = 2) and on one, against pinned copies in both
// directions at once on two streams.
//   bench_gpu_mover [--mib N] [--reps R] [--store DIR] [--driver LIBCUDA]
// --driver: the libcuda to load (default libcuda.so.1, the real one). The
// suite runs it on the stand-in driver (tests/bench/CMakeLists.txt) so the
// benchmark cannot rot between GPU runs; its numbers there mean nothing.
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

// Reads every chunk of the region (the pager's bookkeeping: a turn used what
// was prefetched, so the hint prefetcher is not judged wasteful).
bool read_all(testing::MoverRig& rig, const testing::MoverRig::Region& r) {
  const auto n = static_cast<uint32_t>((r.size + rig.cfg.chunk_size - 1) / rig.cfg.chunk_size);
  for (uint32_t i = 0; i < n; ++i)
    if (!ok(rig.pager->access(r.id, i, false))) return false;
  return true;
}

// A swap on a rig of its own with `streams` move streams: context "out"
// (half bytes, in HBM) parked while context "in" (half bytes, in host RAM)
// is prefetched, the two trading places every round.
struct Swap {
  double seconds = 0;        // median per swap; 0 (and why on stderr): not measured
  double issue_seconds = 0;  // the pager thread's time inside advise/prefetch calls, per swap
  uint64_t driver_errors = 0;
};
Swap swap_seconds(const std::string& driver, Config c, uint32_t streams, uint64_t half, int reps,
                    const std::string& dir) {
  c.cuda_move_streams = streams;
  c.store_dir = dir;
  testing::MoverRig rig(driver, c);
  if (!rig.ok()) {
    std::fprintf(stderr, "bench_gpu_mover: swap, %u stream(s): %s\n", streams, rig.why.c_str());
    return {};
  }
  testing::MoverRig::Region r[2] = {rig.alloc(half, "x"), rig.alloc(half, "y")};
  if (!r[0].id.valid() || !r[1].id.valid()) {
    std::fprintf(stderr, "bench_gpu_mover: swap: cannot allocate 2 x %llu MiB\n",
                 static_cast<unsigned long long>(half >> 20));
    return {};
  }
  std::memset(r[0].bytes(), 3, half);
  std::memset(r[1].bytes(), 4, half);
  const ContextId ctx[2] = {rig.pager->find_context("x"), rig.pager->find_context("y")};
  rig.pager->hint(ctx[0], HintKind::kPrefetch);
  rig.pager->drain();
  if (!read_all(rig, r[0])) return {};
  const uint64_t issue0 = rig.mover->stats().issue_ns;
  std::vector<double> t;
  for (int k = 0; k < reps; ++k) {
    const int out = k % 2, in = 1 - out;
    const auto t0 = WallClock::now();
    rig.pager->hint(ctx[out], HintKind::kPark);
    rig.pager->hint(ctx[in], HintKind::kPrefetch);
    rig.pager->drain();
    t.push_back(seconds(t0));
    const StatsSnapshot st = rig.pager->stats();
    if (st.tiers[index(Tier::kHbm)].resident_bytes != half || !read_all(rig, r[in])) {
      std::fprintf(stderr, "bench_gpu_mover: swap %d, %u stream(s): %llu of %llu MiB in HBM afterwards (%llu moves failed)\n",
                   k, streams, static_cast<unsigned long long>(st.tiers[index(Tier::kHbm)].resident_bytes >> 20),
                   static_cast<unsigned long long>(half >> 20), static_cast<unsigned long long>(st.move_failures));
      return {};
    }
  }
  const double issue = static_cast<double>(rig.mover->stats().issue_ns - issue0) / 1e9 / reps;
  for (auto& reg : r)
    if (!ok(rig.pager->remove_region(reg.id)) || rig.drv.memFree(reg.base) != CUDA_SUCCESS) return {};
  return {median(t), issue, rig.mover->stats().driver_errors};
}
}  // namespace

int main(int argc, char** argv) {
  uint64_t mib = 4096;
  int reps = 5;
  std::string store = "/tmp/kvpager-bench-gpu";
  std::string driver = "libcuda.so.1";
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (i + 1 < argc && k == "--mib") mib = std::strtoull(argv[i + 1], nullptr, 10);
    else if (i + 1 < argc && k == "--reps") reps = std::atoi(argv[i + 1]);
    else if (i + 1 < argc && k == "--store") store = argv[i + 1];
    else if (i + 1 < argc && k == "--driver") driver = argv[i + 1];
    else {
      std::fprintf(stderr, "usage: bench_gpu_mover [--mib N] [--reps R] [--store DIR] [--driver LIBCUDA]\n");
      return 2;
    }
  }
  if (mib < 4 || reps < 1) {  // 4: the swap rows move two contexts of at least one 2 MiB chunk each
    std::fprintf(stderr, "bench_gpu_mover: --mib must be at least 4 and --reps at least 1\n");
    return 2;
  }
  const uint64_t bytes = mib << 20;
  Config c;
  c.chunk_size = 2 * MiB;
  c.hbm_budget = bytes / 9 * 10 / c.chunk_size * c.chunk_size + 4 * c.chunk_size;  // all of it fits below 95 %
  c.host_capacity = 4 * bytes;
  c.prefetchers = kPrefetchHint;
  c.spill_idle_ns = 3'600'000'000'000;
  c.store_dir = store;
  testing::MoverRig rig(driver, c, testing::RigStore{0, true, {}});  // the token store, as in production
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

  // The mover's moves: one context of `bytes`, prefetched in and parked out,
  // as an engine does around a turn: prefetch(context) ahead of it, the turn
  // reads it, park(context) after. The turn matters: a prefetcher whose staged
  // chunks leave HBM unread is wasting, and the pager mutes it (see
  // prefetch_waste_ceiling), so prefetch-and-park without a read stages
  // nothing from the second round on. The reads are the pager's bookkeeping
  // only (the chunks are resident), outside the timed moves.
  auto region = rig.alloc(bytes, "bench");
  if (!region.id.valid()) {
    std::fprintf(stderr, "bench_gpu_mover: cannot allocate %llu MiB of managed memory\n",
                 static_cast<unsigned long long>(mib));
    return 1;
  }
  std::memset(region.bytes(), 1, bytes);  // pages exist in host RAM
  const ContextId ctx = rig.pager->find_context("bench");
  const auto nchunks = static_cast<uint32_t>((bytes + c.chunk_size - 1) / c.chunk_size);
  std::vector<double> promote, demote, h2d, d2h, both;
  for (int r = 0; r < reps; ++r) {
    auto t = WallClock::now();
    rig.pager->hint(ctx, HintKind::kPrefetch);
    rig.pager->drain();
    promote.push_back(seconds(t));
    const StatsSnapshot st = rig.pager->stats();
    if (st.tiers[index(Tier::kHbm)].resident_bytes < bytes) {
      const PrefetcherStats& hint = st.prefetchers.at(0);
      std::fprintf(stderr,
                   "bench_gpu_mover: round %d: the prefetch did not bring it all in: %llu of %llu MiB in HBM "
                   "(hint prefetcher: %s, %llu throttle events; issued %llu, used %llu, wasted %llu MiB; "
                   "%llu prefetches dropped, %llu moves failed, %llu driver errors)\n",
                   r, static_cast<unsigned long long>(st.tiers[index(Tier::kHbm)].resident_bytes >> 20),
                   static_cast<unsigned long long>(mib), hint.throttled ? "throttled" : "not throttled",
                   static_cast<unsigned long long>(hint.throttle_events),
                   static_cast<unsigned long long>(hint.issued_bytes >> 20),
                   static_cast<unsigned long long>(hint.used_bytes >> 20),
                   static_cast<unsigned long long>(hint.wasted_bytes >> 20),
                   static_cast<unsigned long long>(st.prefetch_dropped),
                   static_cast<unsigned long long>(st.move_failures),
                   static_cast<unsigned long long>(rig.mover->stats().driver_errors));
      return 1;
    }
    for (uint32_t i = 0; i < nchunks; ++i) {  // the turn
      if (const Status as = rig.pager->access(region.id, i, false); !ok(as)) {
        std::fprintf(stderr, "bench_gpu_mover: round %d: reading chunk %u failed: %s\n", r, i,
                     std::string(to_string(as)).c_str());
        return 1;
      }
    }
    t = WallClock::now();
    rig.pager->hint(ctx, HintKind::kPark);
    rig.pager->drain();
    demote.push_back(seconds(t));
    if (rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes != 0) {
      std::fprintf(stderr, "bench_gpu_mover: round %d: the park left part of it in HBM\n", r);
      return 1;
    }
  }
  // Gone before the spill below, which would otherwise spill this parked
  // context too (and time it) while restoring only its own.
  if (!ok(rig.pager->remove_region(region.id)) || rig.drv.memFree(region.base) != CUDA_SUCCESS) {
    std::fprintf(stderr, "bench_gpu_mover: cannot free the mover's region\n");
    return 1;
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
  CUstream s = nullptr, s2 = nullptr;
  rig.drv.streamCreate(&s, CU_STREAM_NON_BLOCKING);
  rig.drv.streamCreate(&s2, CU_STREAM_NON_BLOCKING);
  const uint64_t half = bytes / 2 / c.chunk_size * c.chunk_size;
  for (int r = 0; r < reps; ++r) {
    auto t = WallClock::now();
    rig.drv.memcpyHtoDAsync(dev, pinned, bytes, s);
    rig.drv.streamSynchronize(s);
    h2d.push_back(seconds(t));
    t = WallClock::now();
    rig.drv.memcpyDtoHAsync(pinned, dev, bytes, s);
    rig.drv.streamSynchronize(s);
    d2h.push_back(seconds(t));
    t = WallClock::now();  // a swap's bytes: half in, half out, at once
    rig.drv.memcpyHtoDAsync(dev, pinned, half, s);
    rig.drv.memcpyDtoHAsync(static_cast<std::byte*>(pinned) + half, dev + half, half, s2);
    rig.drv.streamSynchronize(s);
    rig.drv.streamSynchronize(s2);
    both.push_back(seconds(t));
  }
  free_dev(dev);
  rig.drv.memFreeHost(pinned);
  rig.drv.streamDestroy(s);
  rig.drv.streamDestroy(s2);

  // Swaps on rigs of their own (the move streams are fixed at a mover's start).
  Swap swap[3];  // by move streams
  for (uint32_t n : {2u, 1u}) {
    swap[n] = swap_seconds(driver, c, n, half, reps + (reps % 2), store + "/swap" + std::to_string(n));
    if (swap[n].seconds == 0) return 1;
  }

  // Spill and restore through the store (the NVMe tier): a quarter of it.
  // Spilling needs cuMemDiscardBatchAsync (CUDA 13): skipped, saying so, without.
  double spill = 0, restore = 0;
  uint64_t spilled = 0;
  if (!rig.drv.can_spill()) {
    std::fprintf(stderr, "bench_gpu_mover: spill/restore skipped: driver %d has no cuMemDiscardBatchAsync\n",
                 rig.drv.version);
  } else {
    const uint64_t part = std::max<uint64_t>(bytes / 4 / c.chunk_size * c.chunk_size, c.chunk_size);
    auto small = rig.alloc(part, "spill");
    if (!small.id.valid()) {
      std::fprintf(stderr, "bench_gpu_mover: cannot allocate the spilled region\n");
      return 1;
    }
    std::memset(small.bytes(), 2, part);
    Config tight = rig.pager->config();
    tight.host_capacity = c.chunk_size;
    std::string why;
    if (!ok(rig.pager->apply(tight, &why))) {
      std::fprintf(stderr, "bench_gpu_mover: cannot shrink host RAM to spill: %s\n", why.c_str());
      return 1;
    }
    auto t = WallClock::now();
    rig.pager->hint(rig.pager->find_context("spill"), HintKind::kPark);
    rig.pager->drain();
    rig.pager->tick();
    rig.pager->drain();
    spill = seconds(t);
    spilled = rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes;
    if (spilled != part) {
      std::fprintf(stderr, "bench_gpu_mover: the park spilled %llu of %llu MiB (store: %s)\n",
                   static_cast<unsigned long long>(spilled >> 20), static_cast<unsigned long long>(part >> 20),
                   rig.token->stats().engine.c_str());
      return 1;
    }
    t = WallClock::now();
    const Status rs = rig.pager->restore(small.id);
    rig.pager->drain();
    restore = seconds(t);
    if (!ok(rs) || rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes != 0) {
      std::fprintf(stderr, "bench_gpu_mover: the restore did not bring it all back: %s\n",
                   std::string(to_string(rs)).c_str());
      return 1;
    }
    for (uint64_t i = 0; i < part; i += 4096) {
      if (small.bytes()[i] != std::byte{2}) {
        std::fprintf(stderr, "bench_gpu_mover: byte %llu differs after the restore\n",
                     static_cast<unsigned long long>(i));
        return 1;
      }
    }
  }

  auto gbs = [&](double secs, uint64_t n) { return double(n) / secs / 1e9; };
  const double p = gbs(median(promote), bytes), d = gbs(median(demote), bytes);
  const double hd = gbs(median(h2d), bytes), dh = gbs(median(d2h), bytes);
  std::printf("device: %s, driver %d, %llu MiB, median of %d\n\n", name[0] ? name : "(no name)", rig.drv.version,
              static_cast<unsigned long long>(mib), reps);
  std::printf("| move | mover GB/s | pinned copy GB/s | ratio |\n| --- | ---: | ---: | ---: |\n");
  std::printf("| promote (host -> HBM) | %.1f | %.1f (HtoD) | %.2f |\n", p, hd, p / hd);
  std::printf("| demote (HBM -> host) | %.1f | %.1f (DtoH) | %.2f |\n", d, dh, d / dh);
  const double pb = gbs(median(both), 2 * half);
  for (uint32_t n : {2u, 1u}) {
    const double sw = gbs(swap[n].seconds, 2 * half);
    std::printf("| swap %llu MiB each way, %u move stream%s | %.1f | %.1f (HtoD + DtoH at once) | %.2f |\n",
                static_cast<unsigned long long>(half >> 20), n, n == 1 ? "" : "s", sw, pb, sw / pb);
  }
  if (spilled) {
    std::printf("| spill (host -> store, %s) | %.2f | | |\n", store.c_str(), gbs(spill, spilled));
    std::printf("| restore (store -> host) | %.2f | | |\n", gbs(restore, spilled));
  }
  std::printf("\nstore: %s, at most %llu reads/writes in flight\n", rig.token->stats().engine.c_str(),
              static_cast<unsigned long long>(rig.mover->stats().store_peak));
  std::printf("mover: %llu batches, %llu ranges, %llu fences, %llu driver errors\n",
              static_cast<unsigned long long>(rig.mover->stats().batches),
              static_cast<unsigned long long>(rig.mover->stats().ranges),
              static_cast<unsigned long long>(rig.mover->stats().fences),
              static_cast<unsigned long long>(rig.mover->stats().driver_errors));
  // Whether the driver's advise/prefetch calls return at once or migrate
  // before returning (then the pager thread is blocked that long, and the
  // two streams cannot overlap what one thread issues in turn).
  const cuda::CudaMoverStats& ms = rig.mover->stats();
  std::printf("pager thread inside advise/prefetch calls: %.1f ms; promote batches in flight %.1f ms, demote %.1f ms\n",
              static_cast<double>(ms.issue_ns) / 1e6, static_cast<double>(ms.promote_ns) / 1e6,
              static_cast<double>(ms.demote_ns) / 1e6);
  for (uint32_t n : {2u, 1u})
    std::printf("swap, %u move stream%s: %.1f ms per swap, of which the pager thread was inside advise/prefetch calls "
                "%.1f ms\n",
                n, n == 1 ? "" : "s", swap[n].seconds * 1e3, swap[n].issue_seconds * 1e3);
  const uint64_t errors = rig.mover->stats().driver_errors + swap[1].driver_errors + swap[2].driver_errors;
  if (errors) std::fprintf(stderr, "bench_gpu_mover: %llu driver errors\n", static_cast<unsigned long long>(errors));
  return errors ? 1 : 0;
}
