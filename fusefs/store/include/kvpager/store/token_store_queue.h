// The token store's io_uring data path as a StoreQueue (the CUDA mover's
// spills and restores): gets and puts of this handle's private objects run
// at the store's queue depth while the caller goes on.
//
// The queue owns the store's user completions: nothing else may submit_*,
// poll or wait on the same TokenStore while it is in use (its blocking calls
// -- put, get, contexts -- are fine: they never take a user completion).
#pragma once

#include <algorithm>
#include <array>

#include "kvpager/store.h"
#include "kvpager/store/token_store.h"

namespace kvpager::store {

class TokenStoreQueue final : public StoreQueue {
 public:
  explicit TokenStoreQueue(TokenStore& store) : store_(store) {}

  Status submit_put(uint64_t tag, const ObjectKey& key, std::span<const std::byte> bytes) override {
    return store_.submit_put(tag, key, bytes);
  }
  Status submit_get(uint64_t tag, const ObjectKey& key, std::span<std::byte> out) override {
    return store_.submit_get(tag, key, out);
  }
  void flush() override { store_.flush(); }
  size_t poll(std::span<StoreCompletion> out) override { return take(out, false); }
  size_t wait(std::span<StoreCompletion> out) override { return take(out, true); }
  size_t pending() const override { return store_.pending(); }
  size_t in_flight() const override { return store_.in_flight(); }
  size_t capacity() const override { return store_.options().queue_depth; }

 private:
  size_t take(std::span<StoreCompletion> out, bool block) {
    std::array<TokenStore::Completion, 32> got;
    const std::span<TokenStore::Completion> room(got.data(), std::min(out.size(), got.size()));
    const size_t n = block ? store_.wait(room) : store_.poll(room);
    for (size_t i = 0; i < n; ++i) out[i] = StoreCompletion{got[i].tag, got[i].status};
    return n;
  }

  TokenStore& store_;
};

}  // namespace kvpager::store
