// kvpager replay speed (issue 7): block references per second through the
// pager's LRU (target: >= 5 M/s on one core) and the whole conversation trace
// (parse + prepare + replay; target: < 2 s). Baselines in the same run: the
// targets themselves (ratio_to_target counters) and a bare loop over the same
// references through LruPolicy alone (what the replay's accounting costs).
//
//   build/default/tests/bench/bench_replay --benchmark_min_time=0.5
//
// Reads ../shared/traces/conversation_trace.jsonl (or ../../shared) next to
// the source tree; without it, a synthetic chained trace of the same size.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>

#include "kvpager/policy.h"
#include "replay/replay.h"

namespace {

using namespace kvpager;
using namespace kvpager::replay;

std::string trace_path() {
  for (const char* up : {"/..", "/../.."}) {
    std::string p = std::string(KVPAGER_SOURCE_DIR) + up + "/shared/traces/conversation_trace.jsonl";
    if (FILE* f = std::fopen(p.c_str(), "rb")) {
      std::fclose(f);
      return p;
    }
  }
  return "";
}

// 12,000 requests of chained ids, turns of conversations, ~24 blocks each.
std::string synthetic_trace() {
  std::mt19937_64 rng(1);
  std::string out;
  std::vector<std::vector<uint64_t>> convs;
  uint64_t next = 1;
  for (int i = 0; i < 12000; ++i) {
    std::vector<uint64_t> ids;
    if (!convs.empty() && rng() % 3 == 0) {
      ids = convs[rng() % convs.size()];
    } else {
      ids = {0};
      convs.emplace_back();
    }
    for (int k = 0, n = 4 + static_cast<int>(rng() % 30); k < n; ++k) ids.push_back(next++);
    convs[rng() % convs.size()] = ids;
    out += "{\"timestamp\": " + std::to_string(i * 300) + ", \"input_length\": " + std::to_string(ids.size() * 512) +
           ", \"hash_ids\": [";
    for (size_t k = 0; k < ids.size(); ++k) out += (k ? "," : "") + std::to_string(ids[k]);
    out += "]}\n";
  }
  return out;
}

struct Loaded {
  std::string source;
  Trace trace;
  Prepared prep;
};

const Loaded& loaded() {
  static const std::unique_ptr<Loaded> l = [] {
    auto x = std::make_unique<Loaded>();
    std::string err;
    x->source = trace_path();
    bool ok = x->source.empty() ? parse_trace(synthetic_trace(), "synthetic", TraceOptions{}, x->trace, &err)
                                : load_trace(x->source, TraceOptions{}, x->trace, &err);
    if (!ok) std::fprintf(stderr, "bench_replay: %s\n", err.c_str());
    if (x->source.empty()) x->source = "synthetic (conversation trace not found)";
    x->prep = prepare(x->trace);
    return x;
  }();
  return *l;
}

RunOptions single(std::string_view policy, uint64_t tokens) {
  RunOptions o;
  o.policy = *parse_policy_spec(policy, nullptr);
  o.capacity_blocks = {tokens / 512, 0, 0};
  return o;
}

void report(benchmark::State& state, uint64_t refs_per_iter) {
  state.SetItemsProcessed(static_cast<int64_t>(refs_per_iter) * state.iterations());
  state.counters["refs_per_s"] =
      benchmark::Counter(static_cast<double>(refs_per_iter) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.SetLabel(loaded().source);
}

// The pager's LRU through the replay engine, one tier of 5 M tokens.
void BM_ReplayLru5M(benchmark::State& state) {
  const Loaded& l = loaded();
  const RunOptions o = single("lru", 5'000'000);
  double hit = 0, seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    hit = run(l.prep, o).hit_rate();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  report(state, l.trace.refs.size());
  state.counters["hit_rate"] = hit;
  const double refs_per_s = static_cast<double>(l.trace.refs.size()) * static_cast<double>(state.iterations()) / seconds;
  state.counters["ratio_to_5M_target"] = refs_per_s / 5e6;
}
BENCHMARK(BM_ReplayLru5M)->Unit(benchmark::kMillisecond);

// Baseline: the same references through LruPolicy alone (no prefix runs,
// tiers, costs or miss reasons), so replay / bare = the engine's overhead.
void BM_BareLruPolicy5M(benchmark::State& state) {
  const Loaded& l = loaded();
  const uint64_t cap = 5'000'000 / 512;
  std::vector<Chunk> chunks(l.trace.distinct_blocks);
  uint64_t hits = 0;
  for (auto _ : state) {
    LruPolicy lru;
    uint64_t epoch = 0;
    hits = 0;
    for (uint32_t b : l.trace.refs) {
      Chunk& c = chunks[b];
      if (c.in_policy) {
        ++hits;
        lru.touch(c, ++epoch);
        continue;
      }
      if (lru.size() >= cap) lru.erase(*lru.victim());
      lru.insert(c);
    }
    lru.drain([](Chunk&) {});
  }
  report(state, l.trace.refs.size());
  state.counters["block_hits"] = static_cast<double>(hits);
}
BENCHMARK(BM_BareLruPolicy5M)->Unit(benchmark::kMillisecond);

// Every policy and Belady at 5 M tokens; and LRU over three tiers.
void BM_ReplayPolicy(benchmark::State& state, std::string_view policy) {
  const Loaded& l = loaded();
  const RunOptions o = single(policy, 5'000'000);
  double hit = 0;
  for (auto _ : state) hit = run(l.prep, o).hit_rate();
  report(state, l.trace.refs.size());
  state.counters["hit_rate"] = hit;
}
BENCHMARK_CAPTURE(BM_ReplayPolicy, clock, "clock")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ReplayPolicy, cost, "cost")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ReplayPolicy, s3fifo, "s3fifo")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ReplayPolicy, prefix, "prefix")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ReplayPolicy, lru_tinylfu, "lru+tinylfu")->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_ReplayPolicy, belady, "belady")->Unit(benchmark::kMillisecond);

