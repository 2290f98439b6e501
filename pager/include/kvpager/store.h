// The NVMe tier as the pager and the movers see it: a key -> bytes object
// store. The token store (fusefs/store) implements it for real; the simulated
// device uses a temporary-file stand-in (sim/file_store.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <string_view>

#include "kvpager/status.h"

namespace kvpager {

struct ObjectKey {
  uint64_t hi = 0;
  uint64_t lo = 0;
  friend constexpr bool operator==(const ObjectKey&, const ObjectKey&) = default;
};

struct ObjectKeyHash {
  size_t operator()(const ObjectKey& k) const { return static_cast<size_t>(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
};

// XXH3-128 of namespace + context key + chunk index: the name of one chunk of
// one context in the store, stable across processes and machines.
ObjectKey chunk_key(std::string_view ns, std::string_view context, uint64_t chunk_index);

class Store {
 public:
  virtual ~Store() = default;
  // Writes the object whole, or not at all. Writing a key again replaces it.
  virtual Status put(const ObjectKey& key, std::span<const std::byte> bytes) = 0;
  // Reads the whole object into out (out.size() must equal its size).
  // kNotFound if absent, kCorrupt if its checksum fails (never the bytes).
  virtual Status get(const ObjectKey& key, std::span<std::byte> out) = 0;
  virtual Status erase(const ObjectKey& key) = 0;
  virtual uint64_t used_bytes() const = 0;
};

struct StoreCompletion {
  uint64_t tag = 0;
  Status status = Status::kOk;
};

// A store's queued data path, for the movers: a get or a put is submitted
// with a tag and runs while the caller goes on; its completion comes back by
// poll() or wait(), in any order. Several are in flight at once (the NVMe
// tier needs a queue depth above one to reach its bandwidth). The bytes given
// to a submit stay valid, and the caller does not touch them, until that
// submit's completion. A completion's status is what put() or get() would
// have returned; a failed get leaves none of the object's bytes in out.
class StoreQueue {
 public:
  virtual ~StoreQueue() = default;
  // kAgain: the queue is full for now (poll, then submit again). Any other
  // failure leaves nothing behind and no completion comes for it.
  virtual Status submit_put(uint64_t tag, const ObjectKey& key, std::span<const std::byte> bytes) = 0;
  virtual Status submit_get(uint64_t tag, const ObjectKey& key, std::span<std::byte> out) = 0;
  // Hands what was submitted to the device (a submit may wait for a batch).
  virtual void flush() = 0;
  virtual size_t poll(std::span<StoreCompletion> out) = 0;
  // Blocks until at least one completes; 0 at once if nothing is in flight.
  virtual size_t wait(std::span<StoreCompletion> out) = 0;
  // Submitted and not yet handed back.
  virtual size_t pending() const = 0;
  // Submitted and not yet reaped from the device (one the device finished
  // but nobody reaped yet still counts; one waiting to be handed back does
  // not).
  virtual size_t in_flight() const = 0;
  // The most that may be in flight at once, whoever submitted them (0: no
  // limit of its own): past it, submits answer kAgain.
  virtual size_t capacity() const = 0;
};

// Moves completions from the front of `done` into out; returns how many.
inline size_t hand_back(std::deque<StoreCompletion>& done, std::span<StoreCompletion> out) {
  size_t n = 0;
  for (; n < out.size() && !done.empty(); ++n) {
    out[n] = done.front();
    done.pop_front();
  }
  return n;
}

// A store's blocking calls as a queue (a store with no queue of its own, such
// as the simulated device's file store): each get or put runs whole inside
// its submit, one at a time; the completion comes with the next poll.
class BlockingStoreQueue final : public StoreQueue {
 public:
  explicit BlockingStoreQueue(Store& store) : store_(store) {}
  Status submit_put(uint64_t tag, const ObjectKey& key, std::span<const std::byte> bytes) override {
    done_.push_back(StoreCompletion{tag, store_.put(key, bytes)});
    return Status::kOk;
  }
  Status submit_get(uint64_t tag, const ObjectKey& key, std::span<std::byte> out) override {
    done_.push_back(StoreCompletion{tag, store_.get(key, out)});
    return Status::kOk;
  }
  void flush() override {}
  size_t poll(std::span<StoreCompletion> out) override { return hand_back(done_, out); }
  size_t wait(std::span<StoreCompletion> out) override { return poll(out); }
  size_t pending() const override { return done_.size(); }
  size_t in_flight() const override { return 0; }  // each one is done within its submit
  size_t capacity() const override { return 0; }

 private:
  Store& store_;
  std::deque<StoreCompletion> done_;
};

}  // namespace kvpager
