// The CUDA mover on the stand-in driver (no GPU): bytes survive every tier
// move, moves are batched, a spill waits for its fence and gives up (keeping
// the bytes) when it cannot have one or the store refuses the write; a chunk
// read back for publishing comes from whichever tier holds it, after a
// fence, and stays there.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "mover_rig.h"
#include "mover_workload.h"

namespace kvpager::testing {
namespace {

Config standin_config() {
  Config c;
  c.chunk_size = 64 * KiB;
  c.hbm_budget = 512 * KiB;
  c.host_capacity = 1 * MiB;
  c.spill_idle_ns = 3'600'000'000'000;
  c.prefetchers = kAllPrefetchers;
  return c;
}

// Moves only on explicit hints (no speculative prefetcher), in 1 MiB of HBM.
Config hint_config() {
  Config c = standin_config();
  c.prefetchers = kPrefetchHint;
  c.hbm_budget = 1 * MiB;
  return c;
}

// Host RAM for one chunk: a parked context spills whole.
Config spilling_config() {
  Config c = standin_config();
  c.host_capacity = 64 * KiB;
  return c;
}

std::vector<std::string> standin_log(const MoverRig& rig) {
  auto count = rig.standin<size_t (*)()>("standin_log_count");
  auto line = rig.standin<size_t (*)(size_t, char*, size_t)>("standin_log_line");
  std::vector<std::string> out;
  char buf[512];
  for (size_t i = 0; i < count(); ++i) {
    line(i, buf, sizeof buf);
    out.emplace_back(buf);
  }
  return out;
}

size_t count_prefix(const std::vector<std::string>& log, const std::string& prefix) {
  size_t n = 0;
  for (const auto& l : log) n += l.rfind(prefix, 0) == 0;
  return n;
}

// Events recorded while it lives answer "not ready" `queries` times (the
// stand-in's event lag), as work on a real stream takes time.
struct EventLag {
  void (*set)(uint32_t);
  EventLag(const MoverRig& rig, uint32_t queries) : set(rig.standin<void (*)(uint32_t)>("standin_set_event_lag")) {
    set(queries);
  }
  ~EventLag() { set(0); }
  EventLag(const EventLag&) = delete;
  EventLag& operator=(const EventLag&) = delete;
};

TEST(CudaMoverOnStandIn, EveryByteSurvivesPromoteDemoteSpillAndRestore) {
#ifdef KVPAGER_SANITIZED
  const uint64_t moves = 2'000;  // the same walk, shorter under ASan
#else
  const uint64_t moves = 10'000;
#endif
  MoverRig rig(STANDIN_LIBCUDA, standin_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  WorkloadResult r = run_integrity_workload(rig, moves, 8, 512 * KiB, 11);
  EXPECT_EQ(r.mismatches, 0u) << r.detail;
  EXPECT_GE(r.moves, moves);
  for (MoveKind k : {MoveKind::kPromote, MoveKind::kDemote, MoveKind::kSpill, MoveKind::kRestore})
    EXPECT_GT(r.per_kind[static_cast<size_t>(k)], 0u) << to_string(k);
  EXPECT_EQ(rig.pager->audit(), "");
  EXPECT_EQ(rig.mover->stats().driver_errors, 0u);
}

// The same walk with events that answer "not ready" twice before they
// complete, as on a GPU: moves stay in flight across polls, overlap, wait for
// staging slots and fences (with events done at once, none of that happens).
TEST(CudaMoverOnStandIn, EveryByteSurvivesWhenMovesStayInFlightAcrossPolls) {
  MoverRig rig(STANDIN_LIBCUDA, standin_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  EventLag lag(rig, 2);
  WorkloadResult r = run_integrity_workload(rig, 2'000, 8, 512 * KiB, 12);
  EXPECT_EQ(r.mismatches, 0u) << r.detail;
  EXPECT_GE(r.moves, 2'000u);
  for (MoveKind k : {MoveKind::kPromote, MoveKind::kDemote, MoveKind::kSpill, MoveKind::kRestore})
    EXPECT_GT(r.per_kind[static_cast<size_t>(k)], 0u) << to_string(k);
  EXPECT_EQ(rig.pager->audit(), "");
  EXPECT_EQ(rig.mover->stats().driver_errors, 0u);
}

TEST(CudaMoverOnStandIn, ContiguousChunksMoveAsOneRange) {
  Config c = hint_config();
  MoverRig rig(STANDIN_LIBCUDA, c);
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto r = rig.alloc(512 * KiB, "ctx");
  rig.standin<void (*)()>("standin_log_clear")();
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("ctx"), HintKind::kPrefetch), Status::kOk);  // 8 chunks
  rig.pager->drain();
  auto log = standin_log(rig);
  char expect[128];
  std::snprintf(expect, sizeof expect, "cuMemPrefetchAsync_v2 0x%llx 524288 device",
                static_cast<unsigned long long>(r.base));
  EXPECT_EQ(count_prefix(log, expect), 1u) << "eight chunks, one prefetch";
  EXPECT_EQ(count_prefix(log, "cuMemPrefetchAsync_v2"), 1u);
  EXPECT_EQ(rig.mover->stats().ranges, 1u);
  EXPECT_EQ(rig.mover->stats().promote_batches, 1u) << "timed once, as one batch";
  EXPECT_EQ(rig.mover->stats().demote_batches, 0u);
}

// The bytes of a context in each tier, as the pager sees them.
std::array<uint64_t, kNumTiers> tier_bytes(const MoverRig& rig, const std::string& name) {
  for (const ContextInfo& ci : rig.pager->contexts())
    if (ci.name == name) return ci.tier_bytes;
  return {};
}

// The streams the prefetches of `to` ("device" or "host") were issued on.
std::set<std::string> prefetch_streams(const std::vector<std::string>& log, const std::string& to) {
  std::set<std::string> out;
  for (const auto& l : log) {
    if (l.rfind("cuMemPrefetchAsync_v2 0x", 0) != 0) continue;
    const size_t on = l.find(" on ");
    if (on != std::string::npos && l.find(" " + to + " on ") != std::string::npos) out.insert(l.substr(on + 4));
  }
  return out;
}

std::string stream_name(CUstream s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", reinterpret_cast<unsigned long long>(s));
  return buf;
}

// A swap (park one context, bring another in) under each setting of
// cuda.move_streams: with 2, every demote goes on the down stream and every
// promote on the up stream, so the two directions of PCIe carry bytes at
// once; with 1, both on one stream. The bytes come through either way.
TEST(CudaMoverOnStandIn, DemotesAndPromotesGoOnAStreamEachWithTwoMoveStreams) {
  for (uint32_t streams : {2u, 1u}) {
    SCOPED_TRACE(streams);
    Config c = hint_config();  // both contexts fit: one batch each way
    c.cuda_move_streams = streams;
    MoverRig rig(STANDIN_LIBCUDA, c);
    ASSERT_TRUE(rig.ok()) << rig.why;
    auto a = rig.alloc(256 * KiB, "a");
    auto b = rig.alloc(256 * KiB, "b");
    std::memset(a.bytes(), 0xA1, a.size);
    std::memset(b.bytes(), 0xB2, b.size);
    ASSERT_EQ(rig.pager->hint(rig.pager->find_context("a"), HintKind::kPrefetch), Status::kOk);
    rig.pager->drain();
    rig.standin<void (*)()>("standin_log_clear")();
    const cuda::CudaMoverStats before = rig.mover->stats();
    ASSERT_EQ(rig.pager->hint(rig.pager->find_context("a"), HintKind::kPark), Status::kOk);
    ASSERT_EQ(rig.pager->hint(rig.pager->find_context("b"), HintKind::kPrefetch), Status::kOk);
    rig.pager->drain();
    EXPECT_EQ(tier_bytes(rig, "b")[index(Tier::kHbm)], b.size);
    EXPECT_EQ(tier_bytes(rig, "a")[index(Tier::kHost)], a.size);
    const auto log = standin_log(rig);
    const auto up = prefetch_streams(log, "device"), down = prefetch_streams(log, "host");
    ASSERT_EQ(up, std::set<std::string>{stream_name(rig.mover->up_stream())});
    ASSERT_EQ(down, std::set<std::string>{stream_name(rig.mover->down_stream())});
    if (streams == 2) EXPECT_NE(rig.mover->up_stream(), rig.mover->down_stream());
    else EXPECT_EQ(rig.mover->up_stream(), rig.mover->down_stream());
    EXPECT_EQ(rig.mover->stats().promote_batches - before.promote_batches, 1u);
    EXPECT_EQ(rig.mover->stats().demote_batches - before.demote_batches, 1u);
    for (uint64_t i = 0; i < a.size; ++i) ASSERT_EQ(a.bytes()[i], std::byte{0xA1}) << i;
    for (uint64_t i = 0; i < b.size; ++i) ASSERT_EQ(b.bytes()[i], std::byte{0xB2}) << i;
    EXPECT_EQ(rig.mover->stats().driver_errors, 0u);
  }
}

// Without events (cuEventCreate fails) a batch counts as done as soon as it
// is issued, so the mover must wait for its stream there: with two streams a
// chunk's next move may go on the other one, and must not overtake it.
TEST(CudaMoverOnStandIn, WithoutAnEventABatchIsWaitedForOnItsOwnStream) {
  Config c = hint_config();
  MoverRig rig(STANDIN_LIBCUDA, c);
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto a = rig.alloc(256 * KiB, "a");
  std::memset(a.bytes(), 0x5A, a.size);
  auto fail = rig.standin<void (*)(int)>("standin_fail_event_create");
  fail(1);
  rig.standin<void (*)()>("standin_log_clear")();
  const ContextId ctx = rig.pager->find_context("a");
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPrefetch), Status::kOk);
  rig.pager->drain();
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPark), Status::kOk);
  rig.pager->drain();
  fail(0);
  const auto log = standin_log(rig);
  EXPECT_GE(count_prefix(log, "cuEventCreate refused"), 2u);
  // Each batch's prefetch, then a wait on the stream it went on, before anything else moves.
  for (auto [to, stream] : {std::pair{"device", rig.mover->up_stream()}, std::pair{"host", rig.mover->down_stream()}}) {
    SCOPED_TRACE(to);
    const std::string sync = "cuStreamSynchronize " + stream_name(stream);
    ptrdiff_t prefetch = -1, waited = -1;
    for (size_t i = 0; i < log.size(); ++i) {
      if (prefetch < 0 && log[i].rfind("cuMemPrefetchAsync_v2 0x", 0) == 0 &&
          log[i].find(std::string(" ") + to + " on ") != std::string::npos)
        prefetch = static_cast<ptrdiff_t>(i);
      if (prefetch >= 0 && waited < 0 && log[i] == sync) waited = static_cast<ptrdiff_t>(i);
    }
    ASSERT_GE(prefetch, 0);
    EXPECT_GT(waited, prefetch) << "the batch was waited for on its own stream";
  }
  EXPECT_EQ(tier_bytes(rig, "a")[index(Tier::kHost)], a.size);
  for (uint64_t i = 0; i < a.size; ++i) ASSERT_EQ(a.bytes()[i], std::byte{0x5A}) << i;
  EXPECT_EQ(rig.pager->audit(), "");
}

