#include "kvpager/chunk.h"

#include <cstdio>
#include <cstdlib>

namespace kvpager {

namespace {
// Where each move may start and end.
bool legal(MoveKind kind, Tier from, Tier to) {
  switch (kind) {
    case MoveKind::kPromote:
      return to == Tier::kHbm && (from == Tier::kHost || from == Tier::kUnpopulated);
    case MoveKind::kDemote:
      return from == Tier::kHbm && to == Tier::kHost;
    case MoveKind::kSpill:
      return from == Tier::kHost && to == Tier::kNvme;
    case MoveKind::kRestore:
      return from == Tier::kNvme && (to == Tier::kHost || to == Tier::kHbm);
    case MoveKind::kDiscard:
      return from != Tier::kUnpopulated && to == Tier::kUnpopulated;
  }
  return false;
}
}  // namespace

Status check_transition(const Chunk& c, MoveKind kind, Tier to) {
  if (c.in_flight()) return Status::kBusy;
  if (!legal(kind, c.tier, to)) return Status::kInvalid;
  bool takes_it_away = kind == MoveKind::kDemote || kind == MoveKind::kSpill || kind == MoveKind::kDiscard;
  if (c.pinned && takes_it_away) return Status::kBusy;
  return Status::kOk;
}

void begin_move(Chunk& c, Tier to) {
  c.target = to;
  KVPAGER_CHECK_CHUNK(c);
}

void complete_move(Chunk& c, MoveKind kind) {
  switch (kind) {
    case MoveKind::kPromote:
      if (c.tier == Tier::kUnpopulated) c.dirty = true;  // fresh zeros have no store copy
      break;
    case MoveKind::kSpill:
      c.store_copy = true;
      c.dirty = false;
      break;
    case MoveKind::kRestore:
      c.store_copy = !c.drop_copy;  // without its copy it is written again on its next spill
      c.dirty = false;
      c.drop_copy = false;
      break;
    case MoveKind::kDiscard:
      c.store_copy = false;
      c.dirty = false;
      c.prefetcher = 0;
      c.freq = 0;
      break;
    case MoveKind::kDemote:
      break;
  }
  c.tier = c.target;
  KVPAGER_CHECK_CHUNK(c);
}

void abort_move(Chunk& c) {
  c.target = c.tier;
  c.drop_copy = false;  // a failed restore erased nothing
  if (c.prefetcher != 0 && c.tier != Tier::kHbm) c.prefetcher = 0;
  KVPAGER_CHECK_CHUNK(c);
}

bool check_invariants(const Chunk& c, const char** why) {
  auto fail = [&](const char* w) {
    if (why) *why = w;
    return false;
  };
  if (c.resting() && c.tier == Tier::kUnpopulated && (c.dirty || c.store_copy || c.in_policy))
    return fail("I2: a resting unpopulated chunk is clean, has no store copy and is in no list");
  if (c.resting() && c.tier == Tier::kNvme && !c.store_copy) return fail("I3: a chunk resting in NVMe has a store copy");
  if (c.drop_copy && !(c.in_flight() && c.tier == Tier::kNvme))
    return fail("I6: only a restore in flight drops a store copy");
  if (c.in_policy && (c.in_flight() || c.pinned || (c.tier != Tier::kHbm && c.tier != Tier::kHost)))
    return fail("I4: only resting, unpinned HBM/HOST chunks are in a policy list");
  if (c.prefetcher != 0 && c.tier != Tier::kHbm && c.target != Tier::kHbm)
    return fail("I5: a prefetched chunk is in or on its way to HBM");
  return true;
}

#if KVPAGER_INVARIANTS
void invariant_failed(const Chunk& c, const char* why, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: chunk invariant broken (region %u chunk %u tier %d target %d): %s\n", file, line,
               c.region, c.index, static_cast<int>(c.tier), static_cast<int>(c.target), why);
  std::abort();
}
#endif

}  // namespace kvpager
