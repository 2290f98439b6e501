// S3-FIFO (Yang et al., SOSP'23): a frequency-aware policy out of FIFO queues.
//
//   small  FIFO, ~10 % of the tier: every new chunk enters here, so a chunk
//          used once (a one-hit wonder) leaves quickly without disturbing
//          the rest;
//   main   FIFO with reinsertion: a chunk leaving its front with freq > 0 is
//          reinserted at the back with freq - 1 (a CLOCK with a 2-bit count);
//   ghost  the keys of chunks recently evicted from small; a chunk that comes
//          back while its key is in the ghost enters main directly.
//
// freq (Chunk::freq, 0..3) counts accesses since the chunk entered this tier;
// insert() resets it. A chunk at the front of small with freq > 1 (touched
// again after the access that brought it in) moves to main instead of being
// evicted. Chunk::hot says which queue a chunk is in.
//
// The ghost is a direct-mapped table of key fingerprints stamped with an
// eviction counter: a key is "in the ghost" while fewer than main.size()
// evictions from small happened since it went there. Collisions forget keys
// (a heuristic loses a little precision, never correctness). The table grows
// with the tier (amortised, rare); nothing else allocates.
#pragma once

#include <cstdint>
#include <vector>

#include "kvpager/policy.h"

namespace kvpager {

class S3FifoPolicy final : public EvictionPolicy {
 public:
  static constexpr uint16_t kMaxFreq = 3;
  static constexpr size_t kSmallPercent = 10;

  std::string_view name() const override { return "s3fifo"; }
  void insert(Chunk& c) override;
  void touch(Chunk& c, uint64_t epoch) override;
  void erase(Chunk& c) override;
  Chunk* victim() override;
  size_t size() const override { return small_.size() + main_.size(); }

  size_t small_size() const { return small_.size(); }
  size_t main_size() const { return main_.size(); }
  bool in_ghost(const Chunk& c) const;

 private:
  struct GhostSlot {
    uint32_t fingerprint = 0;
    uint32_t stamp = 0;  // ghost_clock_ when it went in; 0 = empty
  };
  static uint64_t key_hash(const Chunk& c);
  void ghost_add(const Chunk& c);

  ChunkList small_;  // front = oldest
  ChunkList main_;
  Chunk* last_victim_ = nullptr;  // erase() of this chunk is an eviction: it goes to the ghost
  std::vector<GhostSlot> ghost_;
  uint32_t ghost_clock_ = 0;
};

}  // namespace kvpager
