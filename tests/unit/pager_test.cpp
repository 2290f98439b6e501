// The pager on the simulated device: budget, watermarks, spill rules, pins,
// hints, live changes, failures. Each test states the rule it checks.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "null_mover.h"
#include "sim_rig.h"

namespace kvpager {
namespace {

using testing::SimRig;
using testing::small_config;

// Lets every move finish, runs the budget controller, lets its moves finish.
void settle(Pager& p) {
  p.drain();
  p.tick();
  p.drain();
}

std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(i * 131 + seed));
  return v;
}

TEST(Pager, FirstTouchFaultsThenHits) {
  SimRig rig(small_config());
  RegionId r = rig.dev.alloc(256 * KiB);
  ASSERT_EQ(rig.pager->access(r, 0, false), Status::kOk);
  ASSERT_EQ(rig.pager->access(r, 0, false), Status::kOk);
  StatsSnapshot s = rig.pager->stats();
  EXPECT_EQ(s.accesses, 2u);
  EXPECT_EQ(s.faults, 1u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.faults_from[index(Tier::kUnpopulated)], 1u);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, BadRegionOrIndexIsInvalidNotACrash) {
  SimRig rig(small_config());
  RegionId r = rig.dev.alloc(100 * KiB);  // two chunks, the second short
  EXPECT_EQ(rig.pager->access(r, 2, false), Status::kInvalid);
  EXPECT_EQ(rig.pager->access(RegionId{77, 1}, 0, false), Status::kInvalid);
  ASSERT_EQ(rig.dev.free(r), Status::kOk);
  EXPECT_EQ(rig.pager->access(r, 0, false), Status::kInvalid) << "a stale id must not alias a new region";
  RegionId again = rig.dev.alloc(64 * KiB);
  EXPECT_EQ(again.slot, r.slot);
  EXPECT_EQ(rig.pager->access(r, 0, false), Status::kInvalid);
  EXPECT_EQ(rig.pager->region(r), nullptr);
}

TEST(Pager, HbmNeverHoldsMoreThanTheBudget) {
  Config cfg = small_config();
  cfg.prefetchers = kAllPrefetchers;
  SimRig rig(cfg);
  std::vector<RegionId> regions;
  for (int i = 0; i < 4; ++i) regions.push_back(rig.dev.alloc(1 * MiB));  // 4x the budget
  std::mt19937 rng(1);
  for (int step = 0; step < 5000; ++step) {
    RegionId r = regions[rng() % regions.size()];
    ASSERT_EQ(rig.pager->access(r, rng() % 16, rng() % 3 == 0), Status::kOk);
    ASSERT_LE(rig.pager->committed_bytes(Tier::kHbm), cfg.hbm_budget) << "step " << step;
    if (step % 97 == 0) rig.dev.compute(100'000);
  }
  EXPECT_LE(rig.mover->hbm_slots_used() * cfg.chunk_size, cfg.hbm_budget);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, BalanceDemotesFromAboveHighToLowWatermark) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.high_watermark = 0.75;
  cfg.low_watermark = 0.5;
  SimRig rig(cfg);
  RegionId r = rig.dev.alloc(1 * MiB);
  // 12 of 16 chunks = 0.75: at the mark, not above: nothing moves.
  for (uint32_t i = 0; i < 12; ++i) ASSERT_EQ(rig.pager->access(r, i, false), Status::kOk);
  rig.pager->drain();
  EXPECT_EQ(rig.pager->stats().evictions, 0u);
  // The 13th crosses it: demote down to 8 chunks.
  ASSERT_EQ(rig.pager->access(r, 12, false), Status::kOk);
  rig.pager->drain();
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes, 8 * 64 * KiB);
  // LRU: the oldest went. Chunk 12 (just used) is still in HBM, chunk 0 is not.
  EXPECT_EQ(rig.pager->region(r)->chunks[12].tier, Tier::kHbm);
  EXPECT_EQ(rig.pager->region(r)->chunks[0].tier, Tier::kHost);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, PinnedChunksAreNeverVictims) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  SimRig rig(cfg);
  RegionId pinned = rig.dev.alloc(256 * KiB, "pinned");
  RegionId other = rig.dev.alloc(2 * MiB, "other");
  for (uint32_t i = 0; i < 4; ++i) ASSERT_EQ(rig.pager->access(pinned, i, true), Status::kOk);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("pinned"), HintKind::kPin), Status::kOk);
  for (int round = 0; round < 3; ++round)
    for (uint32_t i = 0; i < 32; ++i) ASSERT_EQ(rig.pager->access(other, i, true), Status::kOk);
  for (uint32_t i = 0; i < 4; ++i) EXPECT_EQ(rig.pager->region(pinned)->chunks[i].tier, Tier::kHbm);
  EXPECT_EQ(rig.pager->audit(), "");
}

// Pinned chunks never leave HBM; if they filled it, every other access
// would find no room (the demo under `kvpager hint pin` x5 failed 7621
// accesses). So pins may hold at most low_watermark of the budget: a pin
// past it, or a budget or watermark below what is pinned, is refused and
// changes nothing.
TEST(Pager, PinsKeepRoomForEveryOtherAccess) {
  Config cfg = small_config();  // 1 MiB budget, 64 KiB chunks: pins may hold 0.85 MiB = 13 chunks
  cfg.prefetchers = 0;
  SimRig rig(cfg);
  RegionId big = rig.dev.alloc(1 * MiB, "big");
  RegionId twelve = rig.dev.alloc(12 * 64 * KiB, "twelve");
  RegionId two = rig.dev.alloc(100 * KiB, "two");  // 2 chunks, the second short: counted whole
  RegionId other = rig.dev.alloc(256 * KiB, "other");
  for (uint32_t i = 0; i < 16; ++i) ASSERT_EQ(rig.pager->access(big, i, true), Status::kOk);
  EXPECT_EQ(rig.pager->hint(rig.pager->find_context("big"), HintKind::kPin), Status::kNoSpace);
  EXPECT_EQ(rig.pager->pinned_bytes(), 0u) << "a refused pin pins nothing";
  for (uint32_t i = 0; i < 16; ++i) EXPECT_FALSE(rig.pager->region(big)->chunks[i].pinned);

  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("twelve"), HintKind::kPin), Status::kOk);
  EXPECT_EQ(rig.pager->pinned_bytes(), 12 * 64 * KiB);
  EXPECT_EQ(rig.pager->hint(rig.pager->find_context("two"), HintKind::kPin), Status::kNoSpace) << "14 chunks > 13";
  EXPECT_EQ(rig.pager->hint(rig.pager->find_context("twelve"), HintKind::kPin), Status::kOk) << "pinned already";
  EXPECT_EQ(rig.pager->set_context(two, "twelve"), Status::kNoSpace) << "joining a pinned context pins too";
  EXPECT_EQ(rig.pager->region(two)->ctx, rig.pager->find_context("two"));
  for (uint32_t i = 0; i < 12; ++i) ASSERT_EQ(rig.pager->access(twelve, i, true), Status::kOk);
  for (int round = 0; round < 2; ++round)
    for (uint32_t i = 0; i < 16; ++i) ASSERT_EQ(rig.pager->access(big, i, false), Status::kOk) << "room is left";
  for (uint32_t i = 0; i < 4; ++i) ASSERT_EQ(rig.pager->access(other, i, false), Status::kOk);

  std::string why;
  Config smaller = rig.pager->config();
  smaller.hbm_budget = 512 * KiB;
  EXPECT_EQ(rig.pager->apply(smaller, &why), Status::kInvalid);
  EXPECT_NE(why.find("pinned contexts hold 768.00 KiB"), std::string::npos) << why;
  Config lower = rig.pager->config();
  lower.low_watermark = 0.5;
  EXPECT_EQ(rig.pager->apply(lower, &why), Status::kInvalid) << "the limit is low_watermark of the budget";
  Config deeper = rig.pager->config();
  deeper.prefetch_depth = 7;
  EXPECT_EQ(rig.pager->apply(deeper, &why), Status::kOk) << "the pins do not block other knobs: " << why;
  EXPECT_EQ(rig.pager->config().hbm_budget, 1 * MiB) << "a refused change changes nothing";

  // Park leaves a pinned context where it is, so it says so, as drop does.
  EXPECT_EQ(rig.pager->hint(rig.pager->find_context("twelve"), HintKind::kPark), Status::kBusy);
  EXPECT_FALSE(rig.pager->contexts()[1].parked);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("twelve"), HintKind::kUnpin), Status::kOk);
  EXPECT_EQ(rig.pager->pinned_bytes(), 0u);
  EXPECT_EQ(rig.pager->apply(smaller, &why), Status::kOk) << why;
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("two"), HintKind::kPin), Status::kOk);
  EXPECT_EQ(rig.pager->pinned_bytes(), 2 * 64 * KiB) << rig.pager->region(two)->size << " bytes in whole chunks";
  EXPECT_EQ(rig.pager->audit(), "");
}

