// Scenarios run under LD_PRELOAD=libkvpager.so against the stand-in driver
// (tests/cuda_standin). Not a test binary of its own: test_cuda_standin runs
// each scenario in a fresh process with the environment it needs (listed
// above each one) and reports it as CudaStandin.<name>.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cstring>
#include <thread>

#include "kvpager/store/token_store.h"
#include "standin_program.h"

extern "C" CUdeviceptr standin_early_allocation();  // libstandin_early

namespace kvpager::testing {
namespace {

// Env: defaults (cuda.min_size = 2M).
TEST(StandIn, RoutesAllocationsByThreshold) {
  Program p;
  ASSERT_TRUE(kvpager_loaded()) << "run me with LD_PRELOAD=libkvpager.so";
  CUdeviceptr small = p.must_alloc(1 * kMiB), edge = p.must_alloc(2 * kMiB), big = p.must_alloc(8 * kMiB);
  EXPECT_EQ(p.count_log("cuMemAlloc_v2 1048576"), 1u) << "below the threshold: the driver's own allocation";
  EXPECT_EQ(p.count_log("cuMemAllocManaged 2097152"), 1u) << "at the threshold: managed";
  EXPECT_EQ(p.count_log("cuMemAllocManaged 8388608"), 1u);
  EXPECT_EQ(p.count_log("cuMemAlloc_v2 2097152") + p.count_log("cuMemAlloc_v2 8388608"), 0u);
  // New regions live in host RAM, read by the GPU remotely, until promoted.
  EXPECT_GE(p.count_log("cuMemAdvise_v2"), 4u);
  CUdeviceptr pitched = 0;
  size_t pitch = 0;
  ASSERT_EQ(p.alloc_pitch(&pitched, &pitch, 4000, 1024, 4), CUDA_SUCCESS);
  EXPECT_EQ(pitch, 4096u);
  EXPECT_EQ(p.count_log("cuMemAllocManaged 4194304"), 1u) << "pitch x height at the threshold";
  Stats s = stats();
  EXPECT_EQ(s.str("state"), "running");
  EXPECT_EQ(s.num("regions"), 3u);
  EXPECT_EQ(s.num("managed_bytes"), 14 * kMiB);
  for (CUdeviceptr d : {small, edge, big, pitched}) EXPECT_EQ(p.free(d), CUDA_SUCCESS);
  EXPECT_EQ(p.count_log("cuMemFree_v2"), 4u);
  s = stats();
  EXPECT_EQ(s.num("regions"), 0u);
  EXPECT_EQ(s.num("managed_bytes"), 0u);
}

// Env: KVPAGER_STORE_DIR that cannot be created. The NVMe tier is lost, not
// the pager: allocations are still managed and paged.
TEST(StandIn, WithoutAUsableStoreThePagerRunsWithoutItsNvmeTier) {
  Program p;
  ASSERT_TRUE(kvpager_loaded()) << "run me with LD_PRELOAD=libkvpager.so";
  CUdeviceptr big = p.must_alloc(8 * kMiB);
  EXPECT_EQ(p.count_log("cuMemAllocManaged 8388608"), 1u) << "still managed";
  Stats s = stats();
  EXPECT_EQ(s.str("state"), "running");
  EXPECT_EQ(s.num("regions"), 1u);
  EXPECT_EQ(p.free(big), CUDA_SUCCESS);
}

// Env: CUDA_STANDIN_MANAGED_OFFSET=256 (managed memory 256 bytes past a page).
TEST(StandIn, ManagedMemoryThatDoesNotStartOnAPageIsLeftToTheDriver) {
  Program p;
  CUdeviceptr big = p.must_alloc(8 * kMiB);
  EXPECT_EQ(p.count_log("cuMemAllocManaged 8388608"), 1u) << "asked for managed memory";
  EXPECT_EQ(p.count_log("cuMemAlloc_v2 8388608"), 1u) << "then, as it was not page aligned, the driver's own";
  EXPECT_EQ(big % 4096, 0u) << "the program got the device allocation";
  Stats s = stats();
  EXPECT_EQ(s.num("regions"), 0u) << "nothing of it is paged: a discard would take part of a neighbour's page";
  EXPECT_EQ(s.num("managed_bytes"), 0u);
  EXPECT_EQ(p.free(big), CUDA_SUCCESS);
}

// Env: KVPAGER_CUDA_DENY_SIZES=4M-6M, KVPAGER_CUDA_ALLOW_SIZES=512K-1M
TEST(StandIn, AllowAndDenySizeRanges) {
  Program p;
  p.must_alloc(4 * kMiB);
  p.must_alloc(5 * kMiB);
  p.must_alloc(8 * kMiB);
  p.must_alloc(768 * 1024);
  p.must_alloc(256 * 1024);
  EXPECT_EQ(p.count_log("cuMemAlloc_v2 4194304"), 1u) << "denied";
  EXPECT_EQ(p.count_log("cuMemAlloc_v2 5242880"), 1u) << "denied";
  EXPECT_EQ(p.count_log("cuMemAllocManaged 8388608"), 1u) << "above the threshold, not denied";
  EXPECT_EQ(p.count_log("cuMemAllocManaged 786432"), 1u) << "below the threshold but allowed";
  EXPECT_EQ(p.count_log("cuMemAlloc_v2 262144"), 1u) << "below the threshold, not allowed";
}

// Env: defaults.
TEST(StandIn, PassesVmmHostAndIpcThroughUntouched) {
  Program p;
  // Virtual memory management and host allocations: the driver's own functions.
  for (const char* name : {"cuMemCreate", "cuMemMap", "cuMemAddressReserve", "cuMemRelease"})
    EXPECT_EQ(p.raw(name, 12000), dlsym(p.lib, name)) << name;
  EXPECT_EQ(p.raw("cuMemHostAlloc", 12000), dlsym(p.lib, "cuMemHostAlloc"));
  Dl_info info{};
  ASSERT_TRUE(dladdr(p.raw("cuMemAlloc", 12000), &info));
  EXPECT_NE(std::strstr(info.dli_fname, "libkvpager"), nullptr) << "...but cuMemAlloc is ours";
  auto create = reinterpret_cast<PFN_cuMemCreate_v10020>(p.raw("cuMemCreate", 12000));
  CUmemGenericAllocationHandle h = 0;
  CUmemAllocationProp prop{};
  ASSERT_EQ(create(&h, 64 * kMiB, &prop, 0), CUDA_SUCCESS);
  void* host = nullptr;
  auto host_alloc = reinterpret_cast<PFN_cuMemHostAlloc_v2020>(p.raw("cuMemHostAlloc", 12000));
  ASSERT_EQ(host_alloc(&host, 64 * kMiB, 0), CUDA_SUCCESS);
  EXPECT_EQ(p.count_log("cuMemAllocManaged"), 0u);
  // IPC: a device allocation exports; a managed one cannot (the driver says so, we explain).
  auto ipc = reinterpret_cast<PFN_cuIpcGetMemHandle_v4010>(p.raw("cuIpcGetMemHandle", 12000));
  CUipcMemHandle handle{};
  EXPECT_EQ(ipc(&handle, p.must_alloc(1 * kMiB)), CUDA_SUCCESS);
  EXPECT_NE(ipc(&handle, p.must_alloc(4 * kMiB)), CUDA_SUCCESS);
  EXPECT_EQ(stats().num("regions"), 1u);
}

// Env: defaults (cuda.async_alloc = managed).
TEST(StandIn, AsyncAllocationsBecomeManagedAndAreFreedInStreamOrder) {
  Program p;
  CUstream s = nullptr;
  ASSERT_EQ(p.stream_create(&s, 0), CUDA_SUCCESS);
  CUdeviceptr d = 0;
  ASSERT_EQ(p.alloc_async(&d, 8 * kMiB, s), CUDA_SUCCESS);
  EXPECT_EQ(p.count_log("cuMemAllocManaged 8388608"), 1u);
  EXPECT_EQ(stats().num("managed_bytes"), 8 * kMiB);
  ASSERT_EQ(p.free_async(d, s), CUDA_SUCCESS);
  EXPECT_TRUE(eventually([&] { return stats().num("managed_bytes") == 0; })) << "freed once the stream got there";
  EXPECT_EQ(p.count_log("cuMemFree_v2"), 1u);
  // Inside a capture the allocation belongs to the graph: the driver's own.
  ASSERT_EQ(p.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
  ASSERT_EQ(p.alloc_async(&d, 8 * kMiB, s), CUDA_SUCCESS);
  EXPECT_EQ(p.count_log("cuMemAllocAsync 8388608"), 1u);
  CUgraph g = nullptr;
  ASSERT_EQ(p.end_capture(s, &g), CUDA_SUCCESS);
}

// Allocation churn (cuda.async_alloc = managed: every cudaMallocAsync of a
// big tensor): the pager thread remembers when a launch last touched each
// allocation, and forgets it when the allocation is freed, in stream order or
// at once; it once kept every base it ever saw.
// Env: defaults.
TEST(StandIn, FreedAllocationsLeaveNoTouchRecordBehind) {
  Program p;
  CUstream s = nullptr;
  ASSERT_EQ(p.stream_create(&s, 0), CUDA_SUCCESS);
  for (uint32_t i = 0; i < 8; ++i) {
    CUdeviceptr d = 0;
    ASSERT_EQ(p.alloc_async(&d, 4 * kMiB, s), CUDA_SUCCESS);
    ASSERT_TRUE(eventually([] { return stats().num("pager.regions") == 1; }));
    ASSERT_EQ(p.fill(d, 4096, i, s), CUDA_SUCCESS);
    ASSERT_TRUE(eventually([] { return stats().num("touched_allocs") == 1; })) << "the launch was seen, round " << i;
    ASSERT_EQ(p.free_async(d, s), CUDA_SUCCESS);
    ASSERT_TRUE(eventually([] { return stats().num("managed_bytes") == 0; })) << "freed in stream order";
    EXPECT_EQ(stats().num("touched_allocs"), 0u) << "round " << i;
  }
  CUdeviceptr d = p.must_alloc(4 * kMiB);
  ASSERT_TRUE(eventually([] { return stats().num("pager.regions") == 1; }));
  ASSERT_EQ(p.fill(d, 4096, 9), CUDA_SUCCESS);
  ASSERT_TRUE(eventually([] { return stats().num("touched_allocs") == 1; }));
  ASSERT_EQ(p.free(d), CUDA_SUCCESS);
  EXPECT_EQ(stats().num("touched_allocs"), 0u) << "a plain free forgets it too";
}

// Env: KVPAGER_CUDA_ASYNC_ALLOC=passthrough
TEST(StandIn, AsyncAllocationsPassThroughWhenConfigured) {
  Program p;
  CUdeviceptr d = 0;
  ASSERT_EQ(p.alloc_async(&d, 8 * kMiB, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(p.count_log("cuMemAllocAsync 8388608"), 1u);
  EXPECT_EQ(p.count_log("cuMemAllocManaged"), 0u);
}

// Env: KVPAGER_CUDA_VIRTUAL_CAPACITY=64G, CUDA_STANDIN_TOTAL_MEM=8G
TEST(StandIn, MemGetInfoReportsTheVirtualCapacityAndFallsAsTheProgramAllocates) {
  Program p;
  size_t free0 = 0, total = 0;
  ASSERT_EQ(p.get_info(&free0, &total), CUDA_SUCCESS);
  EXPECT_EQ(total, 64ull << 30) << "before the pager started, too";
  EXPECT_EQ(free0, 64ull << 30);
  CUdeviceptr big = p.must_alloc(1024 * kMiB);
  size_t free1 = 0;
  ASSERT_EQ(p.get_info(&free1, &total), CUDA_SUCCESS);
  EXPECT_EQ(total, 64ull << 30);
  EXPECT_EQ(free0 - free1, 1024 * kMiB) << "a managed allocation counts in full";
  CUdeviceptr small = p.must_alloc(1 * kMiB);
  size_t free2 = 0;
  ASSERT_EQ(p.get_info(&free2, &total), CUDA_SUCCESS);
  EXPECT_EQ(free1 - free2, 1 * kMiB) << "so does the driver's own";
  // A managed chunk promoted to HBM is not counted twice.
  ASSERT_EQ(p.fill(big, 1024, 1), CUDA_SUCCESS);
  ASSERT_TRUE(eventually([&] { return stats().num("hbm_committed") > 0; }));
  size_t free3 = 0;
  ASSERT_EQ(p.get_info(&free3, &total), CUDA_SUCCESS);
  EXPECT_EQ(free3, free2);
  ASSERT_EQ(p.free(big), CUDA_SUCCESS);
  ASSERT_EQ(p.free(small), CUDA_SUCCESS);
  size_t free4 = 0;
  ASSERT_EQ(p.get_info(&free4, &total), CUDA_SUCCESS);
  EXPECT_EQ(free4, free0);
}

// Env: KVPAGER_CUDA_MANAGED_LIMIT=64M
TEST(StandIn, TheManagedCeilingFailsAllocationsWithOutOfMemory) {
  Program p;
  CUdeviceptr a = p.must_alloc(32 * kMiB);
  p.must_alloc(24 * kMiB);
  CUdeviceptr c = 0;
  EXPECT_EQ(p.alloc(&c, 16 * kMiB), CUDA_ERROR_OUT_OF_MEMORY) << "32 + 24 + 16 > 64";
  EXPECT_EQ(p.count_log("cuMemAllocManaged 16777216"), 0u) << "refused before asking the driver";
  EXPECT_EQ(p.alloc(&c, 1 * kMiB), CUDA_SUCCESS) << "the driver's own allocations are not capped";
  EXPECT_EQ(stats().num("limit_refusals"), 1u);
  ASSERT_EQ(p.free(a), CUDA_SUCCESS);
  EXPECT_EQ(p.alloc(&c, 16 * kMiB), CUDA_SUCCESS) << "room again";
}

// Env: KVPAGER_HBM_BUDGET=12M (references stage only the chunk they point into).
TEST(StandIn, ScansParameterLayoutsTheDriverDescribes) {
  Program p;
  CUdeviceptr r1 = p.must_alloc(8 * kMiB), r2 = p.must_alloc(8 * kMiB);
  CUdeviceptr passthrough = p.must_alloc(1 * kMiB);
  ASSERT_EQ(kvpager_tag_context(r1, 8 * kMiB, "r1"), KVPAGER_OK);
  ASSERT_EQ(kvpager_tag_context(r2, 8 * kMiB, "r2"), KVPAGER_OK);
  // check_struct(int tag, struct { u32 n; u32 pad; u64 ptr; u64 len; u32 seed; u32 pad; u64 result; }):
  // the pointer sits at byte 16 of the buffer, inside a struct passed by value.
  struct S {
    uint32_t n, pad;
    uint64_t ptr, len;
    uint32_t seed, pad2;
    uint64_t* result;
  };
  uint64_t bad = 0;
  int tag = 7;
  S s{1, 0, r2 + 5 * kMiB, 1024, 3, 0, &bad};
  void* args[] = {&tag, &s};
  ASSERT_EQ(p.fill(r2 + 5 * kMiB, 1024, 3), CUDA_SUCCESS);
  ASSERT_EQ(p.launch(p.kernel("check_struct"), 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(bad, 0u);
  // Values that are not references: one past the end, pass-through memory.
  uint64_t past = r1 + 8 * kMiB + 4096;
  void* a1[] = {&past};
  ASSERT_EQ(p.launch(p.kernel("noop"), 1, 1, 1, 1, 1, 1, 0, nullptr, a1, nullptr), CUDA_SUCCESS);
  void* a2[] = {&passthrough};
  ASSERT_EQ(p.launch(p.kernel("noop"), 1, 1, 1, 1, 1, 1, 0, nullptr, a2, nullptr), CUDA_SUCCESS);
  // The pager saw r2's chunk 2 (5 MiB in) used, and nothing of r1.
  ASSERT_TRUE(eventually([] { return stats().context("r2", "hbm") == 2 * kMiB; })) << stats().context("r2", "hbm");
  EXPECT_EQ(stats().context("r1", "hbm"), 0u);
  EXPECT_GE(stats().num("pager.accesses"), 2u);
  // The same through the `extra` buffer form of the launch.
  struct {
    uint64_t ptr;
  } packed{r1 + 100};
  size_t size = sizeof packed;
  void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, &packed, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
  ASSERT_EQ(p.launch(p.kernel("noop"), 1, 1, 1, 1, 1, 1, 0, nullptr, nullptr, extra), CUDA_SUCCESS);
  EXPECT_TRUE(eventually([] { return stats().context("r1", "hbm") == 2 * kMiB; }));
}

// Launches the stand-in's "wide" kernel with these pointer arguments (up to
// 20; the rest are 0, pointing nowhere).
CUresult launch_wide(Program& p, const std::vector<CUdeviceptr>& ptrs) {
  std::vector<CUdeviceptr> words(20, 0);
  std::copy(ptrs.begin(), ptrs.end(), words.begin());
  void* args[20];
  for (size_t i = 0; i < 20; ++i) args[i] = &words[i];
  return p.launch(p.kernel("wide"), 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr);
}

// A wide kernel (q, k and v slices of one tensor, two chunks of a pool,
// thirteen small regions: scales, tables) in one launch. Every region it
// points into is in use: the pager must bring each into HBM (whole, or the
// chunks named for the pool, which counts chunk by chunk), demoting the
// region nothing references to make room. The event holds 16 entries: the
// 18 pointers fit only if the slices of the tensor share one (they once took
// one each, and the small regions past the last entry looked idle).
// Env: KVPAGER_HBM_BUDGET=48M (references stage up to 45.6M; regions up to 22M count whole)
TEST(StandIn, EveryRegionAWideKernelPointsIntoIsUsed) {
  Program p;
  CUdeviceptr cold = p.must_alloc(12 * kMiB);
  ASSERT_EQ(kvpager_tag_context(cold, 12 * kMiB, "cold"), KVPAGER_OK);
  ASSERT_EQ(p.fill(cold, 12 * kMiB, 1), CUDA_SUCCESS);
  ASSERT_TRUE(eventually([] { return stats().context("cold", "hbm") == 12 * kMiB; })) << "the fill was seen";
  CUdeviceptr qkv = p.must_alloc(6 * kMiB), pool = p.must_alloc(24 * kMiB);
  ASSERT_EQ(kvpager_tag_context(qkv, 6 * kMiB, "qkv"), KVPAGER_OK);
  ASSERT_EQ(kvpager_tag_context(pool, 24 * kMiB, "pool"), KVPAGER_OK);
  std::vector<CUdeviceptr> args = {qkv, qkv + 2 * kMiB, qkv + 4 * kMiB, pool + 2 * kMiB + 4096, pool + 10 * kMiB};
  constexpr int kSmall = 13;
  for (int i = 0; i < kSmall; ++i) {
    CUdeviceptr r = p.must_alloc(2 * kMiB);
    ASSERT_EQ(kvpager_tag_context(r, 2 * kMiB, ("r" + std::to_string(i)).c_str()), KVPAGER_OK);
    args.push_back(r + 512);
  }
  ASSERT_EQ(launch_wide(p, args), CUDA_SUCCESS);
  auto all_in = [] {
    const Stats st = stats();
    bool in = st.context("qkv", "hbm") == 6 * kMiB && st.context("pool", "hbm") == 4 * kMiB;
    for (int i = 0; i < kSmall; ++i) in = in && st.context("r" + std::to_string(i), "hbm") == 2 * kMiB;
    return in;
  };
  EXPECT_TRUE(eventually(all_in)) << [] {
    std::string out;
    for (const auto& [k, v] : stats().kv)
      if (k.rfind("context.", 0) == 0) out += k + " " + v + "\n";
    return out;
  }();
  EXPECT_LT(stats().context("cold", "hbm"), 12 * kMiB) << "HBM had no room for all: the unreferenced region gave way";
  EXPECT_EQ(stats().num("refs_dropped"), 0u);
}

// More regions than a launch event holds (16): the launch posts a second
// event and the pager sees every one of them (a region left out would look
// idle and be demoted, then spilled, while the kernel keeps reading it).
// Slices of a region that counts whole take no entries of their own.
// Env: defaults.
TEST(StandIn, ALaunchNamingMoreRegionsThanOneEventHoldsReferencesEveryOne) {
  Program p;
  std::vector<CUdeviceptr> regions;
  for (int i = 0; i < 18; ++i) regions.push_back(p.must_alloc(4 * kMiB));
  std::vector<CUdeviceptr> args = {regions[0], regions[0] + 3 * kMiB};  // two slices (chunks) of one
  args.insert(args.end(), regions.begin() + 1, regions.end());
  ASSERT_EQ(args.size(), 19u);
  ASSERT_TRUE(eventually([] { return stats().num("pager.regions") == 18; }));
  const uint64_t before = stats().num("pager.accesses");
  ASSERT_EQ(launch_wide(p, args), CUDA_SUCCESS);
  EXPECT_TRUE(eventually([&] { return stats().num("pager.accesses") == before + 18; }))
      << "one reference per region: " << stats().num("pager.accesses") - before;
  EXPECT_EQ(stats().num("refs_dropped"), 0u);
}

// Spills context `name` (parked) and waits until it is all in the store.
// Launch events reach the pager thread a little later: one that arrives after
// the park counts as a use of the context (it is no longer idle, and its
// chunk may be promoted), so park again until it has all gone.
void park_until_spilled(Program& p, const char* name, uint64_t size) {
  bool spilled = false;
  for (int attempt = 0; attempt < 10 && !spilled; ++attempt) {
    ASSERT_EQ(kvpager_park_context(name), KVPAGER_OK);
    spilled = eventually([&] { return stats().context(name, "nvme") == size; }, 1.0);
  }
  ASSERT_TRUE(spilled) << "nvme=" << stats().context(name, "nvme") << " host=" << stats().context(name, "host")
                       << " hbm=" << stats().context(name, "hbm");
  EXPECT_GT(p.count_log("cuMemDiscardBatchAsync"), 0u);
}

// An 8 MiB region, context "ctx", filled with pattern `seed` by a kernel and
// then parked until all of it is in the store.
CUdeviceptr spilled_region(Program& p, uint32_t seed) {
  CUdeviceptr r = p.must_alloc(8 * kMiB);
  EXPECT_EQ(kvpager_tag_context(r, 8 * kMiB, "ctx"), KVPAGER_OK);
  EXPECT_EQ(p.fill(r, 8 * kMiB, seed), CUDA_SUCCESS);
  park_until_spilled(p, "ctx", 8 * kMiB);
  return r;
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, RestoresASpilledRegionBeforeALaunchReadsIt) {
  Program p;
  CUdeviceptr r = spilled_region(p, 5);
  ASSERT_FALSE(::testing::Test::HasFailure());
  EXPECT_GT(Program::host_mismatches(r, 8 * kMiB, 5), 0u) << "discarded: what is there now is garbage";
  p.clear_log();
  // A kernel reads it (its argument points right into the parked context).
  EXPECT_EQ(p.check(r, 8 * kMiB, 5), 0u) << "every byte the kernel read was restored";
  long launch = p.find_log("cuLaunchKernel check");
  long first_copy = p.find_log("cuMemcpyHtoDAsync_v2");
  ASSERT_GE(launch, 0);
  ASSERT_GE(first_copy, 0);
  EXPECT_LT(first_copy, launch) << "restored before the launch was issued";
  EXPECT_EQ(p.count_log("cuMemcpyHtoDAsync_v2"), 4u) << "four chunks";
  EXPECT_EQ(stats().num("unsafe_chunks"), 0u);
  EXPECT_GE(stats().num("restores"), 1u);
  // The four chunks were submitted to the store's queue before any of them
  // was reaped (store_peak counts submitted-not-reaped: that they were on the
  // device together is the store's business, not something this can see).
  EXPECT_GE(stats().num("mover.store_peak"), 2u);
}

// A restored chunk keeps its store copy (a later spill of it is only a
// discard while it is unchanged). A kernel or a copy writes wherever it
// likes in the allocation its argument points into, not only the chunk the
// pointer falls in: every chunk of it must count as written, or the next
// spill keeps the stale store copy and the write is lost.
// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, WritesAfterARestoreSurviveTheNextSpill) {
  Program p;
  CUdeviceptr r = spilled_region(p, 5);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_EQ(p.fill(r, 8 * kMiB, 6), CUDA_SUCCESS);  // restored first, then every byte rewritten
  park_until_spilled(p, "ctx", 8 * kMiB);
  ASSERT_FALSE(::testing::Test::HasFailure());
  EXPECT_EQ(p.check(r, 8 * kMiB, 6), 0u) << "the second spill kept the first one's bytes";
  // The same through a copy: 8 MiB from the host, one call, its destination
  // the allocation's first byte.
  std::vector<uint8_t> host(8 * kMiB);
  for (size_t i = 0; i < host.size(); ++i) host[i] = standin_pattern(i, 7);
  ASSERT_EQ(p.htod(r, host.data(), host.size()), CUDA_SUCCESS);
  park_until_spilled(p, "ctx", 8 * kMiB);
  ASSERT_FALSE(::testing::Test::HasFailure());
  EXPECT_EQ(p.check(r, 8 * kMiB, 7), 0u) << "the spill after the copy kept older bytes";
}


// A serving loop that knows nothing of kvpager: weights read on every step,
// four sessions served in turn, HBM for the weights and about two sessions.
// Each launch names a region by its first byte only; the whole region must
// count as used (or the weights' other chunks look coldest and go first) and
// the session being served must come into HBM whole (before, HBM kept
// whatever got there first and the served session stayed in host RAM).
// Env: KVPAGER_HBM_BUDGET=32M
TEST(StandIn, AServingLoopKeepsTheWeightsAndTheServedSessionInHbm) {
  Program p;
  constexpr uint64_t kSize = 8 * kMiB;
  CUdeviceptr w = p.must_alloc(kSize);
  ASSERT_EQ(kvpager_tag_context(w, kSize, "w"), KVPAGER_OK);
  ASSERT_EQ(p.fill(w, kSize, 1), CUDA_SUCCESS);
  std::vector<CUdeviceptr> sess;
  for (uint32_t i = 0; i < 4; ++i) {
    sess.push_back(p.must_alloc(kSize));
    ASSERT_EQ(kvpager_tag_context(sess.back(), kSize, ("s" + std::to_string(i)).c_str()), KVPAGER_OK);
    ASSERT_EQ(p.fill(sess.back(), kSize, 10 + i), CUDA_SUCCESS);
  }
  for (uint32_t turn = 0; turn < 8; ++turn) {
    const uint32_t s = turn % 4;
    const std::string name = "s" + std::to_string(s);
    for (int step = 0; step < 5; ++step) {
      ASSERT_EQ(p.check(w, kSize, 1), 0u);
      ASSERT_EQ(p.check(sess[s], kSize, 10 + s), 0u);
    }
    EXPECT_TRUE(eventually([&] {
      const Stats st = stats();
      return st.context("w", "hbm") == kSize && st.context(name, "hbm") == kSize;
    })) << "turn " << turn << ": weights " << (stats().context("w", "hbm") >> 20) << " MiB, " << name << " "
        << (stats().context(name, "hbm") >> 20) << " MiB in HBM";
  }
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, RestoresBeforeCopiesAndMemsetsTouchASpilledRegion) {
  Program p;
  CUdeviceptr r = spilled_region(p, 9);
  ASSERT_FALSE(::testing::Test::HasFailure());
  // A copy to the host reads it.
  std::vector<uint8_t> host(1 * kMiB);
  ASSERT_EQ(p.dtoh(host.data(), r + 3 * kMiB, host.size()), CUDA_SUCCESS);
  for (size_t i = 0; i < host.size(); ++i) ASSERT_EQ(host[i], standin_pattern(3 * kMiB + i, 9)) << i;
  park_until_spilled(p, "ctx", 8 * kMiB);
  // A memset of part of a chunk: the rest of the chunk must survive it.
  ASSERT_EQ(p.memset8(r + 2 * kMiB, 0x11, 4096), CUDA_SUCCESS);
  EXPECT_TRUE(eventually([] { return stats().num("unsafe_chunks") == 0; }));
  auto* b = reinterpret_cast<const uint8_t*>(r);
  for (uint64_t i = 2 * kMiB; i < 2 * kMiB + 4096; ++i) ASSERT_EQ(b[i], 0x11);
  for (uint64_t i = 2 * kMiB + 4096; i < 4 * kMiB; ++i) ASSERT_EQ(b[i], standin_pattern(i, 9)) << i;
  // A copy from the host into it: restored first too, then overwritten.
  park_until_spilled(p, "ctx", 8 * kMiB);
  std::vector<uint8_t> ones(4096, 1);
  ASSERT_EQ(p.htod(r + 6 * kMiB, ones.data(), ones.size()), CUDA_SUCCESS);
  for (uint64_t i = 6 * kMiB + 4096; i < 8 * kMiB; ++i) ASSERT_EQ(b[i], standin_pattern(i, 9)) << i;
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=50ms, KVPAGER_HBM_BUDGET=12M
TEST(StandIn, AnIdleRegionSpillsAndTheNextLaunchRestoresIt) {
  Program p;
  CUdeviceptr r = p.must_alloc(8 * kMiB);
  ASSERT_EQ(p.fill(r, 8 * kMiB, 2), CUDA_SUCCESS);
  // No hint: idle long enough, what is in host RAM spills (the chunk the
  // launch touched was promoted to HBM and stays there).
  ASSERT_TRUE(eventually([] { return stats().num("unsafe_chunks") >= 3; })) << stats().num("unsafe_chunks");
  // Marked unsafe first, discarded once the bytes are in the store: wait for
  // the discard (the stand-in leaves garbage where a discarded range was).
  EXPECT_TRUE(eventually([&] { return Program::host_mismatches(r, 8 * kMiB, 2) > 0; }));
  EXPECT_EQ(p.check(r, 8 * kMiB, 2), 0u);
  EXPECT_GE(stats().num("restores"), 1u);  // (it may well have spilled again since: 50 ms idle)
}

// A managed allocation of `size` bytes tagged as context `name`, filled by a
// kernel with pattern `seed`.
CUdeviceptr filled_context(Program& p, uint64_t size, const char* name, uint32_t seed) {
  CUdeviceptr r = p.must_alloc(size);
  EXPECT_EQ(kvpager_tag_context(r, size, name), KVPAGER_OK);
  EXPECT_EQ(p.fill(r, size, seed), CUDA_SUCCESS);
  return r;
}

// The graph entry points the graph scenarios use, through cuGetProcAddress.
struct GraphApi {
  PFN_cuGraphCreate_v10000 create = nullptr;
  PFN_cuGraphAddKernelNode_v12000 add_kernel = nullptr;
  PFN_cuGraphInstantiateWithFlags_v11040 instantiate = nullptr;
  PFN_cuGraphLaunch_v10000 launch = nullptr;
  PFN_cuGraphAddMemcpyNode_v10000 add_memcpy = nullptr;
  PFN_cuGraphAddMemsetNode_v10000 add_memset = nullptr;
  PFN_cuGraphAddChildGraphNode_v10000 add_child = nullptr;
  // Changes to an executable.
  PFN_cuGraphExecUpdate_v12000 update = nullptr;
  PFN_cuGraphExecKernelNodeSetParams_v12000 set_kernel = nullptr;
  PFN_cuGraphExecMemcpyNodeSetParams_v10020 set_memcpy = nullptr;
  PFN_cuGraphExecMemsetNodeSetParams_v10020 set_memset = nullptr;
  PFN_cuGraphExecChildGraphNodeSetParams_v11010 set_child = nullptr;
  PFN_cuGraphExecNodeSetParams_v12020 set_node = nullptr;
  explicit GraphApi(Program& p) {
    p.get(create, "cuGraphCreate", 10000);
    p.get(add_kernel, "cuGraphAddKernelNode", 12000);
    p.get(instantiate, "cuGraphInstantiateWithFlags", 11040);
    p.get(launch, "cuGraphLaunch", 10000);
    p.get(add_memcpy, "cuGraphAddMemcpyNode", 10000);
    p.get(add_memset, "cuGraphAddMemsetNode", 10000);
    p.get(add_child, "cuGraphAddChildGraphNode", 10000);
    p.get(update, "cuGraphExecUpdate", 12000);
    p.get(set_kernel, "cuGraphExecKernelNodeSetParams", 12000);
    p.get(set_memcpy, "cuGraphExecMemcpyNodeSetParams", 10020);
    p.get(set_memset, "cuGraphExecMemsetNodeSetParams", 10020);
    p.get(set_child, "cuGraphExecChildGraphNodeSetParams", 11010);
    p.get(set_node, "cuGraphExecNodeSetParams", 12020);
  }
  // A new graph of one node running `func` on `args` (the node copies them).
  CUgraph one_kernel(CUfunction func, void** args, CUgraphNode* node) const {
    CUgraph g = nullptr;
    EXPECT_EQ(create(&g, 0), CUDA_SUCCESS);
    CUDA_KERNEL_NODE_PARAMS kp{};
    kp.func = func;
    kp.kernelParams = args;
    EXPECT_EQ(add_kernel(node, g, nullptr, 0, &kp), CUDA_SUCCESS);
    return g;
  }
};

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, AGraphLaunchRestoresWhatItsNodesRead) {
  Program p;
  CUdeviceptr r = p.must_alloc(8 * kMiB);
  ASSERT_EQ(kvpager_tag_context(r, 8 * kMiB, "ctx"), KVPAGER_OK);
  ASSERT_EQ(p.fill(r, 8 * kMiB, 4), CUDA_SUCCESS);
  GraphApi api(p);
  CUgraph g = nullptr;
  ASSERT_EQ(api.create(&g, 0), CUDA_SUCCESS);
  uint64_t bad = UINT64_MAX;
  uint64_t* out = &bad;
  uint64_t len = 8 * kMiB;
  uint32_t seed = 4;
  void* args[] = {&r, &len, &seed, &out};
  CUDA_KERNEL_NODE_PARAMS kp{};
  kp.func = p.kernel("check");
  kp.kernelParams = args;
  CUgraphNode node = nullptr;
  ASSERT_EQ(api.add_kernel(&node, g, nullptr, 0, &kp), CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  ASSERT_EQ(api.instantiate(&exec, g, 0), CUDA_SUCCESS);
  park_until_spilled(p, "ctx", 8 * kMiB);
  p.clear_log();
  ASSERT_EQ(api.launch(exec, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(bad, 0u);
  EXPECT_LT(p.find_log("cuMemcpyHtoDAsync_v2"), p.find_log("cuGraphLaunch"));
  EXPECT_EQ(stats().num("launches_unscannable"), 0u) << "its nodes were scanned at instantiation";

  // A graph with a node we cannot look into reads everything.
  PFN_cuGraphAddBatchMemOpNode_v11070 add_memop;
  p.get(add_memop, "cuGraphAddBatchMemOpNode", 11070);
  CUgraph g2 = nullptr;
  ASSERT_EQ(api.create(&g2, 0), CUDA_SUCCESS);
  CUDA_BATCH_MEM_OP_NODE_PARAMS mp{};
  ASSERT_EQ(add_memop(&node, g2, nullptr, 0, &mp), CUDA_SUCCESS);
  CUgraphExec exec2 = nullptr;
  ASSERT_EQ(api.instantiate(&exec2, g2, 0), CUDA_SUCCESS);
  park_until_spilled(p, "ctx", 8 * kMiB);
  ASSERT_EQ(api.launch(exec2, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(stats().num("unsafe_chunks"), 0u);
  EXPECT_EQ(Program::host_mismatches(r, 8 * kMiB, 4), 0u);
  EXPECT_EQ(stats().num("launches_unscannable"), 1u);
}

// Chunks of 64K: two contexts of one pool lie within 2 MiB of each other. A
// graph whose nodes point right into both must restore both, also the parked
// one (its references were once merged by 2 MiB window: the second was lost).
// Env: KVPAGER_CHUNK_SIZE=64K, KVPAGER_HOST_CAPACITY=64K, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, AGraphPointingIntoTwoNeighbouringContextsRestoresBoth) {
  Program p;
  CUdeviceptr r = p.must_alloc(2 * kMiB);
  constexpr uint64_t k64 = 64 * 1024;
  ASSERT_EQ(kvpager_tag_context(r, k64, "a"), KVPAGER_OK);
  ASSERT_EQ(kvpager_tag_context(r + k64, k64, "b"), KVPAGER_OK);
  ASSERT_EQ(p.fill(r, k64, 4), CUDA_SUCCESS);
  ASSERT_EQ(p.fill(r + k64, k64, 5), CUDA_SUCCESS);
  GraphApi api(p);
  CUgraph g = nullptr;
  ASSERT_EQ(api.create(&g, 0), CUDA_SUCCESS);
  uint64_t bad_a = UINT64_MAX, bad_b = UINT64_MAX;
  uint64_t *out_a = &bad_a, *out_b = &bad_b;
  uint64_t len = k64;
  uint32_t seed_a = 4, seed_b = 5;
  CUdeviceptr ptr_b = r + k64;
  void* args_a[] = {&r, &len, &seed_a, &out_a};
  void* args_b[] = {&ptr_b, &len, &seed_b, &out_b};
  CUDA_KERNEL_NODE_PARAMS kp{};
  kp.func = p.kernel("check");
  CUgraphNode node = nullptr;
  kp.kernelParams = args_a;
  ASSERT_EQ(api.add_kernel(&node, g, nullptr, 0, &kp), CUDA_SUCCESS);
  kp.kernelParams = args_b;
  ASSERT_EQ(api.add_kernel(&node, g, nullptr, 0, &kp), CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  ASSERT_EQ(api.instantiate(&exec, g, 0), CUDA_SUCCESS);
  park_until_spilled(p, "b", k64);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_EQ(api.launch(exec, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(bad_a, 0u);
  EXPECT_EQ(bad_b, 0u) << "the parked context the second node points into was not restored";
}

// cuGraphExecUpdate gives an executable another graph's parameters: its
// launches must be scanned for those (a restore of what they read, and
// references the pager sees), not counted as unscannable from then on.
// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, AnUpdatedGraphIsScannedForItsNewParameters) {
  Program p;
  CUdeviceptr r1 = filled_context(p, 8 * kMiB, "one", 6), r2 = filled_context(p, 8 * kMiB, "two", 7);
  ASSERT_FALSE(::testing::Test::HasFailure());
  GraphApi api(p);
  uint64_t bad = UINT64_MAX;
  uint64_t* out = &bad;
  uint64_t len = 8 * kMiB;
  uint32_t seed1 = 6, seed2 = 7;
  auto graph_checking = [&](CUdeviceptr& ptr, uint32_t& seed) {
    void* args[] = {&ptr, &len, &seed, &out};
    CUgraphNode node = nullptr;
    return api.one_kernel(p.kernel("check"), args, &node);
  };
  CUgraph g1 = graph_checking(r1, seed1), g2 = graph_checking(r2, seed2);
  CUgraphExec exec = nullptr;
  ASSERT_EQ(api.instantiate(&exec, g1, 0), CUDA_SUCCESS);
  CUgraphExecUpdateResultInfo info{};
  ASSERT_EQ(api.update(exec, g2, &info), CUDA_SUCCESS);  // now it checks r2
  park_until_spilled(p, "two", 8 * kMiB);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_EQ(api.launch(exec, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(bad, 0u) << "r2 was read spilled";
  EXPECT_EQ(stats().num("launches_unscannable"), 0u) << "the update's parameters were scanned";
  EXPECT_EQ(stats().context("one", "nvme"), 0u);
}

std::vector<std::byte> pattern(uint64_t len, uint32_t seed);  // below

// Contexts "one" (8 MiB, pattern 6), "two" (8 MiB, 7) and "three" (4 MiB, 8).
std::array<CUdeviceptr, 3> three_contexts(Program& p) {
  return {filled_context(p, 8 * kMiB, "one", 6), filled_context(p, 8 * kMiB, "two", 7),
          filled_context(p, 4 * kMiB, "three", 8)};
}

// Parks "one" (8 MiB), "two" (8 MiB) and "three" (4 MiB) and waits until all
// of them are in the store.
void park_three_until_spilled() {
  for (const char* name : {"one", "two", "three"}) ASSERT_EQ(kvpager_park_context(name), KVPAGER_OK);
  ASSERT_TRUE(eventually([] {
    const Stats st = stats();
    return st.context("one", "nvme") == 8 * kMiB && st.context("two", "nvme") == 8 * kMiB &&
           st.context("three", "nvme") == 4 * kMiB;
  })) << "all three spilled";
}

// A 1D copy of n bytes from managed memory into host memory.
CUDA_MEMCPY3D copy_to_host(CUdeviceptr src, void* dst, uint64_t n) {
  CUDA_MEMCPY3D c{};
  c.srcMemoryType = CU_MEMORYTYPE_DEVICE;
  c.srcDevice = src;
  c.dstMemoryType = CU_MEMORYTYPE_HOST;
  c.dstHost = dst;
  c.WidthInBytes = n;
  c.Height = 1;
  c.Depth = 1;
  return c;
}

bool holds_pattern(const std::vector<std::byte>& got, uint32_t seed) { return got == pattern(got.size(), seed); }

// cuGraphExecKernelNodeSetParams gives one kernel node of an executable new
// parameters: its launches must be scanned for those (the new context
// restored before it is read, the one the node no longer reads left in the
// store), not counted as unscannable and restoring everything from then on.
// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, AKernelNodeGivenNewParametersIsScannedForThem) {
  Program p;
  auto [r1, r2, r3] = three_contexts(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  GraphApi api(p);
  uint64_t bad = UINT64_MAX, bad3 = UINT64_MAX;
  uint64_t *out = &bad, *out3 = &bad3;
  uint64_t len = 8 * kMiB, len3 = 4 * kMiB;
  uint32_t seed1 = 6, seed2 = 7, seed3 = 8;
  CUgraph g = nullptr;
  ASSERT_EQ(api.create(&g, 0), CUDA_SUCCESS);
  CUDA_KERNEL_NODE_PARAMS kp{};
  kp.func = p.kernel("check");
  void* args1[] = {&r1, &len, &seed1, &out};
  kp.kernelParams = args1;
  CUgraphNode node = nullptr, other = nullptr;
  ASSERT_EQ(api.add_kernel(&node, g, nullptr, 0, &kp), CUDA_SUCCESS);
  void* args3[] = {&r3, &len3, &seed3, &out3};  // a second node, unchanged
  kp.kernelParams = args3;
  ASSERT_EQ(api.add_kernel(&other, g, nullptr, 0, &kp), CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  ASSERT_EQ(api.instantiate(&exec, g, 0), CUDA_SUCCESS);
  void* args2[] = {&r2, &len, &seed2, &out};
  kp.kernelParams = args2;
  ASSERT_EQ(api.set_kernel(exec, node, &kp), CUDA_SUCCESS);  // the node now checks r2
  park_three_until_spilled();
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_EQ(api.launch(exec, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(bad, 0u) << "r2 was read spilled";
  EXPECT_EQ(bad3, 0u) << "the unchanged node's r3 was read spilled";
  EXPECT_EQ(stats().num("launches_unscannable"), 0u) << "the new parameters were scanned";
  EXPECT_EQ(stats().context("one", "nvme"), 8 * kMiB) << "what the node no longer reads stays in the store";
}

// A program built against cudart 11 asks for the CUDA 11 forms of
// cuGraphExecKernelNodeSetParams (10010) and cuGraphExecUpdate (10020): its
// changes must be scanned as the CUDA 12 forms' are, or its launches restore
// what the graph read before and read the new data spilled.
// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, GraphChangesThroughTheCuda11EntryPointsAreScannedToo) {
  Program p;
  auto [r1, r2, r3] = three_contexts(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  GraphApi api(p);
  PFN_cuGraphExecKernelNodeSetParams_v10010 set_kernel_v1 = nullptr;
  PFN_cuGraphExecUpdate_v10020 update_v1 = nullptr;
  p.get(set_kernel_v1, "cuGraphExecKernelNodeSetParams", 11080);
  p.get(update_v1, "cuGraphExecUpdate", 11080);
  ASSERT_TRUE(set_kernel_v1 && update_v1);
  uint64_t bad_a = UINT64_MAX, bad_b = UINT64_MAX;
  uint64_t *out_a = &bad_a, *out_b = &bad_b;
  uint64_t len = 4 * kMiB;
  uint32_t seed1 = 6, seed2 = 7, seed3 = 8;
  // A graph of one node checking the first 4 MiB of `ptr` against `seed`.
  auto checking = [&](CUdeviceptr& ptr, uint32_t& seed, uint64_t*& out, CUgraphNode* node) {
    void* args[] = {&ptr, &len, &seed, &out};
    return api.one_kernel(p.kernel("check"), args, node);
  };
  CUgraphNode node_a = nullptr, unused = nullptr;
  CUgraphExec exec_a = nullptr, exec_b = nullptr;
  ASSERT_EQ(api.instantiate(&exec_a, checking(r1, seed1, out_a, &node_a), 0), CUDA_SUCCESS);
  ASSERT_EQ(api.instantiate(&exec_b, checking(r1, seed1, out_b, &unused), 0), CUDA_SUCCESS);
  void* args2[] = {&r2, &len, &seed2, &out_a};
  CUDA_KERNEL_NODE_PARAMS_v1 kp1{};
  kp1.func = p.kernel("check");
  kp1.kernelParams = args2;
  ASSERT_EQ(set_kernel_v1(exec_a, node_a, &kp1), CUDA_SUCCESS);  // exec_a now checks r2
  CUgraphNode error_node = nullptr;
  CUgraphExecUpdateResult result{};
  ASSERT_EQ(update_v1(exec_b, checking(r3, seed3, out_b, &unused), &error_node, &result), CUDA_SUCCESS);  // r3
  park_three_until_spilled();
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_EQ(api.launch(exec_a, nullptr), CUDA_SUCCESS);
  ASSERT_EQ(api.launch(exec_b, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(bad_a, 0u) << "r2 was read spilled after the CUDA 11 kernel node change";
  EXPECT_EQ(bad_b, 0u) << "r3 was read spilled after the CUDA 11 update";
  EXPECT_EQ(stats().num("launches_unscannable"), 0u) << "the changes were scanned";
  EXPECT_EQ(stats().context("one", "nvme"), 8 * kMiB) << "what the graphs no longer read stays in the store";
}

// A kernel node the GPU may give new parameters itself (device-updatable,
// CUDA 12.4): no host call tells us what it reads next, so its graph's
// launches read everything -- every spilled context is restored first.
// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, AGraphWithADeviceUpdatableKernelNodeRestoresEverythingBeforeItsLaunch) {
  Program p;
  auto [r1, r2, r3] = three_contexts(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  GraphApi api(p);
  PFN_cuGraphKernelNodeSetAttribute_v11000 set_attribute = nullptr;
  p.get(set_attribute, "cuGraphKernelNodeSetAttribute", 11000);
  ASSERT_TRUE(set_attribute);
  uint64_t bad = UINT64_MAX;
  uint64_t* out = &bad;
  uint64_t len = 8 * kMiB;
  uint32_t seed = 6;
  void* args[] = {&r1, &len, &seed, &out};
  CUgraphNode node = nullptr;
  CUgraph g = api.one_kernel(p.kernel("check"), args, &node);
  ASSERT_FALSE(::testing::Test::HasFailure());
  CUkernelNodeAttrValue v{};
  v.deviceUpdatableKernelNode.deviceUpdatable = 1;
  ASSERT_EQ(set_attribute(node, CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE, &v), CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  ASSERT_EQ(api.instantiate(&exec, g, 0), CUDA_SUCCESS);
  park_three_until_spilled();
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_EQ(api.launch(exec, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(stats().num("unsafe_chunks"), 0u) << "every spilled context was restored: the node may read any";
  EXPECT_GE(stats().num("launches_unscannable"), 1u);
  EXPECT_EQ(Program::host_mismatches(r2, 8 * kMiB, 7) + Program::host_mismatches(r3, 4 * kMiB, 8), 0u);
}

std::string run_kvpager(const std::vector<std::string>& args, int* status);  // below

// A graph naming more chunks than an operation's events hold (16 x 16): the
// rest are counted, not lost silently, and `kvpager status` says so in words.
// Env: KVPAGER_CHUNK_SIZE=64K, KVPAGER_HBM_BUDGET=4M (regions above 1.875M count chunk by chunk),
//      STANDIN_KVPAGER_BIN, KVPAGER_RUNTIME_DIR (private)
TEST(StandIn, AGraphNamingTooManyChunksCountsTheRestAndStatusSaysSo) {
  Program p;
  CUdeviceptr r = p.must_alloc(32 * kMiB);  // 512 chunks
  GraphApi api(p);
  CUgraph g = nullptr;
  ASSERT_EQ(api.create(&g, 0), CUDA_SUCCESS);
  constexpr uint64_t kNodes = 300, kChunk = 64 * 1024;
  for (uint64_t i = 0; i < kNodes; ++i) {
    CUDA_MEMSET_NODE_PARAMS m{};
    m.dst = r + i * kChunk;
    m.elementSize = 1;
    m.width = 8;
    m.height = 1;
    CUgraphNode node = nullptr;
    ASSERT_EQ(api.add_memset(&node, g, nullptr, 0, &m, nullptr), CUDA_SUCCESS);
  }
  CUgraphExec exec = nullptr;
  ASSERT_EQ(api.instantiate(&exec, g, 0), CUDA_SUCCESS);
  ASSERT_TRUE(eventually([] { return stats().num("pager.regions") == 1; }));
  const uint64_t before = stats().num("pager.accesses");
  ASSERT_EQ(api.launch(exec, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(stats().num("refs_dropped"), kNodes - 256) << "16 events of 16";
  EXPECT_TRUE(eventually([&] { return stats().num("pager.accesses") == before + 256; }))
      << stats().num("pager.accesses") - before;
  int status = -1;
  std::string shown;
  EXPECT_TRUE(eventually([&] {
    shown = run_kvpager({"status", "--pid", std::to_string(getpid())}, &status);
    return status == 0 && shown.find("warning: 44 references did not fit in their launch's events") != std::string::npos;
  })) << shown;
}

// Copy and memset nodes of an executable given new parameters: the launch
// restores what they touch now (and not what they touched before), rather
// than counting the graph unscannable and restoring everything.
// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, CopyAndMemsetNodesGivenNewParametersAreScannedForThem) {
  Program p;
  auto [r1, r2, r3] = three_contexts(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  GraphApi api(p);
  std::vector<std::byte> got(2 * kMiB);
  CUgraph g = nullptr;
  ASSERT_EQ(api.create(&g, 0), CUDA_SUCCESS);
  CUgraphNode copy = nullptr, set = nullptr;
  CUDA_MEMCPY3D c = copy_to_host(r1, got.data(), got.size());
  ASSERT_EQ(api.add_memcpy(&copy, g, nullptr, 0, &c, nullptr), CUDA_SUCCESS);
  CUDA_MEMSET_NODE_PARAMS m{};
  m.dst = r1 + 4 * kMiB;
  m.value = 0xAB;
  m.elementSize = 1;
  m.width = 2 * kMiB;
  m.height = 1;
  ASSERT_EQ(api.add_memset(&set, g, nullptr, 0, &m, nullptr), CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  ASSERT_EQ(api.instantiate(&exec, g, 0), CUDA_SUCCESS);
  c.srcDevice = r2;  // the copy now reads "two"
  ASSERT_EQ(api.set_memcpy(exec, copy, &c, nullptr), CUDA_SUCCESS);
  m.dst = r3 + 1 * kMiB;  // the memset now writes into "three"
  ASSERT_EQ(api.set_memset(exec, set, &m, nullptr), CUDA_SUCCESS);
  park_three_until_spilled();
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_EQ(api.launch(exec, nullptr), CUDA_SUCCESS);
  EXPECT_TRUE(holds_pattern(got, 7)) << "the copy read \"two\" spilled";
  EXPECT_EQ(Program::host_mismatches(r3, 1 * kMiB, 8), 0u) << "the bytes of \"three\" around the memset survive";
  const auto* set_bytes = reinterpret_cast<const unsigned char*>(r3 + 1 * kMiB);
  EXPECT_TRUE(std::all_of(set_bytes, set_bytes + 2 * kMiB, [](unsigned char b) { return b == 0xAB; }));
  EXPECT_EQ(stats().num("launches_unscannable"), 0u) << "the new parameters were scanned";
  EXPECT_EQ(stats().context("one", "nvme"), 8 * kMiB) << "what the nodes no longer touch stays in the store";
}

// A child graph node given another graph, and a node changed through the
// generic cuGraphExecNodeSetParams: both are scanned for what they touch now.
// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, AChildGraphAndANodeChangedByTheGenericCallAreScannedForTheirNewParameters) {
  Program p;
  auto [r1, r2, r3] = three_contexts(p);
  ASSERT_FALSE(::testing::Test::HasFailure());
  GraphApi api(p);
  std::vector<std::byte> from_child(2 * kMiB), from_node(2 * kMiB);
  auto copying = [&](CUdeviceptr src) {  // a graph of one copy into from_child
    CUgraph g = nullptr;
    EXPECT_EQ(api.create(&g, 0), CUDA_SUCCESS);
    CUgraphNode n = nullptr;
    CUDA_MEMCPY3D c = copy_to_host(src, from_child.data(), from_child.size());
    EXPECT_EQ(api.add_memcpy(&n, g, nullptr, 0, &c, nullptr), CUDA_SUCCESS);
    return g;
  };
  CUgraph child1 = copying(r1), child2 = copying(r2 + 2 * kMiB);
  CUgraph g = nullptr;
  ASSERT_EQ(api.create(&g, 0), CUDA_SUCCESS);
  CUgraphNode child = nullptr, copy = nullptr;
  ASSERT_EQ(api.add_child(&child, g, nullptr, 0, child1), CUDA_SUCCESS);
  CUDA_MEMCPY3D c = copy_to_host(r1 + 2 * kMiB, from_node.data(), from_node.size());
  ASSERT_EQ(api.add_memcpy(&copy, g, nullptr, 0, &c, nullptr), CUDA_SUCCESS);
  CUgraphExec exec = nullptr;
  ASSERT_EQ(api.instantiate(&exec, g, 0), CUDA_SUCCESS);
  ASSERT_EQ(api.set_child(exec, child, child2), CUDA_SUCCESS);  // the child now copies from "two"
  CUgraphNodeParams np{};
  np.type = CU_GRAPH_NODE_TYPE_MEMCPY;
  np.memcpy.copyParams = copy_to_host(r3, from_node.data(), from_node.size());  // the copy now reads "three"
  ASSERT_EQ(api.set_node(exec, copy, &np), CUDA_SUCCESS);
  park_three_until_spilled();
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_EQ(api.launch(exec, nullptr), CUDA_SUCCESS);
  std::vector<std::byte> want2 = pattern(4 * kMiB, 7);
  EXPECT_TRUE(std::equal(from_child.begin(), from_child.end(), want2.begin() + 2 * kMiB)) << "\"two\" was read spilled";
  EXPECT_TRUE(holds_pattern(from_node, 8)) << "\"three\" was read spilled";
  EXPECT_EQ(stats().num("launches_unscannable"), 0u) << "the new parameters were scanned";
  EXPECT_EQ(stats().context("one", "nvme"), 8 * kMiB) << "what the nodes no longer read stays in the store";
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h, CUDA_STANDIN_NO_PARAM_INFO=1
TEST(StandIn, ALaunchThatCannotBeScannedRestoresEverything) {
  Program p;
  CUdeviceptr a = filled_context(p, 4 * kMiB, "a", 1), b = filled_context(p, 4 * kMiB, "b", 2);
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_EQ(kvpager_park_context("a"), KVPAGER_OK);
  ASSERT_EQ(kvpager_park_context("b"), KVPAGER_OK);
  ASSERT_TRUE(eventually([] { return stats().num("unsafe_chunks") == 4; }));
  uint64_t nothing = 0;
  void* args[] = {&nothing};
  ASSERT_EQ(p.launch(p.kernel("noop"), 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(stats().num("unsafe_chunks"), 0u) << "the driver cannot describe the kernel: it may read anything";
  EXPECT_GE(stats().num("launches_unscannable"), 1u);
  EXPECT_EQ(Program::host_mismatches(a, 4 * kMiB, 1) + Program::host_mismatches(b, 4 * kMiB, 2), 0u);
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h, CUDA_STANDIN_COPY_DELAY_MS=100
TEST(StandIn, ParkedContextsInAPoolStaySpilledWhileOnlyThePoolIsReferenced) {
  Program p;
  CUdeviceptr pool = p.must_alloc(16 * kMiB);
  ASSERT_EQ(kvpager_tag_context(pool, 8 * kMiB, "a"), KVPAGER_OK);
  ASSERT_EQ(kvpager_tag_context(pool + 8 * kMiB, 8 * kMiB, "b"), KVPAGER_OK);
  ASSERT_EQ(p.fill(pool, 16 * kMiB, 6), CUDA_SUCCESS);
  park_until_spilled(p, "b", 8 * kMiB);
  // The engine's kernels get the pool's base and a block table; "b" is parked:
  // promised unread until prefetched.
  EXPECT_EQ(p.check(pool, 8 * kMiB, 6), 0u);
  EXPECT_EQ(stats().context("b", "nvme"), 8 * kMiB) << "a reference to the pool does not pull a parked context back";
  // Prefetching it un-parks it; a pool launch then needs it restored. The
  // prefetch starts restoring it; with slow copy-ins those restores are
  // still on their way when the launch comes, and the launch waits for them.
  ASSERT_EQ(kvpager_prefetch_context("b"), KVPAGER_OK);
  uint64_t bad = p.check(pool, 16 * kMiB, 6);
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(stats().num("unsafe_chunks"), 0u);
}

// A tensor allocated and used at once: its registration (a request the
// allocation posts to the pager thread) and its launch's event (through the
// ring) race. Here the pager thread took its requests and is busy restoring
// for another thread's launch (slow copy-ins) when both come: the event must
// not be dropped because the region it names is not registered yet.
// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h, CUDA_STANDIN_COPY_DELAY_MS=100
TEST(StandIn, ALaunchRightAfterItsAllocationIsSeen) {
  Program p;
  CUdeviceptr r = spilled_region(p, 3);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const uint64_t before = stats().num("pager.accesses");
  std::thread reader([&] {
    p.make_current();
    EXPECT_EQ(p.check(r, 8 * kMiB, 3), 0u);  // waits for a restore of four chunks, 100 ms each
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the pager thread is restoring
  CUdeviceptr d = p.must_alloc(2 * kMiB);
  ASSERT_EQ(p.fill(d, 4096, 1), CUDA_SUCCESS);
  reader.join();
  EXPECT_TRUE(eventually([&] { return stats().num("pager.accesses") == before + 2; }))
      << "the reader's launch and the fill: " << stats().num("pager.accesses") - before;
  EXPECT_TRUE(eventually([] { return stats().num("touched_allocs") == 2; })) << "r and d";
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
// Tagging cuts an allocation into regions; the piece after a cut (here "b")
// gets a region-map entry of its own, whose spilled-chunk count the launch
// path reads. A kernel pointing right into it must find it spilled.
TEST(StandIn, ALaunchIntoTheSecondContextOfAPoolRestoresIt) {
  Program p;
  CUdeviceptr pool = p.must_alloc(16 * kMiB);
  ASSERT_EQ(kvpager_tag_context(pool, 8 * kMiB, "a"), KVPAGER_OK);
  ASSERT_EQ(kvpager_tag_context(pool + 8 * kMiB, 8 * kMiB, "b"), KVPAGER_OK);
  ASSERT_EQ(p.fill(pool + 8 * kMiB, 8 * kMiB, 3), CUDA_SUCCESS);
  park_until_spilled(p, "b", 8 * kMiB);
  ASSERT_FALSE(::testing::Test::HasFailure());
  EXPECT_EQ(stats().num("unsafe_chunks"), 4u);
  p.clear_log();
  EXPECT_EQ(p.check(pool + 8 * kMiB, 8 * kMiB, 3), 0u) << "every byte the kernel read was restored";
  long launch = p.find_log("cuLaunchKernel check");
  long first_copy = p.find_log("cuMemcpyHtoDAsync_v2");
  ASSERT_GE(launch, 0);
  ASSERT_GE(first_copy, 0) << "nothing was restored";
  EXPECT_LT(first_copy, launch) << "restored before the launch was issued";
  EXPECT_EQ(stats().num("unsafe_chunks"), 0u);
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
// Cutting a region whose chunks are in the store (tagging part of a spilled
// context: refused as busy, but the cut is made) hands the spilled chunks
// past the cut to the new piece: both pieces must still count theirs.
TEST(StandIn, CuttingASpilledRegionKeepsBothPiecesRestoredBeforeLaunches) {
  Program p;
  CUdeviceptr r = p.must_alloc(16 * kMiB);
  ASSERT_EQ(kvpager_tag_context(r, 16 * kMiB, "whole"), KVPAGER_OK);
  ASSERT_EQ(p.fill(r, 8 * kMiB, 8), CUDA_SUCCESS);
  ASSERT_EQ(p.fill(r + 8 * kMiB, 8 * kMiB, 9), CUDA_SUCCESS);
  park_until_spilled(p, "whole", 16 * kMiB);
  ASSERT_FALSE(::testing::Test::HasFailure());
  EXPECT_EQ(kvpager_tag_context(r + 8 * kMiB, 8 * kMiB, "tail"), KVPAGER_BUSY) << "its chunks are in the store";
  EXPECT_EQ(stats().num("unsafe_chunks"), 8u);
  // The piece past the cut, read through a pointer right into it.
  uint64_t tail_bad = p.check(r + 8 * kMiB, 8 * kMiB, 9);
  EXPECT_EQ(stats().num("unsafe_chunks"), 4u) << "the tail was restored, the head not yet";
  // The head: restored too, and its count is exact (an overcount would make
  // every launch that reads it ask for a restore that never clears it).
  uint64_t head_bad = p.check(r, 8 * kMiB, 8);
  EXPECT_EQ(tail_bad, 0u);
  EXPECT_EQ(head_bad, 0u);
  EXPECT_EQ(stats().num("unsafe_chunks"), 0u);
  EXPECT_EQ(Program::host_mismatches(r, 8 * kMiB, 8) + Program::host_mismatches(r + 8 * kMiB, 8 * kMiB, 9), 0u);
}

// Env: defaults.
TEST(StandIn, PerThreadStreamEntryPointsGetTheirOwnWrappers) {
  Program p;
  EXPECT_NE(reinterpret_cast<void*>(p.launch), reinterpret_cast<void*>(p.launch_ptsz));
  CUdeviceptr r = p.must_alloc(4 * kMiB);
  uint64_t len = 1024;
  uint32_t seed = 1;
  void* args[] = {&r, &len, &seed};
  ASSERT_EQ(p.launch_ptsz(p.kernel("fill"), 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(p.count_log("cuLaunchKernel_ptsz fill"), 1u) << "the per-thread variant reached the driver";
  ASSERT_EQ(p.launch(p.kernel("fill"), 1, 1, 1, 1, 1, 1, 0, nullptr, args, nullptr), CUDA_SUCCESS);
  EXPECT_EQ(p.count_log("cuLaunchKernel fill"), 1u);
  // ...and both are scanned.
  EXPECT_TRUE(eventually([] { return stats().num("pager.accesses") >= 2; }));
}

// Env: defaults.
TEST(StandIn, PlainDlsymOfDriverSymbolsGivesTheWrappers) {
  Program p;
  auto alloc = reinterpret_cast<PFN_cuMemAlloc_v3020>(dlsym(p.lib, "cuMemAlloc_v2"));
  ASSERT_NE(alloc, nullptr);
  Dl_info info{};
  ASSERT_TRUE(dladdr(reinterpret_cast<void*>(alloc), &info));
  EXPECT_NE(std::strstr(info.dli_fname, "libkvpager"), nullptr) << info.dli_fname;
  CUdeviceptr d = 0;
  ASSERT_EQ(alloc(&d, 4 * kMiB), CUDA_SUCCESS);
  EXPECT_EQ(p.count_log("cuMemAllocManaged 4194304"), 1u);
  auto launch_ptsz = dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz");
  ASSERT_TRUE(dladdr(launch_ptsz, &info));
  EXPECT_NE(std::strstr(info.dli_fname, "libkvpager"), nullptr);
  // Everything else is untouched.
  EXPECT_EQ(dlsym(p.lib, "cuInit"), dlsym(p.lib, "cuInit"));
  ASSERT_TRUE(dladdr(dlsym(p.lib, "cuInit"), &info));
  EXPECT_EQ(std::strstr(info.dli_fname, "libkvpager"), nullptr);
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "strlen"), reinterpret_cast<void*>(&strlen));
}

// Env: defaults.
TEST(StandIn, DlsymRtldNextStaysRelativeToItsCaller) {
  // Seen from this program, the next dlsym is libkvpager's (preloaded before
  // libc); had our dlsym called libc's itself, "next" would be relative to
  // libkvpager and answer libc's.
  void* next = dlsym(RTLD_NEXT, "dlsym");
  void* first = dlsym(RTLD_DEFAULT, "dlsym");
  EXPECT_EQ(next, first);
  Dl_info info{};
  ASSERT_TRUE(dladdr(next, &info));
  EXPECT_NE(std::strstr(info.dli_fname, "libkvpager"), nullptr) << info.dli_fname;
}

// Env: defaults.
TEST(StandIn, CuGetProcAddressHandsOutItselfWrappedAndWorksBeforeCuInit) {
  void* lib = dlopen("libcuda.so.1", RTLD_NOW);
  auto gpa = reinterpret_cast<PFN_cuGetProcAddress_v12000>(dlsym(lib, "cuGetProcAddress_v2"));
  void* self = nullptr;
  CUdriverProcAddressQueryResult st{};
  ASSERT_EQ(gpa("cuGetProcAddress", &self, 12000, 0, &st), CUDA_SUCCESS) << "no cuInit yet";
  Dl_info info{};
  ASSERT_TRUE(dladdr(self, &info));
  EXPECT_NE(std::strstr(info.dli_fname, "libkvpager"), nullptr);
  auto gpa2 = reinterpret_cast<PFN_cuGetProcAddress_v12000>(self);
  void* alloc = nullptr;
  ASSERT_EQ(gpa2("cuMemAlloc", &alloc, 12000, 0, &st), CUDA_SUCCESS);
  ASSERT_TRUE(dladdr(alloc, &info));
  EXPECT_NE(std::strstr(info.dli_fname, "libkvpager"), nullptr) << "lookups through it are wrapped too";
  // An old ABI of a name we wrap is handed out untouched (and unwrapped).
  void* old = nullptr;
  ASSERT_EQ(gpa("cuGetProcAddress", &old, 11030, 0, &st), CUDA_SUCCESS);
  EXPECT_NE(old, self);
}

// Env: CUDA_STANDIN_REENTER=1
TEST(StandIn, ADriverCallingBackIntoItsOwnEntryPointsDoesNotRecurse) {
  Program p;
  CUdeviceptr d = p.must_alloc(4 * kMiB);  // the stand-in calls cuMemGetInfo_v2 and cuMemAlloc_v2 from inside
  EXPECT_EQ(p.count_log("cuMemAllocManaged 4194304"), 1u);
  EXPECT_EQ(p.count_log("cuMemAlloc_v2 4194304"), 1u) << "the nested call went straight to the driver";
  EXPECT_EQ(stats().num("regions"), 1u) << "and was not made a region";
  EXPECT_EQ(p.free(d), CUDA_SUCCESS);
}

// Env: defaults.
TEST(StandIn, ThreadsCallingCudaBeforeThePagerStartsAreHandled) {
  Program p;
  constexpr int kThreads = 8, kEach = 6;
  std::barrier start(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      p.make_current();
      start.arrive_and_wait();  // all at once, while the pager is not started yet
      std::vector<CUdeviceptr> mine;
      for (int i = 0; i < kEach; ++i) {
        CUdeviceptr d = 0;
        if (p.alloc(&d, 2 * kMiB + uint64_t(t) * 4096) != CUDA_SUCCESS) ++failures;
        if (p.fill(d, 4096, uint32_t(t)) != CUDA_SUCCESS) ++failures;
        if (p.check(d, 4096, uint32_t(t)) != 0) ++failures;
        mine.push_back(d);
      }
      for (int i = 0; i < kEach; i += 2)
        if (p.free(mine[size_t(i)]) != CUDA_SUCCESS) ++failures;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(p.count_log("cuMemAllocManaged"), size_t(kThreads * kEach));
  Stats s = stats();
  EXPECT_EQ(s.num("regions"), size_t(kThreads * kEach / 2));
  EXPECT_TRUE(eventually([] { return stats().num("pager.regions") == kThreads * kEach / 2; }));
}

// Env: STANDIN_EARLY=1 (libstandin_early's constructor allocates before main)
TEST(StandIn, ALibraryConstructorUsingCudaBeforeMainIsRouted) {
  Program p;
  auto early = &standin_early_allocation;
  ASSERT_NE(early(), 0u) << "the constructor's allocation failed";
  EXPECT_EQ(p.count_log("cuMemAllocManaged 8388608"), 1u);
  EXPECT_EQ(stats().num("regions"), 1u);
  EXPECT_EQ(p.check(early(), 4096, 77), 0u);
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, ForkLeavesTheParentsPagerWorkingAndTheChildSafe) {
  Program p;
  CUdeviceptr r = spilled_region(p, 8);
  ASSERT_FALSE(::testing::Test::HasFailure());
  pid_t pid = fork();
  if (pid == 0) {
    alarm(20);  // a hang is a failure, not a stuck test
    // No pager thread here: every call passes straight through, nothing waits.
    Stats s = stats();
    if (s.str("state") != "forked-child") _exit(3);
    CUdeviceptr small = 0;
    if (p.alloc(&small, 8 * kMiB) != CUDA_SUCCESS) _exit(4);
    if (p.count_log("cuMemAlloc_v2 8388608") != 1) _exit(5);  // not managed in the child
    (void)p.check(r, 4096, 8);  // would wait for a restore in the parent; here it must not hang
    std::exit(0);  // runs the atexit handlers: they must not wait for a thread that is not there
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(p.check(r, 8 * kMiB, 8), 0u) << "the parent's pager still restores";
  EXPECT_EQ(stats().str("state"), "running");
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, AStreamCaptureHoldsSpillsBackUntilItEnds) {
  Program p;
  CUdeviceptr r = p.must_alloc(8 * kMiB);
  ASSERT_EQ(kvpager_tag_context(r, 8 * kMiB, "ctx"), KVPAGER_OK);
  CUstream s = nullptr;
  ASSERT_EQ(p.stream_create(&s, 0), CUDA_SUCCESS);
  ASSERT_EQ(p.fill(r, 8 * kMiB, 3, s), CUDA_SUCCESS);
  ASSERT_EQ(p.begin_capture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_SUCCESS);
  ASSERT_EQ(kvpager_park_context("ctx"), KVPAGER_OK);
  EXPECT_TRUE(eventually([] { return stats().num("mover.fence_refusals") > 0; }));
  EXPECT_EQ(stats().context("ctx", "nvme"), 0u) << "no spill while an event could join the capture";
  CUgraph g = nullptr;
  ASSERT_EQ(p.end_capture(s, &g), CUDA_SUCCESS);
  EXPECT_TRUE(eventually([] { return stats().context("ctx", "nvme") == 8 * kMiB; }));
  EXPECT_EQ(p.check(r, 8 * kMiB, 3), 0u);
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h
TEST(StandIn, TheSpillFenceWaitsForEveryStreamThatUsedTheRegion) {
  Program p;
  CUdeviceptr r = p.must_alloc(8 * kMiB);
  ASSERT_EQ(kvpager_tag_context(r, 8 * kMiB, "ctx"), KVPAGER_OK);
  CUstream a = nullptr, b = nullptr;
  ASSERT_EQ(p.stream_create(&a, 0), CUDA_SUCCESS);
  ASSERT_EQ(p.stream_create(&b, 0), CUDA_SUCCESS);
  ASSERT_EQ(p.fill(r, 8 * kMiB, 1, a), CUDA_SUCCESS);
  ASSERT_EQ(p.check(r, 8 * kMiB, 1, b), 0u);
  ASSERT_EQ(p.stream_destroy(b), CUDA_SUCCESS);  // its work must still be waited for
  p.clear_log();
  park_until_spilled(p, "ctx", 8 * kMiB);
  auto log = p.log();
  char sa[32];
  std::snprintf(sa, sizeof sa, "cuEventRecord 0x%llx", reinterpret_cast<unsigned long long>(a));
  long rec = p.find_log(sa);
  long copy = p.find_log("cuMemcpyDtoHAsync_v2");
  ASSERT_GE(rec, 0) << "an event on stream a";
  ASSERT_GE(copy, 0);
  EXPECT_LT(rec, copy) << "the fence came before the bytes were copied out";
  EXPECT_EQ(stats().num("fence_failures"), 0u);
}

// ---- publishing a context into the token store

// What `len` bytes filled by the stand-in's "fill" kernel with `seed` hold.
std::vector<std::byte> pattern(uint64_t len, uint32_t seed) {
  std::vector<std::byte> b(len);
  for (uint64_t i = 0; i < len; ++i) b[i] = std::byte{standin_pattern(i, seed)};
  return b;
}

// Publication `name` as any other reader sees it: the store where the pager
// writes (KVPAGER_STORE_DIR), opened read-only by a handle of our own.
struct Published {
  Status status = Status::kNotFound;
  store::Manifest manifest;
  std::vector<std::byte> bytes;
};
Published read_published(const char* name) {
  store::StoreOptions o;
  o.dir = std::getenv("KVPAGER_STORE_DIR");
  o.read_only = true;
  store::TokenStore ts(o);
  Published p;
  p.status = ts.read_manifest("", name, &p.manifest);
  if (ok(p.status)) p.status = ts.get_context("", name, &p.bytes);
  return p;
}

// cudaFree waits for the work queued before it: a program may free what a
// kernel still reads. The memory goes back to the driver whole, so the pager
// must not discard it on its own stream first (that stream is not ordered
// after the program's): only its store objects go.
// Env: defaults.
TEST(StandIn, FreeingARegionNeverDiscardsItAheadOfQueuedWork) {
  Program p;
  CUstream a = nullptr;
  ASSERT_EQ(p.stream_create(&a, 0), CUDA_SUCCESS);
  CUdeviceptr r = p.must_alloc(8 * kMiB);
  ASSERT_EQ(p.fill(r, 8 * kMiB, 1, a), CUDA_SUCCESS);
  ASSERT_TRUE(eventually([] { return stats().num("pager.accesses") > 0; })) << "the launch was seen";
  p.clear_log();
  ASSERT_EQ(p.free(r), CUDA_SUCCESS);
  EXPECT_EQ(p.count_log("cuMemDiscardBatchAsync"), 0u) << "discarded on the pager's stream, racing stream a";
  EXPECT_EQ(p.count_log("cuMemFree"), 1u);
}

// A dropped context's bytes are not needed, but work queued before the drop
// may still read them: the discard waits for it like a spill (a fence on
// every stream that used managed memory). And the range stays the
// program's: an engine reuses it for another session, which must be paged
// (and published) like any other bytes, not stay "never touched".
// Env: KVPAGER_HBM_BUDGET=12M (chunk by chunk: the reference stages the chunk it names)
TEST(StandIn, ADroppedRangeIsDiscardedAfterQueuedWorkAndPagedAgainWhenReused) {
  Program p;
  CUstream a = nullptr;
  ASSERT_EQ(p.stream_create(&a, 0), CUDA_SUCCESS);
  CUdeviceptr r = p.must_alloc(8 * kMiB);
  ASSERT_EQ(kvpager_tag_context(r, 8 * kMiB, "s1"), KVPAGER_OK);
  ASSERT_EQ(p.fill(r, 8 * kMiB, 1, a), CUDA_SUCCESS);
  ASSERT_TRUE(eventually([] { return stats().context("s1", "hbm") > 0; })) << "the launch was seen";
  p.clear_log();
  ASSERT_EQ(kvpager_drop_context("s1"), KVPAGER_OK);
  char sa[32];
  std::snprintf(sa, sizeof sa, "cuEventRecord 0x%llx", reinterpret_cast<unsigned long long>(a));
  const long rec = p.find_log(sa), discard = p.find_log("cuMemDiscardBatchAsync");
  ASSERT_GE(discard, 0) << "the dropped range is released";
  ASSERT_GE(rec, 0) << "a fence on stream a";
  EXPECT_LT(rec, discard) << "discarded before the work queued on stream a was done";
  // Reused: written again (seed 2) and published under its name.
  ASSERT_EQ(p.fill(r, 8 * kMiB, 2, a), CUDA_SUCCESS);
  ASSERT_TRUE(eventually([] { return stats().context("s1", "hbm") > 0; }))
      << "the reused range is paged again: " << stats().kv["context.s1"];
  ASSERT_EQ(kvpager_publish_context("s1"), KVPAGER_OK);
  Published pub = read_published("s1");
  ASSERT_EQ(pub.status, Status::kOk);
  EXPECT_TRUE(pub.bytes == pattern(8 * kMiB, 2)) << "the publication holds what the program wrote after the drop";
}

// Env: KVPAGER_HOST_CAPACITY=8M, KVPAGER_SPILL_IDLE=1h, KVPAGER_HBM_BUDGET=12M
// (a reference stages only the chunk it points into: the context stays spread)
TEST(StandIn, PublishWritesAContextSpreadOverEveryTierIntoTheStoreByteExact) {
  Program p;
  CUstream s = nullptr;
  ASSERT_EQ(p.stream_create(&s, 0), CUDA_SUCCESS);
  // Context "pub": two allocations, A then B, filled by kernels on stream s.
  CUdeviceptr a = p.must_alloc(8 * kMiB), b = p.must_alloc(8 * kMiB);
  ASSERT_EQ(kvpager_tag_context(a, 8 * kMiB, "pub"), KVPAGER_OK);
  ASSERT_EQ(kvpager_tag_context(b, 8 * kMiB, "pub"), KVPAGER_OK);
  ASSERT_EQ(p.fill(a, 8 * kMiB, 21, s), CUDA_SUCCESS);
  ASSERT_EQ(p.fill(b, 8 * kMiB, 22, s), CUDA_SUCCESS);
  ASSERT_TRUE(eventually([] { return stats().context("pub", "hbm") == 4 * kMiB; })) << "both launches seen";
  // Parked with host RAM for 8M: A and B's first chunk spill (down to 6.8M).
  ASSERT_EQ(kvpager_park_context("pub"), KVPAGER_OK);
  ASSERT_TRUE(eventually([] { return stats().context("pub", "nvme") >= 8 * kMiB; })) << stats().context("pub", "nvme");
  // A kernel points into B's third chunk: B is restored, that chunk comes to HBM.
  CUdeviceptr into_b = b + 4 * kMiB;
  void* args[] = {&into_b};
  ASSERT_EQ(p.launch(p.kernel("noop"), 1, 1, 1, 1, 1, 1, 0, s, args, nullptr), CUDA_SUCCESS);
  ASSERT_TRUE(eventually([] {
    Stats st = stats();
    return st.context("pub", "hbm") > 0 && st.context("pub", "host") > 0 && st.context("pub", "nvme") > 0;
  })) << stats().kv["context.pub"];
  ASSERT_GT(stats().num("unsafe_chunks"), 0u) << "A's ranges hold garbage: its bytes are only in the store";
  Stats before = stats();
  p.clear_log();

  ASSERT_EQ(kvpager_publish_context("pub"), KVPAGER_OK);

  // The store holds the context, byte-exact, owned by this process.
  Published pub = read_published("pub");
  ASSERT_EQ(pub.status, Status::kOk) << to_string(pub.status);
  EXPECT_EQ(pub.manifest.meta.name, "pub");
  EXPECT_EQ(pub.manifest.meta.owner_pid, static_cast<uint32_t>(getpid()));
  std::vector<std::byte> expect = pattern(8 * kMiB, 21), tail = pattern(8 * kMiB, 22);
  expect.insert(expect.end(), tail.begin(), tail.end());
  ASSERT_EQ(pub.bytes.size(), expect.size());
  EXPECT_TRUE(pub.bytes == expect) << "A then B, every byte, from HBM, host RAM and the store";
  // Read where it rests: copied out after a fence on the program's stream,
  // nothing advised, prefetched, discarded or restored, nothing newly unsafe.
  const uint64_t resident = before.context("pub", "hbm") + before.context("pub", "host");
  EXPECT_EQ(p.count_log("cuMemcpyDtoHAsync_v2"), resident / (2 * kMiB)) << "one copy per chunk in HBM or host RAM";
  for (const char* move : {"cuMemPrefetchAsync", "cuMemAdvise", "cuMemDiscardBatchAsync", "cuMemcpyHtoDAsync"})
    EXPECT_EQ(p.count_log(move), 0u) << move;
  char rec[64];
  std::snprintf(rec, sizeof rec, "cuEventRecord 0x%llx", reinterpret_cast<unsigned long long>(s));
  EXPECT_GE(p.find_log(rec), 0);
  EXPECT_LT(p.find_log(rec), p.find_log("cuMemcpyDtoHAsync_v2")) << "the fence came before the first copy";
  Stats after = stats();
  for (const char* field : {"hbm", "host", "nvme", "parked"})
    EXPECT_EQ(after.context("pub", field), before.context("pub", field)) << field;
  for (const char* k : {"pager.moves.promote", "pager.moves.demote", "pager.moves.spill", "pager.moves.restore",
                        "unsafe_chunks"})
    EXPECT_EQ(after.num(k), before.num(k)) << k;
  EXPECT_EQ(after.num("mover.reads"), before.num("mover.reads") + resident / (2 * kMiB));
  // The program's own bytes are intact.
  EXPECT_EQ(p.check(a, 8 * kMiB, 21, s), 0u);
  EXPECT_EQ(p.check(b, 8 * kMiB, 22, s), 0u);
}

// Env: defaults.
// Env: KVPAGER_HBM_BUDGET=12M (pins may hold 0.85 of it: 10.2M)
TEST(StandIn, APinThatWouldLeaveNoRoomIsRefusedAndAPinnedContextIsNotParked) {
  Program p;
  CUdeviceptr a = p.must_alloc(8 * kMiB), b = p.must_alloc(4 * kMiB);
  ASSERT_EQ(kvpager_tag_context(a, 8 * kMiB, "a"), KVPAGER_OK);
  ASSERT_EQ(kvpager_tag_context(b, 4 * kMiB, "b"), KVPAGER_OK);
  ASSERT_EQ(kvpager_pin_context("a"), KVPAGER_OK);
  EXPECT_EQ(kvpager_pin_context("b"), KVPAGER_NO_ROOM) << "12M pinned of a 12M budget";
  EXPECT_EQ(kvpager_tag_context(b, 4 * kMiB, "a"), KVPAGER_NO_ROOM) << "joining the pinned context is pinning";
  EXPECT_EQ(kvpager_park_context("a"), KVPAGER_BUSY);
  EXPECT_EQ(kvpager_park_context("b"), KVPAGER_OK);
  ASSERT_EQ(kvpager_unpin_context("a"), KVPAGER_OK);
  EXPECT_EQ(kvpager_pin_context("b"), KVPAGER_OK);
}

TEST(StandIn, PublishOfAnUnknownContextIsNotFound) {
  Program p;
  EXPECT_EQ(kvpager_publish_context("pub"), KVPAGER_NOT_FOUND) << "no pager yet: nothing to publish";
  CUdeviceptr a = p.must_alloc(4 * kMiB);
  ASSERT_EQ(kvpager_tag_context(a, 4 * kMiB, "pub"), KVPAGER_OK);
  EXPECT_EQ(kvpager_publish_context("nope"), KVPAGER_NOT_FOUND);
  EXPECT_EQ(kvpager_publish_context(""), KVPAGER_INVALID);
  EXPECT_EQ(kvpager_publish_context(nullptr), KVPAGER_INVALID);
  EXPECT_EQ(read_published("nope").status, Status::kNotFound) << "nothing was written";
  // The known one publishes (a fresh managed allocation reads as zeros).
  ASSERT_EQ(kvpager_publish_context("pub"), KVPAGER_OK);
  Published pub = read_published("pub");
  ASSERT_EQ(pub.status, Status::kOk);
  EXPECT_TRUE(pub.bytes == std::vector<std::byte>(4 * kMiB));
}

}  // namespace
}  // namespace kvpager::testing

namespace kvpager::testing {
namespace {

// Runs `kvpager ARGS...` as a plain process (no preload, no stand-in driver)
// and returns its stdout; exit status in *status.
std::string run_kvpager(const std::vector<std::string>& args, int* status) {
  const char* bin = std::getenv("STANDIN_KVPAGER_BIN");
  if (!bin) return "";
  // Everything the child needs is built before fork: this process has
  // threads (the pager's, the driver's), and a child may only make
  // async-signal-safe calls; an allocation there can wait forever on a lock
  // another thread held at the fork (seen with ASan's allocator).
  std::vector<char*> argv{const_cast<char*>(bin)};
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (char** e = environ; *e; ++e) {
    const std::string_view entry(*e);
    if (!entry.starts_with("LD_PRELOAD=") && !entry.starts_with("LD_LIBRARY_PATH=")) envp.push_back(*e);
  }
  envp.push_back(nullptr);
  int out[2];
  if (pipe(out) != 0) return "";
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    close(out[0]);
    execve(bin, argv.data(), envp.data());
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  close(out[0]);
  waitpid(pid, status, 0);
  return text;
}

// Waits until `kvpager status` sees this process's pager with `regions`
// regions: the first snapshot is published when the pager starts, the regions
// show up with the next one (every 100 ms). *json: the last answer.
bool status_shows_regions(int regions, std::string* json) {
  const std::string pid = std::to_string(getpid()), want = "\"regions\": " + std::to_string(regions);
  int status = -1;
  return eventually([&] {
    *json = run_kvpager({"status", "--json", "--pid", pid}, &status);
    return status == 0 && json->find(want) != std::string::npos;
  });
}

// Env: STANDIN_KVPAGER_BIN (the kvpager CLI), KVPAGER_RUNTIME_DIR (private).
// A preloaded program serves the control socket: `kvpager status` sees its
// regions and `kvpager tune` changes its pager live.
TEST(StandIn, ThePreloadedProgramIsVisibleToStatusAndTunable) {
  Program p;
  ASSERT_TRUE(kvpager_loaded());
  p.must_alloc(8 * kMiB);
  p.must_alloc(4 * kMiB);
  const std::string pid = std::to_string(getpid());
  int status = -1;
  std::string json;
  ASSERT_TRUE(status_shows_regions(2, &json)) << json;
  EXPECT_NE(json.find("CUDA device"), std::string::npos) << json;
  // The interposer's own counters come with the pager's.
  EXPECT_NE(json.find("\"managed_allocs\": 2"), std::string::npos) << json;
  EXPECT_NE(json.find("\"mover.store_peak\""), std::string::npos) << json;
  std::string shown = run_kvpager({"status", "--pid", pid}, &status);
  EXPECT_EQ(status, 0) << shown;
  EXPECT_NE(shown.find("Interposer (libkvpager.so)\n  managed 2 allocations, 12.00 MiB of limit"), std::string::npos)
      << shown;
  EXPECT_EQ(shown.find("warning:"), std::string::npos) << "nothing was dropped: " << shown;

  std::string tuned = run_kvpager({"tune", "--pid", pid, "prefetch_depth=9"}, &status);
  EXPECT_EQ(status, 0) << tuned;
  EXPECT_NE(tuned.find("9"), std::string::npos) << tuned;
  ASSERT_TRUE(eventually([&] {
    json = run_kvpager({"status", "--json", "--pid", pid}, &status);
    size_t at = json.find("\"prefetch_depth\"");
    return at != std::string::npos && json.substr(at, 80).find("\"value\": \"9\"") != std::string::npos;
  })) << json;
}

// log_level is live: `kvpager tune log_level=...` reaches the interposer's
// own messages (it kept the level it started with). Its stderr goes to a file
// meanwhile; the managed ceiling's refusal is a warning.
// Env: KVPAGER_CUDA_MANAGED_LIMIT=16M, STANDIN_KVPAGER_BIN, KVPAGER_RUNTIME_DIR (private).
TEST(StandIn, ALiveLogLevelChangeReachesTheInterposersOwnMessages) {
  Program p;
  p.must_alloc(8 * kMiB);
  std::string json;
  ASSERT_TRUE(status_shows_regions(1, &json)) << json;
  const std::string pid = std::to_string(getpid());
  char path[] = "/tmp/kvpager-standin-stderr-XXXXXX";
  const int file = mkstemp(path);
  ASSERT_GE(file, 0);
  unlink(path);
  const int saved = dup(2);
  auto logged = [&] {
    std::string text(4096, '\0');
    const ssize_t n = pread(file, text.data(), text.size(), 0);
    text.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return text;
  };
  auto refused_alloc = [&] {
    dup2(file, 2);
    CUdeviceptr c = 0;
    const CUresult r = p.alloc(&c, 16 * kMiB);
    dup2(saved, 2);
    return r;
  };
  int status = -1;
  std::string out = run_kvpager({"tune", "--pid", pid, "log_level=error"}, &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(refused_alloc(), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_EQ(logged(), "") << "a warning under log_level = error";
  out = run_kvpager({"tune", "--pid", pid, "log_level=warn"}, &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(refused_alloc(), CUDA_ERROR_OUT_OF_MEMORY);
  EXPECT_NE(logged().find("allocation of 16M refused"), std::string::npos) << logged();
  close(saved);
  close(file);
}

// Env: KVPAGER_HOST_CAPACITY=2M, KVPAGER_SPILL_IDLE=1h, STANDIN_KVPAGER_BIN, KVPAGER_RUNTIME_DIR (private).
// `kvpager hint publish` reaches the preloaded program's pager through its
// control socket and publishes a parked, spilled context.
TEST(StandIn, PublishThroughTheControlSocketReachesTheStore) {
  Program p;
  CUdeviceptr r = spilled_region(p, 13);  // context "ctx", all of it in the store
  ASSERT_FALSE(::testing::Test::HasFailure());
  const std::string pid = std::to_string(getpid());
  int status = -1;
  std::string out;
  ASSERT_TRUE(status_shows_regions(1, &out)) << out;
  out = run_kvpager({"hint", "--pid", pid, "publish", "ctx"}, &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("published ctx (8388608 bytes in 4 chunks"), std::string::npos) << out;
  Published pub = read_published("ctx");
  ASSERT_EQ(pub.status, Status::kOk) << to_string(pub.status);
  EXPECT_EQ(pub.manifest.meta.owner_pid, static_cast<uint32_t>(getpid()));
  EXPECT_TRUE(pub.bytes == pattern(8 * kMiB, 13)) << "every byte, read back from the store's spilled copies";
  EXPECT_EQ(stats().context("ctx", "nvme"), 8 * kMiB) << "and nothing was restored to do it";
  out = run_kvpager({"hint", "--pid", pid, "publish", "nope"}, &status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << "an unknown context is a runtime failure: " << out;
  EXPECT_EQ(p.check(r, 8 * kMiB, 13), 0u);
}

}  // namespace
}  // namespace kvpager::testing
