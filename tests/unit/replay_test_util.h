// Helpers for the kvpager replay tests: traces from text, random chained
// traces, and answers computed independently of the engine.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "replay/replay.h"

namespace replay_test {

using namespace kvpager;
using namespace kvpager::replay;

inline Trace make_trace(const std::string& jsonl, uint32_t block_tokens) {
  TraceOptions opt;
  opt.block_tokens = block_tokens;
  Trace t;
  std::string error;
  EXPECT_TRUE(parse_trace(jsonl, "test", opt, t, &error)) << error;
  return t;
}

// One request line.
inline std::string line(uint64_t ts_ms, uint64_t input, const std::vector<uint64_t>& ids) {
  std::string s = "{\"timestamp\": " + std::to_string(ts_ms) + ", \"input_length\": " + std::to_string(input) +
                  ", \"output_length\": 1, \"hash_ids\": [";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]}\n";
}

// A random trace with chained ids: each request either starts a new chain
// under a shared root block (id 0, a "system prompt") or extends a prefix of
// an earlier request by new blocks, as turns of conversations do. Ids are
// unique per (parent, child) edge, so equal ids mean equal prefixes.
// full_blocks: every block holds B tokens (else the last one is partial).
inline std::string random_chain_trace(std::mt19937_64& rng, int requests, uint32_t B, bool full_blocks,
                                      int max_new = 4) {
  std::vector<std::vector<uint64_t>> reqs;
  std::map<std::pair<uint64_t, int>, uint64_t> child;  // (parent id, variant) -> id
  uint64_t next_id = 1;
  std::string out;
  uint64_t ts = 0;
  for (int i = 0; i < requests; ++i) {
    std::vector<uint64_t> ids{0};
    if (!reqs.empty() && rng() % 3 != 0) {
      const auto& base = reqs[rng() % reqs.size()];
      size_t keep = 1 + rng() % base.size();
      ids.assign(base.begin(), base.begin() + static_cast<long>(keep));
    }
    const int add = 1 + static_cast<int>(rng() % static_cast<uint64_t>(max_new));
    for (int k = 0; k < add; ++k) {
      const int variant = static_cast<int>(rng() % 3);  // a few distinct continuations per prefix
      auto key = std::make_pair(ids.back(), variant);
      auto it = child.find(key);
      if (it == child.end()) it = child.emplace(key, next_id++).first;
      ids.push_back(it->second);
    }
    reqs.push_back(ids);
    uint64_t input = ids.size() * B;
    if (!full_blocks) input -= rng() % B;
    ts += rng() % 5000;
    out += line(ts, input, ids);
  }
  return out;
}

// The infinite-capacity prefix hit tokens, computed directly: a set of the
// ids seen so far, the leading run of seen blocks of each request.
inline uint64_t infinite_hit_tokens(const Trace& t) {
  std::vector<bool> seen(t.distinct_blocks, false);
  uint64_t hits = 0;
  for (const Request& r : t.requests) {
    bool run = true;
    for (uint32_t j = 0; j < r.nblocks; ++j) {
      const uint32_t b = t.refs[r.first + j];
      run = run && seen[b];
      if (run) hits += t.tokens(r, j);
      seen[b] = true;
    }
  }
  return hits;
}

inline RunOptions single_tier(std::string_view policy, uint64_t blocks) {
  RunOptions o;
  o.policy = *parse_policy_spec(policy, nullptr);
  o.capacity_blocks = {blocks, 0, 0};
  return o;
}

// The best prefix hit tokens any policy can get with `cap` blocks of one
// tier, by dynamic programming over every admit / bypass / victim choice
// (for traces of at most 20 distinct blocks).
inline uint64_t optimal_hit_tokens(const Trace& t, uint32_t cap) {
  struct Ref {
    uint32_t block, tokens;
    bool first;  // first block of its request
  };
  std::vector<Ref> refs;
  for (const Request& r : t.requests)
    for (uint32_t j = 0; j < r.nblocks; ++j) refs.push_back({t.refs[r.first + j], t.tokens(r, j), j == 0});
  EXPECT_LE(t.distinct_blocks, 20u);
  std::map<std::tuple<size_t, uint32_t, bool>, uint64_t> memo;
  auto best = [&](auto&& self, size_t pos, uint32_t set, bool run) -> uint64_t {
    if (pos == refs.size()) return 0;
    const Ref& x = refs[pos];
    if (x.first) run = true;
    auto key = std::make_tuple(pos, set, run);
    if (auto it = memo.find(key); it != memo.end()) return it->second;
    const uint32_t bit = 1u << x.block;
    uint64_t v;
    if (set & bit) {
      v = (run ? x.tokens : 0) + self(self, pos + 1, set, run);
    } else {
      v = self(self, pos + 1, set, false);  // bypass
      if (static_cast<uint32_t>(__builtin_popcount(set)) < cap) {
        v = std::max(v, self(self, pos + 1, set | bit, false));
      } else {
        for (uint32_t s = set; s; s &= s - 1) {
          const uint32_t victim = s & -s;
          v = std::max(v, self(self, pos + 1, (set & ~victim) | bit, false));
        }
      }
    }
    memo.emplace(key, v);
    return v;
  };
  return best(best, 0, 0u, true);
}

// A whole file (empty if it cannot be read).
inline std::string read_file(const std::string& path) {
  std::string out;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    std::fclose(f);
  }
  return out;
}

// Rounds of the randomised tests: all of them, a quarter under
// AddressSanitizer, or KVPAGER_TEST_SCALE x (the CLI tests strip it from the
// environment: the kvpager CLI refuses KVPAGER_* variables that are not knobs).
inline int scale(int n) {
#if defined(__SANITIZE_ADDRESS__)
  double f = 0.25;
#else
  double f = 1.0;
#endif
  if (const char* s = std::getenv("KVPAGER_TEST_SCALE")) f = std::atof(s);
  return std::max(1, static_cast<int>(n * f));
}

inline std::string src_dir() { return KVPAGER_SRC_DIR; }

// The conversation trace next to the checkout (never copied into the repo):
// ${KVPAGER_SRC_DIR}/../shared/traces, or one level further up for a worktree
// in a subfolder (/work/wt/<name>). "" if neither has it.
inline std::string conversation_trace_path() {
  const std::string src = src_dir();
  if (src.empty()) return "";
  for (const char* up : {"/..", "/../.."}) {
    std::string p = src + up + "/shared/traces/conversation_trace.jsonl";
    if (FILE* f = std::fopen(p.c_str(), "rb")) {
      std::fclose(f);
      return p;
    }
  }
  return "";
}

}  // namespace replay_test