// Fills `r` so its chunks end up in host RAM.
void fill_and_push_out(SimRig& rig, RegionId r, RegionId pusher, uint32_t chunks) {
  for (uint32_t i = 0; i < chunks; ++i) ASSERT_EQ(rig.pager->access(r, i, true), Status::kOk);
  for (uint32_t i = 0; i < 16; ++i) ASSERT_EQ(rig.pager->access(pusher, i, true), Status::kOk);
  rig.pager->drain();
}

TEST(Pager, ActiveContextsNeverSpillEvenOverHostCapacity) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 512 * KiB;
  cfg.spill_idle_ns = 3'600'000'000'000;  // an hour
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(2 * MiB, "a");
  RegionId pusher = rig.dev.alloc(1 * MiB, "pusher");
  fill_and_push_out(rig, a, pusher, 32);
  rig.pager->tick();
  rig.pager->drain();
  StatsSnapshot s = rig.pager->stats();
  EXPECT_GT(s.tiers[index(Tier::kHost)].resident_bytes, cfg.host_capacity) << "host is over capacity...";
  EXPECT_EQ(s.moves[static_cast<size_t>(MoveKind::kSpill)], 0u) << "...but nothing idle may spill";
}

TEST(Pager, IdleContextsSpillAfterSpillIdle) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 512 * KiB;
  cfg.spill_idle_ns = 1'000'000'000;
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(2 * MiB, "a");
  RegionId pusher = rig.dev.alloc(1 * MiB, "pusher");
  fill_and_push_out(rig, a, pusher, 32);
  rig.dev.compute(500'000'000);
  EXPECT_EQ(rig.pager->stats().moves[static_cast<size_t>(MoveKind::kSpill)], 0u) << "idle 0.5 s < 1 s";
  for (int i = 0; i < 4; ++i) {
    rig.dev.compute(400'000'000);
    for (uint32_t c = 0; c < 16; ++c) ASSERT_EQ(rig.pager->access(pusher, c, false), Status::kOk);  // pusher stays busy
  }
  rig.pager->drain();
  StatsSnapshot s = rig.pager->stats();
  EXPECT_GT(s.moves[static_cast<size_t>(MoveKind::kSpill)], 0u);
  EXPECT_LE(s.tiers[index(Tier::kHost)].resident_bytes,
            static_cast<uint64_t>(static_cast<double>(cfg.host_capacity) * cfg.high_watermark));
  for (uint32_t c = 0; c < 16; ++c) EXPECT_NE(rig.pager->region(pusher)->chunks[c].tier, Tier::kNvme);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, ParkedContextsSpillAtOnceAndComeBackIntact) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 256 * KiB;
  cfg.spill_idle_ns = 3'600'000'000'000;
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(1 * MiB, "a");
  auto data = pattern(1 * MiB, 7);
  ASSERT_EQ(rig.dev.write(a, 0, data), Status::kOk);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("a"), HintKind::kPark), Status::kOk);
  rig.pager->drain();
  rig.pager->tick();
  rig.pager->drain();
  StatsSnapshot s = rig.pager->stats();
  EXPECT_EQ(s.tiers[index(Tier::kHbm)].resident_bytes, 0u) << "park demotes the whole context";
  EXPECT_GT(s.tiers[index(Tier::kNvme)].resident_bytes, 0u) << "and lets it spill";
  std::vector<std::byte> back(1 * MiB);
  ASSERT_EQ(rig.dev.read(a, 0, back), Status::kOk);
  EXPECT_EQ(back, data);
  EXPECT_GT(rig.pager->stats().faults_from[index(Tier::kNvme)], 0u);
  EXPECT_EQ(rig.pager->audit(), "");
}

// Publishing reads a context back: every chunk's bytes, from whichever tier
// holds them, in region-join order, and nothing moves or counts as a use.
TEST(Pager, ReadContextReturnsEveryTiersBytesInOrderAndMovesNothing) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 256 * KiB;
  cfg.spill_idle_ns = 3'600'000'000'000;
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(1 * MiB, "ctx");
  RegionId b = rig.dev.alloc(100 * KiB, "ctx");  // short last chunk
  RegionId c = rig.dev.alloc(192 * KiB, "ctx");  // never touched: zeros
  RegionId other = rig.dev.alloc(256 * KiB, "other");
  auto da = pattern(1 * MiB, 11), db = pattern(100 * KiB, 12);
  ASSERT_EQ(rig.dev.write(a, 0, da), Status::kOk);
  ContextId ctx = rig.pager->find_context("ctx");
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPark), Status::kOk);
  settle(*rig.pager);
  ASSERT_EQ(rig.dev.write(b, 0, db), Status::kOk);  // b in HBM, a demoted and partly spilled
  ASSERT_EQ(rig.dev.write(other, 0, pattern(256 * KiB, 13)), Status::kOk);
  settle(*rig.pager);
  const Region* ra = rig.pager->region(a);
  std::array<int, kNumTiers> seen{};
  for (uint32_t i = 0; i < ra->nchunks; ++i) ++seen[index(ra->chunks[i].tier)];
  for (const Region* r : {rig.pager->region(b), rig.pager->region(c)})
    for (uint32_t i = 0; i < r->nchunks; ++i) ++seen[index(r->chunks[i].tier)];
  ASSERT_GT(seen[index(Tier::kNvme)], 0) << "the setup must put chunks in every tier";
  ASSERT_GT(seen[index(Tier::kHost)], 0);
  ASSERT_GT(seen[index(Tier::kHbm)], 0);
  ASSERT_GT(seen[index(Tier::kUnpopulated)], 0);

  StatsSnapshot before = rig.pager->stats();
  std::vector<std::byte> got;
  size_t calls = 0;
  ASSERT_EQ(rig.pager->read_context(ctx, [&](std::span<const std::byte> chunk) {
    ++calls;
    got.insert(got.end(), chunk.begin(), chunk.end());
    return Status::kOk;
  }), Status::kOk);
  std::vector<std::byte> want = da;
  want.insert(want.end(), db.begin(), db.end());
  want.resize(want.size() + 192 * KiB, std::byte{0});
  EXPECT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want) << "bytes differ from what the program wrote";
  EXPECT_EQ(calls, 16u + 2u + 3u) << "one sink call per chunk";
  StatsSnapshot after = rig.pager->stats();
  EXPECT_EQ(after.moves, before.moves) << "reading moves nothing";
  EXPECT_EQ(after.accesses, before.accesses) << "and is not a use";
  for (Tier t : kStorageTiers)
    EXPECT_EQ(after.tiers[index(t)].resident_bytes, before.tiers[index(t)].resident_bytes) << to_string(t);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, ReadContextWaitsForMovesInFlightAndStopsAtTheFirstFailure) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 256 * KiB;
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(512 * KiB, "a");
  auto data = pattern(512 * KiB, 5);
  ASSERT_EQ(rig.dev.write(a, 0, data), Status::kOk);
  ContextId ctx = rig.pager->find_context("a");
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPark), Status::kOk);  // demotes in flight now
  bool moving = false;
  for (uint32_t i = 0; i < 8; ++i) moving = moving || rig.pager->region(a)->chunks[i].in_flight();
  ASSERT_TRUE(moving) << "the setup must leave moves in flight";
  std::vector<std::byte> got;
  ASSERT_EQ(rig.pager->read_context(ctx, [&](std::span<const std::byte> chunk) {
    got.insert(got.end(), chunk.begin(), chunk.end());
    return Status::kOk;
  }), Status::kOk);
  EXPECT_TRUE(got == data);

  size_t calls = 0;
  EXPECT_EQ(rig.pager->read_context(ctx, [&](std::span<const std::byte>) {
    ++calls;
    return Status::kNoSpace;
  }), Status::kNoSpace) << "the sink's failure is returned";
  EXPECT_EQ(calls, 1u) << "and stops the read";
  EXPECT_EQ(rig.pager->read_context(999, [](std::span<const std::byte>) { return Status::kOk; }), Status::kNotFound);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, PrefetchHintStagesAParkedContextAheadOfUse) {
  Config cfg = small_config();
  cfg.prefetchers = kPrefetchHint;
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(512 * KiB, "a");
  auto data = pattern(512 * KiB, 3);
  ASSERT_EQ(rig.dev.write(a, 0, data), Status::kOk);
  ContextId ctx = rig.pager->find_context("a");
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPark), Status::kOk);
  rig.pager->drain();
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPrefetch), Status::kOk);
  rig.pager->drain();
  StatsSnapshot before = rig.pager->stats();
  std::vector<std::byte> back(512 * KiB);
  ASSERT_EQ(rig.dev.read(a, 0, back), Status::kOk);
  EXPECT_EQ(back, data);
  StatsSnapshot after = rig.pager->stats();
  EXPECT_EQ(after.faults, before.faults) << "every chunk was already in HBM";
  ASSERT_EQ(after.prefetchers.size(), 1u);
  EXPECT_EQ(after.prefetchers[0].issued_bytes, 512 * KiB);
  EXPECT_EQ(after.prefetchers[0].used_bytes, 512 * KiB);
  EXPECT_EQ(after.prefetchers[0].wasted_bytes, 0u);
}

