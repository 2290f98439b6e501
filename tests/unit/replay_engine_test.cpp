// The replay engine: known answers on hand-made traces, and the properties
// that make its numbers trustworthy (infinite capacity = an independent
// count; Belady >= every policy at every capacity and = the exhaustive
// optimum; LRU never loses hits when capacity grows).
#include <gtest/gtest.h>

#include <fstream>

#include "replay/report.h"
#include "replay_test_util.h"

using namespace replay_test;

namespace {

void expect_accounted(const RunResult& r) {
  uint64_t missed = r.miss_never_seen + r.miss_not_admitted + r.miss_after_gap;
  for (uint64_t m : r.miss_evicted_from) missed += m;
  EXPECT_EQ(r.hit_tokens + missed, r.input_tokens) << r.label;
  EXPECT_EQ(r.hit_tokens_from[0] + r.hit_tokens_from[1] + r.hit_tokens_from[2], r.hit_tokens) << r.label;
  EXPECT_EQ(r.tokens_loaded + r.tokens_recomputed, r.input_tokens) << r.label;
}

const char* const kPolicies[] = {"lru", "clock", "cost", "s3fifo", "prefix", "lru+tail", "lru+tinylfu", "prefix+tail"};

}  // namespace

// Three requests, one tier of two 4-token blocks (B = 4), LRU:
//   r1 [1 2]    len 8: both never seen;                      resident {1, 2}
//   r2 [1 2 3]  len 10: 1, 2 hit (8 tokens); 3 (2 tokens) is new and evicts
//               the coldest, 1;                              resident {2, 3}
//   r3 [1 2]    len 8: 1 misses (evicted) and, admitted, evicts 2; so 2
//               misses too (evicted).
TEST(ReplayEngine, LruKnownAnswer) {
  const Trace t = make_trace(line(0, 8, {1, 2}) + line(1, 10, {1, 2, 3}) + line(2, 8, {1, 2}), 4);
  const RunResult r = run(prepare(t), single_tier("lru", 2));
  EXPECT_EQ(r.input_tokens, 26u);
  EXPECT_EQ(r.hit_tokens, 8u);
  EXPECT_EQ(r.hit_tokens_from[0], 8u);
  EXPECT_EQ(r.miss_never_seen, 10u);
  EXPECT_EQ(r.miss_evicted_from[0], 8u);
  EXPECT_EQ(r.miss_after_gap, 0u);
  expect_accounted(r);
}

// The same trace under the prefix-aware policy: r2 touches 1 then 2 as a run,
// so 2 (the tail) is filed colder and block 3 evicts it, not the head; r3
// then hits block 1.
TEST(ReplayEngine, PrefixAwareEvictsTheTailFirst) {
  const Trace t = make_trace(line(0, 8, {1, 2}) + line(1, 10, {1, 2, 3}) + line(2, 8, {1, 2}), 4);
  const RunResult r = run(prepare(t), single_tier("prefix", 2));
  EXPECT_EQ(r.hit_tokens, 12u);
  EXPECT_EQ(r.miss_evicted_from[0], 4u);
  expect_accounted(r);
}

// A block resident after a gap is no hit: prefix caching cannot use it.
TEST(ReplayEngine, BlocksAfterAGapAreMisses) {
  // Two slots: r3 evicts 1; r4 [1 4] misses 1 (whose admission evicts 3) and
  // then finds 4 resident, but after the gap.
  const Trace t = make_trace(line(0, 4, {1}) + line(1, 4, {3}) + line(2, 4, {4}) + line(3, 8, {1, 4}), 4);
  const RunResult r = run(prepare(t), single_tier("lru", 2));
  EXPECT_EQ(r.hit_tokens, 0u);
  EXPECT_EQ(r.miss_evicted_from[0], 4u);  // block 1
  EXPECT_EQ(r.miss_after_gap, 4u);        // block 3: resident, unusable
  expect_accounted(r);
}

