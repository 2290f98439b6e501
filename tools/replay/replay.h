// The replay engine of `kvpager replay`: a request trace through the pager
// core's own eviction policies (kvpager::EvictionPolicy over kvpager::Chunk,
// one Chunk per distinct block, one policy instance per tier), its admission
// policies and prefetchers, and through Belady's MIN as the ceiling.
//
// Semantics (stated in `kvpager replay --help` and docs/replay.md):
//  - Block j of a request covers tokens [j*B, min((j+1)*B, input_length)).
//  - At arrival a request references its blocks in order. Its hit tokens are
//    the tokens of the leading run of blocks resident in some tier: prefix
//    caching cannot use a block after a gap. Hit rate = hit tokens / input
//    tokens, overall and by the tier each hit was served from.
//  - After the request every referenced block is resident (in the top tier,
//    evicting down the hierarchy), unless an admission policy declines it or
//    the request alone is larger than the cache.
//  - Tiers are exclusive (a block lives in one): a hit below the top tier is
//    promoted to the top, the top tier's victim is demoted one tier down, the
//    bottom tier's victim is dropped. A block occupies B tokens of KV (a
//    whole page) even when the request fills it only partly.
//  - Cost (TTFT): per hit, the cheaper of loading it (bytes / link bandwidth,
//    plus one link latency per tier per request) and recomputing it (tokens /
//    prefill speed); every miss is recomputed. Loads and compute are serial;
//    no queueing, no decode.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvpager/config.h"
#include "kvpager/stats.h"
#include "model.h"
#include "trace.h"

namespace kvpager::replay {

inline constexpr uint64_t kUnlimited = UINT64_MAX;
inline constexpr size_t kTiers = 3;  // hbm, host, nvme: index(Tier)

// What runs: a pager eviction policy (with an optional admission policy), or
// Belady's MIN.
struct PolicySpec {
  bool belady = false;
  PolicyKind policy = PolicyKind::kLru;
  std::string admission = "none";
  std::string label() const;  // "lru", "prefix+tail", "belady"
};
// "lru", "s3fifo", "prefix+tail", "belady", ... nullopt with *why if unknown.
std::optional<PolicySpec> parse_policy_spec(std::string_view s, std::string* why);
// The specs `--policy all` means.
std::vector<PolicySpec> all_policy_specs();

enum class Prestage : uint8_t {
  kOff,
  kPredict,  // the pager's ResumePrestager: learns turn gaps, no hints
  kHint,     // the pager's HintPrefetcher, fed by an oracle that hints each
             // resumed turn `hint_lead_ns` before it arrives (a bound)
};

struct RunOptions {
  PolicySpec policy;
  std::array<uint64_t, kTiers> capacity_blocks{0, 0, 0};  // 0: no such tier; kUnlimited: no limit
  CostModel cost;
  Config pager;  // cost_sample for the cost-aware policy
  Prestage prestage = Prestage::kOff;
  uint64_t hint_lead_ns = 2'000'000'000;
  double prestage_share = 0.5;  // of the top tier that staged, not yet used blocks may take
  std::function<void(uint64_t done, uint64_t total)> progress;  // every few hundred requests
};

// Bytes over each link, per direction. A load from NVMe crosses both links.
struct LinkBytes {
  uint64_t hbm_to_host = 0;   // demotions, computed KV written down
  uint64_t host_to_hbm = 0;   // loads and promotions
  uint64_t host_to_nvme = 0;  // spills
  uint64_t nvme_to_host = 0;  // loads from NVMe
};

struct RunResult {
  std::string label;
  std::array<uint64_t, kTiers> capacity_blocks{};
  uint64_t requests = 0;
  uint64_t input_tokens = 0;
  uint64_t block_refs = 0;
  uint64_t hit_tokens = 0;
  std::array<uint64_t, kTiers> hit_tokens_from{};  // by the tier that served them
  // Miss tokens by reason; they add up to input_tokens - hit_tokens.
  uint64_t miss_never_seen = 0;
  std::array<uint64_t, kTiers> miss_evicted_from{};  // dropped from that tier before this use
  uint64_t miss_not_admitted = 0;                    // declined by admission (or by Belady) last time
  uint64_t miss_after_gap = 0;                       // resident, but after a block that was not
  uint64_t tokens_loaded = 0;      // hits loaded rather than recomputed: prefill tokens saved
  uint64_t tokens_recomputed = 0;  // misses, and hits cheaper to recompute than to load
  LinkBytes moved;
  double ttft_mean_s = 0, ttft_p50_s = 0, ttft_p90_s = 0, ttft_p99_s = 0;
  double prefill_gpu_s = 0;           // recomputing, with this cache
  double prefill_gpu_s_no_cache = 0;  // recomputing every input token
  std::vector<PrefetcherStats> prefetchers;
  uint64_t resumed_turns = 0;           // requests continuing an earlier turn
  uint64_t resumed_prefix_in_top = 0;   // ... that found their whole resumed prefix in the top tier
  double wall_s = 0;

  double hit_rate() const { return ratio(hit_tokens, input_tokens); }
  double tier_hit_rate(size_t t) const { return ratio(hit_tokens_from[t], input_tokens); }
  double saved_rate() const { return ratio(tokens_loaded, input_tokens); }
  static double ratio(uint64_t a, uint64_t b) { return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0; }
};

// Per-trace data every run shares (read-only while runs go on, so runs may go
// in parallel threads).
struct Prepared {
  const Trace* trace = nullptr;
  Turns turns;
  std::vector<uint32_t> next_use;  // per reference: position of the block's next reference, or kNone
};
Prepared prepare(const Trace& t);

RunResult run(const Prepared& p, const RunOptions& opt);

// Block capacity of a tier of `tokens` tokens: whole blocks.
inline uint64_t blocks_for_tokens(uint64_t tokens, uint32_t block_tokens) {
  return tokens == kUnlimited ? kUnlimited : tokens / block_tokens;
}

}  // namespace kvpager::replay