TEST(Pager, DropDiscardsEverywhereAndRefusesPinned) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(512 * KiB, "a");
  ASSERT_EQ(rig.dev.write(a, 0, pattern(512 * KiB, 1)), Status::kOk);
  ContextId ctx = rig.pager->find_context("a");
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPin), Status::kOk);
  EXPECT_EQ(rig.pager->hint(ctx, HintKind::kDrop), Status::kBusy);
  EXPECT_EQ(rig.pager->region(a)->chunks[0].tier, Tier::kHbm) << "a refused drop changes nothing";
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kUnpin), Status::kOk);
  ASSERT_EQ(rig.pager->hint(ctx, HintKind::kDrop), Status::kOk);
  for (uint32_t i = 0; i < 8; ++i) EXPECT_EQ(rig.pager->region(a)->chunks[i].tier, Tier::kUnpopulated);
  EXPECT_EQ(rig.mover->hbm_slots_used(), 0u);
  std::vector<std::byte> back(512 * KiB, std::byte{1});
  ASSERT_EQ(rig.dev.read(a, 0, back), Status::kOk);
  EXPECT_EQ(back, std::vector<std::byte>(512 * KiB, std::byte{0})) << "a dropped context reads as fresh zeros";
  EXPECT_EQ(rig.pager->hint(12345, HintKind::kDrop), Status::kNotFound);
}

TEST(Pager, RemoveRegionReleasesEverything) {
  Config cfg = small_config();
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(2 * MiB, "a");
  ASSERT_EQ(rig.dev.write(a, 0, pattern(2 * MiB, 9)), Status::kOk);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("a"), HintKind::kPark), Status::kOk);
  rig.pager->tick();
  ASSERT_EQ(rig.dev.free(a), Status::kOk);
  EXPECT_EQ(rig.mover->hbm_slots_used(), 0u);
  EXPECT_EQ(rig.mover->host_slots_used(), 0u);
  EXPECT_EQ(rig.store->objects(), 0u) << "spilled copies are erased with the region";
  EXPECT_EQ(rig.pager->find_context("a"), kNoContext);
  StatsSnapshot s = rig.pager->stats();
  for (Tier t : kStorageTiers) EXPECT_EQ(s.tiers[index(t)].resident_bytes, 0u);
  EXPECT_EQ(s.regions, 0u);
  EXPECT_EQ(rig.dev.free(a), Status::kNotFound);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, LiveBudgetCutDemotesBelowTheNewBudget) {
  Config cfg = small_config();
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(1 * MiB);
  for (uint32_t i = 0; i < 14; ++i) ASSERT_EQ(rig.pager->access(a, i, true), Status::kOk);
  Config next = rig.pager->config();
  next.hbm_budget = 256 * KiB;
  std::string why;
  ASSERT_EQ(rig.pager->apply(next, &why), Status::kOk) << why;
  rig.pager->drain();
  EXPECT_LE(rig.pager->committed_bytes(Tier::kHbm), 256 * KiB);
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].capacity_bytes, 256 * KiB);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, LiveChangesAreValidatedAndRefusalsChangeNothing) {
  SimRig rig(small_config());
  const Config before = rig.pager->config();
  std::string why;

  Config bad = before;
  bad.high_watermark = 1.5;
  EXPECT_EQ(rig.pager->apply(bad, &why), Status::kInvalid);
  EXPECT_NE(why.find("high_watermark"), std::string::npos) << why;

  Config fixed = before;
  fixed.chunk_size = 128 * KiB;
  EXPECT_EQ(rig.pager->apply(fixed, &why), Status::kInvalid);
  EXPECT_NE(why.find("chunk_size"), std::string::npos) << why;
  EXPECT_NE(why.find("cannot change"), std::string::npos) << why;

  Config too_big = before;
  too_big.hbm_budget = 2 * MiB;  // the simulated card has 1 MiB
  EXPECT_EQ(rig.pager->apply(too_big, &why), Status::kInvalid);
  EXPECT_NE(why.find("hbm_budget"), std::string::npos) << why;

  for (const Knob& k : knobs()) EXPECT_EQ(k.format(rig.pager->config()), k.format(before)) << k.name;
}

TEST(Pager, LivePolicyChangeKeepsEveryChunkAccountedFor) {
  Config cfg = small_config();
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(2 * MiB);
  for (uint32_t i = 0; i < 32; ++i) ASSERT_EQ(rig.pager->access(a, i, true), Status::kOk);
  for (PolicyKind p : {PolicyKind::kClock, PolicyKind::kCost, PolicyKind::kLru}) {
    Config next = rig.pager->config();
    next.eviction_policy = p;
    ASSERT_EQ(rig.pager->apply(next), Status::kOk);
    EXPECT_EQ(rig.pager->audit(), "");
    for (uint32_t i = 0; i < 32; ++i) ASSERT_EQ(rig.pager->access(a, (i * 7) % 32, false), Status::kOk);
    EXPECT_EQ(rig.pager->audit(), "");
  }
}

TEST(Pager, LivePrefetcherChangeKeepsCountersOfThoseThatStay) {
  Config cfg = small_config();
  cfg.prefetchers = kPrefetchHint;
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(256 * KiB, "a");
  for (uint32_t i = 0; i < 4; ++i) ASSERT_EQ(rig.pager->access(a, i, true), Status::kOk);
  ContextId ctx = rig.pager->find_context("a");
  rig.pager->hint(ctx, HintKind::kPark);
  rig.pager->drain();
  rig.pager->hint(ctx, HintKind::kPrefetch);
  rig.pager->drain();
  uint64_t issued = rig.pager->stats().prefetchers.at(0).issued_bytes;
  ASSERT_GT(issued, 0u);
  Config next = rig.pager->config();
  next.prefetchers = kPrefetchHint | kPrefetchSequential;
  ASSERT_EQ(rig.pager->apply(next), Status::kOk);
  auto s = rig.pager->stats();
  ASSERT_EQ(s.prefetchers.size(), 2u);
  EXPECT_EQ(s.prefetchers[0].name, "sequential");
  EXPECT_EQ(s.prefetchers[1].name, "hint");
  EXPECT_EQ(s.prefetchers[1].issued_bytes, issued);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, CorruptStoreCopyIsNeverServed) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 64 * KiB;
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(256 * KiB, "a");
  ASSERT_EQ(rig.dev.write(a, 0, pattern(256 * KiB, 5)), Status::kOk);
  rig.pager->hint(rig.pager->find_context("a"), HintKind::kPark);
  settle(*rig.pager);
  ASSERT_EQ(rig.pager->region(a)->chunks[0].tier, Tier::kNvme);
  ASSERT_TRUE(rig.store->corrupt(chunk_key("", "a", 0), 100));
  std::vector<std::byte> out(64 * KiB);
  EXPECT_EQ(rig.dev.read(a, 0, out), Status::kCorrupt);
  EXPECT_EQ(rig.pager->region(a)->chunks[0].tier, Tier::kNvme) << "the chunk did not reach HBM";
  // Other chunks are fine.
  EXPECT_EQ(rig.dev.read(a, 64 * KiB, out), Status::kOk);
  EXPECT_EQ(rig.pager->stats().move_failures, 1u);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, StoreFullStopsSpillsAndKeepsTheBytesInHostRam) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 64 * KiB;
  SimRig rig(cfg, /*store_capacity=*/128 * KiB);  // two chunks
  RegionId a = rig.dev.alloc(512 * KiB, "a");
  auto data = pattern(512 * KiB, 11);
  ASSERT_EQ(rig.dev.write(a, 0, data), Status::kOk);
  rig.pager->hint(rig.pager->find_context("a"), HintKind::kPark);
  for (int i = 0; i < 3; ++i) {
    rig.pager->tick();
    rig.pager->drain();
  }
  StatsSnapshot s = rig.pager->stats();
  EXPECT_TRUE(s.spill_disabled);
  EXPECT_EQ(s.tiers[index(Tier::kNvme)].resident_bytes, 128 * KiB);
  std::vector<std::byte> back(512 * KiB);
  ASSERT_EQ(rig.dev.read(a, 0, back), Status::kOk);
  EXPECT_EQ(back, data);
  EXPECT_EQ(rig.pager->audit(), "");
}