// One flush moves several regions; the driver refuses the prefetch of one of
// them. Only that region's chunks failed: the others moved, and the pager
// must say so, or it believes chunks are in HBM that now live in host RAM (a
// demote) and never brings them back while kernels read them over PCIe.
// The refused range is put back where the pager believes it is, also when
// the driver moved part of it before refusing (then kernels would read that
// part remotely for good).
TEST(CudaMoverOnStandIn, ARangeTheDriverRefusesFailsOnlyItsOwnChunks) {
  for (const bool partly : {false, true}) {
    SCOPED_TRACE(partly ? "refused half way" : "refused whole");
    Config c = hint_config();
    c.host_capacity = 4 * MiB;
    MoverRig rig(STANDIN_LIBCUDA, c);
    ASSERT_TRUE(rig.ok()) << rig.why;
    auto a = rig.alloc(256 * KiB, "a");
    auto b = rig.alloc(256 * KiB, "b");
    for (const char* name : {"a", "b"})
      ASSERT_EQ(rig.pager->hint(rig.pager->find_context(name), HintKind::kPrefetch), Status::kOk);
    rig.pager->drain();
    ASSERT_EQ(tier_bytes(rig, "a")[index(Tier::kHbm)], 256 * KiB);
    ASSERT_EQ(tier_bytes(rig, "b")[index(Tier::kHbm)], 256 * KiB);
    const StatsSnapshot before = rig.pager->stats();
    const uint64_t failures = before.move_failures;

    auto fail_at = rig.standin<void (*)(uint64_t, int)>(partly ? "standin_fail_prefetch_partly_at"
                                                               : "standin_fail_prefetch_at");
    auto resident_in = rig.standin<uint64_t (*)(uint64_t, uint64_t)>("standin_resident_in");
    fail_at(b.base + 64 * KiB, CUDA_ERROR_INVALID_VALUE);
    rig.standin<void (*)()>("standin_log_clear")();
    for (const char* name : {"a", "b"})  // both demotes in one flush
      ASSERT_EQ(rig.pager->hint(rig.pager->find_context(name), HintKind::kPark), Status::kOk);
    rig.pager->drain();
    fail_at(0, 0);

    EXPECT_EQ(resident_in(a.base, a.size), 0u) << "the driver moved a";
    EXPECT_EQ(tier_bytes(rig, "a")[index(Tier::kHbm)], 0u) << "...and the pager knows it";
    EXPECT_EQ(tier_bytes(rig, "a")[index(Tier::kHost)], 256 * KiB);
    EXPECT_EQ(resident_in(b.base, b.size), 256 * KiB) << "b is on the device, all of it";
    EXPECT_EQ(tier_bytes(rig, "b")[index(Tier::kHbm)], 256 * KiB);
    EXPECT_EQ(rig.pager->stats().move_failures - failures, 4u) << "b's four chunks";
    const auto by_kind = rig.pager->stats().move_failures_by_kind;
    for (size_t k = 0; k < kNumMoveKinds; ++k)
      EXPECT_EQ(by_kind[k] - before.move_failures_by_kind[k], static_cast<MoveKind>(k) == MoveKind::kDemote ? 4u : 0u)
          << "counted as failed demotes: " << to_string(static_cast<MoveKind>(k));
    EXPECT_EQ(rig.mover->stats().failed_ranges, 1u);
    EXPECT_EQ(rig.mover->stats().last_driver_error, uint64_t{CUDA_ERROR_INVALID_VALUE});
    const auto log = standin_log(rig);
    char expect[128];
    std::snprintf(expect, sizeof expect, "cuMemAdvise_v2 0x%llx 262144 %d device",
                  static_cast<unsigned long long>(b.base), static_cast<int>(CU_MEM_ADVISE_SET_PREFERRED_LOCATION));
    EXPECT_EQ(count_prefix(log, expect), 1u) << "b's advice is put back where its bytes are";
    std::snprintf(expect, sizeof expect, "cuMemPrefetchAsync_v2 0x%llx 262144 device on %s",
                  static_cast<unsigned long long>(b.base), stream_name(rig.mover->up_stream()).c_str());
    EXPECT_EQ(count_prefix(log, expect), 1u) << "and whatever part of it moved is taken back";
    EXPECT_EQ(resident_in(a.base, a.size) + resident_in(b.base, b.size), rig.pager->committed_bytes(Tier::kHbm))
        << "the pager's HBM is the device's";
    EXPECT_EQ(rig.pager->audit(), "");
  }
}

