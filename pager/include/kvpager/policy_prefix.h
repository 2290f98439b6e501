// Prefix-aware eviction: what a KV warehouse knows and LRU does not.
//
// 1. A block is useless without every block before it (prefix caching cannot
//    use a block after a gap). LRU, touching a request's blocks in order
//    0, 1, ..., n, files block 0 as the coldest of them and evicts chain heads
//    first. Here, when consecutive accesses (epochs e, e + 1, ...) touch chunk
//    indices i, i + 1, ... (the blocks of one request, the chunks of one region
//    read in order), each next chunk is filed just *colder* than the one
//    before: a run 0..n sits as n, n-1, ..., 0 and chain tails go first.
// 2. Most KV blocks are used once (a conversation that does not continue);
//    blocks that many requests share (system prompts, templates, the early
//    turns of long conversations) are worth keeping through bursts of new
//    ones. A chunk accessed kProtectFreq times or more is "protected"
//    (Chunk::hot); the others are on probation. Victims come from probation
//    first; protected chunks take at most kProtectedPercent of the tier, and
//    beyond that the coldest protected one drops back to probation
//    (segmented LRU).
//
// Chunk::freq counts accesses (saturating); insert keeps it (it is the chunk's
// history, not this tier's), a discard resets it. The two constants were
// chosen on the Mooncake conversation trace (docs/replay.md shows the sweep).
// O(1) per operation.
#pragma once

#include <cstdint>

#include "kvpager/policy.h"

namespace kvpager {

class PrefixAwarePolicy final : public EvictionPolicy {
 public:
  static constexpr uint16_t kProtectFreq = 3;
  static constexpr size_t kProtectedPercent = 25;

  std::string_view name() const override { return "prefix"; }
  void insert(Chunk& c) override;
  void touch(Chunk& c, uint64_t epoch) override;
  void erase(Chunk& c) override;
  Chunk* victim() override;
  size_t size() const override { return probation_.size() + protected_.size(); }
  size_t protected_size() const { return protected_.size(); }

 private:
  ChunkList& list_of(const Chunk& c) { return c.hot ? protected_ : probation_; }
  void rebalance();

  ChunkList probation_;        // front = coldest
  ChunkList protected_;        // front = coldest
  Chunk* run_head_ = nullptr;  // the coldest chunk of the current run (the last one filed)
  uint64_t last_epoch_ = 0;
  uint32_t last_index_ = 0;
};

}  // namespace kvpager
