// libFuzzer target for `kvpager replay`'s trace parser and engine: any bytes
// must parse to a trace or to an error message, never crash; a trace that
// parses must be self-consistent, and replaying it (small tiers, every kind
// of policy, prefetcher and admission) must account for every input token.
//
// Built with clang by scripts/fuzz-replay; also linked into
// test_replay_fuzz_corpus, which replays the seed corpus under GCC/ASan.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "replay/replay.h"

namespace {

using namespace kvpager;
using namespace kvpager::replay;

void require(bool ok) {
  if (!ok) __builtin_trap();
}

void check_trace(const Trace& t) {
  uint64_t tokens = 0;
  for (const Request& r : t.requests) {
    require(uint64_t{r.first} + r.nblocks <= t.refs.size());
    require(r.nblocks == (uint64_t{r.input_tokens} + t.block_tokens - 1) / t.block_tokens);
    uint64_t sum = 0;
    for (uint32_t j = 0; j < r.nblocks; ++j) sum += t.tokens(r, j);
    require(sum == r.input_tokens);
    tokens += r.input_tokens;
  }
  require(tokens == t.input_tokens);
  for (uint32_t b : t.refs) require(b < t.distinct_blocks);
}

void check_run(const RunResult& r) {
  uint64_t missed = r.miss_never_seen + r.miss_not_admitted + r.miss_after_gap;
  for (uint64_t m : r.miss_evicted_from) missed += m;
  require(r.hit_tokens + missed == r.input_tokens);
  require(r.hit_tokens_from[0] + r.hit_tokens_from[1] + r.hit_tokens_from[2] == r.hit_tokens);
  require(r.tokens_loaded + r.tokens_recomputed == r.input_tokens);
  require(r.resumed_prefix_in_top <= r.resumed_turns);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static constexpr uint32_t kBlockTokens[] = {1, 2, 4, 16, 512};
  const uint32_t B = size > 0 ? kBlockTokens[data[0] % 5] : 512;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (bool skip_bad : {false, true}) {
    TraceOptions opt;
    opt.block_tokens = B;
    opt.skip_bad = skip_bad;
    Trace t;
    std::string error;
    if (!parse_trace(text, "fuzz", opt, t, &error)) {
      require(!skip_bad && error.rfind("fuzz:", 0) == 0);
      continue;
    }
    check_trace(t);
    if (t.refs.size() > 20'000) continue;  // keep each input fast
    const Prepared p = prepare(t);
    const uint64_t small = 1 + (size > 1 ? data[1] % 8 : 3);
    for (std::string_view spec : {"lru", "prefix+tail", "s3fifo+tinylfu", "cost", "clock+tail", "belady"}) {
      RunOptions o;
      o.policy = *parse_policy_spec(spec, nullptr);
      o.capacity_blocks = {small, small + 1, small * 2};
      o.prestage = spec == "lru" ? Prestage::kPredict : spec == "cost" ? Prestage::kHint : Prestage::kOff;
      check_run(run(p, o));
    }
  }
  return 0;
}