// Tiers, served-from, bytes per link and TTFT: HBM and host hold one block
// each, NVMe two; 1 byte of KV per token; PCIe 1 GB/s (1 byte/ns) + 100 ns,
// NVMe 0.5 GB/s + 1000 ns; prefill 1e6 tokens/s (1000 ns per token), so every
// load is cheaper than recomputing.
TEST(ReplayEngine, TiersServedFromBytesMovedAndTtft) {
  const Trace t = make_trace(line(0, 4, {1}) + line(1, 4, {2}) + line(2, 4, {1}) + line(3, 4, {3}) +
                                 line(4, 4, {4}) + line(5, 4, {2}),
                             4);
  RunOptions o = single_tier("lru", 1);
  o.capacity_blocks = {1, 1, 2};
  o.cost = CostModel{1, 1e6, 1.0, 100, 0.5, 0.5, 1000};
  const RunResult r = run(prepare(t), o);
  // r1, r2 miss (2 demotes 1 to host); r3 hits 1 in host (promoted; 2 goes
  // down); r4: 3 new, 1 -> host, 2 -> NVMe; r5: 4 new, 3 -> host, 1 -> NVMe;
  // r6 hits 2 in NVMe (promoted; 4 -> host, 3 -> NVMe).
  EXPECT_EQ(r.hit_tokens, 8u);
  EXPECT_EQ(r.hit_tokens_from[1], 4u);
  EXPECT_EQ(r.hit_tokens_from[2], 4u);
  EXPECT_EQ(r.miss_never_seen, 16u);
  EXPECT_EQ(r.tokens_loaded, 8u);
  // HBM -> host: 1 (r2), 2 (r3), 1 (r4), 3 (r5), 4 (r6, to make room for 2) = 5 moves of 4 bytes.
  EXPECT_EQ(r.moved.hbm_to_host, 20u);
  EXPECT_EQ(r.moved.host_to_nvme, 12u);  // 2 (r4), 1 (r5), 3 (r6)
  EXPECT_EQ(r.moved.host_to_hbm, 8u);    // the loads of r3 and r6
  EXPECT_EQ(r.moved.nvme_to_host, 4u);   // the load of r6
  // TTFT: misses 4000 ns; the host hit 100 + 4 ns; the NVMe hit 100 + 1000 + 8 ns.
  EXPECT_NEAR(r.ttft_p50_s, 4000e-9, 1e-12);
  EXPECT_NEAR(r.ttft_p99_s, 4000e-9, 1e-12);
  EXPECT_NEAR(r.ttft_mean_s, (4 * 4000 + 104 + 1108) * 1e-9 / 6, 1e-12);
  EXPECT_NEAR(r.prefill_gpu_s, 16 * 1000e-9, 1e-15);
  EXPECT_NEAR(r.prefill_gpu_s_no_cache, 24 * 1000e-9, 1e-15);
  expect_accounted(r);
}

// A hit that is cheaper to recompute than to load is recomputed: it counts
// as a hit, but not as prefill saved, and moves no bytes.
TEST(ReplayEngine, RecomputesWhenLoadingCostsMore) {
  const Trace t = make_trace(line(0, 4, {1}) + line(1, 4, {2}) + line(2, 4, {1}), 4);
  RunOptions o = single_tier("lru", 1);
  o.capacity_blocks = {1, 1, 0};
  o.cost = CostModel{1'000'000, 1e9, 1.0, 0, 1, 1, 0};  // 4 MB over 1 GB/s = 4 ms vs 4 ns to recompute
  const RunResult r = run(prepare(t), o);
  EXPECT_EQ(r.hit_tokens, 4u);
  EXPECT_EQ(r.tokens_loaded, 0u);
  EXPECT_EQ(r.moved.host_to_hbm, 0u);
  expect_accounted(r);
}