TEST(CudaMoverOnStandIn, ASpillWaitsUntilLaunchesUnderWayHaveBeenIssued) {
  MoverRig rig(STANDIN_LIBCUDA, spilling_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto r = rig.alloc(128 * KiB, "ctx");
  std::memset(r.bytes(), 0x5A, r.size);
  std::optional<cuda::Quiescence::Bracket> launch;
  launch.emplace(rig.q);  // a launch is scanning right now
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("ctx"), HintKind::kPark), Status::kOk);
  for (int i = 0; i < 50; ++i) rig.pager->tick();
  EXPECT_GT(rig.total_unsafe.load(), 0u) << "marked at once: later launches restore first";
  EXPECT_EQ(count_prefix(standin_log(rig), "cuMemcpyDtoHAsync_v2"), 0u) << "...but nothing copied out yet";
  launch.reset();
  rig.pager->drain();
  EXPECT_EQ(count_prefix(standin_log(rig), "cuMemcpyDtoHAsync_v2"), 2u);
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 128 * KiB);
  ASSERT_EQ(rig.pager->restore(r.id), Status::kOk);
  for (uint64_t i = 0; i < r.size; ++i) ASSERT_EQ(r.bytes()[i], std::byte{0x5A});
  EXPECT_EQ(rig.total_unsafe.load(), 0u);
}

TEST(CudaMoverOnStandIn, AFenceThatCannotCompleteGivesUpAndKeepsTheBytes) {
  MoverRig rig(STANDIN_LIBCUDA, spilling_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto r = rig.alloc(128 * KiB, "ctx");
  std::memset(r.bytes(), 0x42, r.size);
  cuda::Quiescence::Bracket stuck(rig.q);  // a launch that never returns from the driver
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("ctx"), HintKind::kPark), Status::kOk);
  rig.pager->drain();  // returns once the fence gave up
  EXPECT_GT(rig.mover->stats().fence_refusals, 0u);
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 0u);
  EXPECT_EQ(rig.total_unsafe.load(), 0u);
  for (uint64_t i = 0; i < r.size; ++i) ASSERT_EQ(r.bytes()[i], std::byte{0x42});
}

TEST(CudaMoverOnStandIn, NoSpillWhileAStreamIsCaptured) {
  MoverRig rig(STANDIN_LIBCUDA, spilling_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto r = rig.alloc(128 * KiB, "ctx");
  std::memset(r.bytes(), 0x33, r.size);
  rig.streams.capture_begins();
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("ctx"), HintKind::kPark), Status::kOk);
  rig.pager->drain();
  EXPECT_GT(rig.mover->stats().fence_refusals, 0u);
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 0u) << "refused: stays in host RAM";
  EXPECT_EQ(rig.total_unsafe.load(), 0u);
  EXPECT_EQ(count_prefix(standin_log(rig), "cuMemDiscardBatchAsync"), 0u);
  for (uint64_t i = 0; i < r.size; ++i) ASSERT_EQ(r.bytes()[i], std::byte{0x33});
  rig.streams.capture_ends();
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("ctx"), HintKind::kPark), Status::kOk);
  rig.pager->drain();
  rig.pager->tick();
  rig.pager->drain();
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 128 * KiB);
}

TEST(CudaMoverOnStandIn, AStoreThatRefusesTheWriteLeavesTheBytesInHostRam) {
  MoverRig rig(STANDIN_LIBCUDA, spilling_config(), /*store_capacity=*/64 * KiB);  // room for one chunk
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto r = rig.alloc(256 * KiB, "ctx");
  for (uint64_t i = 0; i < r.size; ++i) r.bytes()[i] = std::byte(i * 7);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("ctx"), HintKind::kPark), Status::kOk);
  rig.pager->drain();
  StatsSnapshot s = rig.pager->stats();
  EXPECT_TRUE(s.spill_disabled);
  EXPECT_EQ(s.tiers[index(Tier::kNvme)].resident_bytes, 64 * KiB);
  EXPECT_EQ(rig.total_unsafe.load(), 1u) << "only the chunk the store holds";
  ASSERT_EQ(rig.pager->restore(r.id), Status::kOk);
  for (uint64_t i = 0; i < r.size; ++i) ASSERT_EQ(r.bytes()[i], std::byte(i * 7)) << i;
}

// A restored chunk keeps its store copy (a clean re-spill writes nothing)
// unless nvme_capacity is finite: then the mover erases the copy once the
// bytes are back, so the room counts for the next spills.
TEST(CudaMoverOnStandIn, ARestoreGivesItsStoreCopyUpUnderAFiniteNvmeCapacity) {
  for (uint64_t capacity : {uint64_t{0}, uint64_t{1 * MiB}}) {
    Config c = spilling_config();
    c.nvme_capacity = capacity;
    MoverRig rig(STANDIN_LIBCUDA, c);
    ASSERT_TRUE(rig.ok()) << rig.why;
    auto r = rig.alloc(256 * KiB, "ctx");
    for (uint64_t i = 0; i < r.size; ++i) r.bytes()[i] = std::byte(i * 13);
    ASSERT_EQ(rig.pager->hint(rig.pager->find_context("ctx"), HintKind::kPark), Status::kOk);
    rig.pager->drain();
    ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 256 * KiB) << capacity;
    const uint64_t stored = rig.store->used_bytes();
    ASSERT_GE(stored, 256 * KiB);
    ASSERT_EQ(rig.pager->restore(r.id), Status::kOk);
    rig.pager->drain();
    for (uint64_t i = 0; i < r.size; ++i) ASSERT_EQ(r.bytes()[i], std::byte(i * 13)) << i;
    EXPECT_EQ(rig.store->used_bytes(), capacity ? 0 : stored) << "nvme_capacity " << capacity;
    EXPECT_EQ(rig.pager->audit(), "");
  }
}

