// The policies the replay issue added to the pager core, each behind its
// interface: prefix-aware and S3-FIFO eviction, tail and TinyLFU admission,
// the resume prestager; and that the pager itself runs with the new
// eviction policies unchanged.
#include <gtest/gtest.h>

#include <vector>

#include "kvpager/admission.h"
#include "kvpager/pager.h"
#include "kvpager/policy_prefix.h"
#include "kvpager/policy_s3fifo.h"
#include "kvpager/prestage.h"
#include "kvpager/sim/file_store.h"
#include "kvpager/sim/sim_device.h"
#include "kvpager/sim/sim_mover.h"

using namespace kvpager;

namespace {

std::vector<Chunk> chunks(size_t n) {
  std::vector<Chunk> v(n);
  for (size_t i = 0; i < n; ++i) {
    v[i].region = static_cast<uint32_t>(i);
    v[i].index = static_cast<uint32_t>(i);
  }
  return v;
}

// A chunk arrives and is used, as on a fault in the pager (and a miss in replay).
void bring_in(EvictionPolicy& p, Chunk& c, uint64_t epoch) {
  p.insert(c);
  p.touch(c, epoch);
}

template <typename P>
void drain_all(P& p) {
  p.drain([](Chunk&) {});
}

}  // namespace

TEST(PrefixAwarePolicy, FilesARunTailFirst) {
  PrefixAwarePolicy p;
  auto c = chunks(4);
  uint64_t epoch = 0;
  for (auto& x : c) bring_in(p, x, ++epoch);  // one request: blocks 0..3 in order
  std::vector<uint32_t> order;
  p.drain([&](Chunk& x) { order.push_back(x.index); });
  EXPECT_EQ(order, (std::vector<uint32_t>{3, 2, 1, 0}));  // LRU would give 0, 1, 2, 3
}

TEST(PrefixAwarePolicy, ARunNeedsConsecutiveAccessesAndIndices) {
  PrefixAwarePolicy p;
  auto c = chunks(3);
  bring_in(p, c[0], 1);
  bring_in(p, c[1], 3);  // an access in between: no run
  bring_in(p, c[2], 4);  // consecutive, index 2 after 1: a run
  std::vector<uint32_t> order;
  p.drain([&](Chunk& x) { order.push_back(x.index); });
  EXPECT_EQ(order, (std::vector<uint32_t>{0, 2, 1}));
}

TEST(PrefixAwarePolicy, ProtectsBlocksUsedThreeTimesWithinItsShare) {
  PrefixAwarePolicy p;
  auto c = chunks(8);
  uint64_t epoch = 100;
  for (auto& x : c) bring_in(p, x, epoch += 2);  // every other epoch: no runs
  // Chunk 7 is used twice more (3 in all): protected, so every other chunk goes first.
  p.touch(c[7], epoch += 2);
  EXPECT_EQ(p.protected_size(), 0u);
  p.touch(c[7], epoch += 2);
  EXPECT_EQ(p.protected_size(), 1u);
  EXPECT_TRUE(c[7].hot);
  EXPECT_EQ(p.victim(), &c[0]);
  // Protected chunks take at most 25 % (2 of 8): each one beyond pushes the
  // coldest protected chunk back to probation.
  for (int k : {1, 2, 3, 4})
    for (int u = 0; u < 2; ++u) p.touch(c[static_cast<size_t>(k)], epoch += 2);
  EXPECT_EQ(p.protected_size(), 2u);
  EXPECT_EQ(p.size(), 8u);
  drain_all(p);
  for (auto& x : c) EXPECT_FALSE(x.in_policy);
}

TEST(S3FifoPolicy, OneHitWondersLeaveBeforeReusedChunks) {
  S3FifoPolicy p;
  auto c = chunks(20);
  uint64_t epoch = 0;
  for (auto& x : c) bring_in(p, x, ++epoch);
  p.touch(c[0], ++epoch);  // chunk 0 used again
  // The oldest chunk of small is 0, but it was used again: it moves to main
  // and chunk 1 (used once) is the victim.
  Chunk* v = p.victim();
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->index, 1u);
  EXPECT_TRUE(c[0].hot);
  EXPECT_EQ(p.main_size(), 1u);
  EXPECT_EQ(p.small_size(), 19u);
  drain_all(p);
}

