// A random walk of accesses, host writes, hints and restores over managed
// regions, checking every byte the program should see against a model.
// Shared by the stand-in test and the GPU test (same code, other driver).
#pragma once

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "mover_rig.h"

namespace kvpager::testing {

struct WorkloadResult {
  uint64_t moves = 0;
  std::array<uint64_t, kNumMoveKinds> per_kind{};
  uint64_t mismatches = 0;
  std::string detail;  // the first mismatch
};

// Runs until the pager has made at least `moves` moves. Regions are tagged
// as contexts "c0".."cN" so hints can park and prefetch them.
inline WorkloadResult run_integrity_workload(MoverRig& rig, uint64_t moves, int nregions, uint64_t region_size,
                                             uint32_t seed) {
  WorkloadResult res;
  std::mt19937_64 rng(seed);
  const uint64_t cs = rig.cfg.chunk_size;
  std::vector<MoverRig::Region> regions;
  std::vector<std::vector<std::byte>> model;
  for (int i = 0; i < nregions; ++i) {
    regions.push_back(rig.alloc(region_size, "c" + std::to_string(i)));
    if (!regions.back().id.valid()) {
      res.detail = "allocation failed";
      ++res.mismatches;
      return res;
    }
    model.emplace_back(region_size);
    for (auto& b : model.back()) b = std::byte(rng());
    std::memcpy(regions.back().bytes(), model.back().data(), region_size);
  }
  auto total_moves = [&] {
    StatsSnapshot s = rig.pager->stats();
    uint64_t n = 0;
    for (int k = 0; k < kNumMoveKinds; ++k) n += s.moves[static_cast<size_t>(k)];
    return n;
  };
  auto verify = [&](size_t ri, uint64_t off, uint64_t len) {
    const std::byte* now = regions[ri].bytes() + off;
    if (std::memcmp(now, model[ri].data() + off, len) == 0) return;
    for (uint64_t i = 0; i < len; ++i) {
      if (now[i] != model[ri][off + i]) {
        if (res.mismatches++ == 0)
          res.detail = "region " + std::to_string(ri) + " byte " + std::to_string(off + i) + " (chunk " +
                       std::to_string((off + i) / cs) + ")";
      }
    }
  };
  const auto chunks = static_cast<uint32_t>((region_size + cs - 1) / cs);
  for (uint64_t step = 0; total_moves() < moves && step < 50 * moves; ++step) {
    const size_t ri = rng() % regions.size();
    const auto ci = static_cast<uint32_t>(rng() % chunks);
    const uint64_t off = uint64_t{ci} * cs, len = std::min(cs, region_size - off);
    const ContextId ctx = rig.pager->find_context("c" + std::to_string(ri));
    switch (rng() % 10) {
      case 0: case 1: case 2: {  // a kernel writes part of a chunk
        if (!ok(rig.pager->access(regions[ri].id, ci, true))) break;
        const uint64_t a = rng() % len, n = std::min<uint64_t>(1 + rng() % 4096, len - a);
        for (uint64_t i = 0; i < n; ++i) model[ri][off + a + i] = std::byte(rng());
        std::memcpy(regions[ri].bytes() + off + a, model[ri].data() + off + a, n);
        break;
      }
      case 3: case 4:  // a kernel reads a chunk
        if (ok(rig.pager->access(regions[ri].id, ci, false))) verify(ri, off, len);
        break;
      case 5: case 6:  // the engine parks a context: it will spill
        rig.pager->hint(ctx, HintKind::kPark);
        break;
      case 7:  // ...and wants it back
        rig.pager->hint(ctx, HintKind::kPrefetch);
        break;
      case 8:  // a launch reads the whole region: restore, then every byte
        rig.pager->drain();
        if (ok(rig.pager->restore(regions[ri].id))) {
          rig.pager->drain();
          verify(ri, 0, region_size);
        }
        break;
      default:
        rig.pager->tick();
        break;
    }
  }
  // Finally everything, everywhere.
  for (size_t ri = 0; ri < regions.size(); ++ri) {
    rig.pager->drain();
    if (ok(rig.pager->restore(regions[ri].id))) verify(ri, 0, region_size);
  }
  StatsSnapshot s = rig.pager->stats();
  res.per_kind = s.moves;
  res.moves = total_moves();
  return res;
}

}  // namespace kvpager::testing