// A copy whose stream failed (its event answers an error) is not done: a
// spill stored what the staging buffer held, and a restore reported bytes
// that never arrived (erasing the store copy under a finite nvme_capacity).
TEST(CudaMoverOnStandIn, ACopyThatFailedOnItsStreamNeitherSpillsNorRestores) {
  Config c = spilling_config();
  c.nvme_capacity = 1 * MiB;
  MoverRig rig(STANDIN_LIBCUDA, c);
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto fail = rig.standin<void (*)(int)>("standin_fail_event_query");
  auto r = rig.alloc(128 * KiB, "a");
  std::memset(r.bytes(), 0x3C, r.size);
  const ContextId ctx = rig.pager->find_context("a");
  fail(CUDA_ERROR_LAUNCH_FAILED);
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPark), Status::kOk);
  rig.pager->drain();
  fail(0);
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 0u) << "no spill completed";
  EXPECT_EQ(rig.store->used_bytes(), 0u) << "nothing was stored";
  for (uint64_t i = 0; i < r.size; ++i) ASSERT_EQ(r.bytes()[i], std::byte{0x3C}) << i;
  // Now it spills; a restore whose copy fails leaves it in the store, whole.
  for (int i = 0; i < 4 && rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes < r.size; ++i) {
    rig.pager->hint(ctx, HintKind::kPark);
    rig.pager->tick();
    rig.pager->drain();
  }
  ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, r.size);
  const uint64_t stored = rig.store->used_bytes();
  fail(CUDA_ERROR_LAUNCH_FAILED);
  rig.pager->restore(r.id);
  rig.pager->drain();
  fail(0);
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, r.size) << "still in NVMe";
  EXPECT_EQ(rig.store->used_bytes(), stored) << "its store copy was kept";
  ASSERT_EQ(rig.pager->restore(r.id), Status::kOk);
  rig.pager->drain();
  for (uint64_t i = 0; i < r.size; ++i) ASSERT_EQ(r.bytes()[i], std::byte{0x3C}) << i;
  EXPECT_EQ(rig.pager->audit(), "");
}

// A region of two chunks of context `name`, every byte `fill`, parked until
// it has spilled (the caller checks that it did).
MoverRig::Region parked_region(MoverRig& rig, const std::string& name, uint8_t fill) {
  auto r = rig.alloc(128 * KiB, name);
  std::memset(r.bytes(), fill, r.size);
  EXPECT_EQ(rig.pager->hint(rig.pager->find_context(name), HintKind::kPark), Status::kOk);
  rig.pager->drain();
  return r;
}

TEST(CudaMoverOnStandIn, ACorruptStoreObjectIsNeverRestored) {
  MoverRig rig(STANDIN_LIBCUDA, spilling_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto r = parked_region(rig, "ctx", 0x77);
  ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 128 * KiB);
  ASSERT_TRUE(rig.store->corrupt(chunk_key("", "ctx", 1), 5));
  EXPECT_EQ(rig.pager->restore(r.id), Status::kCorrupt);
  EXPECT_EQ(rig.total_unsafe.load(), 1u) << "the bad chunk stays unreadable; launches reading it fail";
  for (uint64_t i = 0; i < 64 * KiB; ++i) ASSERT_EQ(r.bytes()[i], std::byte{0x77}) << "chunk 0 came back";
}

// A parked context spills by the thousand in real use; a launch that reads a
// spilled range waits for its restore. With copies that take time (events
// answer "not ready" a few times), the restore must get the next staging slot
// free, not wait for every spill queued before it: at most the copies already
// under way when it came go out before it.
TEST(CudaMoverOnStandIn, ARestoreIsNotQueuedBehindTheSpillsOfAParkedContext) {
  MoverRig rig(STANDIN_LIBCUDA, spilling_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto small = parked_region(rig, "small", 0x11);
  ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, small.size);

  constexpr uint32_t kChunks = 64;
  auto big = rig.alloc(kChunks * 64 * KiB, "big");
  for (uint64_t i = 0; i < big.size; ++i) big.bytes()[i] = std::byte(i * 13 + (i >> 16));
  std::optional<EventLag> lag(std::in_place, rig, 3);
  rig.standin<void (*)()>("standin_log_clear")();
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("big"), HintKind::kPark), Status::kOk);
  // Until every staging slot carries a spill's copy.
  for (int i = 0; i < 10'000 && count_prefix(standin_log(rig), "cuMemcpyDtoHAsync") < cuda::CudaMover::kStagingChunks; ++i)
    rig.pager->tick();
  const size_t under_way = count_prefix(standin_log(rig), "cuMemcpyDtoHAsync");
  ASSERT_GE(under_way, cuda::CudaMover::kStagingChunks);
  ASSERT_LT(under_way, kChunks / 2) << "the spills must still be going when the restore comes";

  ASSERT_EQ(rig.pager->restore(small.id), Status::kOk);
  auto log = standin_log(rig);
  size_t copies_out_before = 0;
  bool restored = false;
  for (const auto& l : log) {
    if (l.rfind("cuMemcpyHtoDAsync", 0) == 0) {
      restored = true;
      break;
    }
    copies_out_before += l.rfind("cuMemcpyDtoHAsync", 0) == 0;
  }
  ASSERT_TRUE(restored);
  EXPECT_LE(copies_out_before, under_way) << "the restore waited for spills queued after the copies under way";
  for (uint64_t i = 0; i < small.size; ++i) ASSERT_EQ(small.bytes()[i], std::byte{0x11}) << i;

  lag.reset();
  rig.pager->drain();
  EXPECT_EQ(count_prefix(standin_log(rig), "cuMemcpyDtoHAsync"), kChunks) << "every spill still happened";
  ASSERT_EQ(rig.pager->restore(big.id), Status::kOk);
  for (uint64_t i = 0; i < big.size; ++i) ASSERT_EQ(big.bytes()[i], std::byte(i * 13 + (i >> 16))) << i;
  EXPECT_EQ(rig.total_unsafe.load(), 0u);
  EXPECT_EQ(rig.pager->audit(), "");
}

// Context "pub": A (4 chunks) and B (2 chunks) with random bytes, parked with
// host RAM for 3 chunks: A0..A2 spill, A3 and B0 stay in host RAM; then B1
// is used and comes to HBM. Returns the bytes the context should hold.
struct SpreadContext {
  MoverRig::Region a, b;
  std::vector<std::byte> model;
};

Config spread_config() {
  Config c = standin_config();
  c.host_capacity = 256 * KiB;  // spill down to 0.85 x 256K: three of six chunks stay
  return c;
}

SpreadContext spread_context(MoverRig& rig) {
  SpreadContext sc;
  sc.a = rig.alloc(256 * KiB, "pub");
  sc.b = rig.alloc(128 * KiB, "pub");
  std::mt19937_64 rng(5);
  sc.model.resize(sc.a.size + sc.b.size);
  for (auto& x : sc.model) x = std::byte(rng());
  std::memcpy(sc.a.bytes(), sc.model.data(), sc.a.size);
  std::memcpy(sc.b.bytes(), sc.model.data() + sc.a.size, sc.b.size);
  EXPECT_EQ(rig.pager->hint(rig.pager->find_context("pub"), HintKind::kPark), Status::kOk);
  rig.pager->drain();
  EXPECT_EQ(rig.pager->access(sc.b.id, 1, false), Status::kOk);
  rig.pager->drain();
  return sc;
}

