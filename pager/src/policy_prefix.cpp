#include "kvpager/policy_prefix.h"

#include <limits>

namespace kvpager {

void PrefixAwarePolicy::insert(Chunk& c) {
  c.in_policy = true;
  c.hot = c.freq >= kProtectFreq;
  list_of(c).push_back(c);
  rebalance();
}

void PrefixAwarePolicy::touch(Chunk& c, uint64_t epoch) {
  if (c.freq < std::numeric_limits<uint16_t>::max()) ++c.freq;
  const bool continues_run = run_head_ != nullptr && run_head_ != &c && epoch == last_epoch_ + 1 &&
                             c.index == last_index_ + 1;
  list_of(c).erase(ChunkList::s_iterator_to(c));
  c.hot = c.freq >= kProtectFreq;
  if (continues_run && run_head_->hot == c.hot) {
    list_of(c).insert(ChunkList::s_iterator_to(*run_head_), c);  // just colder than the previous chunk of the run
  } else {
    list_of(c).push_back(c);
  }
  run_head_ = &c;
  last_epoch_ = epoch;
  last_index_ = c.index;
  rebalance();
}

void PrefixAwarePolicy::rebalance() {
  while (protected_.size() * 100 > size() * kProtectedPercent) {
    Chunk& c = protected_.front();
    protected_.pop_front();
    c.hot = false;
    probation_.push_back(c);
  }
}

void PrefixAwarePolicy::erase(Chunk& c) {
  if (&c == run_head_) run_head_ = nullptr;  // the run cannot continue past a chunk that left
  list_of(c).erase(ChunkList::s_iterator_to(c));
  c.in_policy = false;
  c.hot = false;
}

Chunk* PrefixAwarePolicy::victim() {
  if (!probation_.empty()) return &probation_.front();
  return protected_.empty() ? nullptr : &protected_.front();
}

}  // namespace kvpager