// Room freed where the pager does not see it (another writer of the store,
// a disk cleaned up) is found: one spill tries past the level the tier was
// refused at every 5 s, and one that lands lifts the pause. Spills used to
// stop for good at the first refusal.
TEST(Pager, SpillsPausedForRoomTryAgainLater) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 64 * KiB;
  SimRig rig(cfg, /*store_capacity=*/128 * KiB);  // two chunks
  // Someone else's object holds the store's room: nothing of ours fits.
  const ObjectKey theirs[] = {chunk_key("", "someone-else", 0), chunk_key("", "someone-else", 1)};
  for (const ObjectKey& k : theirs) ASSERT_EQ(rig.store->put(k, pattern(64 * KiB, 1)), Status::kOk);
  RegionId a = rig.dev.alloc(512 * KiB, "a");
  auto data = pattern(512 * KiB, 12);
  ASSERT_EQ(rig.dev.write(a, 0, data), Status::kOk);
  auto park_and_settle = [&] {
    rig.pager->hint(rig.pager->find_context("a"), HintKind::kPark);
    for (int i = 0; i < 3; ++i) {
      rig.pager->tick();
      rig.pager->drain();
    }
  };
  park_and_settle();
  EXPECT_TRUE(rig.pager->stats().spill_disabled);
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 0u);
  const uint64_t failures = rig.pager->stats().move_failures;
  // Freed behind the pager's back; within 5 s nothing tries again.
  for (const ObjectKey& k : theirs) ASSERT_EQ(rig.store->erase(k), Status::kOk);
  rig.dev.compute(1'000'000'000);
  park_and_settle();
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 0u);
  EXPECT_EQ(rig.pager->stats().move_failures, failures) << "no refused spill while paused";
  // After 5 s one spill probes, lands, and the rest follow.
  rig.dev.compute(5'000'000'000);
  park_and_settle();
  park_and_settle();
  EXPECT_EQ(rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes, 128 * KiB);
  std::vector<std::byte> back(512 * KiB);
  ASSERT_EQ(rig.dev.read(a, 0, back), Status::kOk);
  EXPECT_EQ(back, data);
  EXPECT_EQ(rig.pager->audit(), "");
}

// A context of 4 chunks parked until it spilled, read back (only read: no
// write reaches the pager) and parked again. Returns the objects the second
// spill wrote into the store.
uint64_t respill_after_read(SimRig& rig) {
  RegionId a = rig.dev.alloc(256 * KiB, "a");
  EXPECT_EQ(rig.dev.write(a, 0, pattern(256 * KiB, 2)), Status::kOk);
  ContextId ctx = rig.pager->find_context("a");
  rig.pager->hint(ctx, HintKind::kPark);
  settle(*rig.pager);
  const uint64_t written = rig.store->used_bytes();
  EXPECT_GT(written, 0u);
  std::vector<std::byte> out(256 * KiB);
  EXPECT_EQ(rig.dev.read(a, 0, out), Status::kOk);
  const uint64_t puts = rig.store->puts();
  rig.pager->hint(ctx, HintKind::kPark);
  settle(*rig.pager);
  const uint64_t wrote = rig.store->puts() - puts;
  EXPECT_EQ(rig.pager->region(a)->chunks[0].tier, Tier::kNvme);
  EXPECT_EQ(rig.store->used_bytes(), written) << "the same objects, rewritten or not";
  EXPECT_EQ(rig.dev.read(a, 0, out), Status::kOk);
  EXPECT_EQ(out, pattern(256 * KiB, 2));
  return wrote;
}

Config respill_config() {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 64 * KiB;
  return cfg;
}

TEST(Pager, CleanChunksWithAStoreCopySpillWithoutWriting) {
  SimRig rig(respill_config());
  EXPECT_EQ(respill_after_read(rig), 0u) << "its store copies were still right";
}

// Under a CUDA program the pager does not hear of writes (a kernel writes
// wherever its pointers lead): a chunk back from the store may have changed
// without a word, so its next spill writes it again.
TEST(Pager, WithUnobservedWritesARestoredChunkSpillsWithItsBytes) {
  SimRig rig(respill_config(), 0, WriteTracking::kUnobserved);
  EXPECT_EQ(respill_after_read(rig), 4u) << "every chunk written again";
}


// ---------------------------------------------------------------- regions inside contexts
// (the interposer tags sub-ranges of one allocation as contexts, and restores
// spilled regions before a launch reads them)

// Host RAM for `host` bytes, no prefetchers, nothing idle long enough to
// spill: what spills is what a test parks.
Config spill_config(uint64_t host) {
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = host;
  cfg.spill_idle_ns = 3'600'000'000'000;
  return cfg;
}

// Parks context `name` and lets everything settle, so its chunks spill.
void park_and_spill(SimRig& rig, const std::string& name) {
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context(name), HintKind::kPark), Status::kOk);
  settle(*rig.pager);
}

uint32_t chunks_in(const Pager& p, RegionId id, Tier t) {
  const Region* r = p.region(id);
  uint32_t n = 0;
  for (uint32_t i = 0; r && i < r->nchunks; ++i) n += r->chunks[i].tier == t && r->chunks[i].resting();
  return n;
}