// Where chunk i of a region rests, as Pager::read_context would ask for it.
ChunkRef ref_of(const MoverRig& rig, RegionId id, uint32_t i) {
  const Region* r = rig.pager->region(id);
  ChunkRef ref{id, i, r->base + r->chunk_offset(i), r->chunk_len(i), r->chunks[i].tier, {}};
  if (ref.tier == Tier::kNvme) ref.key = chunk_key("", "pub", r->key_base + i);
  return ref;
}

std::vector<std::byte> read_all(MoverRig& rig, Status* st) {
  std::vector<std::byte> got;
  *st = rig.pager->read_context(rig.pager->find_context("pub"), [&](std::span<const std::byte> c) {
    got.insert(got.end(), c.begin(), c.end());
    return Status::kOk;
  });
  return got;
}

TEST(CudaMoverOnStandIn, ReadingAContextBackCopiesEveryTierExactlyAndMovesNothing) {
  MoverRig rig(STANDIN_LIBCUDA, spread_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  SpreadContext sc = spread_context(rig);
  StatsSnapshot before = rig.pager->stats();
  ASSERT_EQ(before.tiers[index(Tier::kNvme)].resident_bytes, 192 * KiB) << "A0..A2 spilled";
  ASSERT_EQ(before.tiers[index(Tier::kHost)].resident_bytes, 128 * KiB) << "A3, B0 in host RAM";
  ASSERT_EQ(before.tiers[index(Tier::kHbm)].resident_bytes, 64 * KiB) << "B1 in HBM";
  const uint32_t unsafe = rig.total_unsafe.load();
  EXPECT_EQ(unsafe, 3u) << "the spilled chunks' ranges were discarded";
  // A stream the program used: the fence records on it before any copy.
  CUstream prog = nullptr;
  ASSERT_EQ(rig.drv.streamCreate(&prog, 0), CUDA_SUCCESS);
  rig.streams.note(prog);
  rig.standin<void (*)()>("standin_log_clear")();
  const uint64_t fences = rig.mover->stats().fences;

  Status st = Status::kOk;
  std::vector<std::byte> got = read_all(rig, &st);
  ASSERT_EQ(st, Status::kOk);
  ASSERT_EQ(got.size(), sc.model.size());
  EXPECT_TRUE(got == sc.model) << "byte-exact, the spilled chunks from the store (their ranges hold garbage)";

  auto log = standin_log(rig);
  EXPECT_EQ(count_prefix(log, "cuMemcpyDtoHAsync_v2"), 3u) << "one copy per chunk in HBM or host RAM";
  for (const char* move : {"cuMemPrefetchAsync", "cuMemAdvise", "cuMemDiscardBatchAsync", "cuMemcpyHtoDAsync"})
    EXPECT_EQ(count_prefix(log, move), 0u) << move << ": reading must not move anything";
  char rec[64];
  std::snprintf(rec, sizeof rec, "cuEventRecord 0x%llx", reinterpret_cast<unsigned long long>(prog));
  size_t first_rec = log.size(), first_copy = log.size();
  for (size_t i = log.size(); i-- > 0;) {
    if (log[i].rfind(rec, 0) == 0) first_rec = i;
    if (log[i].rfind("cuMemcpyDtoHAsync_v2", 0) == 0) first_copy = i;
  }
  EXPECT_LT(first_rec, first_copy) << "the fence on the program's stream came before the copy";
  EXPECT_EQ(rig.mover->stats().fences - fences, 3u) << "one fence per chunk copied";
  EXPECT_EQ(rig.mover->stats().reads, 3u);
  StatsSnapshot after = rig.pager->stats();
  for (Tier t : {Tier::kHbm, Tier::kHost, Tier::kNvme})
    EXPECT_EQ(after.tiers[index(t)].resident_bytes, before.tiers[index(t)].resident_bytes) << to_string(t);
  EXPECT_EQ(after.moves, before.moves);
  EXPECT_EQ(rig.total_unsafe.load(), unsafe) << "nothing marked or unmarked";
  EXPECT_EQ(rig.pager->audit(), "");
  rig.drv.streamDestroy(prog);
}

TEST(CudaMoverOnStandIn, ReadChunkRefusesBadReferences) {
  MoverRig rig(STANDIN_LIBCUDA, spread_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  SpreadContext sc = spread_context(rig);
  std::vector<std::byte> buf(64 * KiB);
  ChunkRef host = ref_of(rig, sc.a.id, 3);
  ASSERT_EQ(host.tier, Tier::kHost);
  EXPECT_EQ(rig.mover->read_chunk(host, std::span(buf).first(100)), Status::kInvalid) << "out.size() != len";
  ChunkRef big = host;
  big.len = 128 * KiB;
  std::vector<std::byte> big_buf(big.len);
  EXPECT_EQ(rig.mover->read_chunk(big, big_buf), Status::kInvalid) << "longer than a chunk";
  ChunkRef outside = host;
  outside.addr = sc.a.base + sc.a.size;
  EXPECT_EQ(rig.mover->read_chunk(outside, buf), Status::kInvalid) << "not the region's range";
  ChunkRef unknown = host;
  unknown.region = RegionId{77, 3};
  EXPECT_EQ(rig.mover->read_chunk(unknown, buf), Status::kNotFound);
  ChunkRef untouched = host;
  untouched.tier = Tier::kUnpopulated;
  EXPECT_EQ(rig.mover->read_chunk(untouched, buf), Status::kInvalid) << "the pager reads those as zeros itself";
  ChunkRef gone = ref_of(rig, sc.a.id, 0);
  ASSERT_EQ(gone.tier, Tier::kNvme);
  gone.key = chunk_key("", "pub", 999);
  EXPECT_EQ(rig.mover->read_chunk(gone, buf), Status::kNotFound) << "the store has no such object";
  // A mover without a store cannot read the NVMe tier.
  cuda::CudaMover bare(rig.drv, rig.cfg, rig.ctx, nullptr, rig.q, rig.streams, {});
  bare.region_added(sc.a.id, sc.a.base, sc.a.size);
  EXPECT_EQ(bare.read_chunk(ref_of(rig, sc.a.id, 0), buf), Status::kUnsupported);
  EXPECT_EQ(bare.read_chunk(host, buf), Status::kOk) << "...but the range itself";
  EXPECT_EQ(std::memcmp(buf.data(), sc.model.data() + 3 * 64 * KiB, buf.size()), 0);
}

TEST(CudaMoverOnStandIn, ReadChunkNeverRacesWorkUnderWayAndGivesUpWithoutCopying) {
  MoverRig rig(STANDIN_LIBCUDA, spread_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  SpreadContext sc = spread_context(rig);
  std::vector<std::byte> buf(64 * KiB, std::byte{0xEE});
  const ChunkRef host = ref_of(rig, sc.a.id, 3), hbm = ref_of(rig, sc.b.id, 1);
  ASSERT_EQ(hbm.tier, Tier::kHbm);
  rig.standin<void (*)()>("standin_log_clear")();
  // A stream capture is active: no event may be recorded, so no fence.
  rig.streams.capture_begins();
  EXPECT_EQ(rig.mover->read_chunk(hbm, buf), Status::kBusy);
  rig.streams.capture_ends();
  // A launch is between its scan and the driver call (it never returns here):
  // the read waits for it, up to kFenceTimeoutNs, then gives up.
  {
    cuda::Quiescence::Bracket stuck(rig.q);
    EXPECT_EQ(rig.mover->read_chunk(host, buf), Status::kBusy);
  }
  EXPECT_EQ(count_prefix(standin_log(rig), "cuMemcpyDtoHAsync_v2"), 0u) << "nothing was copied";
  EXPECT_EQ(buf, std::vector<std::byte>(64 * KiB, std::byte{0xEE})) << "out untouched";
  EXPECT_GE(rig.mover->stats().fence_refusals, 2u);
  // A chunk whose spill has begun is marked unsafe: its range no longer
  // holds its bytes. (A mover of its own, so the pager's chunks stay put.)
  {
    cuda::CudaMover other(rig.drv, rig.cfg, rig.ctx, rig.store.get(), rig.q, rig.streams, {});
    CUdeviceptr p = 0;
    ASSERT_EQ(rig.drv.memAllocManaged(&p, 64 * KiB, CU_MEM_ATTACH_GLOBAL), CUDA_SUCCESS);
    const RegionId id{0, 1};
    other.region_added(id, p, 64 * KiB);
    MoveRequest spill;
    spill.kind = MoveKind::kSpill;
    spill.from = Tier::kHost;
    spill.to = Tier::kNvme;
    spill.region = id;
    spill.addr = p;
    spill.len = 64 * KiB;
    spill.key = chunk_key("", "other", 0);
    ASSERT_EQ(other.submit(spill), Status::kOk);
    EXPECT_EQ(other.read_chunk(ChunkRef{id, 0, p, 64 * KiB, Tier::kHost, {}}, buf), Status::kBusy);
    std::vector<MoveCompletion> done(1);
    ASSERT_EQ(other.wait(done), 1u);
    EXPECT_EQ(done[0].status, Status::kOk);
    rig.drv.memFree(p);
  }
  // Nothing in the way any more: the same reads succeed.
  EXPECT_EQ(rig.mover->read_chunk(hbm, buf), Status::kOk);
  EXPECT_EQ(std::memcmp(buf.data(), sc.model.data() + sc.a.size + 64 * KiB, buf.size()), 0);
}

}  // namespace
}  // namespace kvpager::testing

namespace kvpager::testing {
namespace {

// A store queue whose reads and writes finish only when the test says so
// (or, when the mover blocks in wait(), the oldest one): a test sees what is
// in flight at once. Over `depth` in flight it answers kAgain.
class HeldQueue final : public StoreQueue {
 public:
  struct Io {
    uint64_t tag;
    bool put;
    ObjectKey key;
    std::span<std::byte> bytes;
  };
  // depth: submits past it are refused (kAgain); declared: capacity() says so.
  HeldQueue(Store& store, size_t depth, bool declared) : store_(store), depth_(depth), declared_(declared) {}

  Status submit_put(uint64_t tag, const ObjectKey& key, std::span<const std::byte> bytes) override {
    return hold(Io{tag, true, key, {const_cast<std::byte*>(bytes.data()), bytes.size()}});
  }
  Status submit_get(uint64_t tag, const ObjectKey& key, std::span<std::byte> out) override {
    return hold(Io{tag, false, key, out});
  }
  void flush() override {}
  size_t poll(std::span<StoreCompletion> out) override { return hand_back(done_, out); }
  size_t wait(std::span<StoreCompletion> out) override {
    if (done_.empty() && !held_.empty()) finish(0);
    return poll(out);
  }
  size_t pending() const override { return held_.size() + done_.size(); }
  size_t in_flight() const override { return held_.size(); }
  size_t capacity() const override { return declared_ && depth_ != SIZE_MAX ? depth_ : 0; }

  size_t held(bool puts) const {
    return static_cast<size_t>(std::count_if(held_.begin(), held_.end(), [&](const Io& io) { return io.put == puts; }));
  }
  // Runs every held read (puts = false) or write against the store.
  void release(bool puts) {
    for (size_t i = held_.size(); i-- > 0;)
      if (held_[i].put == puts) finish(i);
  }
  size_t peak() const { return peak_; }
  size_t refused() const { return refused_; }

 private:
  Status hold(Io io) {
    if (held_.size() >= depth_) {
      ++refused_;
      return Status::kAgain;
    }
    held_.push_back(io);
    peak_ = std::max(peak_, held_.size());
    return Status::kOk;
  }
  void finish(size_t i) {
    const Io io = held_[i];
    held_.erase(held_.begin() + static_cast<ptrdiff_t>(i));
    done_.push_back(StoreCompletion{io.tag, io.put ? store_.put(io.key, io.bytes) : store_.get(io.key, io.bytes)});
  }

  Store& store_;
  size_t depth_;
  bool declared_;
  std::vector<Io> held_;
  std::deque<StoreCompletion> done_;
  size_t peak_ = 0, refused_ = 0;
};

struct HeldRig {
  HeldQueue* queue = nullptr;
  MoverRig rig;
  explicit HeldRig(Config c, size_t depth = SIZE_MAX, bool declared = true)
      : rig(STANDIN_LIBCUDA, std::move(c), RigStore{0, false, [this, depth, declared](Store& s) {
                                                      auto q = std::make_unique<HeldQueue>(s, depth, declared);
                                                      queue = q.get();
                                                      return q;
                                                    }}) {}
};

void fill(const MoverRig::Region& r, uint8_t seed) {
  for (uint64_t i = 0; i < r.size; ++i) r.bytes()[i] = std::byte(i * 31 + seed + (i >> 16));
}
void expect_filled(const MoverRig::Region& r, uint8_t seed) {
  for (uint64_t i = 0; i < r.size; ++i) ASSERT_EQ(r.bytes()[i], std::byte(i * 31 + seed + (i >> 16))) << i;
}

// The NVMe tier reaches its bandwidth only with several I/Os in flight: the
// spills of a parked context go into the store together (one per staging
// slot but the one kept for restores), and the pager thread goes on while
// they are under way instead of waiting for each write.
TEST(CudaMoverOnStandIn, AParkedContextKeepsSeveralStoreWritesInFlightWhileThePagerGoesOn) {
  HeldRig h(spilling_config());
  MoverRig& rig = h.rig;
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto big = rig.alloc(16 * 64 * KiB, "big");
  fill(big, 3);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("big"), HintKind::kPark), Status::kOk);
  for (int i = 0; i < 200; ++i) rig.pager->tick();
  EXPECT_EQ(h.queue->held(true), cuda::CudaMover::kStagingChunks - 1) << "every staging slot but one writes at once";
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 0u) << "...and none has finished";
  // Meanwhile the pager serves other work: a promote completes.
  auto other = rig.alloc(64 * KiB, "other");
  ASSERT_EQ(rig.pager->access(other.id, 0, false), Status::kOk);
  for (int i = 0; i < 50 && rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes == 0; ++i) rig.pager->tick();
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes, 64 * KiB);
  EXPECT_EQ(rig.mover->stats().store_peak, cuda::CudaMover::kStagingChunks - 1);

  h.queue->release(true);
  rig.pager->drain();  // the rest, each held until wait() gives up on the test
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, big.size);
  ASSERT_EQ(rig.pager->restore(big.id), Status::kOk);
  expect_filled(big, 3);
  EXPECT_EQ(rig.total_unsafe.load(), 0u);
  EXPECT_EQ(rig.pager->audit(), "");
}

