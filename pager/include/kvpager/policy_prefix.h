// Prefix-aware eviction. A KV block is useless without every block before it
// (prefix caching cannot use a block after a gap), yet plain LRU, touching a
// request's blocks in order 0, 1, ..., n, files block 0 as the coldest of them
// and evicts the head of a chain first, leaving its tail resident and useless.
//
// This policy is LRU except for runs: when consecutive accesses (epochs e,
// e + 1, ...) touch chunk indices i, i + 1, ... (a sequence read in order: the
// blocks of one request, or the chunks of one region), each next chunk is filed
// just *colder* than the previous one. A run 0..n thus sits in the list as
// n, n-1, ..., 0 (coldest first): chain tails are evicted first and what stays
// resident is always a usable prefix. O(1) per operation, like LRU.
#pragma once

#include <cstdint>

#include "kvpager/policy.h"

namespace kvpager {

class PrefixAwarePolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "prefix"; }
  void insert(Chunk& c) override;
  void touch(Chunk& c, uint64_t epoch) override;
  void erase(Chunk& c) override;
  Chunk* victim() override;
  size_t size() const override { return list_.size(); }

 private:
  ChunkList list_;             // front = coldest
  Chunk* run_head_ = nullptr;  // the coldest chunk of the current run (the last one filed)
  uint64_t last_epoch_ = 0;
  uint32_t last_index_ = 0;
};

}  // namespace kvpager