TEST(Pager, SpilledChunksKeepTheirStoreNamesWhenAnotherRegionOfTheContextGoes) {
  // Store names are (context, chunk number); numbering by position in the
  // context would rename B's spilled chunks when A (before it) is freed.
  SimRig rig(spill_config(128 * KiB));
  RegionId a = rig.dev.alloc(256 * KiB, "ctx");
  RegionId b = rig.dev.alloc(256 * KiB, "ctx");
  auto data = pattern(256 * KiB, 3);
  ASSERT_EQ(rig.dev.write(b, 0, data), Status::kOk);
  park_and_spill(rig, "ctx");
  ASSERT_GT(chunks_in(*rig.pager, b, Tier::kNvme), 0u);
  ASSERT_EQ(rig.dev.free(a), Status::kOk);
  std::vector<std::byte> back(data.size());
  ASSERT_EQ(rig.dev.read(b, 0, back), Status::kOk);
  EXPECT_EQ(back, data);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, RestoreBringsEverySpilledChunkOfARegionBackToHostRam) {
  SimRig rig(spill_config(128 * KiB));
  RegionId a = rig.dev.alloc(512 * KiB, "a");
  auto data = pattern(512 * KiB, 9);
  ASSERT_EQ(rig.dev.write(a, 0, data), Status::kOk);
  park_and_spill(rig, "a");
  ASSERT_GT(chunks_in(*rig.pager, a, Tier::kNvme), 0u);
  const uint64_t restores = rig.pager->stats().moves[static_cast<size_t>(MoveKind::kRestore)];
  ASSERT_EQ(rig.pager->restore(a), Status::kOk);
  EXPECT_EQ(chunks_in(*rig.pager, a, Tier::kNvme), 0u);
  EXPECT_GT(rig.pager->stats().moves[static_cast<size_t>(MoveKind::kRestore)], restores);
  std::vector<std::byte> back(data.size());
  ASSERT_EQ(rig.dev.read(a, 0, back), Status::kOk);
  EXPECT_EQ(back, data);
  EXPECT_EQ(rig.pager->restore(RegionId{99, 1}), Status::kNotFound);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, RestoreReportsAChunkTheStoreCannotGiveBack) {
  SimRig rig(spill_config(128 * KiB));
  RegionId a = rig.dev.alloc(256 * KiB, "a");
  ASSERT_EQ(rig.dev.write(a, 0, pattern(256 * KiB, 1)), Status::kOk);
  park_and_spill(rig, "a");
  ASSERT_GE(chunks_in(*rig.pager, a, Tier::kNvme), 2u);
  uint32_t victim = 0;
  while (rig.pager->region(a)->chunks[victim].tier != Tier::kNvme) ++victim;
  ASSERT_TRUE(rig.store->corrupt(chunk_key("", "a", victim), 100));
  EXPECT_EQ(rig.pager->restore(a), Status::kCorrupt);
  EXPECT_EQ(chunks_in(*rig.pager, a, Tier::kNvme), 1u) << "the others came back; the corrupt one stays put";
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, SplitKeepsEveryChunkWhereItWasAndItsBytes) {
  SimRig rig(spill_config(256 * KiB));
  RegionId pool = rig.dev.alloc(1 * MiB, "pool");  // 16 chunks
  auto data = pattern(1 * MiB, 5);
  ASSERT_EQ(rig.dev.write(pool, 0, data), Status::kOk);
  park_and_spill(rig, "pool");  // some chunks in NVMe, some in host RAM
  ASSERT_GT(chunks_in(*rig.pager, pool, Tier::kNvme), 0u);
  std::array<uint32_t, kNumTiers> before{};
  for (Tier t : {Tier::kHbm, Tier::kHost, Tier::kNvme}) before[index(t)] = chunks_in(*rig.pager, pool, t);

  RegionId tail;
  EXPECT_EQ(rig.pager->split_region(pool, 100 * KiB, &tail), Status::kInvalid) << "not chunk-aligned";
  EXPECT_EQ(rig.pager->split_region(pool, 1 * MiB, &tail), Status::kInvalid) << "not inside";
  ASSERT_EQ(rig.pager->split_region(pool, 384 * KiB, &tail), Status::kOk);
  EXPECT_EQ(rig.pager->region(pool)->size, 384 * KiB);
  EXPECT_EQ(rig.pager->region(tail)->base, rig.pager->region(pool)->base + 384 * KiB);
  EXPECT_EQ(rig.pager->region(tail)->ctx, rig.pager->region(pool)->ctx);
  EXPECT_EQ(rig.pager->audit(), "");
  for (Tier t : {Tier::kHbm, Tier::kHost, Tier::kNvme})
    EXPECT_EQ(chunks_in(*rig.pager, pool, t) + chunks_in(*rig.pager, tail, t), before[index(t)]) << to_string(t);

  std::vector<std::byte> head_back(384 * KiB), tail_back(640 * KiB);
  ASSERT_EQ(rig.dev.read(pool, 0, head_back), Status::kOk);
  ASSERT_EQ(rig.dev.read(tail, 0, tail_back), Status::kOk);
  EXPECT_TRUE(std::equal(head_back.begin(), head_back.end(), data.begin()));
  EXPECT_TRUE(std::equal(tail_back.begin(), tail_back.end(), data.begin() + 384 * KiB));
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, SetContextMovesARegionButNeverRenamesStoredChunks) {
  Config cfg = small_config();
  cfg.prefetchers = kPrefetchHint;
  cfg.host_capacity = 256 * KiB;
  cfg.spill_idle_ns = 3'600'000'000'000;
  SimRig rig(cfg);
  RegionId pool = rig.dev.alloc(512 * KiB, "pool");
  RegionId tail;
  ASSERT_EQ(rig.pager->split_region(pool, 256 * KiB, &tail), Status::kOk);
  ASSERT_EQ(rig.pager->set_context(tail, "conv-1"), Status::kOk);
  ContextId conv = rig.pager->find_context("conv-1");
  ASSERT_NE(conv, kNoContext);
  EXPECT_EQ(rig.pager->region(tail)->ctx, conv);
  auto data = pattern(256 * KiB, 11);
  ASSERT_EQ(rig.dev.write(tail, 0, data), Status::kOk);

  // The new context is what hints act on: parking it spills the tail only.
  park_and_spill(rig, "conv-1");
  EXPECT_GT(chunks_in(*rig.pager, tail, Tier::kNvme), 0u);
  EXPECT_EQ(chunks_in(*rig.pager, pool, Tier::kNvme), 0u);
  EXPECT_EQ(rig.pager->set_context(tail, "conv-2"), Status::kBusy) << "its stored chunks are named after conv-1";
  ASSERT_EQ(rig.pager->hint(conv, HintKind::kPrefetch), Status::kOk);
  std::vector<std::byte> back(data.size());
  ASSERT_EQ(rig.dev.read(tail, 0, back), Status::kOk);
  EXPECT_EQ(back, data);

  // Moving the last region out of a context drops that context.
  RegionId other = rig.dev.alloc(128 * KiB, "lonely");
  ASSERT_EQ(rig.pager->set_context(other, "pool"), Status::kOk);
  EXPECT_EQ(rig.pager->find_context("lonely"), kNoContext);
  EXPECT_EQ(rig.pager->set_context(other, ""), Status::kInvalid);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, SetContextTakesOverTheTargetsPin) {
  Config cfg = small_config();
  SimRig rig(cfg);
  RegionId a = rig.dev.alloc(128 * KiB, "a");
  RegionId b = rig.dev.alloc(128 * KiB, "pinned");
  ASSERT_EQ(rig.dev.touch(a, 0, true), Status::kOk);
  ASSERT_EQ(rig.dev.touch(b, 0, true), Status::kOk);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("pinned"), HintKind::kPin), Status::kOk);
  ASSERT_EQ(rig.pager->set_context(a, "pinned"), Status::kOk);
  EXPECT_TRUE(rig.pager->region(a)->chunks[0].pinned);
  ASSERT_EQ(rig.pager->set_context(a, "free"), Status::kOk);
  EXPECT_FALSE(rig.pager->region(a)->chunks[0].pinned);
  EXPECT_EQ(rig.pager->audit(), "");
}


TEST(Pager, RegionsCanStartInHostRam) {
  // CUDA managed memory: the bytes exist (in host RAM) before the pager
  // moved anything; they count against host capacity and may spill.
  SimRig rig(spill_config(256 * KiB));
  RegionId r = rig.pager->add_region(0x10000000, 512 * KiB, "warm", Tier::kHost);
  ASSERT_TRUE(r.valid());
  EXPECT_EQ(chunks_in(*rig.pager, r, Tier::kHost), 8u);
  EXPECT_EQ(rig.pager->committed_bytes(Tier::kHost), 512 * KiB);
  EXPECT_TRUE(rig.pager->region(r)->chunks[0].dirty) << "no copy in the store yet";
  EXPECT_EQ(rig.pager->audit(), "");
  ASSERT_EQ(rig.pager->access(r, 3, false), Status::kOk);
  EXPECT_EQ(rig.pager->region(r)->chunks[3].tier, Tier::kHbm) << "promoted from host RAM, not zero-filled";
  park_and_spill(rig, "warm");
  EXPECT_GT(chunks_in(*rig.pager, r, Tier::kNvme), 0u);
  EXPECT_FALSE(rig.pager->add_region(0x20000000, 64 * KiB, "x", Tier::kNvme).valid()) << "only unpopulated or host";
  ASSERT_EQ(rig.pager->remove_region(r), Status::kOk);
  EXPECT_EQ(rig.pager->committed_bytes(Tier::kHost), 0u);
  EXPECT_EQ(rig.pager->audit(), "");
}

// ---------------------------------------------------------------- references (a live program's launches)

// Budget 1 MiB = 16 chunks, high watermark 0.95: references stage up to 15.
Config reference_config() {
  Config cfg = spill_config(16 * MiB);
  cfg.host_capacity = 16 * MiB;
  return cfg;
}