TEST(S3FifoPolicy, AGhostComesBackIntoMain) {
  S3FifoPolicy p;
  auto c = chunks(12);
  uint64_t epoch = 0;
  for (size_t i = 0; i < 11; ++i) {
    bring_in(p, c[i], ++epoch);
    if (i < 5) p.touch(c[i], ++epoch);  // 0..4 used again: they will go to main
  }
  // Evict until a chunk used once leaves small: it goes to the ghost.
  Chunk* v = p.victim();
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->index, 5u);
  p.erase(*v);
  EXPECT_TRUE(p.in_ghost(c[5]));
  p.insert(c[5]);
  EXPECT_TRUE(c[5].hot);  // straight into main
  p.insert(c[11]);
  EXPECT_FALSE(c[11].hot);
  drain_all(p);
  EXPECT_EQ(p.size(), 0u);
}

TEST(Admission, TailDeclinesPartlyFilledChunks) {
  TailAdmission a;
  auto c = chunks(2);
  EXPECT_FALSE(a.admit(AdmitQuery{&c[0], &c[1], Tier::kHbm, 100, 512}));
  EXPECT_TRUE(a.admit(AdmitQuery{&c[0], &c[1], Tier::kHbm, 512, 512}));
}

TEST(Admission, TinyLfuAdmitsTheMorePopular) {
  TinyLfuAdmission a(1024);
  auto c = chunks(3);
  for (int i = 0; i < 5; ++i) a.on_access(c[0]);
  a.on_access(c[1]);
  EXPECT_EQ(a.estimate(c[0]), 5u);
  EXPECT_EQ(a.estimate(c[1]), 1u);
  EXPECT_EQ(a.estimate(c[2]), 0u);
  EXPECT_FALSE(a.admit(AdmitQuery{&c[1], &c[0], Tier::kHbm, 1, 1}));
  EXPECT_TRUE(a.admit(AdmitQuery{&c[0], &c[1], Tier::kHbm, 1, 1}));
  // Aging: after 10 x width accesses every count is halved.
  for (int i = 0; i < 10 * 1024; ++i) a.on_access(c[2]);
  EXPECT_LE(a.estimate(c[0]), 3u);
}

TEST(Admission, ByName) {
  bool known = false;
  EXPECT_EQ(make_admission("none", 10, &known), nullptr);
  EXPECT_TRUE(known);
  EXPECT_EQ(make_admission("tail", 10, &known)->name(), "tail");
  EXPECT_EQ(make_admission("tinylfu", 10, &known)->name(), "tinylfu");
  EXPECT_EQ(make_admission("random", 10, &known), nullptr);
  EXPECT_FALSE(known);
}

namespace {
struct RecordingSink final : PrefetchSink {
  std::vector<ContextId> staged;
  uint32_t prefetch(RegionId, uint32_t, uint32_t) override { return 0; }
  uint32_t prefetch_region(RegionId) override { return 0; }
  uint32_t prefetch_context(ContextId ctx) override {
    staged.push_back(ctx);
    return 1;
  }
  const Region* region(RegionId) const override { return nullptr; }
};
constexpr uint64_t kSec = 1'000'000'000;
}  // namespace

