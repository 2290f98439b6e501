// The launch path's pieces in isolation (no driver needed): the region map,
// parameter layouts and scans, the quiescence brackets, the stream registry.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <iterator>
#include <random>
#include <thread>
#include <vector>

#include "region_map.h"
#include "scan.h"
#include "streams.h"

namespace kvpager::cuda {
namespace {

constexpr uint64_t kMiB = 1 << 20;

TEST(RegionMap, FindsTheRegionContainingAnAddressAndNothingElse) {
  RegionMap m;
  std::mt19937_64 rng(5);
  std::vector<std::pair<uint64_t, uint64_t>> regions;  // base, size (with gaps between)
  uint64_t at = 0x7f0000000000;
  for (int i = 0; i < 1000; ++i) {
    uint64_t size = (1 + rng() % 64) * 4096;
    regions.emplace_back(at, size);
    m.add(at, size);
    at += size + (rng() % 3) * 4096;
  }
  Quiescence::Bracket b(Quiescence::global());
  const RegionMap::Snapshot& s = m.snapshot();
  ASSERT_EQ(s.n, 1000u);
  for (auto [base, size] : regions) {
    for (uint64_t probe : {base, base + size / 2, base + size - 1}) {
      ptrdiff_t i = RegionMap::locate(s, probe);
      ASSERT_GE(i, 0) << std::hex << probe;
      EXPECT_EQ(s.items[i].base, base);
    }
    if (ptrdiff_t after = RegionMap::locate(s, base + size); after >= 0) {
      EXPECT_EQ(s.items[after].base, base + size) << "only the next region, never this one";
    }
  }
  EXPECT_EQ(RegionMap::locate(s, regions.front().first - 1), -1);
  EXPECT_EQ(RegionMap::locate(s, at + 1), -1);
  EXPECT_EQ(RegionMap::locate(s, 0), -1);
  EXPECT_EQ(RegionMap::locate(s, ~0ull), -1);
}

// The launch path must never see a piece count fewer spilled chunks than it
// holds: a new piece counts all of its head's until the mover sets both
// (CudaMover::bind_counter; the stand-in scenarios check the whole cut).
TEST(RegionMap, APieceCutOffStartsWithItsHeadsSpilledCount) {
  RegionMap m;
  uint32_t a = m.add(0x10000000, 16 * kMiB);
  m.entry(a).unsafe.store(3);
  m.entry(a).parked.store(true);
  uint32_t tail = m.split(a, 8 * kMiB);
  EXPECT_EQ(m.entry(tail).unsafe.load(), 3u);
  EXPECT_TRUE(m.entry(tail).parked.load());
  EXPECT_EQ(m.entry(a).unsafe.load(), 3u) << "the head's is untouched";
}

TEST(RegionMap, SplitPiecesStayOneAllocationAndRetiredSlotsChangeGeneration) {
  RegionMap m;
  uint32_t a = m.add(0x10000000, 16 * kMiB);
  m.add(0x20000000, 4 * kMiB);
  uint32_t tail = m.split(a, 8 * kMiB);
  uint32_t mid = m.split(a, 2 * kMiB);
  EXPECT_EQ(m.regions(), 4u);
  EXPECT_EQ(m.alloc_regions(0x10000000), (std::vector<uint32_t>{a, mid, tail}));
  uint64_t base = 0, size = 0;
  ASSERT_TRUE(m.find_alloc(0x10000000 + 9 * kMiB, &base, &size));
  EXPECT_EQ(base, 0x10000000u);
  EXPECT_EQ(size, 16 * kMiB);
  {
    Quiescence::Bracket b(Quiescence::global());
    const RegionMap::Snapshot& s = m.snapshot();
    ptrdiff_t i = RegionMap::locate(s, 0x10000000 + 3 * kMiB);
    ASSERT_GE(i, 0);
    EXPECT_EQ(s.items[i].slot, mid);
    ptrdiff_t first = 0, end = 0;
    RegionMap::alloc_span(s, i, &first, &end);
    EXPECT_EQ(end - first, 3) << "head, middle and tail of the same allocation";
  }
  const uint32_t gen = m.entry(tail).gen.load();
  auto slots = m.remove_alloc(0x10000000);
  EXPECT_EQ(slots.size(), 3u);
  for (uint32_t s : slots) m.retire(s);
  EXPECT_NE(m.entry(tail).gen.load(), gen) << "a stale reference to the slot is detectable";
  EXPECT_FALSE(m.find_alloc(0x10000000, &base, &size));
  Quiescence::Bracket b(Quiescence::global());
  EXPECT_EQ(RegionMap::locate(m.snapshot(), 0x10000000), -1);
}

TEST(RegionMap, ReadersNeverSeeAFreedSnapshotWhileWritersChurn) {
  // Under ASan a reader touching a retired snapshot after it was freed fails.
  RegionMap m;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> found{0};
  std::thread reader([&] {
    while (!stop.load()) {
      Quiescence::Bracket b(Quiescence::global());
      const RegionMap::Snapshot& s = m.snapshot();
      for (size_t i = 0; i < s.n; ++i) found += RegionMap::locate(s, s.items[i].base) == static_cast<ptrdiff_t>(i);
    }
  });
  for (uint64_t round = 0; round < 100'000 && (round < 300 || found.load() == 0); ++round) {
    m.add(0x1000000ull * (round + 1), kMiB);
    if (round >= 8)
      for (uint32_t slot : m.remove_alloc(0x1000000ull * (round - 7))) m.retire(slot);
    m.reclaim();
  }
  stop = true;
  reader.join();
  EXPECT_GT(found.load(), 0u);
}

TEST(Quiescence, ATicketPassesOnlyWhenEveryBracketOpenAtItHasClosed) {
  Quiescence q;
  Quiescence::Ticket t;
  q.take(t);
  EXPECT_TRUE(q.passed(t)) << "nothing was open";
  std::atomic<int> phase{0};
  std::thread launcher([&] {
    Quiescence::Bracket b(q);
    phase = 1;
    while (phase.load() != 2) std::this_thread::yield();
  });
  while (phase.load() != 1) std::this_thread::yield();
  q.take(t);
  EXPECT_FALSE(q.passed(t));
  {
    Quiescence::Bracket later(q);  // opened after the ticket: not waited for
    phase = 2;
    launcher.join();
    EXPECT_TRUE(q.passed(t));
  }
}

// A fake driver describing three kernels.
struct FakeKernel {
  std::vector<std::pair<size_t, size_t>> params;
};
// The fourth: one 8 KiB struct, more words than a layout may hold.
FakeKernel g_kernels[4] = {{{{0, 8}, {8, 4}, {16, 8}}}, {{{0, 4}, {8, 40}}}, {{}}, {{{0, 8192}}}};
std::atomic<int> g_info_calls{0};

CUresult fake_param_info(CUfunction f, size_t i, size_t* off, size_t* size) {
  ++g_info_calls;
  auto* k = reinterpret_cast<FakeKernel*>(f);
  if (k < g_kernels || k >= g_kernels + std::size(g_kernels)) return CUDA_ERROR_INVALID_HANDLE;
  if (i >= k->params.size()) return CUDA_ERROR_INVALID_VALUE;
  *off = k->params[i].first;
  *size = k->params[i].second;
  return CUDA_SUCCESS;
}

CUfunction fn(int i) { return reinterpret_cast<CUfunction>(&g_kernels[i]); }

TEST(ParamLayouts, EveryAlignedWordIsACandidateAndLayoutsAreCached) {
  Driver d;
  d.funcGetParamInfo = &fake_param_info;
  ParamLayouts layouts(d);
  uint32_t scratch[ParamLayouts::kScratchWords];
  // (ptr @0, int @8, ptr @16): the int is no candidate.
  uint64_t a = 0xAAAA, c = 0xCCCC;
  uint32_t b = 7;
  void* args[] = {&a, &b, &c};
  std::vector<uint64_t> seen;
  ParamLayouts::Layout l = layouts.get(fn(0), scratch);
  ASSERT_TRUE(l.known);
  ASSERT_TRUE(scan_launch(l, args, nullptr, [&](uint64_t v) { seen.push_back(v); }));
  EXPECT_EQ(seen, (std::vector<uint64_t>{0xAAAA, 0xCCCC}));
  const int calls = g_info_calls.load();
  layouts.get(fn(0), scratch);
  EXPECT_EQ(g_info_calls.load(), calls) << "the second launch asks the driver nothing";
  layouts.invalidate();  // a module was unloaded
  layouts.get(fn(0), scratch);
  EXPECT_GT(g_info_calls.load(), calls);
  // (int @0, 40-byte struct @8): five words of the struct.
  struct S {
    uint64_t w[5];
  } st{{1, 2, 3, 4, 5}};
  int tag = 9;
  void* args2[] = {&tag, &st};
  seen.clear();
  ASSERT_TRUE(scan_launch(layouts.get(fn(1), scratch), args2, nullptr, [&](uint64_t v) { seen.push_back(v); }));
  EXPECT_EQ(seen, (std::vector<uint64_t>{1, 2, 3, 4, 5}));
  EXPECT_TRUE(layouts.get(fn(2), scratch).known) << "no parameters is a known layout";
  EXPECT_EQ(layouts.get(fn(2), scratch).count, 0u);
  EXPECT_FALSE(layouts.get(reinterpret_cast<CUfunction>(0x1234), scratch).known) << "not a kernel the driver knows";
}

// A kernel whose parameters hold more aligned words than a layout keeps is
// scanned conservatively (every region counts as referenced); that verdict is
// cached too. It was not: every launch of it asked the driver once per
// parameter again.
TEST(ParamLayouts, AKernelTooBigToDescribeIsAskedAboutOnce) {
  Driver d;
  d.funcGetParamInfo = &fake_param_info;
  ParamLayouts layouts(d);
  uint32_t scratch[ParamLayouts::kScratchWords];
  EXPECT_FALSE(layouts.get(fn(3), scratch).known);
  const int calls = g_info_calls.load();
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(layouts.get(fn(3), scratch).known);
  EXPECT_EQ(g_info_calls.load(), calls) << "later launches ask the driver nothing";
  layouts.invalidate();  // a module was unloaded: asked again once
  EXPECT_FALSE(layouts.get(fn(3), scratch).known);
  EXPECT_GT(g_info_calls.load(), calls);
}

// A driver whose cuFuncGetParamInfo cannot tell a CUkernel (cudart's handle
// since CUDA 12) from a function without parameters: it answers both with
// CUDA_ERROR_INVALID_VALUE, the one error it documents. cuKernelGetParamInfo
// describes the kernel; for anything else it too says INVALID_VALUE.
FakeKernel g_cukernels[1] = {{{{0, 8}, {8, 8}, {16, 4}, {24, 8}}}};
CUresult fake_param_info_blind(CUfunction f, size_t i, size_t* off, size_t* size) {
  auto* k = reinterpret_cast<FakeKernel*>(f);
  if (k == g_cukernels) return CUDA_ERROR_INVALID_VALUE;
  return fake_param_info(f, i, off, size);
}
CUresult fake_kernel_param_info(CUkernel kern, size_t i, size_t* off, size_t* size) {
  auto* k = reinterpret_cast<FakeKernel*>(kern);
  if (k != g_cukernels || i >= k->params.size()) return CUDA_ERROR_INVALID_VALUE;
  *off = k->params[i].first;
  *size = k->params[i].second;
  return CUDA_SUCCESS;
}

TEST(ParamLayouts, AKernelHandleIsDescribedEvenWhenTheFunctionQueryMistakesItForNoParameters) {
  Driver d;
  d.funcGetParamInfo = &fake_param_info_blind;
  d.kernelGetParamInfo = &fake_kernel_param_info;
  ParamLayouts layouts(d);
  uint32_t scratch[ParamLayouts::kScratchWords];
  // (ptr @0, u64 @8, u32 @16, ptr @24), launched with the CUkernel cast to a CUfunction.
  const auto kern = reinterpret_cast<CUfunction>(&g_cukernels[0]);
  uint64_t p = 0xAAAA, n = 5, out = 0xBBBB;
  uint32_t seed = 3;
  void* args[] = {&p, &n, &seed, &out};
  std::vector<uint64_t> seen;
  ParamLayouts::Layout l = layouts.get(kern, scratch);
  ASSERT_TRUE(l.known);
  ASSERT_TRUE(scan_launch(l, args, nullptr, [&](uint64_t v) { seen.push_back(v); }));
  EXPECT_EQ(seen, (std::vector<uint64_t>{0xAAAA, 5, 0xBBBB})) << "its pointers are scanned, not skipped";
  std::vector<std::pair<size_t, size_t>> params;
  ASSERT_TRUE(layouts.describe(kern, params)) << "graph nodes too";
  EXPECT_EQ(params.size(), 4u);
  // A function handle still goes by cuFuncGetParamInfo, a parameterless one included.
  EXPECT_EQ(layouts.get(fn(0), scratch).count, 2u);
  EXPECT_TRUE(layouts.get(fn(2), scratch).known);
  EXPECT_EQ(layouts.get(fn(2), scratch).count, 0u);
  ASSERT_TRUE(layouts.describe(fn(2), params));
  EXPECT_TRUE(params.empty());
}

TEST(ParamLayouts, ADriverWithoutParamInfoMakesLaunchesUnscannable) {
  Driver d;  // no cuFuncGetParamInfo (driver older than 12.4)
  ParamLayouts layouts(d);
  uint32_t scratch[ParamLayouts::kScratchWords];
  uint64_t a = 1;
  void* args[] = {&a};
  EXPECT_FALSE(scan_launch(layouts.get(fn(0), scratch), args, nullptr, [](uint64_t) {}));
}

TEST(ScanLaunch, TheExtraBufferFormIsScannedWordByWord) {
  struct {
    uint64_t a;
    uint32_t b, pad;
    uint64_t c;
  } buf{0x11, 2, 0, 0x33};
  size_t size = sizeof buf;
  void* extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, &buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
  std::vector<uint64_t> seen;
  ASSERT_TRUE(scan_launch(ParamLayouts::Layout{}, nullptr, extra, [&](uint64_t v) { seen.push_back(v); }));
  EXPECT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], 0x11u);
  EXPECT_EQ(seen[2], 0x33u);
  void* odd[] = {reinterpret_cast<void*>(0x77), nullptr, CU_LAUNCH_PARAM_END};
  EXPECT_FALSE(scan_launch(ParamLayouts::Layout{}, nullptr, odd, [](uint64_t) {})) << "an unknown option";
}

