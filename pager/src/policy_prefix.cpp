#include "kvpager/policy_prefix.h"

namespace kvpager {

void PrefixAwarePolicy::insert(Chunk& c) {
  c.in_policy = true;
  list_.push_back(c);
}

void PrefixAwarePolicy::touch(Chunk& c, uint64_t epoch) {
  const bool continues_run = run_head_ != nullptr && run_head_ != &c && epoch == last_epoch_ + 1 &&
                             c.index == last_index_ + 1;
  list_.erase(list_.iterator_to(c));
  if (continues_run) {
    list_.insert(list_.iterator_to(*run_head_), c);  // just colder than the previous chunk of the run
  } else {
    list_.push_back(c);
  }
  run_head_ = &c;
  last_epoch_ = epoch;
  last_index_ = c.index;
}

void PrefixAwarePolicy::erase(Chunk& c) {
  if (&c == run_head_) run_head_ = nullptr;  // the run cannot continue past a chunk that left
  list_.erase(list_.iterator_to(c));
  c.in_policy = false;
}

Chunk* PrefixAwarePolicy::victim() { return list_.empty() ? nullptr : &list_.front(); }

}  // namespace kvpager
