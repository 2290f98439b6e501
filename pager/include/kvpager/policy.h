// Eviction policies. One instance per tier (HBM, HOST) orders that tier's
// evictable chunks; the pager asks it for victims. A policy only ever sees
// resting, unpinned chunks (chunk.h, I4): the pager removes a chunk before it
// is pinned or starts a move and re-inserts it after, so "pinned and in-flight
// chunks are never victims" holds by construction, and victim() is O(1) for
// LRU and amortised O(1) for CLOCK.
//
// Lists are Boost.Intrusive over Chunk::hook: no allocation per access.
#pragma once

#include <boost/intrusive/list.hpp>

#include <cstdint>
#include <memory>
#include <string_view>

#include "kvpager/chunk.h"
#include "kvpager/config.h"

namespace kvpager {

using ChunkList =
    boost::intrusive::list<Chunk, boost::intrusive::member_hook<Chunk, ChunkHook, &Chunk::hook>,
                           boost::intrusive::constant_time_size<true>>;

// What it costs to bring a chunk back if it is evicted now: used by the
// cost-aware policy. Implemented by the pager from the mover's cost model.
class RestoreCost {
 public:
  virtual ~RestoreCost() = default;
  virtual double restore_ns(const Chunk& c) const = 0;
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string_view name() const = 0;
  // The chunk became evictable in this tier (arrived, unpinned, move done).
  virtual void insert(Chunk& c) = 0;
  // The chunk was accessed. `epoch` is the pager's access counter; the pager
  // sets c.last_use = epoch after this call, so c.last_use is the previous use.
  virtual void touch(Chunk& c, uint64_t epoch) = 0;
  // The chunk stops being evictable here (leaving, pinned, move starting).
  virtual void erase(Chunk& c) = 0;
  // The chunk to evict next, or nullptr if none. Does not remove it.
  virtual Chunk* victim() = 0;
  virtual size_t size() const = 0;
  // Unlinks every chunk, in eviction order (coldest first), calling fn on each.
  // Used to hand the chunks to another policy when the policy changes live.
  template <typename Fn>
  void drain(Fn&& fn) {
    while (Chunk* c = victim()) {
      erase(*c);
      fn(*c);
    }
  }
};

// costs may be null for policies that do not use it.
std::unique_ptr<EvictionPolicy> make_policy(PolicyKind kind, const Config& cfg, const RestoreCost* costs);

// --- the policies, exposed for tests and for `kvpager replay` ---

// Least recently used: touch moves to the hot end; victim is the cold end.
class LruPolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "lru"; }
  void insert(Chunk& c) override;
  void touch(Chunk& c, uint64_t epoch) override;
  void erase(Chunk& c) override;
  Chunk* victim() override;
  size_t size() const override { return list_.size(); }

 protected:
  ChunkList list_;  // front = coldest
};

// CLOCK (second chance): touch only sets the referenced bit. victim() sweeps
// from the hand: a referenced chunk loses its bit and is passed over.
class ClockPolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "clock"; }
  void insert(Chunk& c) override;
  void touch(Chunk& c, uint64_t epoch) override;
  void erase(Chunk& c) override;
  Chunk* victim() override;
  size_t size() const override { return list_.size(); }

 private:
  ChunkList list_;  // circular order; hand_ points into it
  ChunkList::iterator hand_ = list_.end();
};

// Cost-aware: chunks are kept in LRU order; a victim is the one with the
// lowest expected benefit of keeping it among the `sample` coldest:
//   benefit = (1 + freq) / (1 + age) × restore_ns
// where age = accesses (pager epochs) since its last use and freq a saturating
// access count, halved on a touch that comes after a full turnover of the list
// (so old popularity fades). A chunk that is cheap to bring back (clean with a
// store copy, short) or rarely and not recently used goes first.
class CostAwarePolicy final : public EvictionPolicy {
 public:
  CostAwarePolicy(uint32_t sample, const RestoreCost* costs) : sample_(sample), costs_(costs) {}
  std::string_view name() const override { return "cost"; }
  void insert(Chunk& c) override;
  void touch(Chunk& c, uint64_t epoch) override;
  void erase(Chunk& c) override;
  Chunk* victim() override;
  size_t size() const override { return list_.size(); }
  double benefit(const Chunk& c) const;

 private:
  ChunkList list_;  // front = coldest
  uint32_t sample_;
  const RestoreCost* costs_;
  uint64_t epoch_ = 0;
};

}  // namespace kvpager