TEST(Pager, AReferenceUsesTheWholeRegionAndStagesItWithoutWaiting) {
  SimRig rig(reference_config());
  RegionId r = rig.pager->add_region(0x10000000, 256 * KiB, "kv", Tier::kHost);  // 4 chunks
  const uint64_t before = rig.mover->virtual_clock().now_ns();
  ASSERT_EQ(rig.pager->reference(r, 1), Status::kOk);
  EXPECT_EQ(rig.mover->virtual_clock().now_ns(), before) << "nothing waited: the kernel reads it where it is";
  EXPECT_EQ(rig.pager->stats().faults, 1u);
  EXPECT_EQ(rig.pager->stats().stall_ns, 0u);
  settle(*rig.pager);
  EXPECT_EQ(chunks_in(*rig.pager, r, Tier::kHbm), 4u) << "every chunk, not only the one the pointer fell in";
  ASSERT_EQ(rig.pager->reference(r, 0), Status::kOk);
  EXPECT_EQ(rig.pager->stats().hits, 1u);
  EXPECT_EQ(rig.pager->reference(r, 4), Status::kInvalid);
  EXPECT_EQ(rig.pager->reference(RegionId{99, 1}, 0), Status::kInvalid);
  EXPECT_EQ(rig.pager->audit(), "");
}

// HBM full to the high watermark with two contexts the program used (b, then
// c, then a), b mostly demoted for a. The setup of the hint tests below.
struct HintRig {
  SimRig rig;
  RegionId a, b, c;
  uint32_t b_before = 0;
  explicit HintRig(Config cfg) : rig(cfg) {
    auto ctx = [&](uint64_t base, const char* name) {
      return rig.pager->add_region(base, 448 * KiB, name, Tier::kHost);  // 7 chunks
    };
    a = ctx(0x10000000, "a");
    b = ctx(0x20000000, "b");
    c = ctx(0x30000000, "c");
    for (RegionId r : {b, c, a}) {
      EXPECT_EQ(rig.pager->reference(r, 0), Status::kOk);
      for (int k = 0; k < 4; ++k) settle(*rig.pager);
    }
    b_before = chunks_in(*rig.pager, b, Tier::kHbm);
  }
  Status hint(HintKind kind) { return rig.pager->hint(rig.pager->find_context("b"), kind); }
  void settle_all() {
    for (int k = 0; k < 4; ++k) settle(*rig.pager);
  }
};

Config hint_rig_config(PolicyKind policy = PolicyKind::kLru) {
  Config cfg = reference_config();  // 16 chunks; references stage up to 15
  cfg.prefetchers = kPrefetchHint;
  cfg.eviction_policy = policy;
  return cfg;
}

// A prefetch hint is an instruction: it makes room from the coldest chunks
// (c's) and stages b before anything references it. It used to take free
// room only, which an oversubscribed HBM never has: b stayed in host RAM
// until the program read it. Under S3-FIFO the hinted context's own chunks
// already in HBM (used once) are the policy's first victims, and the pager
// stops making room there, as it does for a reference: b stays as it was.
TEST(Pager, APrefetchHintMakesRoomWhenHbmIsFull) {
  for (PolicyKind policy : {PolicyKind::kLru, PolicyKind::kClock, PolicyKind::kCost, PolicyKind::kPrefix,
                            PolicyKind::kS3Fifo}) {
    SCOPED_TRACE(to_string(policy));
    HintRig h(hint_rig_config(policy));
    ASSERT_EQ(chunks_in(*h.rig.pager, h.a, Tier::kHbm), 7u);
    ASSERT_LT(h.b_before, 3u) << "the setup: b was demoted for a";
    ASSERT_EQ(h.hint(HintKind::kPrefetch), Status::kOk);
    h.settle_all();
    const uint32_t b_now = chunks_in(*h.rig.pager, h.b, Tier::kHbm);
    if (policy == PolicyKind::kS3Fifo) {
      EXPECT_EQ(b_now, h.b_before);
    } else {
      EXPECT_EQ(b_now, 7u) << "the hint staged b";
      EXPECT_EQ(chunks_in(*h.rig.pager, h.a, Tier::kHbm), 7u) << "room came from c, the colder context";
      EXPECT_EQ(h.rig.pager->stats().prefetchers.at(0).issued_bytes, (7 - h.b_before) * 64 * KiB)
          << "b's missing chunks, counted to the hint";
    }
    EXPECT_LE(h.rig.pager->committed_bytes(Tier::kHbm), 15 * 64 * KiB);
    EXPECT_EQ(h.rig.pager->audit(), "");
  }
}

// Read by the program before any of it moved: what the hint queued is the
// reference's now, not counted as the hint's prefetch (whose accuracy would
// otherwise be credited with the program's own demand).
TEST(Pager, AHintedRegionTheProgramReadsIsTheReferencesFromThen) {
  HintRig h(hint_rig_config());
  ASSERT_EQ(h.hint(HintKind::kPrefetch), Status::kOk);  // c's demotes start; b waits for them
  ASSERT_EQ(h.rig.pager->reference(h.b, 0), Status::kOk);
  h.settle_all();
  EXPECT_EQ(chunks_in(*h.rig.pager, h.b, Tier::kHbm), 7u);
  EXPECT_EQ(h.rig.pager->stats().prefetchers.at(0).issued_bytes, 0u);
  EXPECT_EQ(h.rig.pager->audit(), "");
}

// Parked (or dropped) right after: the hint's wait ends, nothing is staged for
// it and nothing demoted to make room for it.
TEST(Pager, ParkingAContextCancelsItsWaitingPrefetchHint) {
  HintRig h(hint_rig_config());
  ASSERT_EQ(h.hint(HintKind::kPrefetch), Status::kOk);  // c's demotes start; b waits for them
  ASSERT_EQ(h.hint(HintKind::kPark), Status::kOk);
  h.settle_all();
  EXPECT_EQ(chunks_in(*h.rig.pager, h.b, Tier::kHbm), 0u) << "parked: b is not brought in";
  EXPECT_EQ(chunks_in(*h.rig.pager, h.a, Tier::kHbm), 7u);
  EXPECT_EQ(h.rig.pager->audit(), "");
}

// Parked while the hint's promotes are under way: they land, then leave with
// the rest of the context (they used to stay in HBM, in a parked context).
TEST(Pager, ParkingAContextWhileItsHintIsMovingSendsItAllOut) {
  HintRig h(hint_rig_config());
  ASSERT_EQ(h.hint(HintKind::kPrefetch), Status::kOk);
  h.rig.pager->drain();  // c's demotes land
  h.rig.pager->tick();   // b's promotes start
  ASSERT_GT(h.rig.mover->pending(), 0u) << "the setup: b on its way in";
  ASSERT_EQ(h.hint(HintKind::kPark), Status::kOk);
  h.settle_all();
  EXPECT_EQ(chunks_in(*h.rig.pager, h.b, Tier::kHbm), 0u);
  EXPECT_EQ(h.rig.pager->audit(), "");
}

// The prefetchers change while a hint waits: the wait goes on, credited to
// nobody (it named the hint prefetcher by its index in the old list).
TEST(Pager, AHintWaitingWhenThePrefetchersChangeGoesOnUncredited) {
  Config cfg = hint_rig_config();
  cfg.prefetchers = kAllPrefetchers;  // the hint prefetcher is the third
  HintRig h(cfg);
  ASSERT_EQ(h.hint(HintKind::kPrefetch), Status::kOk);  // c's demotes start; b waits for them
  Config fewer = cfg;
  fewer.prefetchers = kPrefetchSequential;
  ASSERT_EQ(h.rig.pager->apply(fewer), Status::kOk);
  h.settle_all();
  EXPECT_EQ(chunks_in(*h.rig.pager, h.b, Tier::kHbm), 7u);
  ASSERT_EQ(h.rig.pager->stats().prefetchers.size(), 1u);
  EXPECT_EQ(h.rig.pager->stats().prefetchers.at(0).issued_bytes, 0u) << "not the sequential prefetcher's";
  EXPECT_EQ(h.rig.pager->audit(), "");
}

