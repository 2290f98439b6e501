// The interposer and the CUDA mover on a real GPU. Every test skips, saying
// why, when there is no usable GPU (no libcuda.so.1, no device): CI has none.
//
// GPU safety: the managed footprint of every test stays far below the card's
// free memory (the tests check it first); oversubscription is emulated with
// a small pager budget, never with a footprint above the card.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "kvpager/store/token_store.h"
#include "mover_rig.h"
#include "mover_workload.h"
#include "preload.h"
#include "publish/publisher.h"
#include "run_process.h"

namespace kvpager::testing {
namespace {

// Whether a real GPU is usable, and its free memory; `why` otherwise.
struct Gpu {
  bool ok = false;
  std::string why;
  uint64_t free = 0;
};

Gpu probe() {
  Gpu g;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) {
    g.why = "no CUDA driver (libcuda.so.1 not found): no GPU on this machine";
    return g;
  }
  auto init = reinterpret_cast<PFN_cuInit_v2000>(cuda::real_dlsym(lib, "cuInit"));
  auto count = reinterpret_cast<PFN_cuDeviceGetCount_v2000>(cuda::real_dlsym(lib, "cuDeviceGetCount"));
  auto retain = reinterpret_cast<PFN_cuDevicePrimaryCtxRetain_v7000>(cuda::real_dlsym(lib, "cuDevicePrimaryCtxRetain"));
  auto set = reinterpret_cast<PFN_cuCtxSetCurrent_v4000>(cuda::real_dlsym(lib, "cuCtxSetCurrent"));
  auto info = reinterpret_cast<PFN_cuMemGetInfo_v3020>(cuda::real_dlsym(lib, "cuMemGetInfo_v2"));
  auto version = reinterpret_cast<PFN_cuDriverGetVersion_v2020>(cuda::real_dlsym(lib, "cuDriverGetVersion"));
  auto standin = cuda::real_dlsym(lib, "standin_function");
  int n = 0, v = 0;
  CUcontext ctx = nullptr;
  size_t free = 0, total = 0;
  if (standin) g.why = "libcuda.so.1 is the test stand-in, not a driver";
  else if (!init || init(0) != CUDA_SUCCESS || count(&n) != CUDA_SUCCESS || n == 0) g.why = "no CUDA device";
  else if (version(&v) != CUDA_SUCCESS || v < 13000) g.why = "driver " + std::to_string(v) + " < 13.0 (no discard)";
  else if (retain(&ctx, 0) != CUDA_SUCCESS || set(ctx) != CUDA_SUCCESS || info(&free, &total) != CUDA_SUCCESS)
    g.why = "cannot open a context on device 0";
  else {
    g.ok = true;
    g.free = free;
  }
  return g;
}

#define REQUIRE_GPU(footprint)                                                                             \
  Gpu gpu = probe();                                                                                       \
  if (!gpu.ok) GTEST_SKIP() << "GPU test skipped: " << gpu.why;                                            \
  if ((footprint) * 2 > gpu.free) GTEST_SKIP() << "GPU test skipped: the card has only " << gpu.free       \
                                               << " bytes free; the test needs twice its footprint of "   \
                                               << (footprint) << " (GPU safety rule)";

TEST(GpuMover, EveryByteSurvivesTenThousandMovesOnTheCard) {
  constexpr uint64_t kRegion = 16 * MiB, kRegions = 8;  // 128 MiB managed
  REQUIRE_GPU(kRegions * kRegion);
  Config c;
  c.chunk_size = 2 * MiB;
  c.hbm_budget = 16 * MiB;    // emulated oversubscription: 8x the budget
  c.host_capacity = 48 * MiB;  // ...and 2.7x host RAM: idle contexts spill
  c.spill_idle_ns = 3'600'000'000'000;
  MoverRig rig("libcuda.so.1", c, RigStore{0, true, {}});  // the token store's io_uring queue, as in production
  ASSERT_TRUE(rig.ok()) << rig.why;
  WorkloadResult r = run_integrity_workload(rig, 10'000, static_cast<int>(kRegions), kRegion, 29);
  EXPECT_EQ(r.mismatches, 0u) << r.detail;
  EXPECT_GE(r.moves, 10'000u);
  for (MoveKind k : {MoveKind::kPromote, MoveKind::kDemote, MoveKind::kSpill, MoveKind::kRestore})
    EXPECT_GT(r.per_kind[static_cast<size_t>(k)], 0u) << to_string(k);
  EXPECT_EQ(rig.mover->stats().driver_errors, 0u);
  EXPECT_EQ(rig.pager->audit(), "");
}

// Publishing reads every chunk where it rests -- HBM, host RAM, the NVMe
// tier -- after a fence on the program's streams, and moves nothing.
TEST(GpuMover, APublishedContextSpreadOverEveryTierIsByteExact) {
  constexpr uint64_t kRegion = 32 * MiB;  // two: 64 MiB managed
  REQUIRE_GPU(2 * kRegion);
  Config c;
  c.chunk_size = 2 * MiB;
  c.hbm_budget = 16 * MiB;
  c.host_capacity = 32 * MiB;  // parked, 64 MiB spill down to 0.85 x 32 MiB
  c.spill_idle_ns = 3'600'000'000'000;
  MoverRig rig("libcuda.so.1", c);
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto a = rig.alloc(kRegion, "pub"), b = rig.alloc(kRegion, "pub");
  ASSERT_TRUE(a.id.valid() && b.id.valid());
  std::vector<std::byte> ref(2 * kRegion);
  std::mt19937_64 rng(31);
  for (auto& x : ref) x = std::byte(rng());
  std::memcpy(a.bytes(), ref.data(), kRegion);
  std::memcpy(b.bytes(), ref.data() + kRegion, kRegion);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("pub"), HintKind::kPark), Status::kOk);
  rig.pager->drain();
  for (uint32_t i : {10u, 11u, 12u}) ASSERT_EQ(rig.pager->access(b.id, i, false), Status::kOk);
  rig.pager->drain();
  StatsSnapshot before = rig.pager->stats();
  for (Tier t : {Tier::kHbm, Tier::kHost, Tier::kNvme})
    ASSERT_GT(before.tiers[index(t)].resident_bytes, 0u) << to_string(t) << ": the context must span every tier";
  // The program's last writes, still queued on its stream when the publish
  // starts: a chunk in HBM and one in host RAM. The fence must wait for them.
  auto memset_async = reinterpret_cast<PFN_cuMemsetD8Async_v3020>(cuda::real_dlsym(rig.lib, "cuMemsetD8Async"));
  ASSERT_NE(memset_async, nullptr);
  CUstream prog = nullptr;
  ASSERT_EQ(rig.drv.streamCreate(&prog, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  rig.streams.note(prog);
  // One chunk in HBM and one in host RAM, wherever the pager put them (a
  // write into a spilled chunk would be the program's bug: its range is
  // discarded and the store's copy is what counts).
  struct At {
    uint64_t addr = 0, ref_off = 0;
    bool found = false;
  };
  auto chunk_in = [&](Tier t) {
    At at;
    for (const auto* r : {&b, &a}) {
      const Region* pr = rig.pager->region(r->id);
      for (uint32_t i = pr->nchunks; i-- > 0 && !at.found;) {
        if (pr->chunks[i].tier != t || !pr->chunks[i].resting()) continue;
        at = At{r->base + uint64_t{i} * c.chunk_size, (r == &b ? kRegion : 0) + uint64_t{i} * c.chunk_size, true};
      }
    }
    return at;
  };
  const At in_hbm = chunk_in(Tier::kHbm), in_host = chunk_in(Tier::kHost);
  ASSERT_TRUE(in_hbm.found) << "B10..B12 were just read: some chunk is in HBM";
  ASSERT_TRUE(in_host.found) << "host RAM holds some chunk";
  for (const At& at : {in_hbm, in_host}) {
    ASSERT_EQ(memset_async(at.addr, 0xA5, c.chunk_size, prog), CUDA_SUCCESS);
    std::memset(ref.data() + at.ref_off, 0xA5, c.chunk_size);
  }
  const std::string dir = rig.dir + "-published";
  store::StoreOptions o;
  o.dir = dir;
  o.max_io_bytes = c.chunk_size;
  std::vector<std::byte> got;
  Status st = Status::kIoError;
  {
    store::TokenStore ts(o);
    publish::Published pub;
    std::string why;
    st = publish::publish_context(*rig.pager, ts, "pub", publish::PublishOptions{}, &pub, &why);
    EXPECT_EQ(st, Status::kOk) << why;
    EXPECT_EQ(pub.bytes, 2 * kRegion);
    if (ok(st)) st = ts.get_context("", "pub", &got);
  }
  std::filesystem::remove_all(dir);
  ASSERT_EQ(st, Status::kOk);
  ASSERT_EQ(got.size(), ref.size());
  for (uint64_t i = 0; i < ref.size(); i += c.chunk_size)
    ASSERT_EQ(std::memcmp(got.data() + i, ref.data() + i, c.chunk_size), 0) << "chunk at " << i;
  StatsSnapshot after = rig.pager->stats();
  for (Tier t : {Tier::kHbm, Tier::kHost, Tier::kNvme})
    EXPECT_EQ(after.tiers[index(t)].resident_bytes, before.tiers[index(t)].resident_bytes) << to_string(t);
  EXPECT_EQ(after.moves, before.moves);
  EXPECT_EQ(rig.mover->stats().driver_errors, 0u);
  rig.drv.streamDestroy(prog);
}

// How long one program under the preload may take. On a lent GPU machine one
// command runs at most 10 minutes, and it carries the build, these tests, the
// benchmark and the e2e run (docs/cuda.md): a program that hangs must fail
// here, with its output, rather than take the whole session. Each program
// takes seconds when it works; its own waits for a spill give up after 30 s.
constexpr double kProgramTimeoutS = 240.0;

// The environment of a program run under libkvpager.so on the card: a
// budget far below its footprint, a ceiling far below the card's free memory.
std::vector<std::string> preload_env(const std::string& store) {
  return {"-KVPAGER_*",
          "LD_PRELOAD=" + preload_value(),
          "KVPAGER_HBM_BUDGET=256M",
          "KVPAGER_HOST_CAPACITY=512M",
          "KVPAGER_SPILL_IDLE=1h",
          "KVPAGER_CUDA_MANAGED_LIMIT=2G",
          "KVPAGER_STORE_DIR=" + store,
          // PyTorch's caching allocator as it comes: with expandable segments
          // its memory is cuMemCreate'd, which kvpager passes through unpaged.
          "PYTORCH_ALLOC_CONF=expandable_segments:False",
          "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False"};
}

TEST(GpuPreloaded, AnUnmodifiedNvccBinaryWithStaticCudartOversubscribesIntact) {
  REQUIRE_GPU(2 * GiB);
  if (!std::filesystem::exists(GPU_OVERSUBSCRIBE_BIN)) GTEST_SKIP() << "GPU test skipped: built without nvcc";
  const std::string store = "/tmp/kvpager-gpu-" + std::to_string(getpid());
  // 1 GiB in 16 buffers: 4x the budget. The program verifies every byte with
  // kernels, parks half of its buffers (they spill) and reads them again:
  // each of those launches must find its bytes restored.
  ProcessResult r = run_process({GPU_OVERSUBSCRIBE_BIN, "--buffers", "16", "--mib", "64", "--expect-kvpager"},
                                preload_env(store), kProgramTimeoutS);
  std::filesystem::remove_all(store);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("all bytes verified"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("restored before launch: yes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("copy of a spilled buffer: all bytes right"), std::string::npos) << r.out;
}

TEST(GpuPreloaded, APyTorchScriptAllocatingFourTimesTheBudgetComputesCorrectly) {
  REQUIRE_GPU(2 * GiB);
  ProcessResult torch = run_process({"/usr/bin/env", "python3", "-c", "import torch; assert torch.cuda.is_available()"});
  if (torch.exit_code != 0) GTEST_SKIP() << "GPU test skipped: no PyTorch with CUDA in python3";
  const std::string store = "/tmp/kvpager-torch-" + std::to_string(getpid());
  ProcessResult r =
      run_process({"/usr/bin/env", "python3", TORCH_SCRIPT, "--gib", "1"}, preload_env(store), kProgramTimeoutS);
  std::filesystem::remove_all(store);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("OK"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace kvpager::testing
