#include "region_map.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace kvpager::cuda {

namespace {
constinit RegionMap::Snapshot g_empty{};
}  // namespace

RegionMap::RegionMap(Quiescence& q) : q_(q), current_(&g_empty) {}

RegionMap::~RegionMap() {
  // Only at process exit or in tests, when no bracket is open.
  Snapshot* s = current_.exchange(&g_empty);
  if (s != &g_empty) destroy(s);
  for (auto& r : retired_) destroy(r.snap);
  for (auto& b : blocks_) delete[] b.load();
}

void RegionMap::destroy(Snapshot* s) {
  if (s == &g_empty) return;
  s->~Snapshot();
  std::free(s);
}

RegionMap::Snapshot* RegionMap::build(const std::map<uint64_t, Alloc>& allocs, const RegionMap& m,
                                      uint64_t version) {
  size_t n = 0;
  for (const auto& [base, a] : allocs) n += a.slots.size();
  // One block: header, bases, items.
  const size_t bytes = sizeof(Snapshot) + n * sizeof(uint64_t) + n * sizeof(MapItem) + alignof(MapItem);
  void* mem = std::malloc(bytes);
  if (!mem) throw std::bad_alloc();
  auto* s = new (mem) Snapshot();
  auto* bases = reinterpret_cast<uint64_t*>(s + 1);
  auto* items = reinterpret_cast<MapItem*>(bases + n);
  size_t i = 0;
  for (const auto& [base, a] : allocs) {
    for (uint32_t slot : a.slots) {
      const RegionEntry& e = m.entry(slot);
      bases[i] = e.base;
      items[i] = MapItem{e.base, e.base + e.size, base, base + a.size, slot, e.gen.load(std::memory_order_relaxed)};
      ++i;
    }
  }
  s->n = n;
  s->bases = bases;
  s->items = items;
  s->lo = n ? bases[0] : 0;
  s->hi = n ? items[n - 1].end : 0;
  s->version = version;
  return s;
}

void RegionMap::publish() {
  Snapshot* next = build(allocs_, *this, ++version_);
  Snapshot* old = current_.exchange(next, std::memory_order_seq_cst);
  if (old != &g_empty) {
    auto t = std::make_unique<Quiescence::Ticket>();
    q_.take(*t);
    retired_.push_back(Retired{old, std::move(t)});
  }
  // Free what earlier writes retired, if nobody can be reading it any more.
  std::erase_if(retired_, [&](Retired& r) {
    if (!q_.passed(*r.ticket)) return false;
    destroy(r.snap);
    return true;
  });
}

void RegionMap::reclaim() {
  std::lock_guard lock(mu_);
  std::erase_if(retired_, [&](Retired& r) {
    if (!q_.passed(*r.ticket)) return false;
    destroy(r.snap);
    return true;
  });
}

uint32_t RegionMap::new_slot() {
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
    return slot;
  }
  slot = next_slot_++;
  const size_t b = slot / kBlock;
  if (b >= kMaxBlocks) throw std::bad_alloc();
  if (!blocks_[b].load(std::memory_order_relaxed)) blocks_[b].store(new RegionEntry[kBlock], std::memory_order_release);
  return slot;
}

uint32_t RegionMap::add(uint64_t base, uint64_t size) {
  std::lock_guard lock(mu_);
  const uint32_t slot = new_slot();
  RegionEntry& e = entry(slot);
  e.base = base;
  e.size = size;
  e.alloc_base = base;
  e.pager_id = ~0ull;
  e.unsafe.store(0, std::memory_order_relaxed);
  e.parked.store(false, std::memory_order_relaxed);
  allocs_[base] = Alloc{size, {slot}};
  publish();
  return slot;
}

std::vector<uint32_t> RegionMap::remove_alloc(uint64_t alloc_base) {
  std::lock_guard lock(mu_);
  auto it = allocs_.find(alloc_base);
  if (it == allocs_.end()) return {};
  std::vector<uint32_t> slots = std::move(it->second.slots);
  allocs_.erase(it);
  publish();
  return slots;
}

uint32_t RegionMap::split(uint32_t slot, uint64_t offset) {
  std::lock_guard lock(mu_);
  RegionEntry& head = entry(slot);
  Alloc& a = allocs_.at(head.alloc_base);
  const uint32_t tail_slot = new_slot();
  RegionEntry& tail = entry(tail_slot);
  tail.base = head.base + offset;
  tail.size = head.size - offset;
  tail.alloc_base = head.alloc_base;
  tail.pager_id = ~0ull;
  // The head's spilled chunks may lie on either side of the cut: until the
  // owner of the counts says how many are the tail's, it counts them all.
  tail.unsafe.store(head.unsafe.load(), std::memory_order_relaxed);
  tail.parked.store(head.parked.load(std::memory_order_relaxed), std::memory_order_relaxed);
  head.size = offset;
  auto pos = std::find(a.slots.begin(), a.slots.end(), slot);
  a.slots.insert(pos + 1, tail_slot);
  publish();
  return tail_slot;
}

void RegionMap::retire(uint32_t slot) {
  std::lock_guard lock(mu_);
  RegionEntry& e = entry(slot);
  e.gen.fetch_add(1, std::memory_order_acq_rel);
  e.unsafe.store(0, std::memory_order_relaxed);
  e.parked.store(false, std::memory_order_relaxed);
  e.pager_id = ~0ull;
  free_slots_.push_back(slot);
}

bool RegionMap::find_alloc(uint64_t addr, uint64_t* base, uint64_t* size) const {
  std::lock_guard lock(mu_);
  auto it = allocs_.upper_bound(addr);
  if (it == allocs_.begin()) return false;
  --it;
  if (addr - it->first >= it->second.size) return false;
  *base = it->first;
  *size = it->second.size;
  return true;
}

std::vector<uint32_t> RegionMap::alloc_regions(uint64_t alloc_base) const {
  std::lock_guard lock(mu_);
  auto it = allocs_.find(alloc_base);
  return it == allocs_.end() ? std::vector<uint32_t>{} : it->second.slots;
}

size_t RegionMap::regions() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& [base, a] : allocs_) n += a.slots.size();
  return n;
}

}  // namespace kvpager::cuda