// HBM full; the launch-correlation prefetcher predicts region b on every
// launch of k1, and b cannot come in (no room). Each prediction used to queue
// b's chunks again: the 4096-entry ring of prefetches waiting for room filled
// with duplicates and the rest were dropped (12,884 on the first H200 run). A
// chunk now waits in the ring once; when room comes, b is staged once.
TEST(Pager, APrefetchWaitingForRoomIsQueuedOnceHoweverOftenItIsPredicted) {
  Config cfg = reference_config();  // 16 chunks; references stage up to 15
  cfg.prefetchers = kPrefetchCorrelation;
  cfg.prefetch_depth = 1;
  SimRig rig(cfg);
  // Regions of at most 7 chunks: a reference brings those in whole.
  const RegionId a = rig.pager->add_region(0x10000000, 448 * KiB, "a", Tier::kHost);  // 7 chunks
  const RegionId c = rig.pager->add_region(0x20000000, 448 * KiB, "c", Tier::kHost);  // 7
  const RegionId d = rig.pager->add_region(0x28000000, 64 * KiB, "d", Tier::kHost);   // 1
  const RegionId b = rig.pager->add_region(0x30000000, 448 * KiB, "b", Tier::kHost);  // 7
  for (RegionId r : {a, c, d}) {
    ASSERT_EQ(rig.pager->reference(r, 0), Status::kOk);
    for (int k = 0; k < 4; ++k) settle(*rig.pager);
  }
  ASSERT_EQ(rig.pager->committed_bytes(Tier::kHbm), 15 * 64 * KiB) << "the setup: HBM full to its watermark";
  for (int i = 0; i < 600; ++i) {
    rig.pager->launch(1, std::span<const RegionId>(&a, 1));
    rig.pager->launch(2, std::span<const RegionId>(&b, 1));  // b is read where it is
    rig.pager->tick();
  }
  EXPECT_EQ(chunks_in(*rig.pager, b, Tier::kHbm), 0u) << "no room: b waits";
  EXPECT_EQ(rig.pager->stats().prefetch_dropped, 0u) << "600 predictions x 7 chunks used to overflow the ring";
  ASSERT_EQ(rig.pager->remove_region(c), Status::kOk);  // room
  for (int k = 0; k < 4; ++k) settle(*rig.pager);
  EXPECT_EQ(chunks_in(*rig.pager, b, Tier::kHbm), 7u) << "the waiting prefetches went once room came";
  EXPECT_EQ(rig.pager->stats().prefetchers.at(0).issued_bytes, 448 * KiB) << "each of b's chunks once";
  EXPECT_EQ(rig.pager->audit(), "");
}

// A serving loop: weights referenced every step, four sessions taking turns,
// HBM for the weights and two sessions. The referenced chunks beyond the
// first of each region must count as used, or the weights' look coldest of
// all and go first; the session being served must come in whole.
TEST(Pager, ReferencesKeepTheWeightsAndBringTheServedSessionIn) {
  SimRig rig(reference_config());
  RegionId w = rig.pager->add_region(0x10000000, 320 * KiB, "w", Tier::kHost);  // 5 chunks
  std::vector<RegionId> sess;
  for (uint64_t i = 0; i < 4; ++i)
    sess.push_back(rig.pager->add_region(0x20000000 + i * 0x1000000, 320 * KiB, "s" + std::to_string(i), Tier::kHost));
  for (int turn = 0; turn < 12; ++turn) {
    const RegionId s = sess[static_cast<size_t>(turn % 4)];
    for (int step = 0; step < 3; ++step) {
      ASSERT_EQ(rig.pager->reference(w, 0), Status::kOk);
      ASSERT_EQ(rig.pager->reference(s, 0), Status::kOk);
      ASSERT_LE(rig.pager->committed_bytes(Tier::kHbm), 1 * MiB);
      settle(*rig.pager);
    }
    EXPECT_EQ(chunks_in(*rig.pager, w, Tier::kHbm), 5u) << "turn " << turn << ": the weights were evicted";
    EXPECT_EQ(chunks_in(*rig.pager, s, Tier::kHbm), 5u) << "turn " << turn << ": the served session is not all in";
  }
  EXPECT_EQ(rig.pager->audit(), "");
}

// A session resumed while another fills HBM: the pager demotes the old one a
// window at a time and brings the new one in as room appears. On a device
// whose two directions are separate links (PCIe is full duplex; the CUDA
// mover puts demotes and promotes on a stream each), window k's promote
// overlaps window k+1's demote, so the swap takes about one direction's
// time plus a window, not both directions' one after the other. The loop is
// the runtime's pager thread: wait for what is in flight, then its tick.
TEST(Pager, ASwapOverlapsItsDemotesAndPromotesAWindowApart) {
  Config cfg = spill_config(256 * MiB);
  cfg.sim_hbm_capacity = 64 * MiB;
  cfg.hbm_budget = 36 * MiB;  // 0.95 x 36 MiB = 547 chunks: one session of 512 and a little
  cfg.sim_pcie_latency_ns = 0;
  SimRig rig(cfg);
  constexpr int kRegions = 64;  // 8 chunks each: a session of 512 chunks, 8 stage windows
  auto session = [&](uint64_t base, const std::string& name) {
    std::vector<RegionId> out;
    for (int i = 0; i < kRegions; ++i)
      out.push_back(rig.pager->add_region(base + static_cast<uint64_t>(i) * MiB, 8 * 64 * KiB, name, Tier::kHost));
    return out;
  };
  const auto a = session(0x100000000, "a"), b = session(0x200000000, "b");
  auto serve = [&](const std::vector<RegionId>& s) {
    for (RegionId r : s) ASSERT_EQ(rig.pager->reference(r, 0), Status::kOk);
    for (int round = 0; round < 64 && !(rig.pager->stats().tiers[index(Tier::kHbm)].inbound_bytes == 0 &&
                                        rig.mover->pending() == 0 && chunks_in(*rig.pager, s.back(), Tier::kHbm) == 8);
         ++round) {
      rig.pager->drain();
      rig.pager->tick();
    }
  };
  serve(a);
  for (RegionId r : a) ASSERT_EQ(chunks_in(*rig.pager, r, Tier::kHbm), 8u);
  const uint64_t t0 = rig.mover->virtual_clock().now_ns();
  serve(b);
  const uint64_t took = rig.mover->virtual_clock().now_ns() - t0;
  uint32_t b_in = 0, a_out = 0;
  for (RegionId r : b) b_in += chunks_in(*rig.pager, r, Tier::kHbm);
  for (RegionId r : a) a_out += chunks_in(*rig.pager, r, Tier::kHost);
  ASSERT_EQ(b_in, 512u) << "the resumed session came in whole";
  EXPECT_GE(a_out, 512u - 35u) << "the other one left (but for what fits beside)";
  // One direction's link time for a session, from the simulated PCIe bandwidth.
  const double one_way_ns = 512.0 * 64 * KiB / cfg.sim_pcie_gbps;
  EXPECT_LT(static_cast<double>(took), 1.5 * one_way_ns)
      << "demotes and promotes ran one after the other (" << took << " ns; one way " << one_way_ns << " ns)";
  EXPECT_GE(static_cast<double>(took), one_way_ns);
  EXPECT_EQ(rig.pager->audit(), "");
}

// A region bigger than half of what references may stage (an engine's whole
// KV pool) counts chunk by chunk, or it would evict itself in turn.
TEST(Pager, AReferenceIntoARegionBiggerThanHalfTheBudgetStagesOnlyItsChunk) {
  SimRig rig(reference_config());
  RegionId pool = rig.pager->add_region(0x10000000, 2 * MiB, "pool", Tier::kHost);  // 32 chunks
  ASSERT_EQ(rig.pager->reference(pool, 7), Status::kOk);
  settle(*rig.pager);
  EXPECT_EQ(chunks_in(*rig.pager, pool, Tier::kHbm), 1u);
  EXPECT_EQ(rig.pager->region(pool)->chunks[7].tier, Tier::kHbm);
}

// The launch path merges pointers into a region that counts whole by this
// threshold (one event entry each): it must be exactly where reference()
// stops counting whole. 1 MiB at 0.95 stages up to 972.8K; half is 7 chunks.
TEST(Pager, TheWholeReferenceThresholdIsTheLargestRegionCountedWhole) {
  SimRig rig(reference_config());
  EXPECT_EQ(rig.pager->whole_reference_bytes(), 7 * 64 * KiB);
  RegionId at = rig.pager->add_region(0x10000000, 7 * 64 * KiB, "at", Tier::kHost);
  RegionId over = rig.pager->add_region(0x20000000, 8 * 64 * KiB, "over", Tier::kHost);
  ASSERT_EQ(rig.pager->reference(at, 0), Status::kOk);
  ASSERT_EQ(rig.pager->reference(over, 0), Status::kOk);
  settle(*rig.pager);
  EXPECT_EQ(chunks_in(*rig.pager, at, Tier::kHbm), 7u) << "counted whole";
  EXPECT_EQ(chunks_in(*rig.pager, over, Tier::kHbm), 1u) << "counted chunk by chunk";
}

