// Chunk: the paging unit, and its state machine.
//
//                       promote (first touch: zero-fill)
//     UNPOPULATED ───────────────────────────────────────────► HBM
//         ▲                                                   │  ▲
//         │                                            demote │  │ promote
//         │ discard                                           ▼  │
//         ├──────────────────────────────────────────────── HOST │
//         │   (from any resting tier; drop hint,              │  ▲│
//         │    region freed)                            spill │  ││ restore
//         │                                (idle or parked    ▼  │╵ (to HOST or
//         └───────────────────────────────  context only)   NVME    straight to HBM)
//
// Every arrow is a move carried by a Mover. While it runs the chunk is IN
// FLIGHT: `tier` is still the source, `target` the destination; when the move
// completes `tier = target`. A chunk with tier == target is RESTING. At most
// one move per chunk is in flight.
//
// Flags:
//   dirty       written since its NVMe copy was made (or never copied), or may
//               have been (a pager whose owner cannot see writes marks every
//               restored chunk dirty: WriteTracking::kUnobserved). A clean
//               chunk whose store copy is valid spills without writing.
//   store_copy  the NVMe tier holds a copy of this chunk's bytes.
//   drop_copy   a restore in flight that erases the store copy as it lands
//               (the copy would hold NVMe room that spills need).
//   pinned      never chosen as a victim; demote, spill and discard refused.
//   in_policy   linked in its tier's eviction policy (its hook is in use).
//
// Invariants (check_invariants(), run in debug builds after every transition):
//   I1  in flight  ⇔  target != tier (by construction: it is the definition)
//   I2  tier == UNPOPULATED and resting  ⇒  !dirty, !store_copy, !in_policy
//   I3  tier == NVME and resting  ⇒  store_copy
//   I4  in_policy  ⇒  resting, !pinned, tier ∈ {HBM, HOST}
//       (so a pinned or in-flight chunk can never be a victim: it is not in
//        any list a policy picks from)
//   I5  prefetched (prefetcher != 0)  ⇒  tier == HBM or target == HBM
//   I6  drop_copy  ⇒  in flight from NVME (a restore)
#pragma once

#include <boost/intrusive/list_hook.hpp>

#include <cstdint>

#include "kvpager/status.h"
#include "kvpager/types.h"

#if !defined(NDEBUG) || defined(KVPAGER_CHECK_INVARIANTS)
#define KVPAGER_INVARIANTS 1
#else
#define KVPAGER_INVARIANTS 0
#endif

namespace kvpager {

using ChunkHook = boost::intrusive::list_member_hook<boost::intrusive::link_mode<
#if KVPAGER_INVARIANTS
    boost::intrusive::safe_link
#else
    boost::intrusive::normal_link
#endif
    >>;

struct Chunk {
  ChunkHook hook;          // the residency list of its tier's eviction policy
  uint64_t last_use = 0;   // access epoch (the pager's logical clock)
  uint32_t region = 0;     // region slot
  uint32_t index = 0;      // chunk index within the region
  ContextId ctx = kNoContext;
  uint16_t freq = 0;       // saturating access count, aged by the cost-aware policy
  Tier tier = Tier::kUnpopulated;
  Tier target = Tier::kUnpopulated;
  uint8_t prefetcher = 0;  // 1 + index of the prefetcher that staged it, until first use
  bool dirty : 1 = false;
  bool store_copy : 1 = false;
  bool pinned : 1 = false;
  bool in_policy : 1 = false;
  bool referenced : 1 = false;  // CLOCK's second-chance bit
  bool hot : 1 = false;         // segmented policies: in S3-FIFO's main / prefix's protected segment
  bool wanted : 1 = false;      // queued alone by a reference to come to HBM (Pager::reference)
  bool drop_copy : 1 = false;   // restoring: the store copy is erased when it lands
  bool pending : 1 = false;     // in the pager's ring of prefetches waiting for room (once at most)

  bool in_flight() const { return target != tier; }
  bool resting() const { return target == tier; }
};
static_assert(sizeof(Chunk) <= 48, "Chunk is on the hot path: keep it within 48 bytes");

// The legal transitions, as the table above. Returns kOk if `kind` may start
// on `c` toward `to`; kBusy if it is in flight, or pinned and the move would
// take it away; kInvalid if the move does not start from c's tier or does not
// lead to `to`.
Status check_transition(const Chunk& c, MoveKind kind, Tier to);

// Starts a move (the chunk becomes in flight). Precondition: check_transition == kOk.
void begin_move(Chunk& c, Tier to);
// Completes the in-flight move: the chunk rests in its target tier.
void complete_move(Chunk& c, MoveKind kind);
// Aborts an in-flight move (the mover failed): the chunk stays where it was.
void abort_move(Chunk& c);

// Checks I1..I5; returns false (and names the broken one in *why) if one fails.
bool check_invariants(const Chunk& c, const char** why = nullptr);

#if KVPAGER_INVARIANTS
void invariant_failed(const Chunk& c, const char* why, const char* file, int line);
#define KVPAGER_CHECK_CHUNK(c)                                                   \
  do {                                                                            \
    const char* kvp_why_ = nullptr;                                               \
    if (!::kvpager::check_invariants((c), &kvp_why_))                              \
      ::kvpager::invariant_failed((c), kvp_why_, __FILE__, __LINE__);              \
  } while (0)
#else
#define KVPAGER_CHECK_CHUNK(c) \
  do {                         \
  } while (0)
#endif

}  // namespace kvpager