// A launch that reads a spilled range waits for its restore; the restore
// must not wait behind the store writes of a parked context: a spill never
// takes the last free staging slot, nor the last slot of the store's queue,
// so the restore's read goes to the store at once, while every write is
// still under way. Both limits: a queue deeper than the staging (unlimited
// here), and one shallower (2: one write at a time, one slot for the read).
TEST(CudaMoverOnStandIn, ARestoreReadsFromTheStoreWhileAParkedContextsWritesAreUnderWay) {
  for (size_t depth : {SIZE_MAX, size_t{2}}) {
    SCOPED_TRACE(depth == SIZE_MAX ? std::string("unlimited queue") : "queue depth " + std::to_string(depth));
    HeldRig h(spilling_config(), depth);
    MoverRig& rig = h.rig;
    ASSERT_TRUE(rig.ok()) << rig.why;
    auto small = rig.alloc(128 * KiB, "small");
    fill(small, 9);
    ASSERT_EQ(rig.pager->hint(rig.pager->find_context("small"), HintKind::kPark), Status::kOk);
    rig.pager->drain();
    ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, small.size);

    auto big = rig.alloc(32 * 64 * KiB, "big");
    fill(big, 4);
    ASSERT_EQ(rig.pager->hint(rig.pager->find_context("big"), HintKind::kPark), Status::kOk);
    for (int i = 0; i < 200; ++i) rig.pager->tick();
    const size_t writing = h.queue->held(true);
    ASSERT_EQ(writing, std::min<size_t>(cuda::CudaMover::kStagingChunks, depth) - 1);

    ASSERT_EQ(rig.pager->hint(rig.pager->find_context("small"), HintKind::kPrefetch), Status::kOk);
    for (int i = 0; i < 50 && h.queue->held(false) == 0; ++i) rig.pager->tick();
    EXPECT_EQ(h.queue->held(false), 1u) << "a restore's read is under way beside the held writes";
    EXPECT_EQ(h.queue->held(true), writing);
    auto in_hbm = [&] {
      const Region* r = rig.pager->region(small.id);
      return r->chunks[0].tier == Tier::kHbm && r->chunks[1].tier == Tier::kHbm;
    };
    for (int i = 0; i < 50 && !in_hbm(); ++i) {
      h.queue->release(false);  // reads only
      rig.pager->tick();
    }
    EXPECT_TRUE(in_hbm());
    EXPECT_EQ(h.queue->held(true), writing) << "restored while the writes were still held";
    expect_filled(small, 9);

    h.queue->release(true);
    rig.pager->drain();
    ASSERT_EQ(rig.pager->restore(big.id), Status::kOk);
    expect_filled(big, 4);
    EXPECT_EQ(rig.pager->audit(), "");
  }
}