void BM_ReplayLruThreeTiers(benchmark::State& state) {
  const Loaded& l = loaded();
  RunOptions o = single("lru", 0);
  o.capacity_blocks = {960, 6400, 32768};
  o.prestage = state.range(0) ? Prestage::kPredict : Prestage::kOff;
  for (auto _ : state) benchmark::DoNotOptimize(run(l.prep, o).hit_tokens);
  report(state, l.trace.refs.size());
}
BENCHMARK(BM_ReplayLruThreeTiers)->Arg(0)->Arg(1)->ArgName("prestage")->Unit(benchmark::kMillisecond);

// The whole conversation trace as `kvpager replay --hbm 5Mtok` does it for
// one policy: read and parse the file, infer turns and next uses, replay.
void BM_WholeTraceEndToEnd(benchmark::State& state) {
  const Loaded& l = loaded();
  if (l.source.rfind("synthetic", 0) == 0) {
    state.SkipWithError("needs the conversation trace file");
    return;
  }
  double seconds = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    Trace t;
    std::string err;
    load_trace(l.source, TraceOptions{}, t, &err);
    const Prepared p = prepare(t);
    benchmark::DoNotOptimize(run(p, single("lru", 5'000'000)).hit_tokens);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  report(state, l.trace.refs.size());
  state.counters["seconds"] = seconds;
  state.counters["ratio_to_2s_target"] = 2.0 / seconds;
}
BENCHMARK(BM_WholeTraceEndToEnd)->Unit(benchmark::kMillisecond);

void BM_ParseTrace(benchmark::State& state) {
  const Loaded& l = loaded();
  std::string text;
  if (FILE* f = std::fopen(l.source.c_str(), "rb")) {
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    std::fclose(f);
  } else {
    text = synthetic_trace();
  }
  for (auto _ : state) {
    Trace t;
    std::string err;
    benchmark::DoNotOptimize(parse_trace(text, "bench", TraceOptions{}, t, &err));
  }
  state.SetBytesProcessed(static_cast<int64_t>(text.size()) * state.iterations());
}
BENCHMARK(BM_ParseTrace)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