// The hits a request has from one tier are one transfer: the latency is paid
// once for all of them, so the choice is per tier and request, latency
// included. Here a token costs 0.5 ns to load (+ 3 ns latency) and 1 ns to
// recompute: one 4-token block from host RAM is cheaper to recompute (5 > 4
// ns), two of them are cheaper to load (7 < 8 ns). Comparing a block's
// transfer time alone (2 < 4 ns) used to load the single one.
TEST(ReplayEngine, LoadOrRecomputeIsDecidedPerTierWithItsLatency) {
  RunOptions o = single_tier("lru", 1);
  o.cost = CostModel{1, 1e9, 2.0, 3, 1, 1, 0};
  o.capacity_blocks = {1, 1, 0};
  const RunResult one = run(prepare(make_trace(line(0, 4, {1}) + line(1, 4, {2}) + line(2, 4, {1}), 4)), o);
  EXPECT_EQ(one.hit_tokens_from[1], 4u);
  EXPECT_EQ(one.tokens_loaded, 0u);
  EXPECT_EQ(one.moved.host_to_hbm, 0u);
  EXPECT_NEAR(one.ttft_p99_s, 4e-9, 1e-15);  // every request recomputes its 4 tokens
  expect_accounted(one);

  o.capacity_blocks = {2, 2, 0};
  const RunResult two =
      run(prepare(make_trace(line(0, 8, {1, 2}) + line(1, 8, {3, 4}) + line(2, 8, {1, 2}), 4)), o);
  EXPECT_EQ(two.hit_tokens_from[1], 8u);
  EXPECT_EQ(two.tokens_loaded, 8u);
  EXPECT_EQ(two.moved.host_to_hbm, 8u);
  EXPECT_NEAR(two.ttft_p50_s, 8e-9, 1e-15);   // the two misses
  EXPECT_NEAR(two.ttft_mean_s, (8 + 8 + 7) * 1e-9 / 3, 1e-15);  // and the loaded hits: 3 + 8 x 0.5 ns
  expect_accounted(two);
}

// Tail admission declines a partly filled block when the tier is full; its
// next use is a miss "not admitted", and what it would have evicted stays.
TEST(ReplayEngine, TailAdmissionDeclinesPartialBlocks) {
  const Trace t = make_trace(line(0, 4, {1}) + line(1, 2, {2}) + line(2, 2, {2}) + line(3, 4, {1}), 4);
  const RunResult with = run(prepare(t), single_tier("lru+tail", 1));
  EXPECT_EQ(with.miss_not_admitted, 2u);
  EXPECT_EQ(with.hit_tokens, 4u);  // block 1 stayed
  const RunResult without = run(prepare(t), single_tier("lru", 1));
  EXPECT_EQ(without.hit_tokens, 2u);  // block 2's second use hit, block 1 was evicted
  expect_accounted(with);
  expect_accounted(without);
}

// Belady's MIN on a classic sequence (one-block requests, B = 1, 2 slots):
// a b c a b d a b: keeps a and b and declines c and d: hits a, b, a, b.
TEST(ReplayEngine, BeladyKnownAnswer) {
  std::string text;
  const uint64_t seq[] = {1, 2, 3, 1, 2, 4, 1, 2};
  for (size_t i = 0; i < std::size(seq); ++i) text += line(i, 1, {seq[i]});
  const Trace t = make_trace(text, 1);
  const RunResult b = run(prepare(t), single_tier("belady", 2));
  EXPECT_EQ(b.hit_tokens, 4u);
  EXPECT_EQ(b.miss_never_seen, 4u);
  const RunResult lru = run(prepare(t), single_tier("lru", 2));
  EXPECT_EQ(lru.hit_tokens, 0u);  // LRU evicts exactly what comes next
  expect_accounted(b);
}

TEST(ReplayEngine, InfiniteCapacityEqualsAnIndependentCount) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < scale(40); ++trial) {
    const Trace t = make_trace(random_chain_trace(rng, 60, 4, trial % 2 == 0), 4);
    const uint64_t expected = infinite_hit_tokens(t);
    for (const char* p : kPolicies) {
      RunOptions o = single_tier(p, kUnlimited);
      EXPECT_EQ(run(prepare(t), o).hit_tokens, expected) << p;
      o.capacity_blocks = {3, 5, kUnlimited};  // unlimited at the bottom: nothing is ever dropped
      EXPECT_EQ(run(prepare(t), o).hit_tokens, expected) << p << " (tiers)";
    }
    EXPECT_EQ(run(prepare(t), single_tier("belady", kUnlimited)).hit_tokens, expected);
  }
}