// A store whose queue is full answers kAgain: the move waits for a later
// pass (its bytes and its staging slot stay), and nothing is lost. This
// queue does not declare its depth (capacity 0), so the mover learns it only
// from the refusals.
TEST(CudaMoverOnStandIn, AFullStoreQueueIsRetriedAndNothingIsLost) {
  HeldRig h(spilling_config(), /*depth=*/2, /*declared=*/false);
  MoverRig& rig = h.rig;
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto big = rig.alloc(16 * 64 * KiB, "big");
  fill(big, 5);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("big"), HintKind::kPark), Status::kOk);
  rig.pager->drain();
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, big.size);
  EXPECT_LE(h.queue->peak(), 2u);
  EXPECT_GT(h.queue->refused(), 0u);
  EXPECT_EQ(rig.mover->stats().store_full, h.queue->refused());
  ASSERT_EQ(rig.pager->restore(big.id), Status::kOk);
  expect_filled(big, 5);
  EXPECT_EQ(rig.total_unsafe.load(), 0u);
  EXPECT_EQ(rig.pager->audit(), "");
}

// The store's queue full of somebody else's writes -- a publication's
// ContextWriter on the pager thread holds every slot -- while a parked
// context spills: the spills are refused (kAgain) with no I/O of the mover's
// own in flight, and must still go on as the store's queue drains (the mover
// reaps it), not spin forever. A watchdog turns a hang into a failure.
TEST(CudaMoverOnStandIn, SpillsRefusedBehindAnotherWritersFullQueueGoOnWhenItDrains) {
  Config c = spilling_config();
  c.store_queue_depth = 2;
  MoverRig rig(STANDIN_LIBCUDA, c, RigStore{0, true, {}});
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto big = rig.alloc(4 * 64 * KiB, "big");
  fill(big, 1);
  store::ContextMeta meta;
  meta.name = "pub";
  auto w = rig.token->begin_context(meta);
  ASSERT_TRUE(w);
  const std::vector<std::byte> chunk(64 * KiB, std::byte{7});
  ASSERT_EQ(w->append(chunk), Status::kOk);  // two appends: both slots the writer's
  ASSERT_EQ(w->append(chunk), Status::kOk);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("big"), HintKind::kPark), Status::kOk);
  std::atomic<bool> finished{false};
  std::thread watchdog([&] {
    for (int i = 0; i < 200 && !finished.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!finished.load()) {
      std::fprintf(stderr, "FAILED: the spills behind the writer's full queue never went on (store_full=%llu)\n",
                   static_cast<unsigned long long>(rig.mover->stats().store_full));
      std::_Exit(3);
    }
  });
  rig.pager->drain();
  finished = true;
  watchdog.join();
  EXPECT_GT(rig.mover->stats().store_full, 0u) << "the spills did meet a full queue";
  EXPECT_EQ(w->commit(), Status::kOk) << "the writer's publication completes too";
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, big.size);
  ASSERT_EQ(rig.pager->restore(big.id), Status::kOk);
  expect_filled(big, 1);
  EXPECT_EQ(rig.pager->audit(), "");
}

