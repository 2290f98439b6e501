// Eviction policies on small hand-checked scenarios.
#include <gtest/gtest.h>

#include <vector>

#include "kvpager/policy.h"

namespace kvpager {
namespace {

struct Chunks {
  explicit Chunks(int n) : v(static_cast<size_t>(n)) {
    for (size_t i = 0; i < v.size(); ++i) {
      v[i].index = static_cast<uint32_t>(i);
      v[i].tier = v[i].target = Tier::kHbm;
    }
  }
  Chunk& operator[](int i) { return v[static_cast<size_t>(i)]; }
  std::vector<Chunk> v;
};

// Evicts everything, returning the order (by index).
std::vector<uint32_t> eviction_order(EvictionPolicy& p) {
  std::vector<uint32_t> out;
  p.drain([&](Chunk& c) { out.push_back(c.index); });
  return out;
}

TEST(LruPolicy, EvictsLeastRecentlyUsedFirst) {
  Chunks c(4);
  LruPolicy p;
  for (int i = 0; i < 4; ++i) p.insert(c[i]);
  p.touch(c[0], 1);  // order now 1 2 3 0
  p.touch(c[2], 2);  // 1 3 0 2
  EXPECT_EQ(p.victim(), &c[1]);
  EXPECT_EQ(eviction_order(p), (std::vector<uint32_t>{1, 3, 0, 2}));
  EXPECT_EQ(p.size(), 0u);
  EXPECT_EQ(p.victim(), nullptr);
}

TEST(LruPolicy, EraseRemovesFromConsideration) {
  Chunks c(3);
  LruPolicy p;
  for (int i = 0; i < 3; ++i) p.insert(c[i]);
  p.erase(c[0]);
  EXPECT_FALSE(c[0].in_policy);
  EXPECT_EQ(p.victim(), &c[1]);
  EXPECT_EQ(p.size(), 2u);
}

TEST(ClockPolicy, ReferencedChunksGetASecondChance) {
  Chunks c(4);
  ClockPolicy p;
  for (int i = 0; i < 4; ++i) p.insert(c[i]);
  p.touch(c[0], 1);
  p.touch(c[1], 2);
  // The hand passes 0 and 1 (clearing their bits) and stops at 2.
  EXPECT_EQ(p.victim(), &c[2]);
  EXPECT_FALSE(c[0].referenced);
  p.erase(c[2]);
  EXPECT_EQ(p.victim(), &c[3]);
  p.erase(c[3]);
  // 0 and 1 lost their bits on the first sweep: now they go.
  EXPECT_EQ(p.victim(), &c[0]);
}

TEST(ClockPolicy, AllReferencedStillYieldsAVictim) {
  Chunks c(3);
  ClockPolicy p;
  for (int i = 0; i < 3; ++i) p.insert(c[i]);
  for (int i = 0; i < 3; ++i) p.touch(c[i], static_cast<uint64_t>(i));
  EXPECT_NE(p.victim(), nullptr);
  EXPECT_EQ(eviction_order(p).size(), 3u);
}

TEST(ClockPolicy, EraseAtTheHandMovesTheHand) {
  Chunks c(3);
  ClockPolicy p;
  for (int i = 0; i < 3; ++i) p.insert(c[i]);
  Chunk* v = p.victim();
  ASSERT_EQ(v, &c[0]);
  p.erase(*v);
  EXPECT_EQ(p.victim(), &c[1]);
}

class FixedCost final : public RestoreCost {
 public:
  double restore_ns(const Chunk& c) const override { return cost.at(c.index); }
  std::vector<double> cost;
};

TEST(CostAwarePolicy, PrefersCheapToRestoreAmongEquallyCold) {
  Chunks c(3);
  FixedCost costs;
  costs.cost = {100.0, 10.0, 100.0};
  CostAwarePolicy p(8, &costs);
  for (int i = 0; i < 3; ++i) p.insert(c[i]);
  EXPECT_EQ(p.victim(), &c[1]) << "same recency and frequency: the cheapest to bring back goes";
}

TEST(CostAwarePolicy, FrequentlyUsedSurvivesAnEqualCostColdChunk) {
  Chunks c(2);
  FixedCost costs;
  costs.cost = {100.0, 100.0};
  CostAwarePolicy p(8, &costs);
  p.insert(c[0]);
  p.insert(c[1]);
  uint64_t epoch = 0;
  for (int k = 0; k < 5; ++k) {
    p.touch(c[0], ++epoch);
    c[0].last_use = epoch;
  }
  p.touch(c[1], ++epoch);
  c[1].last_use = epoch;
  // c1 is the most recent, but c0 was used 5 times, 1 epoch earlier.
  EXPECT_EQ(p.victim(), &c[1]);
  EXPECT_GT(p.benefit(c[0]), p.benefit(c[1]));
}

TEST(CostAwarePolicy, OnlyTheSampledColdEndIsConsidered) {
  Chunks c(4);
  FixedCost costs;
  costs.cost = {50.0, 40.0, 30.0, 1.0};  // the cheapest is the hottest
  CostAwarePolicy p(2, &costs);
  for (int i = 0; i < 4; ++i) p.insert(c[i]);
  EXPECT_EQ(p.victim(), &c[1]) << "sample 2 sees only chunks 0 and 1";
}

TEST(MakePolicy, BuildsEachKind) {
  Config cfg;
  FixedCost costs;
  EXPECT_EQ(make_policy(PolicyKind::kLru, cfg, nullptr)->name(), "lru");
  EXPECT_EQ(make_policy(PolicyKind::kClock, cfg, nullptr)->name(), "clock");
  EXPECT_EQ(make_policy(PolicyKind::kCost, cfg, &costs)->name(), "cost");
}

}  // namespace
}  // namespace kvpager
