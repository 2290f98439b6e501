#include "quiescence.h"

#include <pthread.h>

namespace kvpager::cuda {

namespace {
constexpr size_t kNoSlot = ~size_t{0};
// Initial-exec TLS: no allocation and no loader lock on first access.
__attribute__((tls_model("initial-exec"))) thread_local size_t t_slot = kNoSlot;

}  // namespace

namespace {
constinit Quiescence g_quiescence;  // constant-initialised: usable from any constructor
}  // namespace

Quiescence& Quiescence::global() { return g_quiescence; }

void Quiescence::release_slot(void* slot) {
  auto* s = static_cast<Slot*>(slot);
  s->owned.store(false, std::memory_order_release);
}

size_t Quiescence::my_slot() {
  if (t_slot != kNoSlot) return t_slot;
  size_t chosen = kSlots;  // overflow
  for (size_t i = 0; i < kSlots; ++i) {
    bool expected = false;
    if (!slots_[i].owned.load(std::memory_order_relaxed) &&
        slots_[i].owned.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) {
      chosen = i;
      break;
    }
  }
  if (chosen < kSlots) {
    static const pthread_key_t key = [] {
      pthread_key_t k{};
      pthread_key_create(&k, &Quiescence::release_slot);
      return k;
    }();
    pthread_setspecific(key, &slots_[chosen]);
  }
  t_slot = chosen;
  return chosen;
}

}  // namespace kvpager::cuda