// What libkvpager.so runs: the token store through its io_uring queue (the
// read/write fallback where io_uring is not allowed), with moves that stay in
// flight across polls. Every byte survives.
TEST(CudaMoverOnStandIn, EveryByteSurvivesThroughTheTokenStoresQueue) {
  MoverRig rig(STANDIN_LIBCUDA, standin_config(), RigStore{0, true, {}});
  ASSERT_TRUE(rig.ok()) << rig.why;
  EventLag lag(rig, 2);
  WorkloadResult r = run_integrity_workload(rig, 2'000, 8, 512 * KiB, 13);
  EXPECT_EQ(r.mismatches, 0u) << r.detail;
  for (MoveKind k : {MoveKind::kSpill, MoveKind::kRestore})
    EXPECT_GT(r.per_kind[static_cast<size_t>(k)], 0u) << to_string(k);
  EXPECT_EQ(rig.pager->audit(), "");
  EXPECT_EQ(rig.mover->stats().driver_errors, 0u);
  const store::StoreStats st = rig.token->stats();
  EXPECT_GT(st.puts, 0u) << st.engine;
  EXPECT_EQ(st.corruption_events + st.io_errors, 0u);
}

// scripts/bench-gpu-mover's setup (tests/bench/bench_gpu_mover.cpp), smaller:
// one context, 2 MiB chunks, a budget that holds all of it below the high
// watermark, only the hint prefetcher.
Config bench_config(uint64_t bytes) {
  Config c;
  c.chunk_size = 2 * MiB;
  c.hbm_budget = bytes / 9 * 10 / c.chunk_size * c.chunk_size + 4 * c.chunk_size;
  c.host_capacity = 4 * bytes;
  c.prefetchers = kPrefetchHint;
  c.spill_idle_ns = 3'600'000'000'000;
  return c;
}

// What the benchmark did on the first GPU run ("the prefetch did not bring it
// all in", in its second round): prefetch a context, park it without reading
// it, prefetch it again. Every chunk the hint staged left HBM unread; that used
// to mute the hint prefetcher (prefetch_waste_ceiling), and the next hint staged
// nothing while hint() said kOk. A hint is an instruction, not a guess: its
// waste is counted, and it is carried out every time.
TEST(CudaMoverOnStandIn, AHintWhoseContextWasParkedUnreadIsStillCarriedOutAndItsWasteCounted) {
  const uint64_t bytes = 128 * MiB;
  MoverRig rig(STANDIN_LIBCUDA, bench_config(bytes), RigStore{0, true, {}});
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto r = rig.alloc(bytes, "bench");
  std::memset(r.bytes(), 1, bytes);
  const ContextId ctx = rig.pager->find_context("bench");
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPrefetch), Status::kOk);
  rig.pager->drain();
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes, bytes) << "the first prefetch: all of it";
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPark), Status::kOk);
  rig.pager->drain();
  const PrefetcherStats wasted = rig.pager->stats().prefetchers.at(0);
  EXPECT_EQ(wasted.wasted_bytes, bytes) << "the waste is counted";
  EXPECT_FALSE(wasted.throttled);
  EXPECT_EQ(wasted.throttle_events, 0u);
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPrefetch), Status::kOk);
  rig.pager->drain();
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes, bytes) << "the second hint: all of it again";
  EXPECT_EQ(rig.pager->stats().prefetchers.at(0).issued_bytes, 2 * bytes);
  EXPECT_EQ(rig.pager->audit(), "");
}

// The benchmark as it runs now, and an engine's turns: prefetch(context)
// ahead of a turn, the turn reads it, park(context) after. Every round the
// hint brings the whole context in, with moves in flight across polls as on
// a GPU, and the hint prefetcher is never muted.
TEST(CudaMoverOnStandIn, AContextPrefetchedReadAndParkedComesBackWholeOnEveryPrefetchHint) {
  const uint64_t bytes = 128 * MiB;
  MoverRig rig(STANDIN_LIBCUDA, bench_config(bytes), RigStore{0, true, {}});
  ASSERT_TRUE(rig.ok()) << rig.why;
  EventLag lag(rig, 2);
  auto r = rig.alloc(bytes, "bench");
  std::memset(r.bytes(), 1, bytes);
  const ContextId ctx = rig.pager->find_context("bench");
  const auto nchunks = static_cast<uint32_t>(bytes / rig.cfg.chunk_size);
  for (int round = 0; round < 4; ++round) {
    ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPrefetch), Status::kOk);
    rig.pager->drain();
    ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes, bytes) << "round " << round;
    const uint64_t faults = rig.pager->stats().faults;
    for (uint32_t i = 0; i < nchunks; ++i) ASSERT_EQ(rig.pager->access(r.id, i, false), Status::kOk);
    EXPECT_EQ(rig.pager->stats().faults, faults) << "round " << round << ": every read a hit";
    ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPark), Status::kOk);
    rig.pager->drain();
    ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes, 0u) << "round " << round;
  }
  const PrefetcherStats hint = rig.pager->stats().prefetchers.at(0);
  EXPECT_EQ(hint.issued_bytes, 4 * bytes);
  EXPECT_EQ(hint.used_bytes, 4 * bytes);
  EXPECT_EQ(hint.wasted_bytes, 0u);
  EXPECT_EQ(hint.throttle_events, 0u);
  EXPECT_EQ(rig.mover->stats().driver_errors, 0u);
  for (uint64_t i = 0; i < bytes; i += 4096) ASSERT_EQ(r.bytes()[i], std::byte{1}) << "byte " << i;
  EXPECT_EQ(rig.pager->audit(), "");
}


std::atomic<uint64_t> g_event_queries{0};
PFN_cuEventQuery_v2000 g_real_event_query = nullptr;
CUresult counting_event_query(CUevent e) {
  g_event_queries.fetch_add(1);
  return g_real_event_query(e);
}

// One batch of 512 chunk moves in flight: each tick asks the driver about its
// event once, not once per chunk. The pager ticks every 50 us while moves are
// pending, and every query enters libcuda beside the program's launches (a
// swap keeps a thousand or more chunks in flight).
TEST(CudaMoverOnStandIn, ABatchInFlightCostsOneEventQueryPerTickNotOnePerChunk) {
  Config c = hint_config();
  c.hbm_budget = 64 * MiB;
  MoverRig rig(STANDIN_LIBCUDA, c);
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto r = rig.alloc(32 * MiB, "ctx");  // 512 chunks of 64 KiB
  std::memset(r.bytes(), 7, 32 * MiB);
  g_real_event_query = rig.drv.eventQuery;
  rig.drv.eventQuery = &counting_event_query;
  {
    EventLag lag(rig, 1'000'000);  // the batch stays in flight for the ticks below
    ASSERT_EQ(rig.pager->hint(rig.pager->find_context("ctx"), HintKind::kPrefetch), Status::kOk);
    rig.pager->tick();
    ASSERT_GE(rig.mover->pending(), 512u);
    const uint64_t batches = rig.mover->stats().batches;
    for (int i = 0; i < 4; ++i) {
      g_event_queries = 0;
      rig.pager->tick();
      EXPECT_LE(g_event_queries.load(), batches) << "tick " << i << ": one query per batch in flight";
      EXPECT_GE(g_event_queries.load(), 1u) << "tick " << i << ": the batch is still asked about";
    }
  }
  rig.pager->drain();  // cuEventSynchronize completes a lagging event at once
  rig.drv.eventQuery = g_real_event_query;
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes, 32 * MiB);
  EXPECT_EQ(rig.mover->pending(), 0u);
  for (uint64_t i = 0; i < 32 * MiB; i += 4096) ASSERT_EQ(r.bytes()[i], std::byte{7}) << "byte " << i;
  EXPECT_EQ(rig.pager->audit(), "");
}

}  // namespace
}  // namespace kvpager::testing
