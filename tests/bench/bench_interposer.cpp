// Per-launch overhead of the interposer with 10^4 managed regions registered
// (Google Benchmark, in process, against the stand-in driver: no GPU). What a
// cuLaunchKernel wrapper adds to the driver's own call: bracket, parameter
// layout (cached), scan of every 8-byte word against the region map, the
// spill check, the stream note and the launch event. The "driver call" here
// is an empty function, so only our work is timed. Run with
// scripts/bench-interposer; results in docs/benchmarks.md ("Interposer").
#include <benchmark/benchmark.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "hooks.h"
#include "kvpager/config.h"
#include "runtime.h"

namespace kvpager::cuda {
namespace {

constexpr int kRegions = 10'000;

CUresult empty_driver_call() { return CUDA_SUCCESS; }

struct Setup {
  Runtime* rt = nullptr;
  void* lib = nullptr;
  CUfunction check = nullptr, check_struct = nullptr;
  std::vector<CUdeviceptr> regions;
  std::vector<uint64_t> host_words;

  Setup() {
    setenv("KVPAGER_SPILL_IDLE", "24h", 1);
    setenv("KVPAGER_HOST_CAPACITY", "2M", 1);
    setenv("KVPAGER_STORE_DIR", "/tmp/kvpager-bench-interposer", 1);
    setenv("KVPAGER_CUDA_MANAGED_LIMIT", "64G", 1);
    setenv("KVPAGER_PREFETCHERS", "none", 1);  // the pager thread's heuristics are not what is timed  // 10^4 regions of 2 MiB (address space only: never touched)
    lib = dlopen(STANDIN_LIBCUDA, RTLD_NOW | RTLD_GLOBAL);
    auto init = reinterpret_cast<PFN_cuInit_v2000>(real_dlsym(lib, "cuInit"));
    auto retain = reinterpret_cast<PFN_cuDevicePrimaryCtxRetain_v7000>(real_dlsym(lib, "cuDevicePrimaryCtxRetain"));
    auto set = reinterpret_cast<PFN_cuCtxSetCurrent_v4000>(real_dlsym(lib, "cuCtxSetCurrent"));
    auto fn = reinterpret_cast<void* (*)(const char*)>(real_dlsym(lib, "standin_function"));
    CUcontext ctx = nullptr;
    init(0);
    retain(&ctx, 0);
    set(ctx);
    check = static_cast<CUfunction>(fn("check"));
    check_struct = static_cast<CUfunction>(fn("check_struct"));
    rt = Runtime::get();
    if (!lib || !rt) {
      std::fprintf(stderr, "bench_interposer: cannot start the interposer (stand-in %s, configuration above)\n",
                   STANDIN_LIBCUDA);
      std::exit(1);
    }
    for (int i = 0; i < kRegions; ++i) {
      CUdeviceptr p = 0;
      if (rt->alloc_managed(&p, 2 * MiB) == CUDA_SUCCESS) regions.push_back(p);
    }
    // Let the pager thread register them all.
    while (rt->stats_text().find("pager.regions=" + std::to_string(regions.size()) + "\n") == std::string::npos)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    host_words.resize(64);
  }
};

Setup& setup() {
  static Setup s;
  return s;
}

// Random pointers into the regions [first, n): a different region per launch.
std::vector<uint64_t> random_pointers(const Setup& s, uint32_t seed, size_t first = 0) {
  std::mt19937 rng(seed);
  std::vector<uint64_t> ptrs(4096);
  for (auto& p : ptrs) p = s.regions[first + rng() % (s.regions.size() - first)] + (rng() % (2 * MiB));
  return ptrs;
}

// check(ptr, len, seed, result*) launched with each of `ptrs` in turn.
void launch_each(benchmark::State& state, Setup& s, const std::vector<uint64_t>& ptrs) {
  uint64_t ptr = 0, len = 64;
  uint32_t seed = 1;
  uint64_t* out = s.host_words.data();
  void* args[] = {&ptr, &len, &seed, &out};
  size_t i = 0;
  for (auto _ : state) {
    ptr = ptrs[i++ & 4095];
    benchmark::DoNotOptimize(bench_launch(s.check, args, nullptr, &empty_driver_call));
  }
}

// The bare call, for reference: what the benchmarks below add to.
void BM_DriverCallOnly(benchmark::State& state) {
  CUresult (*volatile real)() = &empty_driver_call;
  for (auto _ : state) benchmark::DoNotOptimize(real());
}
BENCHMARK(BM_DriverCallOnly);

// check(ptr, len, seed, result*) with pointers that are not managed memory.
void BM_LaunchNoManagedArgument(benchmark::State& state) {
  Setup& s = setup();
  uint64_t ptr = reinterpret_cast<uint64_t>(s.host_words.data()), len = 64;
  uint32_t seed = 1;
  uint64_t* out = s.host_words.data();
  void* args[] = {&ptr, &len, &seed, &out};
  for (auto _ : state) benchmark::DoNotOptimize(bench_launch(s.check, args, nullptr, &empty_driver_call));
  state.counters["regions"] = static_cast<double>(s.regions.size());
}
BENCHMARK(BM_LaunchNoManagedArgument);

// check(ptr, ...) with ptr into a managed region, a different one each launch
// (so the lookups miss the CPU caches the way a real mix of kernels would).
void BM_LaunchManagedArgument(benchmark::State& state) {
  Setup& s = setup();
  launch_each(state, s, random_pointers(s, 1));
}
BENCHMARK(BM_LaunchManagedArgument);

// check_struct(int, struct{...ptr...}) : the pointer inside a struct passed by value.
void BM_LaunchStructArgument(benchmark::State& state) {
  Setup& s = setup();
  struct S {
    uint32_t n, pad;
    uint64_t ptr, len;
    uint32_t seed, pad2;
    uint64_t* result;
  } st{1, 0, s.regions[17] + 4096, 64, 1, 0, s.host_words.data()};
  int tag = 0;
  void* args[] = {&tag, &st};
  for (auto _ : state) benchmark::DoNotOptimize(bench_launch(s.check_struct, args, nullptr, &empty_driver_call));
}
BENCHMARK(BM_LaunchStructArgument);

// The scan function alone: one 8-byte word looked up in the map of 10^4 regions.
void BM_RegionLookup(benchmark::State& state) {
  Setup& s = setup();
  std::vector<uint64_t> words = random_pointers(s, 2);
  Quiescence::Bracket b(s.rt->quiescence());
  const RegionMap::Snapshot& snap = s.rt->map().snapshot();
  size_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(RegionMap::locate(snap, words[i++ & 4095]));
  state.counters["items"] = static_cast<double>(snap.n);
}
BENCHMARK(BM_RegionLookup);

// With something spilled elsewhere, each referenced region's spill state is read too.
void BM_LaunchManagedArgumentWhileSomethingIsSpilled(benchmark::State& state) {
  Setup& s = setup();
  static bool parked = [&] {
    s.rt->tag(s.regions[0], 2 * MiB, "parked");
    s.rt->hint("parked", HintKind::kPark);
    while (s.rt->unsafe_chunks() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return true;
  }();
  benchmark::DoNotOptimize(parked);
  launch_each(state, s, random_pointers(s, 3, /*first=*/1));
  state.counters["unsafe_chunks"] = s.rt->unsafe_chunks();
}
BENCHMARK(BM_LaunchManagedArgumentWhileSomethingIsSpilled);

}  // namespace
}  // namespace kvpager::cuda

BENCHMARK_MAIN();