// With chained ids and full blocks Belady's MIN is optimal: it matches an
// exhaustive search over every admit / bypass / victim choice.
TEST(ReplayEngine, BeladyEqualsTheExhaustiveOptimum) {
  std::mt19937_64 rng(11);
  int checked = 0;
  for (int trial = 0; trial < scale(60); ++trial) {
    const Trace t = make_trace(random_chain_trace(rng, 6 + trial % 5, 2, true, 3), 2);
    if (t.distinct_blocks > 16) continue;
    for (uint32_t cap = 1; cap <= 4; ++cap) {
      EXPECT_EQ(run(prepare(t), single_tier("belady", cap)).hit_tokens, optimal_hit_tokens(t, cap))
          << "trial " << trial << " cap " << cap;
      ++checked;
    }
  }
  EXPECT_GT(checked, 40);
}

TEST(ReplayEngine, BeladyBeatsEveryPolicyAtEveryCapacity) {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < scale(30); ++trial) {
    const Trace t = make_trace(random_chain_trace(rng, 80, 4, trial % 3 != 0), 4);
    const Prepared p = prepare(t);
    for (uint64_t cap : {1u, 2u, 3u, 5u, 8u, 13u, 21u, 34u}) {
      const uint64_t ceiling = run(p, single_tier("belady", cap)).hit_tokens;
      for (const char* pol : kPolicies) {
        EXPECT_LE(run(p, single_tier(pol, cap)).hit_tokens, ceiling) << pol << " cap " << cap;
        RunOptions o = single_tier(pol, 0);
        o.capacity_blocks = {cap / 3 + 1, cap / 3, cap - cap / 3};
        RunOptions b = o;
        b.policy = *parse_policy_spec("belady", nullptr);
        EXPECT_LE(run(p, o).hit_tokens, run(p, b).hit_tokens) << pol << " tiers " << cap;
      }
    }
  }
}

TEST(ReplayEngine, LruNeverLosesHitsWhenCapacityGrows) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < scale(30); ++trial) {
    const Trace t = make_trace(random_chain_trace(rng, 80, 4, trial % 2 == 0), 4);
    const Prepared p = prepare(t);
    uint64_t prev = 0;
    for (uint64_t cap = 1; cap <= 60; ++cap) {
      const uint64_t hits = run(p, single_tier("lru", cap)).hit_tokens;
      EXPECT_GE(hits, prev) << "cap " << cap;
      prev = hits;
    }
  }
}

// Prestaging with the oracle's hints: a conversation's second turn finds its
// prefix in HBM although a flood of other requests pushed it to host RAM.
TEST(ReplayEngine, HintPrestagingBringsTheNextTurnUp) {
  std::string text = line(0, 8, {1, 2});
  for (uint64_t k = 0; k < 6; ++k) text += line(100 + k, 4, {10 + k});
  text += line(10'000, 12, {1, 2, 3});
  const Trace t = make_trace(text, 4);
  RunOptions o = single_tier("lru", 0);
  o.capacity_blocks = {3, 20, 0};
  const RunResult plain = run(prepare(t), o);
  EXPECT_EQ(plain.resumed_turns, 1u);
  EXPECT_EQ(plain.resumed_prefix_in_top, 0u);
  EXPECT_EQ(plain.hit_tokens_from[1], 8u);
  o.prestage = Prestage::kHint;
  o.prestage_share = 1.0;
  o.hint_lead_ns = 1'000'000'000;
  const RunResult staged = run(prepare(t), o);
  EXPECT_EQ(staged.resumed_prefix_in_top, 1u);
  EXPECT_EQ(staged.hit_tokens_from[0], 8u);
  ASSERT_EQ(staged.prefetchers.size(), 1u);
  EXPECT_EQ(staged.prefetchers[0].name, "hint");
  EXPECT_EQ(staged.prefetchers[0].used_bytes, 8 * o.cost.kv_bytes_per_token);
  EXPECT_EQ(staged.prefetchers[0].wasted_bytes, 0u);
  expect_accounted(staged);
}

TEST(ReplayEngine, PredictedPrestagingKeepsTheBooks) {
  std::mt19937_64 rng(9);
  const Trace t = make_trace(random_chain_trace(rng, 400, 4, false), 4);
  RunOptions o = single_tier("lru", 0);
  o.capacity_blocks = {8, 64, 0};
  o.prestage = Prestage::kPredict;
  const RunResult r = run(prepare(t), o);
  ASSERT_EQ(r.prefetchers.size(), 1u);
  const auto& pf = r.prefetchers[0];
  EXPECT_EQ(pf.name, "prestage");
  EXPECT_LE(pf.used_bytes + pf.wasted_bytes, pf.issued_bytes);
  expect_accounted(r);
}

// The conversation trace itself (read from ../shared/traces, never copied):
// the numbers FACTS.md quotes, and the properties at a few capacities.
class ConversationTrace : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = conversation_trace_path();
    if (path.empty() || !std::ifstream(path)) return;
    trace_ = new Trace;
    std::string err;
    if (!load_trace(path, TraceOptions{}, *trace_, &err)) {
      delete trace_;
      trace_ = nullptr;
      ADD_FAILURE() << err;
      return;
    }
    prep_ = new Prepared(prepare(*trace_));
  }
  static void TearDownTestSuite() {
    delete prep_;
    delete trace_;
    prep_ = nullptr;
    trace_ = nullptr;
  }
  void SetUp() override {
    if (!prep_)
      GTEST_SKIP() << "conversation trace not found: looked for "
                      "<source dir>/../shared/traces/conversation_trace.jsonl (and ../../shared), source dir = '"
                   << src_dir() << "'";
  }
  static Trace* trace_;
  static Prepared* prep_;
};
Trace* ConversationTrace::trace_ = nullptr;
Prepared* ConversationTrace::prep_ = nullptr;

