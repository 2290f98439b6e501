// Data integrity under everything the pager does: random bytes are written
// through the pager into regions totalling 4x the HBM budget and read back
// through random interleavings of reads, writes, budget changes, policy
// changes, hints and idle time, until at least 10^6 chunk moves have run
// (2 x 10^5 in sanitizer builds, which are ~10x slower). A shadow copy in
// plain memory is the truth; any byte that differs is a failure.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "sim_rig.h"

namespace kvpager {
namespace {

#if defined(KVPAGER_SANITIZED)
constexpr uint64_t kTargetMoves = 200'000;
#else
constexpr uint64_t kTargetMoves = 1'000'000;
#endif

struct Shadow {
  RegionId id;
  ContextId ctx;
  std::vector<std::byte> bytes;
};

TEST(Integrity, RandomInterleavingsNeverCorruptAByte) {
  Config cfg = testing::small_config();
  cfg.hbm_budget = 1 * MiB;
  cfg.sim_hbm_capacity = 1 * MiB;
  cfg.host_capacity = 1 * MiB;
  cfg.spill_idle_ns = 2'000'000;  // 2 ms of virtual time
  cfg.prefetchers = kAllPrefetchers;
  cfg.prefetch_depth = 3;
  testing::SimRig rig(cfg);
  Pager& pager = *rig.pager;

  std::mt19937_64 rng(20261123);
  auto uniform = [&](uint64_t lo, uint64_t hi) { return std::uniform_int_distribution<uint64_t>(lo, hi)(rng); };

  // Regions of odd sizes (short last chunks), some sharing a context: 4 MiB in all.
  const uint64_t sizes[] = {700 * KiB + 13, 1 * MiB, 333 * KiB + 1, 64 * KiB, 900 * KiB + 77, 1 * MiB + 60 * KiB - 3};
  const char* names[] = {"alpha", "", "beta", "alpha", "", "gamma"};
  std::vector<Shadow> regions;
  uint64_t total = 0;
  for (size_t i = 0; i < std::size(sizes); ++i) {
    Shadow s;
    s.id = rig.dev.alloc(sizes[i], names[i]);
    s.ctx = pager.region(s.id)->ctx;
    s.bytes.assign(sizes[i], std::byte{0});
    total += sizes[i];
    regions.push_back(std::move(s));
  }
  ASSERT_GE(total, 4 * cfg.hbm_budget);

  std::vector<std::byte> buf;
  auto random_fill = [&](std::span<std::byte> out) {
    for (size_t i = 0; i < out.size(); i += 8) {
      uint64_t v = rng();
      std::memcpy(out.data() + i, &v, std::min<size_t>(8, out.size() - i));
    }
  };
  auto pinned_in_hbm = [&] {
    uint64_t bytes = 0;
    for (auto& r : regions) {
      const Region* reg = pager.region(r.id);
      for (uint32_t i = 0; i < reg->nchunks; ++i)
        if (reg->chunks[i].pinned && reg->chunks[i].tier == Tier::kHbm) bytes += cfg.chunk_size;
    }
    return bytes;
  };
  // Pins keep room for every other access (Pager::pin_limit), so an access
  // never finds HBM full of pinned chunks.
  auto read = [&](Shadow& s, uint64_t off, std::span<std::byte> out) { return rig.dev.read(s.id, off, out); };
  auto write = [&](Shadow& s, uint64_t off, std::span<const std::byte> in) { return rig.dev.write(s.id, off, in); };
  auto context_bytes = [&](ContextId ctx) {
    uint64_t bytes = 0;
    for (auto& r : regions)
      if (r.ctx == ctx) bytes += pager.region(r.id)->nchunks * cfg.chunk_size;
    return bytes;
  };
  auto pinned = [&](ContextId ctx) {
    for (const ContextInfo& c : pager.contexts())
      if (c.id == ctx) return c.pinned;
    return false;
  };
  auto check_range = [&](Shadow& s, uint64_t off, uint64_t len) {
    buf.resize(len);
    ASSERT_EQ(read(s, off, buf), Status::kOk);
    ASSERT_EQ(std::memcmp(buf.data(), s.bytes.data() + off, len), 0) << "corrupted bytes in [" << off << ", +" << len
                                                                     << ") after " << pager.stats().total_moves()
                                                                     << " moves";
  };

  uint64_t ops = 0;
  while (pager.stats().total_moves() < kTargetMoves) {
    Shadow& s = regions[uniform(0, regions.size() - 1)];
    const uint64_t off = uniform(0, s.bytes.size() - 1);
    const uint64_t len = uniform(1, std::min<uint64_t>(s.bytes.size() - off, 200 * KiB));
    const uint64_t dice = uniform(0, 999);
    if (dice < 450) {  // write
      buf.resize(len);
      random_fill(buf);
      ASSERT_EQ(write(s, off, buf), Status::kOk);
      std::memcpy(s.bytes.data() + off, buf.data(), len);
    } else if (dice < 900) {  // read
      check_range(s, off, len);
    } else if (dice < 930) {  // idle time: contexts may spill
      rig.dev.compute(uniform(0, 4'000'000));
    } else if (dice < 950) {  // budget change
      Config next = pager.config();
      next.hbm_budget = uniform(2, 16) * cfg.chunk_size;
      std::string why;
      if (pager.pinned_bytes() > Pager::pin_limit(next)) {  // would leave no room beside the pins
        ASSERT_EQ(pager.apply(next, &why), Status::kInvalid);
        ASSERT_NE(why.find("pinned"), std::string::npos) << why;
      } else {
        ASSERT_EQ(pager.apply(next, &why), Status::kOk) << why;
      }
      pager.drain();
      ASSERT_LE(pinned_in_hbm(), Pager::pin_limit(pager.config()));
      ASSERT_LE(pager.committed_bytes(Tier::kHbm), pager.config().hbm_budget);
    } else if (dice < 955) {  // policy change
      Config next = pager.config();
      next.eviction_policy = static_cast<PolicyKind>(uniform(0, 2));
      ASSERT_EQ(pager.apply(next), Status::kOk);
    } else {  // a hint
      switch (uniform(0, 4)) {
        case 0: ASSERT_EQ(pager.hint(s.ctx, HintKind::kPrefetch), Status::kOk); break;
        case 1: ASSERT_EQ(pager.hint(s.ctx, HintKind::kPark), pinned(s.ctx) ? Status::kBusy : Status::kOk); break;
        case 2: {
          const bool fits = pinned(s.ctx) || pager.pinned_bytes() + context_bytes(s.ctx) <= Pager::pin_limit(pager.config());
          ASSERT_EQ(pager.hint(s.ctx, HintKind::kPin), fits ? Status::kOk : Status::kNoSpace);
          break;
        }
        case 3: ASSERT_EQ(pager.hint(s.ctx, HintKind::kUnpin), Status::kOk); break;
        case 4:
          if (uniform(0, 9) == 0) {  // rarely: dropping throws the bytes away
            Status st = pager.hint(s.ctx, HintKind::kDrop);
            ASSERT_TRUE(st == Status::kOk || st == Status::kBusy);
            if (st == Status::kOk) {
              for (auto& other : regions) {
                if (other.ctx == s.ctx) std::fill(other.bytes.begin(), other.bytes.end(), std::byte{0});
              }
            }
          }
          break;
      }
      // Unpin at once most of the time, so pins do not starve the budget.
      if (uniform(0, 3) != 0) {
        ASSERT_EQ(pager.hint(s.ctx, HintKind::kUnpin), Status::kOk);
      }
    }
    // The device holds exactly the chunks the pager says are (or are coming) in HBM.
    ASSERT_EQ(rig.mover->hbm_slots_used() * cfg.chunk_size, pager.committed_bytes(Tier::kHbm)) << "op " << ops;
    if (++ops % 4096 == 0) {
      ASSERT_EQ(pager.audit(), "") << "after " << ops << " operations";
    }
  }
  for (auto& s : regions) check_range(s, 0, s.bytes.size());
  pager.drain();
  EXPECT_EQ(pager.audit(), "");

  const StatsSnapshot st = pager.stats();
  EXPECT_GE(st.total_moves(), kTargetMoves);
  // Every kind of move happened many times: the test exercised every path.
  for (size_t k = 0; k < kNumMoveKinds; ++k) {
    EXPECT_GT(st.moves[k], 10u) << "too few " << to_string(static_cast<MoveKind>(k)) << " moves";
  }
  EXPECT_EQ(st.move_failures, 0u);
  RecordProperty("operations", std::to_string(ops));
  RecordProperty("moves", std::to_string(st.total_moves()));
  std::printf("%llu operations, %llu moves (promote %llu, demote %llu, spill %llu, restore %llu, discard %llu)\n",
              static_cast<unsigned long long>(ops), static_cast<unsigned long long>(st.total_moves()),
              static_cast<unsigned long long>(st.moves[0]), static_cast<unsigned long long>(st.moves[1]),
              static_cast<unsigned long long>(st.moves[2]), static_cast<unsigned long long>(st.moves[3]),
              static_cast<unsigned long long>(st.moves[4]));
}

}  // namespace
}  // namespace kvpager
