// The CUDA mover on the stand-in driver (no GPU): bytes survive every tier
// move, moves are batched, a spill waits for its fence and gives up (keeping
// the bytes) when it cannot have one or the store refuses the write.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

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

TEST(CudaMoverOnStandIn, ContiguousChunksMoveAsOneRange) {
  Config c = standin_config();
  c.prefetchers = kPrefetchHint;
  c.hbm_budget = 1 * MiB;
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

TEST(CudaMoverOnStandIn, ACorruptStoreObjectIsNeverRestored) {
  MoverRig rig(STANDIN_LIBCUDA, spilling_config());
  ASSERT_TRUE(rig.ok()) << rig.why;
  auto r = rig.alloc(128 * KiB, "ctx");
  std::memset(r.bytes(), 0x77, r.size);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("ctx"), HintKind::kPark), Status::kOk);
  rig.pager->drain();
  ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 128 * KiB);
  ASSERT_TRUE(rig.store->corrupt(chunk_key("", "ctx", 1), 5));
  EXPECT_EQ(rig.pager->restore(r.id), Status::kCorrupt);
  EXPECT_EQ(rig.total_unsafe.load(), 1u) << "the bad chunk stays unreadable; launches reading it fail";
  for (uint64_t i = 0; i < 64 * KiB; ++i) ASSERT_EQ(r.bytes()[i], std::byte{0x77}) << "chunk 0 came back";
}

}  // namespace
}  // namespace kvpager::testing
