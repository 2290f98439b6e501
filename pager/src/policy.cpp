#include "kvpager/policy.h"

#include "kvpager/policy_prefix.h"
#include "kvpager/policy_s3fifo.h"

#include <algorithm>
#include <limits>

namespace kvpager {

// ---- LRU ----
void LruPolicy::insert(Chunk& c) {
  c.in_policy = true;
  list_.push_back(c);
}

void LruPolicy::touch(Chunk& c, uint64_t) {
  if (&list_.back() == &c) return;  // already the hottest: nothing to move
  list_.erase(list_.iterator_to(c));
  list_.push_back(c);
}

void LruPolicy::erase(Chunk& c) {
  list_.erase(list_.iterator_to(c));
  c.in_policy = false;
}

Chunk* LruPolicy::victim() { return list_.empty() ? nullptr : &list_.front(); }

// ---- CLOCK ----
// New chunks go just behind the hand, so they are the last the hand reaches.
void ClockPolicy::insert(Chunk& c) {
  c.in_policy = true;
  c.referenced = false;
  list_.insert(hand_, c);
}

void ClockPolicy::touch(Chunk& c, uint64_t) { c.referenced = true; }

void ClockPolicy::erase(Chunk& c) {
  auto it = list_.iterator_to(c);
  if (it == hand_) ++hand_;
  list_.erase(it);
  c.in_policy = false;
  c.referenced = false;
}

Chunk* ClockPolicy::victim() {
  if (list_.empty()) return nullptr;
  // At most one full sweep clears every bit; the second finds a victim.
  for (size_t steps = 0; steps <= 2 * list_.size(); ++steps) {
    if (hand_ == list_.end()) hand_ = list_.begin();
    if (!hand_->referenced) return &*hand_;
    hand_->referenced = false;
    ++hand_;
  }
  return nullptr;  // unreachable
}

// ---- cost-aware ----
void CostAwarePolicy::insert(Chunk& c) {
  c.in_policy = true;
  list_.push_back(c);
}

void CostAwarePolicy::touch(Chunk& c, uint64_t epoch) {
  if (epoch > c.last_use && epoch - c.last_use > list_.size()) c.freq = static_cast<uint16_t>(c.freq >> 1);
  if (c.freq < std::numeric_limits<uint16_t>::max()) ++c.freq;
  epoch_ = std::max(epoch_, epoch);
  if (&list_.back() != &c) {
    list_.erase(list_.iterator_to(c));
    list_.push_back(c);
  }
}

void CostAwarePolicy::erase(Chunk& c) {
  list_.erase(list_.iterator_to(c));
  c.in_policy = false;
}

double CostAwarePolicy::benefit(const Chunk& c) const {
  double age = static_cast<double>(epoch_ > c.last_use ? epoch_ - c.last_use : 0);
  double cost = costs_ ? costs_->restore_ns(c) : 1.0;
  return (1.0 + c.freq) / (1.0 + age) * cost;
}

Chunk* CostAwarePolicy::victim() {
  Chunk* best = nullptr;
  double best_benefit = std::numeric_limits<double>::infinity();
  uint32_t seen = 0;
  for (auto it = list_.begin(); it != list_.end() && seen < sample_; ++it, ++seen) {
    double b = benefit(*it);
    if (b < best_benefit) {
      best_benefit = b;
      best = &*it;
    }
  }
  return best;
}

std::unique_ptr<EvictionPolicy> make_policy(PolicyKind kind, const Config& cfg, const RestoreCost* costs) {
  switch (kind) {
    case PolicyKind::kLru: return std::make_unique<LruPolicy>();
    case PolicyKind::kClock: return std::make_unique<ClockPolicy>();
    case PolicyKind::kCost: return std::make_unique<CostAwarePolicy>(cfg.cost_sample, costs);
    case PolicyKind::kPrefix: return std::make_unique<PrefixAwarePolicy>();
    case PolicyKind::kS3Fifo: return std::make_unique<S3FifoPolicy>();
  }
  return nullptr;
}

}  // namespace kvpager