TEST(CopyRange, ThreeDimensionalCopiesCoverEveryRowAndSlice) {
  CUDA_MEMCPY3D p{};
  p.srcMemoryType = CU_MEMORYTYPE_DEVICE;
  p.srcDevice = 0x100000;
  p.srcPitch = 1024;
  p.srcHeight = 8;
  p.srcXInBytes = 16;
  p.srcY = 1;
  p.WidthInBytes = 100;
  p.Height = 4;
  p.Depth = 2;
  p.dstMemoryType = CU_MEMORYTYPE_HOST;
  uint64_t lo = 0, hi = 0;
  ASSERT_TRUE(copy_range(p, true, &lo, &hi));
  EXPECT_EQ(lo, 0x100000u + 16 + 1024);
  EXPECT_EQ(hi, lo + 1 * 8 * 1024 + 3 * 1024 + 100);
  EXPECT_FALSE(copy_range(p, false, &lo, &hi)) << "host memory is not ours";
}

int g_records = 0;
CUresult fake_event_create(CUevent* e, unsigned) {
  static int events[64];
  static int next = 0;
  *e = reinterpret_cast<CUevent>(&events[next++ % 64]);
  return CUDA_SUCCESS;
}
CUresult fake_event_record(CUevent, CUstream) {
  ++g_records;
  return CUDA_SUCCESS;
}
CUresult fake_event_destroy(CUevent) { return CUDA_SUCCESS; }

