// Prefetchers on hand-checked scenarios (with a recording sink), and the
// pager's prefetch mechanism: attribution, used/wasted accounting, throttling.
#include <gtest/gtest.h>

#include <tuple>
#include <vector>

#include "kvpager/prefetch.h"
#include "sim_rig.h"

namespace kvpager {
namespace {

struct Call {
  uint64_t region;
  uint32_t first, count;
  friend bool operator==(const Call&, const Call&) = default;
};

class RecordingSink final : public PrefetchSink {
 public:
  uint32_t prefetch(RegionId r, uint32_t first, uint32_t count) override {
    calls.push_back({r.packed(), first, count});
    return count;
  }
  uint32_t prefetch_region(RegionId r) override {
    regions.push_back(r.packed());
    return 1;
  }
  uint32_t prefetch_context(ContextId c) override {
    contexts.push_back(c);
    return 1;
  }
  uint32_t stage_context(ContextId c) override {
    staged.push_back(c);
    return 1;
  }
  const Region* region(RegionId) const override { return nullptr; }
  std::vector<Call> calls;
  std::vector<uint64_t> regions;
  std::vector<ContextId> contexts;  // prefetch_context: free room only
  std::vector<ContextId> staged;    // stage_context: an instruction, makes room
};

// A region of n chunks, all in host RAM except those listed as staged.
struct TestRegion {
  TestRegion(uint32_t n, std::vector<uint32_t> staged = {}) {
    r.id = RegionId{3, 1};
    r.nchunks = n;
    r.chunk_size = 64 * KiB;
    r.size = n * r.chunk_size;
    r.chunks = std::make_unique<Chunk[]>(n);
    for (uint32_t i = 0; i < n; ++i) r.chunks[i].tier = r.chunks[i].target = Tier::kHost;
    for (uint32_t i : staged) r.chunks[i].tier = r.chunks[i].target = Tier::kHbm;
  }
  Region r;
};

Config depth(uint32_t d) {
  Config c;
  c.prefetch_depth = d;
  return c;
}

TEST(SequentialPrefetcher, AFaultRightAfterThePreviousOneStagesDepthAhead) {
  TestRegion t(32);
  SequentialPrefetcher p(depth(4));
  RecordingSink sink;
  p.on_fault({&t.r, 5, false}, sink);  // isolated: density finds nothing staged
  EXPECT_TRUE(sink.calls.empty());
  t.r.chunks[5].tier = Tier::kHbm;
  p.on_fault({&t.r, 6, false}, sink);  // 5 then 6: a stream
  ASSERT_EQ(sink.calls.size(), 1u);
  EXPECT_EQ(sink.calls[0], (Call{t.r.id.packed(), 7, 4}));
}

TEST(SequentialPrefetcher, APrefetchHitKeepsTheWindowAhead) {
  TestRegion t(32);
  SequentialPrefetcher p(depth(4));
  RecordingSink sink;
  p.on_fault({&t.r, 10, true}, sink);
  ASSERT_EQ(sink.calls.size(), 1u);
  EXPECT_EQ(sink.calls[0], (Call{t.r.id.packed(), 11, 4}));
}

TEST(SequentialPrefetcher, DensityStagesTheRestOfAMostlyResidentWindow) {
  // Window of 8 around chunk 9 is [8, 16); 8, 10, 11, 12 are staged, 9 is the
  // fault (on its way): 5 of 8 > 50 %. The window of 4 [8, 12) is 4/4 but
  // smaller; the largest qualifying one wins.
  TestRegion t(32, {8, 10, 11, 12});
  t.r.chunks[9].target = Tier::kHbm;
  SequentialPrefetcher p(depth(4));  // windows up to 2 x depth = 8
  RecordingSink sink;
  p.on_fault({&t.r, 9, false}, sink);
  ASSERT_EQ(sink.calls.size(), 1u);
  EXPECT_EQ(sink.calls[0], (Call{t.r.id.packed(), 8, 8}));
}

TEST(SequentialPrefetcher, DensityNeedsMoreThanHalf) {
  TestRegion t(32, {8, 10, 11});
  t.r.chunks[9].target = Tier::kHbm;
  SequentialPrefetcher p(depth(4));
  RecordingSink sink;
  p.on_fault({&t.r, 9, false}, sink);
  // [8,12) is 4/4 -> staged (nothing left there to fetch, but it is the
  // largest qualifying window); [8,16) is 4/8 = 50 %: not more than half.
  ASSERT_EQ(sink.calls.size(), 1u);
  EXPECT_EQ(sink.calls[0], (Call{t.r.id.packed(), 8, 4}));
}

TEST(CorrelationPrefetcher, StagesWhatFollowedDepthLaunchesLater) {
  CorrelationPrefetcher p(depth(2));
  RecordingSink sink;
  RegionId a{1, 1}, b{2, 1}, c{3, 1};
  auto launch = [&](uint64_t sig, RegionId r) { p.on_launch({sig, std::span<const RegionId>(&r, 1)}, sink); };
  // First pass: A B C learns A -> C (2 launches later).
  launch(100, a);
  launch(200, b);
  launch(300, c);
  EXPECT_TRUE(sink.regions.empty()) << "nothing learned yet";
  // Second time A is launched, C is staged.
  launch(100, a);
  ASSERT_EQ(sink.regions.size(), 1u);
  EXPECT_EQ(sink.regions[0], c.packed());
}

TEST(CorrelationPrefetcher, UnknownSignaturesStageNothing) {
  CorrelationPrefetcher p(depth(1));
  RecordingSink sink;
  RegionId a{1, 1};
  for (uint64_t sig = 1; sig < 50; ++sig) p.on_launch({sig * 7919, std::span<const RegionId>(&a, 1)}, sink);
  EXPECT_TRUE(sink.regions.empty());
}

TEST(HintPrefetcher, StagesTheHintedContextOnly) {
  HintPrefetcher p;
  RecordingSink sink;
  p.on_hint({7, HintKind::kPark}, sink);
  p.on_hint({7, HintKind::kPrefetch}, sink);
  EXPECT_EQ(sink.staged, (std::vector<ContextId>{7})) << "an instruction: it makes room";
  EXPECT_TRUE(sink.contexts.empty());
}

TEST(MakePrefetchers, FollowsTheConfigBits) {
  Config c;
  c.prefetchers = kPrefetchSequential | kPrefetchHint;
  auto ps = make_prefetchers(c);
  ASSERT_EQ(ps.size(), 2u);
  EXPECT_EQ(ps[0]->name(), "sequential");
  EXPECT_EQ(ps[1]->name(), "hint");
  c.prefetchers = 0;
  EXPECT_TRUE(make_prefetchers(c).empty());
}

// --- the mechanism in the pager ---

using testing::SimRig;

TEST(PrefetchMechanism, SequentialStreamIsStagedAheadAndCountedAsUsed) {
  Config cfg = testing::small_config();
  cfg.prefetchers = kPrefetchSequential;
  cfg.prefetch_depth = 2;
  cfg.hbm_budget = 1 * MiB;
  SimRig rig(cfg);
  RegionId r = rig.dev.alloc(512 * KiB);
  for (uint32_t i = 0; i < 8; ++i) ASSERT_EQ(rig.pager->access(r, i, true), Status::kOk);  // populate
  ContextId ctx = rig.pager->region(r)->ctx;
  rig.pager->hint(ctx, HintKind::kPark);  // all to host RAM
  rig.pager->drain();
  const StatsSnapshot before = rig.pager->stats();
  for (uint32_t i = 0; i < 8; ++i) ASSERT_EQ(rig.pager->access(r, i, false), Status::kOk);
  rig.pager->drain();
  const StatsSnapshot after = rig.pager->stats();
  const PrefetcherStats& p = after.prefetchers.at(0);
  EXPECT_GT(p.issued_bytes, 0u);
  EXPECT_EQ(p.wasted_bytes, 0u);
  EXPECT_EQ(p.used_bytes, p.issued_bytes) << "every staged chunk was read";
  EXPECT_LT(after.faults - before.faults, 8u) << "some reads found their chunk staged";
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(PrefetchMechanism, APrefetcherThatWastesIsThrottled) {
  // Correlation learns "after a launch on X comes Y" from one pass, but the
  // program then never reads Y: every staged chunk is evicted unused.
  Config cfg = testing::small_config();
  cfg.prefetchers = kPrefetchCorrelation;
  cfg.prefetch_depth = 1;
  cfg.prefetch_waste_ceiling = 0.5;
  SimRig rig(cfg);
  std::vector<RegionId> regions;
  for (int i = 0; i < 24; ++i) regions.push_back(rig.dev.alloc(128 * KiB));
  for (RegionId r : regions)
    for (uint32_t c = 0; c < 2; ++c) ASSERT_EQ(rig.pager->access(r, c, true), Status::kOk);
  // Teach: launches alternate X_i, Y_i.
  auto launch = [&](RegionId r) { rig.pager->launch(42, std::span<const RegionId>(&r, 1)); };
  for (int i = 0; i + 1 < 24; i += 2) {
    launch(regions[static_cast<size_t>(i)]);
    launch(regions[static_cast<size_t>(i + 1)]);
  }
  // Now launch only the X_i and touch other memory instead of Y_i.
  RegionId filler = rig.dev.alloc(1 * MiB);
  for (int round = 0; round < 6; ++round) {
    for (int i = 0; i + 1 < 24; i += 2) {
      launch(regions[static_cast<size_t>(i)]);
      rig.dev.compute(10'000);
      for (uint32_t c = 0; c < 16; ++c) ASSERT_EQ(rig.pager->access(filler, c, true), Status::kOk);
    }
  }
  rig.pager->drain();
  const StatsSnapshot snap = rig.pager->stats();
  const PrefetcherStats& p = snap.prefetchers.at(0);
  EXPECT_GT(p.wasted_bytes, p.used_bytes);
  EXPECT_GE(p.throttle_events, 1u);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(PrefetchMechanism, AnExplicitPrefetchHintIsCarriedOutEvenAfterItsStagedBytesWentUnused) {
  // An engine prefetches a context ahead of a turn that then does not come:
  // it parks the context unread, again and again. The speculative prefetchers
  // would be muted by such waste; a hint is the program's instruction.
  Config cfg = testing::small_config();
  cfg.prefetchers = kPrefetchHint;
  cfg.prefetch_waste_ceiling = 0.5;
  SimRig rig(cfg);
  RegionId r = rig.dev.alloc(512 * KiB);
  for (uint32_t i = 0; i < 8; ++i) ASSERT_EQ(rig.pager->access(r, i, true), Status::kOk);
  const ContextId ctx = rig.pager->region(r)->ctx;
  const uint64_t size = rig.pager->region(r)->size;
  for (int round = 0; round < 6; ++round) {  // 48 chunks wasted: far past the throttle's 16
    ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPark), Status::kOk);
    rig.pager->drain();
    ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes, 0u) << "round " << round;
    ASSERT_EQ(rig.pager->hint(ctx, HintKind::kPrefetch), Status::kOk);
    rig.pager->drain();
    ASSERT_EQ(rig.pager->stats().tiers[index(Tier::kHbm)].resident_bytes, size) << "round " << round;
  }
  const PrefetcherStats p = rig.pager->stats().prefetchers.at(0);
  EXPECT_EQ(p.name, "hint");
  EXPECT_EQ(p.wasted_bytes, 5 * size) << "every parked-unread staging is counted as waste";
  EXPECT_EQ(p.throttle_events, 0u);
  EXPECT_FALSE(p.throttled);
  EXPECT_EQ(rig.pager->audit(), "");
}

}  // namespace
}  // namespace kvpager
