#include "kvpager/policy_s3fifo.h"

#include <bit>

namespace kvpager {

uint64_t S3FifoPolicy::key_hash(const Chunk& c) {
  uint64_t h = (uint64_t{c.region} << 32 | c.index) + 0x9E3779B97F4A7C15ull;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

bool S3FifoPolicy::in_ghost(const Chunk& c) const {
  if (ghost_.empty()) return false;
  const uint64_t h = key_hash(c);
  const GhostSlot& s = ghost_[h & (ghost_.size() - 1)];
  return s.stamp != 0 && s.fingerprint == static_cast<uint32_t>(h >> 32) &&
         ghost_clock_ - s.stamp < std::max<size_t>(main_.size(), 1);
}

void S3FifoPolicy::ghost_add(const Chunk& c) {
  if (ghost_.empty()) return;
  const uint64_t h = key_hash(c);
  if (++ghost_clock_ == 0) ghost_clock_ = 1;  // 0 marks an empty slot
  ghost_[h & (ghost_.size() - 1)] = {static_cast<uint32_t>(h >> 32), ghost_clock_};
}

void S3FifoPolicy::insert(Chunk& c) {
  if (size() + 1 > ghost_.size() / 2) {
    // Keep the table at least twice the tier: a fresh one forgets the ghost
    // once per doubling.
    ghost_.assign(std::bit_ceil(2 * (size() + 1) < 64 ? size_t{64} : 2 * (size() + 1)), GhostSlot{});
  }
  c.in_policy = true;
  c.freq = 0;
  c.hot = in_ghost(c);
  (c.hot ? main_ : small_).push_back(c);
}

void S3FifoPolicy::touch(Chunk& c, uint64_t) {
  if (c.freq < kMaxFreq) ++c.freq;
}

void S3FifoPolicy::erase(Chunk& c) {
  (c.hot ? main_ : small_).erase(ChunkList::s_iterator_to(c));
  if (&c == last_victim_) {
    if (!c.hot) ghost_add(c);
    last_victim_ = nullptr;
  }
  c.in_policy = false;
  c.hot = false;
}

Chunk* S3FifoPolicy::victim() {
  // Every pass either returns or moves one chunk (small -> main, or a main
  // chunk back with one less freq), so this ends within size() x (kMaxFreq + 1).
  for (;;) {
    const bool from_small = !small_.empty() && (small_.size() * 100 >= size() * kSmallPercent || main_.empty());
    if (from_small) {
      Chunk& c = small_.front();
      if (c.freq > 1) {
        small_.pop_front();
        c.hot = true;
        c.freq = 0;
        main_.push_back(c);
        continue;
      }
      return last_victim_ = &c;
    }
    if (main_.empty()) return nullptr;
    Chunk& c = main_.front();
    if (c.freq > 0) {
      --c.freq;
      main_.pop_front();
      main_.push_back(c);
      continue;
    }
    return last_victim_ = &c;
  }
}

}  // namespace kvpager