TEST(StreamRegistry, TheFenceCoversEveryNotedStreamAndRefusesDuringACapture) {
  Driver d;
  d.eventCreate = &fake_event_create;
  d.eventRecord = &fake_event_record;
  d.eventDestroy = &fake_event_destroy;
  StreamRegistry r;
  auto s1 = reinterpret_cast<CUstream>(0x1000), s2 = reinterpret_cast<CUstream>(0x2000);
  r.note(s1);
  r.note(s2);
  r.note(s1);
  std::vector<CUevent> pool, out;
  g_records = 0;
  ASSERT_TRUE(r.record_fence(d, pool, out));
  EXPECT_EQ(g_records, 2) << "one event per distinct stream, none for the default stream yet";
  r.note(nullptr);  // the legacy default stream
  out.clear();
  g_records = 0;
  ASSERT_TRUE(r.record_fence(d, pool, out));
  EXPECT_EQ(g_records, 3);
  // A destroyed stream: an event recorded on it as it goes stands in for it.
  r.destroying(&d, s2);
  out.clear();
  g_records = 0;
  ASSERT_TRUE(r.record_fence(d, pool, out));
  EXPECT_EQ(g_records, 2) << "s1 and the legacy stream; s2 is gone";
  EXPECT_EQ(out.size(), 3u) << "...plus the event s2 left";
  EXPECT_EQ(r.destroyed_count(), 1u);
  r.capture_begins();
  EXPECT_FALSE(r.record_fence(d, pool, out));
  r.capture_ends();
  EXPECT_TRUE(r.record_fence(d, pool, out));
}

}  // namespace
}  // namespace kvpager::cuda