// HBM full to the high watermark with regions referenced earlier; three
// chunks of a pool (counted chunk by chunk) referenced in one pass: each one
// waits for room on its own, none is dropped because another waits.
TEST(Pager, ReferencesIntoAPoolEachWaitForRoom) {
  SimRig rig(reference_config());
  for (uint64_t k = 0; k < 3; ++k) {  // 15 chunks: up to the high watermark
    RegionId f = rig.pager->add_region(0x10000000 + k * 0x1000000, 320 * KiB, "f" + std::to_string(k), Tier::kHost);
    ASSERT_EQ(rig.pager->reference(f, 0), Status::kOk);
    settle(*rig.pager);
  }
  RegionId pool = rig.pager->add_region(0x50000000, 2 * MiB, "pool", Tier::kHost);  // 32 chunks
  for (uint32_t i : {7u, 8u, 9u}) ASSERT_EQ(rig.pager->reference(pool, i), Status::kOk);
  for (int k = 0; k < 4; ++k) settle(*rig.pager);
  for (uint32_t i : {7u, 8u, 9u}) EXPECT_EQ(rig.pager->region(pool)->chunks[i].tier, Tier::kHbm) << "chunk " << i;
  EXPECT_EQ(rig.pager->audit(), "");
}

// HBM mostly pinned: a region that fits by size alone but not beside the
// pinned chunks must not evict itself to bring in its other chunks, step
// after step.
TEST(Pager, ARegionThatCannotFitBesidePinnedChunksDoesNotChurnThroughItself) {
  SimRig rig(reference_config());
  RegionId p = rig.pager->add_region(0x10000000, 640 * KiB, "p", Tier::kHost);  // 10 chunks
  for (uint32_t i = 0; i < 10; ++i) ASSERT_EQ(rig.pager->access(p, i, false), Status::kOk);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("p"), HintKind::kPin), Status::kOk);
  RegionId r = rig.pager->add_region(0x20000000, 448 * KiB, "r", Tier::kHost);  // 7 chunks: staged whole
  for (int s = 0; s < 3; ++s) {
    ASSERT_EQ(rig.pager->reference(r, 0), Status::kOk);
    settle(*rig.pager);
  }
  const auto demotes = [&] { return rig.pager->stats().moves[static_cast<size_t>(MoveKind::kDemote)]; };
  const uint64_t before = demotes();
  for (int s = 0; s < 10; ++s) {
    ASSERT_EQ(rig.pager->reference(r, 0), Status::kOk);
    settle(*rig.pager);
  }
  EXPECT_EQ(demotes(), before) << "the region evicted its own chunks to stage its others";
  EXPECT_EQ(chunks_in(*rig.pager, r, Tier::kHbm), 5u) << "what fits beside the pinned 10, up to 15";
  EXPECT_EQ(rig.pager->audit(), "");
}

// A chunk on its way out of HBM when a reference names it is read from where
// it is going, not counted as a late prefetch (which is a chunk on its way in).
TEST(Pager, AReferenceToAChunkLeavingHbmIsNotALatePrefetch) {
  SimRig rig(reference_config());
  RegionId r = rig.pager->add_region(0x10000000, 256 * KiB, "kv", Tier::kHost);
  ASSERT_EQ(rig.pager->reference(r, 0), Status::kOk);
  settle(*rig.pager);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("kv"), HintKind::kPark), Status::kOk);
  ASSERT_TRUE(rig.pager->region(r)->chunks[1].in_flight());
  ASSERT_EQ(rig.pager->reference(r, 1), Status::kOk);
  EXPECT_EQ(rig.pager->stats().faults_from[index(Tier::kHbm)], 0u);
  EXPECT_EQ(rig.pager->stats().faults_from[index(Tier::kHost)], 2u) << "the first reference's, and this one";
}

// Managed memory stays the program's after a drop (an engine reuses the
// range for its next session): its chunks go back to host RAM, dirty, with
// no store copy, and are paged like any others; never-touched memory
// (the simulated device's) is unpopulated again.
TEST(Pager, ADroppedRangeOfMemoryThatExistsFromTheStartIsBackInHostRam) {
  SimRig rig(spill_config(128 * KiB));
  RegionId r = rig.pager->add_region(0x10000000, 256 * KiB, "kv", Tier::kHost);  // 4 chunks
  ASSERT_EQ(rig.pager->access(r, 0, true), Status::kOk);
  park_and_spill(rig, "kv");
  ASSERT_GT(chunks_in(*rig.pager, r, Tier::kNvme), 0u);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("kv"), HintKind::kDrop), Status::kOk);
  EXPECT_EQ(chunks_in(*rig.pager, r, Tier::kHost), 4u);
  for (uint32_t i = 0; i < 4; ++i) {
    EXPECT_TRUE(rig.pager->region(r)->chunks[i].dirty) << i;
    EXPECT_FALSE(rig.pager->region(r)->chunks[i].store_copy) << i;
  }
  EXPECT_EQ(rig.store->used_bytes(), 0u) << "its store copies went";
  ASSERT_EQ(rig.pager->access(r, 2, true), Status::kOk);
  EXPECT_EQ(rig.pager->region(r)->chunks[2].tier, Tier::kHbm) << "paged again";
  EXPECT_EQ(rig.pager->audit(), "");
  RegionId fresh = rig.dev.alloc(128 * KiB, "fresh");
  ASSERT_EQ(rig.pager->access(fresh, 0, true), Status::kOk);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("fresh"), HintKind::kDrop), Status::kOk);
  EXPECT_EQ(chunks_in(*rig.pager, fresh, Tier::kUnpopulated), 2u);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Pager, TouchKeepsARegionFromLookingIdle) {
  Config cfg = spill_config(128 * KiB);
  cfg.spill_idle_ns = 1'000'000'000;
  SimRig rig(cfg);
  RegionId r = rig.pager->add_region(0x10000000, 512 * KiB, "busy", Tier::kHost);  // over host capacity
  for (int i = 0; i < 8; ++i) {  // 8 s of virtual time, touched every 0.5 s
    rig.pager->touch(r);
    rig.dev.compute(500'000'000);
    settle(*rig.pager);
  }
  EXPECT_EQ(chunks_in(*rig.pager, r, Tier::kNvme), 0u) << "in use: never spilled";
  rig.dev.compute(2'000'000'000);
  settle(*rig.pager);
  EXPECT_GT(chunks_in(*rig.pager, r, Tier::kNvme), 0u) << "left alone: spills";
}


TEST(Pager, ASpillTheMoverRefusesAsBusyIsRetriedLaterNotAtOnce) {
  // The CUDA mover refuses a spill while it cannot fence the program's work
  // (a stream capture is active): the pager must neither spin nor give up.
  Config cfg = small_config();
  cfg.prefetchers = 0;
  cfg.host_capacity = 64 * KiB;
  cfg.spill_idle_ns = 3'600'000'000'000;
  testing::NullMover mover(1 * MiB);
  bool busy = true;
  mover.fail = [&](const MoveRequest& r) { return r.kind == MoveKind::kSpill && busy ? Status::kBusy : Status::kOk; };
  Pager pager(cfg, mover);
  RegionId r = pager.add_region(0x1000000, 256 * KiB, "ctx", Tier::kHost);
  ASSERT_EQ(pager.hint(pager.find_context("ctx"), HintKind::kPark), Status::kOk);
  pager.drain();  // returns: a refused spill is not retried in a loop
  const uint64_t failures = pager.stats().move_failures;
  EXPECT_GT(failures, 0u);
  for (int i = 0; i < 10; ++i) pager.tick();
  EXPECT_EQ(pager.stats().move_failures, failures) << "not retried before the back-off";
  busy = false;
  mover.vclock().advance(200'000'000);
  pager.tick();
  pager.drain();
  EXPECT_EQ(chunks_in(pager, r, Tier::kNvme), 4u) << "retried after it";
  EXPECT_EQ(pager.audit(), "");
}

}  // namespace
}  // namespace kvpager
