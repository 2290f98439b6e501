// Decision cost of the pager core with 10^6 resident chunks (no bytes moved:
// NullMover completes every move at once, so only the pager's own work is
// timed). Run with scripts/bench-pager; results in docs/benchmarks.md.
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <vector>

#include "kvpager/pager.h"
#include "null_mover.h"

namespace kvpager {
namespace {

constexpr uint32_t kChunks = 1u << 20;  // 1,048,576 chunks: 1024 regions of 1024
constexpr uint64_t kChunk = 64 * KiB;

struct Rig {
  explicit Rig(PolicyKind policy, uint64_t budget_chunks) : mover(budget_chunks * kChunk) {
    Config cfg;
    cfg.chunk_size = kChunk;
    cfg.hbm_budget = budget_chunks * kChunk;
    cfg.host_capacity = 4 * uint64_t{kChunks} * kChunk;
    cfg.eviction_policy = policy;
    cfg.prefetchers = 0;
    cfg.high_watermark = 1.0;  // no background demotion: each fault evicts exactly what it needs
    cfg.low_watermark = 0.99;
    pager = std::make_unique<Pager>(cfg, mover);
    // Regions of 1024 chunks, like KV pools of 64 MiB.
    for (uint32_t r = 0; r < kChunks / 1024; ++r) regions.push_back(pager->add_region(uint64_t{r} << 32, 1024 * kChunk));
  }
  void populate(uint32_t chunks) {
    for (uint32_t i = 0; i < chunks; ++i) pager->access(regions[i / 1024], i % 1024, true);
  }
  testing::NullMover mover;
  std::unique_ptr<Pager> pager;
  std::vector<RegionId> regions;
};

// Every access is a hit on one of 10^6 chunks resident in HBM.
void BM_AccessHit(benchmark::State& state) {
  const auto policy = static_cast<PolicyKind>(state.range(0));
  const bool random = state.range(1) != 0;
  Rig rig(policy, kChunks);
  rig.populate(kChunks);
  std::mt19937 rng(1);
  std::vector<uint32_t> order(1 << 20);
  for (size_t i = 0; i < order.size(); ++i) order[i] = random ? static_cast<uint32_t>(rng() % kChunks) : static_cast<uint32_t>(i % kChunks);
  size_t k = 0;
  for (auto _ : state) {
    uint32_t c = order[k++ & (order.size() - 1)];
    benchmark::DoNotOptimize(rig.pager->access(rig.regions[c >> 10], c & 1023, false));
  }
  if (rig.pager->stats().faults != kChunks) state.SkipWithError(("not all hits: faults " + std::to_string(rig.pager->stats().faults) + " evictions " + std::to_string(rig.pager->stats().evictions)).c_str());
  state.SetLabel(std::string(to_string(policy)) + (random ? " random" : " sequential"));
}
BENCHMARK(BM_AccessHit)->ArgsProduct({{0, 1, 2}, {0, 1}})->Unit(benchmark::kNanosecond);

// Every access is a fault on a chunk in host RAM with HBM full of 10^6 chunks:
// victim choice + demote + promote bookkeeping (the eviction decision).
void BM_FaultWithEviction(benchmark::State& state) {
  const auto policy = static_cast<PolicyKind>(state.range(0));
  Rig rig(policy, kChunks / 2);
  rig.populate(kChunks);  // half in HBM, half demoted to host
  std::mt19937 rng(2);
  for (auto _ : state) {
    auto c = static_cast<uint32_t>(rng() % kChunks);
    benchmark::DoNotOptimize(rig.pager->access(rig.regions[c >> 10], c & 1023, false));
  }
  auto s = rig.pager->stats();
  state.counters["evictions"] = benchmark::Counter(static_cast<double>(s.evictions), benchmark::Counter::kAvgIterations);
  state.SetLabel(std::string(to_string(policy)));
}
BENCHMARK(BM_FaultWithEviction)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kNanosecond);

// Pager::reference (a live program's launch named a region) on a region whose
// chunks all rest in HBM: every chunk counts as used. Regions of 1024 chunks,
// picked at random among the 1024; the cost grows with the region, so the
// counter gives it per chunk too.
void BM_ReferenceResidentRegion(benchmark::State& state) {
  const auto policy = static_cast<PolicyKind>(state.range(0));
  Rig rig(policy, kChunks);
  rig.populate(kChunks);
  std::mt19937 rng(4);
  for (auto _ : state) benchmark::DoNotOptimize(rig.pager->reference(rig.regions[rng() % rig.regions.size()], 0));
  if (rig.pager->stats().evictions != 0) state.SkipWithError("something was evicted: not all resident");
  state.counters["per_chunk_ns"] =
      benchmark::Counter(1024.0, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.SetLabel(std::string(to_string(policy)) + ", 1024-chunk regions");
}
BENCHMARK(BM_ReferenceResidentRegion)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond);

// The policy alone: victim + erase + insert on 10^6 listed chunks.
void BM_PolicyVictim(benchmark::State& state) {
  const auto policy = static_cast<PolicyKind>(state.range(0));
  std::vector<Chunk> chunks(kChunks);
  Config cfg;
  struct Flat final : RestoreCost {
    double restore_ns(const Chunk&) const override { return 1000.0; }
  } costs;
  auto p = make_policy(policy, cfg, &costs);
  std::mt19937 rng(3);
  for (uint32_t i = 0; i < kChunks; ++i) {
    chunks[i].tier = chunks[i].target = Tier::kHbm;
    p->insert(chunks[i]);
    if (rng() % 2) p->touch(chunks[i], i);
  }
  for (auto _ : state) {
    Chunk* v = p->victim();
    p->erase(*v);
    p->insert(*v);
  }
  state.SetLabel(std::string(to_string(policy)));
}
BENCHMARK(BM_PolicyVictim)->Arg(0)->Arg(1)->Arg(2)->Unit(benchmark::kNanosecond);

}  // namespace
}  // namespace kvpager

BENCHMARK_MAIN();
