// Basic vocabulary of the pager: tiers, identifiers, move kinds.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kvpager {

// Where a chunk's bytes live. kUnpopulated: never touched (or dropped); the
// first touch materialises it in HBM as zeros.
enum class Tier : uint8_t { kHbm = 0, kHost = 1, kNvme = 2, kUnpopulated = 3 };
inline constexpr int kNumTiers = 4;
inline constexpr std::array<Tier, 3> kStorageTiers{Tier::kHbm, Tier::kHost, Tier::kNvme};

constexpr std::string_view to_string(Tier t) {
  switch (t) {
    case Tier::kHbm: return "hbm";
    case Tier::kHost: return "host";
    case Tier::kNvme: return "nvme";
    case Tier::kUnpopulated: return "unpopulated";
  }
  return "?";
}
constexpr size_t index(Tier t) { return static_cast<size_t>(t); }

// The five things a Mover does. Promote also covers first touch
// (from kUnpopulated: zero-fill in HBM).
enum class MoveKind : uint8_t { kPromote, kDemote, kSpill, kRestore, kDiscard };
inline constexpr int kNumMoveKinds = 5;

constexpr std::string_view to_string(MoveKind k) {
  switch (k) {
    case MoveKind::kPromote: return "promote";
    case MoveKind::kDemote: return "demote";
    case MoveKind::kSpill: return "spill";
    case MoveKind::kRestore: return "restore";
    case MoveKind::kDiscard: return "discard";
  }
  return "?";
}

// A region handle: slot index plus a generation, so a stale id (region freed,
// slot reused) is detected instead of aliasing a new region.
struct RegionId {
  uint32_t slot = UINT32_MAX;
  uint32_t gen = 0;
  constexpr bool valid() const { return slot != UINT32_MAX; }
  friend constexpr bool operator==(RegionId, RegionId) = default;
  constexpr uint64_t packed() const { return (uint64_t{gen} << 32) | slot; }
};

using ContextId = uint32_t;
inline constexpr ContextId kNoContext = UINT32_MAX;

// Hints an engine (C API, control socket, CLI) gives about a whole context.
enum class HintKind : uint8_t {
  kPrefetch,  // its next turn is coming: stage it into HBM
  kPark,      // idle for a while: demote it and let it spill
  kDrop,      // its bytes are no longer needed: discard everywhere
  kPin,       // keep it where it is: never a victim
  kUnpin,
};

constexpr std::string_view to_string(HintKind h) {
  switch (h) {
    case HintKind::kPrefetch: return "prefetch";
    case HintKind::kPark: return "park";
    case HintKind::kDrop: return "drop";
    case HintKind::kPin: return "pin";
    case HintKind::kUnpin: return "unpin";
  }
  return "?";
}

}  // namespace kvpager