TEST_F(ConversationTrace, MatchesTheKnownNumbers) {
  EXPECT_EQ(trace_->requests.size(), 12031u);
  const uint64_t blocks_5m = 5'000'000 / 512;
  const RunResult lru = run(*prep_, single_tier("lru", blocks_5m));
  const RunResult belady = run(*prep_, single_tier("belady", blocks_5m));
  const RunResult inf = run(*prep_, single_tier("lru", kUnlimited));
  EXPECT_NEAR(lru.hit_rate(), 0.21, 0.005);
  EXPECT_NEAR(belady.hit_rate(), 0.37, 0.005);
  EXPECT_EQ(inf.hit_tokens, infinite_hit_tokens(*trace_));
  EXPECT_NEAR(inf.hit_rate(), 0.3736, 0.0005);
  EXPECT_EQ(belady.hit_tokens, inf.hit_tokens);  // 5 M tokens are enough for an oracle
}

TEST_F(ConversationTrace, BeladyBeatsEveryPolicyAndLruGrowsWithCapacity) {
  uint64_t prev_lru = 0;
  for (uint64_t tokens : {250'000u, 1'000'000u, 2'500'000u, 5'000'000u, 12'000'000u}) {
    const uint64_t blocks = tokens / 512;
    const uint64_t ceiling = run(*prep_, single_tier("belady", blocks)).hit_tokens;
    for (const char* p : kPolicies) {
      const RunResult r = run(*prep_, single_tier(p, blocks));
      EXPECT_LE(r.hit_tokens, ceiling) << p << " at " << tokens << " tokens";
      expect_accounted(r);
      if (std::string_view(p) == "lru") {
        EXPECT_GE(r.hit_tokens, prev_lru) << tokens;
        prev_lru = r.hit_tokens;
      }
    }
  }
}

TEST_F(ConversationTrace, ThreeTiersAndPrestaging) {
  RunOptions o = single_tier("lru", 0);
  o.capacity_blocks = {960, 6400, 32768};  // Llama-3-8B: 60 GiB HBM, 400 GiB host, 2 TiB NVMe
  const RunResult plain = run(*prep_, o);
  RunOptions b = o;
  b.policy = *parse_policy_spec("belady", nullptr);
  EXPECT_LE(plain.hit_tokens, run(*prep_, b).hit_tokens);
  o.prestage = Prestage::kHint;
  const RunResult hinted = run(*prep_, o);
  // The oracle's hints bring nearly every resumed turn's prefix up to HBM.
  EXPECT_GT(RunResult::ratio(hinted.resumed_prefix_in_top, hinted.resumed_turns), 0.9);
  EXPECT_LT(RunResult::ratio(plain.resumed_prefix_in_top, plain.resumed_turns), 0.1);
  EXPECT_GT(hinted.prefetchers[0].accuracy(), 0.9);
  expect_accounted(plain);
  expect_accounted(hinted);
}

TEST(ReplaySweep, ParsesAndSpacesGeometrically) {
  std::string why;
  auto s = parse_sweep("host=1Mtok..100Mtok:3", 131072, &why);
  ASSERT_TRUE(s) << why;
  EXPECT_EQ(s->tier, 1u);
  EXPECT_EQ(s->points_tokens(1), (std::vector<uint64_t>{1'000'000, 10'000'000, 100'000'000}));
  EXPECT_EQ(s->points_tokens(512), (std::vector<uint64_t>{999'936, 9'999'872, 99'999'744})) << "whole blocks";
  auto b = parse_sweep("hbm=1G..4G:3", 1024, &why);
  ASSERT_TRUE(b) << why;
  EXPECT_EQ(b->points_tokens(512), (std::vector<uint64_t>{1u << 20, 2u << 20, 4u << 20}));
  // Narrow for the block: 512, 624, 761, 927, 1130, 1378, 1680, 2048 tokens
  // hold 1, 1, 1, 1, 2, 2, 3, 4 blocks; each capacity is run and shown once.
  auto narrow = parse_sweep("hbm=512tok..2048tok:8", 1024, &why);
  ASSERT_TRUE(narrow) << why;
  EXPECT_EQ(narrow->points_tokens(512), (std::vector<uint64_t>{512, 1024, 1536, 2048}));
  EXPECT_FALSE(parse_sweep("gpu=1G..4G:3", 1024, &why));
  EXPECT_EQ(why, "--sweep 'gpu=1G..4G:3': unknown tier 'gpu': allowed hbm, host, nvme");
  EXPECT_FALSE(parse_sweep("hbm=4G..1G:3", 1024, &why));
  EXPECT_FALSE(parse_sweep("hbm=1G..4G:1", 1024, &why));
  EXPECT_FALSE(parse_sweep("hbm=1G-4G", 1024, &why));
}

TEST(ReplayModel, PresetsAndCapacities) {
  EXPECT_EQ(find_model("Llama-3-8B")->kv_bytes_per_token(), 131072u);   // 2 x 32 x 8 x 128 x 2
  EXPECT_EQ(find_model("llama-3-70b")->kv_bytes_per_token(), 327680u);  // 2 x 80 x 8 x 128 x 2
  EXPECT_EQ(find_model("qwen2.5-32b")->kv_bytes_per_token(), 262144u);  // 2 x 64 x 8 x 128 x 2
  EXPECT_EQ(find_model("gpt-5"), nullptr);
  std::string why;
  EXPECT_EQ(parse_capacity_tokens("5Mtok", 131072, &why), 5'000'000u);
  EXPECT_EQ(parse_capacity_tokens("500ktok", 131072, &why), 500'000u);
  EXPECT_EQ(parse_capacity_tokens("2e6 tokens", 131072, &why), 2'000'000u);
  EXPECT_EQ(parse_capacity_tokens("60G", 131072, &why), 60u * 8192);
  EXPECT_EQ(parse_capacity_tokens("unlimited", 131072, &why), UINT64_MAX);
  EXPECT_FALSE(parse_capacity_tokens("lots", 131072, &why));
  EXPECT_FALSE(parse_capacity_tokens("-1tok", 131072, &why));
}

TEST(ReplayPlot, SvgHasEveryCurve) {
  PlotSpec p;
  p.title = "a <test>";
  p.x_label = "hbm capacity (tokens)";
  p.curves = {{"lru", {{1e5, 0.1}, {1e6, 0.2}}}, {"belady", {{1e5, 0.3}, {1e6, 0.37}}}};
  p.infinite_rate = 0.37;
  const std::string svg = render_svg(p);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find(">lru<"), std::string::npos);
  EXPECT_NE(svg.find(">belady<"), std::string::npos);
  EXPECT_NE(svg.find("infinite (37.0%)"), std::string::npos);
  EXPECT_NE(svg.find("a &lt;test&gt;"), std::string::npos);
  EXPECT_EQ(std::count(svg.begin(), svg.end(), '\n') > 20, true);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
}
