// The chunk state machine (chunk.h): every allowed transition is accepted and
// leads where the diagram says; every forbidden one is refused with the right
// status and leaves the chunk untouched.
#include <gtest/gtest.h>

#include <set>
#include <tuple>

#include "kvpager/chunk.h"

namespace kvpager {
namespace {

constexpr Tier kAllTiers[] = {Tier::kHbm, Tier::kHost, Tier::kNvme, Tier::kUnpopulated};
constexpr MoveKind kAllKinds[] = {MoveKind::kPromote, MoveKind::kDemote, MoveKind::kSpill, MoveKind::kRestore,
                                  MoveKind::kDiscard};

// The diagram, written out independently of chunk.cpp.
const std::set<std::tuple<MoveKind, Tier, Tier>> kAllowed = {
    {MoveKind::kPromote, Tier::kUnpopulated, Tier::kHbm}, {MoveKind::kPromote, Tier::kHost, Tier::kHbm},
    {MoveKind::kDemote, Tier::kHbm, Tier::kHost},         {MoveKind::kSpill, Tier::kHost, Tier::kNvme},
    {MoveKind::kRestore, Tier::kNvme, Tier::kHost},       {MoveKind::kRestore, Tier::kNvme, Tier::kHbm},
    {MoveKind::kDiscard, Tier::kHbm, Tier::kUnpopulated}, {MoveKind::kDiscard, Tier::kHost, Tier::kUnpopulated},
    {MoveKind::kDiscard, Tier::kNvme, Tier::kUnpopulated},
};

Chunk resting_in(Tier t) {
  Chunk c;
  c.tier = c.target = t;
  c.store_copy = (t == Tier::kNvme);
  c.dirty = (t == Tier::kHbm || t == Tier::kHost);
  return c;
}

bool takes_away(MoveKind k) { return k == MoveKind::kDemote || k == MoveKind::kSpill || k == MoveKind::kDiscard; }

TEST(ChunkStateMachine, EveryTransitionOfAnUnpinnedRestingChunkMatchesTheDiagram) {
  int allowed = 0;
  for (MoveKind k : kAllKinds)
    for (Tier from : kAllTiers)
      for (Tier to : kAllTiers) {
        Chunk c = resting_in(from);
        bool legal = kAllowed.count({k, from, to}) > 0;
        EXPECT_EQ(check_transition(c, k, to), legal ? Status::kOk : Status::kInvalid)
            << to_string(k) << " " << to_string(from) << " -> " << to_string(to);
        if (!legal) continue;
        ++allowed;
        begin_move(c, to);
        EXPECT_TRUE(c.in_flight());
        EXPECT_EQ(c.tier, from) << "in flight, the bytes are still at the source";
        complete_move(c, k);
        EXPECT_TRUE(c.resting());
        EXPECT_EQ(c.tier, to);
        EXPECT_TRUE(check_invariants(c));
      }
  EXPECT_EQ(allowed, 9);
}

TEST(ChunkStateMachine, NothingStartsWhileAMoveIsInFlight) {
  for (const auto& [k0, from0, to0] : kAllowed) {
    Chunk c = resting_in(from0);
    begin_move(c, to0);
    for (MoveKind k : kAllKinds)
      for (Tier to : kAllTiers) EXPECT_EQ(check_transition(c, k, to), Status::kBusy);
  }
}

TEST(ChunkStateMachine, PinnedChunksCannotBeTakenAwayButCanBePromoted) {
  for (const auto& [k, from, to] : kAllowed) {
    Chunk c = resting_in(from);
    c.pinned = true;
    EXPECT_EQ(check_transition(c, k, to), takes_away(k) ? Status::kBusy : Status::kOk)
        << to_string(k) << " from " << to_string(from);
  }
}

TEST(ChunkStateMachine, AbortLeavesTheChunkWhereItWas) {
  for (const auto& [k, from, to] : kAllowed) {
    Chunk c = resting_in(from);
    Chunk before = c;
    begin_move(c, to);
    abort_move(c);
    EXPECT_TRUE(c.resting());
    EXPECT_EQ(c.tier, before.tier);
    EXPECT_EQ(c.dirty, before.dirty);
    EXPECT_EQ(c.store_copy, before.store_copy);
  }
}

TEST(ChunkStateMachine, FlagsFollowTheMoves) {
  Chunk c = resting_in(Tier::kUnpopulated);
  begin_move(c, Tier::kHbm);
  complete_move(c, MoveKind::kPromote);
  EXPECT_TRUE(c.dirty) << "fresh zeros have no store copy";
  EXPECT_FALSE(c.store_copy);
  begin_move(c, Tier::kHost);
  complete_move(c, MoveKind::kDemote);
  begin_move(c, Tier::kNvme);
  complete_move(c, MoveKind::kSpill);
  EXPECT_FALSE(c.dirty);
  EXPECT_TRUE(c.store_copy);
  begin_move(c, Tier::kHbm);
  complete_move(c, MoveKind::kRestore);
  EXPECT_TRUE(c.store_copy) << "a restore keeps the store copy: a clean chunk spills again for free";
  EXPECT_FALSE(c.dirty);
  begin_move(c, Tier::kUnpopulated);
  complete_move(c, MoveKind::kDiscard);
  EXPECT_FALSE(c.store_copy);
  EXPECT_FALSE(c.dirty);
  EXPECT_TRUE(check_invariants(c));
}

TEST(ChunkStateMachine, InvariantChecksCatchBrokenStates) {
  const char* why = nullptr;
  Chunk c = resting_in(Tier::kNvme);
  c.store_copy = false;
  EXPECT_FALSE(check_invariants(c, &why));
  EXPECT_NE(std::string(why).find("I3"), std::string::npos);

  Chunk d = resting_in(Tier::kHbm);
  d.in_policy = true;
  d.pinned = true;
  EXPECT_FALSE(check_invariants(d, &why));
  EXPECT_NE(std::string(why).find("I4"), std::string::npos);

  Chunk e = resting_in(Tier::kUnpopulated);
  e.dirty = true;
  EXPECT_FALSE(check_invariants(e, &why));
  EXPECT_NE(std::string(why).find("I2"), std::string::npos);

  Chunk f = resting_in(Tier::kHost);
  f.prefetcher = 1;
  EXPECT_FALSE(check_invariants(f, &why));
  EXPECT_NE(std::string(why).find("I5"), std::string::npos);
}

TEST(ChunkStateMachine, ChunkStaysSmall) {
  // 10^6 chunks per TiB of 1 MiB chunks: the struct is the pager's footprint.
  EXPECT_LE(sizeof(Chunk), 48u);
}

}  // namespace
}  // namespace kvpager