// Every context resumes 60 s after its turn ends. Once the prestager has
// seen enough gaps, an idle context is staged shortly before its 60 s are up
// (within the 30 s horizon), not right after it parks, and only once.
TEST(ResumePrestager, StagesContextsWhenTheirNextTurnIsLikely) {
  ResumePrestager::Options o;
  o.min_samples = 8;
  ResumePrestager p(o);
  RecordingSink sink;
  uint64_t now = 0;
  for (ContextId ctx = 0; ctx < 20; ++ctx) {  // learn: 20 gaps of 60 s
    p.on_turn(TurnEvent{ctx, now, false}, sink);
    p.on_turn(TurnEvent{ctx, now + 60 * kSec, true}, sink);
    now += kSec;
  }
  EXPECT_EQ(p.gaps_seen(), 20u);
  EXPECT_GT(p.resume_probability(45 * kSec), 0.5);
  EXPECT_LT(p.resume_probability(1 * kSec), 0.05);
  now = 1000 * kSec;
  p.on_turn(TurnEvent{99, now, false}, sink);  // context 99 parks
  p.on_tick(now + 5 * kSec, sink);
  EXPECT_TRUE(sink.staged.empty());
  p.on_tick(now + 45 * kSec, sink);
  EXPECT_EQ(sink.staged, std::vector<ContextId>{99});
  p.on_tick(now + 50 * kSec, sink);
  EXPECT_EQ(sink.staged.size(), 1u);  // once per idle period
}

TEST(ResumePrestager, SilentUntilItHasLearned) {
  ResumePrestager p;
  RecordingSink sink;
  p.on_turn(TurnEvent{1, 0, false}, sink);
  for (uint64_t t = 0; t < 600; t += 5) p.on_tick(t * kSec, sink);
  EXPECT_TRUE(sink.staged.empty());
  EXPECT_EQ(p.resume_probability(10 * kSec), 0.0);
}

TEST(PolicyKnob, AcceptsTheNewPolicies) {
  Config cfg;
  ASSERT_EQ(find_knob("eviction_policy")->set(cfg, "prefix"), std::nullopt);
  EXPECT_EQ(cfg.eviction_policy, PolicyKind::kPrefix);
  ASSERT_EQ(find_knob("eviction_policy")->set(cfg, "s3fifo"), std::nullopt);
  EXPECT_EQ(cfg.eviction_policy, PolicyKind::kS3Fifo);
  EXPECT_EQ(make_policy(PolicyKind::kPrefix, cfg, nullptr)->name(), "prefix");
  EXPECT_EQ(make_policy(PolicyKind::kS3Fifo, cfg, nullptr)->name(), "s3fifo");
  EXPECT_NE(find_knob("eviction_policy")->set(cfg, "belady"), std::nullopt);  // offline only: not a pager policy
}

// The pager runs on the simulated device with each new policy: data intact,
// counters consistent, and a live switch between them drains cleanly.
TEST(PolicyKnob, ThePagerRunsWithThem) {
  for (PolicyKind kind : {PolicyKind::kPrefix, PolicyKind::kS3Fifo}) {
    Config cfg;
    cfg.chunk_size = 64 * KiB;
    cfg.sim_hbm_capacity = 1 * MiB;
    cfg.eviction_policy = kind;
    cfg.store_dir = testing::TempDir();
    FileStore store(cfg.store_dir, cfg.chunk_size);
    SimMover mover(cfg, &store);
    Pager pager(cfg, mover);
    SimDevice dev(pager, mover);
    auto r = dev.alloc(4 * MiB);
    std::vector<std::byte> buf(4 * MiB);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::byte>(i * 7 + 3);
    ASSERT_EQ(dev.write(r, 0, buf), Status::kOk);
    std::vector<std::byte> out(4 * MiB);
    for (int pass = 0; pass < 3; ++pass) ASSERT_EQ(dev.read(r, 0, out), Status::kOk);
    EXPECT_EQ(buf, out) << to_string(kind);
    EXPECT_EQ(pager.audit(), "") << to_string(kind);
    Config next = pager.config();
    next.eviction_policy = kind == PolicyKind::kPrefix ? PolicyKind::kS3Fifo : PolicyKind::kPrefix;
    ASSERT_EQ(pager.apply(next), Status::kOk);
    ASSERT_EQ(dev.read(r, 0, out), Status::kOk);
    EXPECT_EQ(buf, out);
    EXPECT_EQ(pager.audit(), "");
  }
}
