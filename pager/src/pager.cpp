#include "kvpager/pager.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <numeric>

namespace kvpager {

namespace {

constexpr size_t kCompletionBatch = 64;
constexpr size_t kPendingPrefetches = 4096;
constexpr uint32_t kThrottleMuteEvents = 256;  // events a throttled prefetcher sits out
// Referenced chunks waiting for room: at most this many chunks' worth is
// evicted ahead at a time (bounds what an over-estimate of the wait costs).
constexpr uint64_t kStageWindowChunks = 64;
constexpr uint64_t kThrottleMinChunks = 16;    // judged chunks before a verdict
constexpr uint64_t kSpillRetryNs = 100'000'000;  // after a spill that failed (not for room)
constexpr uint64_t kSpillProbeNs = 5'000'000'000;  // how often one spill tries past the NVMe tier's ceiling

MoveKind kind_of(Tier from, Tier to) {
  if (to == Tier::kUnpopulated) return MoveKind::kDiscard;
  if (from == Tier::kNvme) return MoveKind::kRestore;
  if (to == Tier::kNvme) return MoveKind::kSpill;
  if (to == Tier::kHbm) return MoveKind::kPromote;
  return MoveKind::kDemote;
}

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  return h * 0xBF58476D1CE4E5B9ull;
}

uint64_t fraction_of(uint64_t bytes, double f) { return static_cast<uint64_t>(static_cast<double>(bytes) * f); }

}  // namespace

Pager::Pager(const Config& cfg, Mover& mover, WriteTracking writes) : mover_(mover), writes_(writes) {
  validate_or_throw(cfg);
  cfg_ = cfg.resolved(mover.device_hbm_bytes(), physical_ram());
  if (cfg_.hbm_budget > mover.device_hbm_bytes()) {
    throw ConfigError(fmt::format("hbm_budget = {}: out of range: the device ({}) offers {}",
                                  format_bytes(cfg_.hbm_budget), mover.name(),
                                  format_bytes(mover.device_hbm_bytes())));
  }
  hbm_limit_ = cfg_.hbm_budget;
  host_limit_ = cfg_.host_capacity;
  rebuild_policies();
  prefetchers_ = make_prefetchers(cfg_);
  for (auto& p : prefetchers_) prefetch_stats_.push_back(PrefetcherStats{std::string(p->name())});
  throttles_.resize(prefetchers_.size());
  pending_.resize(kPendingPrefetches);
  completions_.resize(kCompletionBatch);
  now_ = mover_.clock().now_ns();
}

Pager::~Pager() { drain(); }

// ---------------------------------------------------------------- regions

Region* Pager::lookup(RegionId id) const {
  if (id.slot >= regions_.size()) return nullptr;
  Region* r = regions_[id.slot].get();
  return (r && r->id.gen == id.gen) ? r : nullptr;
}

const Region* Pager::region(RegionId id) const { return lookup(id); }

ContextId Pager::find_context(std::string_view name) const {
  auto it = context_names_.find(std::string(name));
  return it == context_names_.end() ? kNoContext : it->second;
}

ContextId Pager::context_for(std::string_view name, RegionId first) {
  std::string key = name.empty() ? fmt::format("p{}-r{}", getpid(), ++region_serial_) : std::string(name);
  if (auto it = context_names_.find(key); it != context_names_.end()) {
    contexts_[it->second]->regions.push_back(first);
    return it->second;
  }
  ContextId id = static_cast<ContextId>(contexts_.size());
  for (ContextId i = 0; i < contexts_.size(); ++i) {
    if (!contexts_[i]) {
      id = i;
      break;
    }
  }
  auto ctx = std::make_unique<Context>();
  ctx->id = id;
  ctx->name = key;
  ctx->regions.push_back(first);
  if (id == contexts_.size()) contexts_.push_back(nullptr);
  contexts_[id] = std::move(ctx);
  context_names_.emplace(std::move(key), id);
  return id;
}

uint32_t Pager::alloc_slot() {
  if (!free_slots_.empty()) {
    uint32_t slot = free_slots_.back();
    free_slots_.pop_back();
    return slot;
  }
  regions_.push_back(nullptr);
  generations_.push_back(0);
  return static_cast<uint32_t>(regions_.size() - 1);
}

RegionId Pager::add_region(uint64_t base, uint64_t size, std::string_view context, Tier initial) {
  if (size == 0 || (initial != Tier::kUnpopulated && initial != Tier::kHost)) return RegionId{};
  const uint32_t slot = alloc_slot();
  auto r = std::make_unique<Region>();
  r->id = RegionId{slot, ++generations_[slot]};
  r->base = base;
  r->size = size;
  r->chunk_size = cfg_.chunk_size;
  r->nchunks = static_cast<uint32_t>((size + cfg_.chunk_size - 1) / cfg_.chunk_size);
  r->chunks = std::make_unique<Chunk[]>(r->nchunks);
  r->last_access_ns = now_;
  r->initial = initial;
  for (uint32_t i = 0; i < r->nchunks; ++i) {
    r->chunks[i].region = slot;
    r->chunks[i].index = i;
  }
  join_context(*r, context);
  for (uint32_t i = 0; i < r->nchunks; ++i) {
    Chunk& c = r->chunks[i];
    c.ctx = r->ctx;
    c.tier = c.target = initial;
    c.dirty = initial == Tier::kHost;  // no store copy of it yet
  }
  resident_[index(initial)] += uint64_t{r->nchunks} * cfg_.chunk_size;
  chunks_in_[index(initial)] += r->nchunks;
  RegionId id = r->id;
  Region& added = *r;
  regions_[slot] = std::move(r);
  mover_.region_added(id, base, size);
  if (initial == Tier::kHost) {
    for (uint32_t i = 0; i < added.nchunks; ++i) make_evictable(added.chunks[i]);
    next_spill_check_ns_ = 0;
  }
  return id;
}

void Pager::wait_region_idle(const Region& r) {
  auto busy = [&] {
    for (uint32_t i = 0; i < r.nchunks; ++i)
      if (r.chunks[i].in_flight()) return true;
    return false;
  };
  while (busy()) {
    if (collect(true) == 0 && mover_.pending() == 0) break;  // the mover lost them: never spin
  }
}

void Pager::wait_context_idle(const Context& ctx) {
  for (RegionId rid : ctx.regions)
    if (const Region* r = lookup(rid)) wait_region_idle(*r);
}

Status Pager::remove_region(RegionId id) {
  Region* r = lookup(id);
  if (!r) return Status::kNotFound;
  // Let every move of this region finish, then discard what it holds.
  wait_region_idle(*r);
  for (uint32_t i = 0; i < r->nchunks; ++i) {
    Chunk& c = r->chunks[i];
    c.pinned = false;
    if (c.tier != Tier::kUnpopulated)
      start_move(*r, c, MoveKind::kDiscard, Tier::kUnpopulated, false, 0, /*freeing=*/true);
  }
  wait_region_idle(*r);
  release_region(*r);
  return Status::kOk;
}

Status Pager::split_region(RegionId id, uint64_t offset, RegionId* tail) {
  Region* r = lookup(id);
  if (!r) return Status::kNotFound;
  if (offset == 0 || offset >= r->size || offset % cfg_.chunk_size != 0) return Status::kInvalid;
  // Completions name their chunk by address, and the chunks are re-made below.
  wait_region_idle(*r);
  const auto at = static_cast<uint32_t>(offset / cfg_.chunk_size);
  const uint32_t slot = alloc_slot();
  auto t = std::make_unique<Region>();
  t->id = RegionId{slot, generations_[slot] + 1};
  Status s = mover_.region_split(r->id, t->id, at);
  if (!ok(s)) {
    free_slots_.push_back(slot);
    return s;
  }
  ++generations_[slot];
  t->base = r->base + offset;
  t->size = r->size - offset;
  t->chunk_size = r->chunk_size;
  t->nchunks = r->nchunks - at;
  t->ctx = r->ctx;
  t->last_access_ns = r->last_access_ns;
  t->key_base = r->key_base + at;
  t->initial = r->initial;
  t->chunks = std::make_unique<Chunk[]>(t->nchunks);
  auto head = std::make_unique<Chunk[]>(at);
  for (uint32_t i = 0; i < r->nchunks; ++i) {
    Chunk& from = r->chunks[i];
    const bool listed = from.in_policy;
    make_unevictable(from);
    Chunk& to = i < at ? head[i] : t->chunks[i - at];
    to = from;  // an intrusive hook is never copied: `to` starts unlinked
    to.region = i < at ? r->id.slot : slot;
    to.index = i < at ? i : i - at;
    if (i >= at) to.wanted = to.pending = false;  // its queue entries name the head: dropped there
    if (listed) make_evictable(to);
  }
  if (last_error_chunk_ >= &r->chunks[0] && last_error_chunk_ < &r->chunks[0] + r->nchunks) last_error_chunk_ = nullptr;
  r->chunks = std::move(head);
  r->nchunks = at;
  r->size = offset;
  Context& ctx = *contexts_[r->ctx];
  ctx.regions.insert(std::find(ctx.regions.begin(), ctx.regions.end(), r->id) + 1, t->id);
  *tail = t->id;
  regions_[slot] = std::move(t);
  return Status::kOk;
}

Status Pager::set_context(RegionId id, std::string_view name) {
  Region* r = lookup(id);
  if (!r) return Status::kNotFound;
  if (name.empty()) return Status::kInvalid;
  if (contexts_[r->ctx]->name == name) return Status::kOk;
  wait_region_idle(*r);
  for (uint32_t i = 0; i < r->nchunks; ++i) {
    const Chunk& c = r->chunks[i];
    if (c.store_copy || c.tier == Tier::kNvme) return Status::kBusy;
  }
  // Joining a pinned context pins the region: within pin_limit, as a pin hint.
  if (const ContextId target = find_context(name); target != kNoContext && contexts_[target]->pinned) {
    uint64_t more = 0;
    for (uint32_t i = 0; i < r->nchunks; ++i) more += r->chunks[i].pinned ? 0 : r->chunk_size;
    if (!pins_fit(more)) return Status::kNoSpace;
  }
  const bool was_pinned = contexts_[r->ctx]->pinned;
  leave_context(*r);
  Context& ctx = join_context(*r, name);
  for (uint32_t i = 0; i < r->nchunks; ++i) {
    Chunk& c = r->chunks[i];
    c.ctx = r->ctx;
    if (ctx.pinned && !c.pinned) {
      make_unevictable(c);
      c.pinned = true;
    } else if (!ctx.pinned && was_pinned && c.pinned) {
      c.pinned = false;
      if (c.tier == Tier::kHbm || c.tier == Tier::kHost) make_evictable(c);
    }
  }
  return Status::kOk;
}

Status Pager::restore(RegionId id) {
  Region* r = lookup(id);
  if (!r) return Status::kNotFound;
  now_ = mover_.clock().now_ns();
  r->last_access_ns = now_;
  // Each chunk is tried once: a chunk still on its way to NVMe is waited for
  // and then brought back; a restore that fails is not retried here.
  std::vector<bool> tried(r->nchunks, false);
  for (;;) {
    bool moving = false;
    for (uint32_t i = 0; i < r->nchunks; ++i) {
      Chunk& c = r->chunks[i];
      if (c.in_flight()) {
        moving = moving || c.tier == Tier::kNvme || c.target == Tier::kNvme;
        continue;
      }
      if (c.tier != Tier::kNvme || tried[i]) continue;
      tried[i] = true;
      if (ok(start_move(*r, c, MoveKind::kRestore, Tier::kHost, /*demand=*/true))) moving = true;
    }
    if (!moving) break;
    if (collect(true) == 0 && mover_.pending() == 0) break;
  }
  Status result = Status::kOk;
  for (uint32_t i = 0; i < r->nchunks && ok(result); ++i) {
    const Chunk& c = r->chunks[i];
    if (c.tier == Tier::kNvme) result = last_error_chunk_ == &c ? last_error_ : Status::kIoError;
  }
  balance();
  return result;
}

Status Pager::read_context(ContextId id, const std::function<Status(std::span<const std::byte>)>& sink) {
  if (id >= contexts_.size() || !contexts_[id]) return Status::kNotFound;
  if (bytes_dropped(*contexts_[id])) return Status::kInvalid;
  std::vector<std::byte> buf(cfg_.chunk_size);
  // By index, not by iterator: waiting applies completions, and nothing of
  // that adds or removes regions, but the vector is the context's own.
  for (size_t ri = 0; ri < contexts_[id]->regions.size(); ++ri) {
    Region* r = lookup(contexts_[id]->regions[ri]);
    if (!r) return Status::kNotFound;
    for (uint32_t i = 0; i < r->nchunks; ++i) {
      const Chunk& c = r->chunks[i];
      // Only this chunk has to hold still while it is read (single thread:
      // nothing starts a move between the check and the read).
      while (c.in_flight()) {
        if (collect(true) == 0 && mover_.pending() == 0) return Status::kIoError;  // the mover lost it
      }
      std::span<std::byte> out(buf.data(), r->chunk_len(i));
      Status s = Status::kOk;
      if (c.tier == Tier::kUnpopulated) {
        std::fill(out.begin(), out.end(), std::byte{0});
      } else {
        ChunkRef ref{r->id, i, r->base + r->chunk_offset(i), out.size(), c.tier,
                     c.tier == Tier::kNvme ? key_for(*r, i) : ObjectKey{}};
        s = mover_.read_chunk(ref, out);
      }
      if (ok(s)) s = sink(out);
      if (!ok(s)) return s;
    }
  }
  return Status::kOk;
}

void Pager::release_region(Region& r) {
  resident_[index(Tier::kUnpopulated)] -= uint64_t{r.nchunks} * cfg_.chunk_size;
  chunks_in_[index(Tier::kUnpopulated)] -= r.nchunks;
  mover_.region_removed(r.id);
  leave_context(r);
  uint32_t slot = r.id.slot;
  regions_[slot].reset();
  free_slots_.push_back(slot);
}

Context& Pager::join_context(Region& r, std::string_view name) {
  r.ctx = context_for(name, r.id);
  Context& ctx = *contexts_[r.ctx];
  r.key_base = ctx.next_key;
  ctx.next_key += r.nchunks;
  return ctx;
}

void Pager::leave_context(Region& r) {
  Context& ctx = *contexts_[r.ctx];
  std::erase(ctx.regions, r.id);
  if (ctx.regions.empty()) {  // its last region: the context goes
    context_names_.erase(ctx.name);
    contexts_[r.ctx].reset();
  }
}

bool Pager::bytes_dropped(const Context& ctx) const {
  // Used again after the drop (a launch or copy wrote it anew, the program
  // touched it) is a new use of the memory. At the drop's own clock tick it
  // cannot be told: taken as not used (a refused publish, never a wrong one).
  return ctx.dropped && context_last_access(ctx) <= ctx.dropped_at_ns;
}

uint64_t Pager::context_last_access(const Context& ctx) const {
  uint64_t last = 0;
  for (RegionId id : ctx.regions)
    if (const Region* r = lookup(id)) last = std::max(last, r->last_access_ns);
  return last;
}

std::vector<ContextInfo> Pager::contexts() const {
  std::vector<ContextInfo> out;
  for (const auto& ctx : contexts_) {
    if (!ctx) continue;
    ContextInfo info{ctx->id, ctx->name};
    info.parked = ctx->parked;
    info.pinned = ctx->pinned;
    info.regions = static_cast<uint32_t>(ctx->regions.size());
    info.last_access_ns = context_last_access(*ctx);
    info.dropped = bytes_dropped(*ctx);
    for (RegionId id : ctx->regions) {
      const Region* r = lookup(id);
      info.size_bytes += r->size;
      info.hits += r->hits;
      for (uint32_t i = 0; i < r->nchunks; ++i) info.tier_bytes[index(r->chunks[i].tier)] += r->chunk_len(i);
    }
    out.push_back(std::move(info));
  }
  return out;
}

// ---------------------------------------------------------------- hot path

Status Pager::access(RegionId id, uint32_t i, bool write) {
  Region* r = lookup(id);
  if (!r || i >= r->nchunks) [[unlikely]]
    return Status::kInvalid;
  Chunk& c = r->chunks[i];
  ++counters_.accesses;
  if (c.tier == Tier::kHbm && c.resting()) [[likely]] {
    ++counters_.hits;
    ++r->hits;
    note_use(*r, c, write);
    return Status::kOk;
  }
  return access_slow(*r, c, write);
}

void Pager::warm(Chunk& c) {
  ++epoch_;
  if (c.in_policy) policies_[0]->touch(c, epoch_);
  c.last_use = epoch_;
}

void Pager::note_use(Region& r, Chunk& c, bool write) {
  warm(c);
  c.dirty = c.dirty || write;
  r.last_access_ns = now_;
  if (c.prefetcher != 0) [[unlikely]] {
    prefetch_used(c, r.chunk_len(c.index));
    FaultEvent ev{&r, c.index, true};
    dispatch([&](Prefetcher& p) { p.on_fault(ev, *this); });
  }
}

Status Pager::access_slow(Region& r, Chunk& c, bool write) {
  now_ = mover_.clock().now_ns();
  ++counters_.faults;
  if (c.in_flight()) {
    Status s = wait_for(c);
    if (c.tier == Tier::kHbm) {  // it was on its way up: a late prefetch
      ++counters_.faults_from[index(Tier::kHbm)];
      note_use(r, c, write);
      issue_pending();
      return Status::kOk;
    }
    if (!ok(s) && c.tier == Tier::kNvme) return s;  // a failed restore: the bytes are not there
  }
  ++counters_.faults_from[index(c.tier)];
  Status s = make_room_sync(cfg_.chunk_size);
  if (!ok(s)) return s;
  MoveKind kind = c.tier == Tier::kNvme ? MoveKind::kRestore : MoveKind::kPromote;
  s = start_move(r, c, kind, Tier::kHbm, /*demand=*/true);
  if (!ok(s)) return s;
  balance();
  FaultEvent ev{&r, c.index, false};
  dispatch([&](Prefetcher& p) { p.on_fault(ev, *this); });
  s = wait_for(c);
  if (!ok(s)) return s;
  note_use(r, c, write);
  issue_pending();
  return Status::kOk;
}

Status Pager::reference(RegionId id, uint32_t i) {
  Region* r = lookup(id);
  if (!r || i >= r->nchunks) [[unlikely]]
    return Status::kInvalid;
  now_ = mover_.clock().now_ns();
  r->last_access_ns = now_;
  ++counters_.accesses;
  Chunk& c = r->chunks[i];
  const bool hit = c.tier == Tier::kHbm && c.resting();
  if (hit) {
    ++counters_.hits;
    ++r->hits;
  } else {
    // Read where it rests or is going (on its way in: a late prefetch).
    ++counters_.faults;
    ++counters_.faults_from[index(c.target)];
  }
  const bool whole = uint64_t{r->nchunks} * cfg_.chunk_size <= whole_reference_bytes();
  const uint32_t first = whole ? 0 : i, end = whole ? r->nchunks : i + 1;
  bool missing = false;
  for (uint32_t k = first; k < end; ++k) {
    Chunk& ck = r->chunks[k];
    if (ck.tier == Tier::kHbm && ck.resting()) note_use(*r, ck, false);
    else missing = missing || ck.in_flight() || ck.tier == Tier::kHost || ck.tier == Tier::kNvme;
  }
  if (!hit) {
    FaultEvent ev{r, i, false};
    dispatch([&](Prefetcher& p) { p.on_fault(ev, *this); });
  }
  if (missing && whole && !r->reference_queued) {
    r->reference_queued = true;
    wanted_.push_back(Wanted{id, first, first, end, true});
  } else if (missing && whole && r->hint_queued) {
    // Queued by a hint, and the program reads it now: what is still to come
    // is the reference's, not the hint's.
    r->hint_queued = false;
    for (Wanted& w : wanted_)
      if (w.whole && w.id == id) w.prefetcher = 0;
  } else if (missing && !whole && !c.wanted) {
    c.wanted = true;  // chunk by chunk: each referenced chunk waits on its own
    wanted_.push_back(Wanted{id, first, first, end, false});
  }
  issue_wanted();
  return Status::kOk;
}

// What marks a wanted_ entry as queued, cleared as it leaves the queue.
void Pager::unqueue(const Wanted& w) {
  Region* r = lookup(w.id);
  if (!r) return;
  if (w.whole) r->reference_queued = r->hint_queued = false;
  else if (w.first < r->nchunks) r->chunks[w.first].wanted = false;
}

uint64_t Pager::whole_reference_bytes() const {
  // Half of what references may stage, in whole chunks (a region's chunks
  // cover it: its last one counts in full).
  return fraction_of(hbm_limit_, cfg_.high_watermark) / 2 / cfg_.chunk_size * cfg_.chunk_size;
}

void Pager::issue_wanted() {
  const uint64_t cap = fraction_of(hbm_limit_, cfg_.high_watermark);
  uint64_t waiting = 0;  // chunks of ranges still to stage (an upper bound: some may be in HBM by now)
  for (auto it = wanted_.begin(); it != wanted_.end();) {
    Region* r = lookup(it->id);
    if (r) it->end = std::min(it->end, r->nchunks);  // a split may have cut it short
    for (; r && it->next < it->end; ++it->next) {
      Chunk& c = r->chunks[it->next];
      // In HBM already, or on its way somewhere: the next reference looks again.
      if (!c.resting() || (c.tier != Tier::kHost && c.tier != Tier::kNvme)) continue;
      if (committed_bytes(Tier::kHbm) + cfg_.chunk_size > cap) break;  // no room yet
      bring_in(*r, c, it->prefetcher);
    }
    if (!r || it->next >= it->end) {
      unqueue(*it);
      it = wanted_.erase(it);
      continue;
    }
    waiting += it->end - it->next;
    ++it;
  }
  // Make room ahead, a window at a time: demote the least recently used
  // chunks (the referenced ones were just used) so that what waits fits.
  const uint64_t want = std::min<uint64_t>(waiting, kStageWindowChunks) * cfg_.chunk_size;
  EvictionPolicy& hbm = *policies_[0];
  while (want > 0 && committed_bytes(Tier::kHbm) - outbound_[index(Tier::kHbm)] + want > cap) {
    Chunk* v = hbm.victim();
    if (!v) break;
    if (regions_[v->region]->reference_queued) {
      // Everything colder is gone: what waits does not fit beside what cannot
      // leave (pinned, in flight, or the waiting regions themselves), and
      // evicting them would churn them through each other. The waiting
      // regions stop waiting; their next reference asks again.
      std::erase_if(wanted_, [&](const Wanted& w) {
        if (!w.whole) return false;
        unqueue(w);
        return true;
      });
      break;
    }
    if (!ok(start_move(*regions_[v->region], *v, MoveKind::kDemote, Tier::kHost, false))) break;
    ++counters_.evictions;
  }
}

void Pager::launch(uint64_t kernel, std::span<const RegionId> regions) {
  uint64_t sig = mix(0x6B7670616765ull, kernel);
  for (RegionId id : regions) {
    sig = mix(sig, id.packed());
    if (Region* r = lookup(id)) r->last_access_ns = now_;
  }
  LaunchEvent ev{sig, regions};
  dispatch([&](Prefetcher& p) { p.on_launch(ev, *this); });
}

void Pager::touch(RegionId id) {
  if (Region* r = lookup(id)) r->last_access_ns = mover_.clock().now_ns();
}

// ---------------------------------------------------------------- hints

// The context's regions stop waiting to come to HBM (parked or dropped: what
// a reference or a hint queued is not wanted now; the next reference asks
// again).
void Pager::forget_wanted(const Context& ctx) {
  std::erase_if(wanted_, [&](const Wanted& w) {
    if (std::find(ctx.regions.begin(), ctx.regions.end(), w.id) == ctx.regions.end()) return false;
    unqueue(w);
    return true;
  });
}

Status Pager::hint(ContextId id, HintKind kind) {
  if (id >= contexts_.size() || !contexts_[id]) return Status::kNotFound;
  Context& ctx = *contexts_[id];
  now_ = mover_.clock().now_ns();
  auto each_chunk = [&](auto&& fn) {
    for (RegionId rid : ctx.regions) {
      Region& r = *lookup(rid);
      for (uint32_t i = 0; i < r.nchunks; ++i) fn(r, r.chunks[i]);
    }
  };
  switch (kind) {
    case HintKind::kPrefetch:
      ctx.parked = false;
      break;
    case HintKind::kPark:
      if (ctx.pinned) return Status::kBusy;  // as drop: a pinned context stays where it is
      ctx.parked = true;
      ctx.parked_at_ns = std::max(now_, context_last_access(ctx));
      forget_wanted(ctx);  // a prefetch hint still waiting for room, say
      wait_context_idle(ctx);  // what is on its way in lands first, then leaves with the rest
      each_chunk([&](Region& r, Chunk& c) {
        if (c.tier == Tier::kHbm && c.resting() && !c.pinned)
          start_move(r, c, MoveKind::kDemote, Tier::kHost, false);
      });
      next_spill_check_ns_ = 0;
      break;
    case HintKind::kDrop: {
      bool pinned = false;
      each_chunk([&](Region&, Chunk& c) { pinned = pinned || c.pinned; });
      if (pinned || ctx.pinned) return Status::kBusy;
      forget_wanted(ctx);
      wait_context_idle(ctx);
      each_chunk([&](Region& r, Chunk& c) {
        if (c.tier != Tier::kUnpopulated) start_move(r, c, MoveKind::kDiscard, Tier::kUnpopulated, false);
      });
      wait_context_idle(ctx);
      // Memory that exists from the start (managed memory) is still the
      // program's, which may write it again: back in host RAM, its bytes
      // whatever they are now, with no copy in the store. Not parked: what
      // the program writes there next is a new use (spilled only when idle).
      ctx.parked = false;
      ctx.dropped = true;
      ctx.dropped_at_ns = std::max(now_, context_last_access(ctx));
      each_chunk([&](Region& r, Chunk& c) {
        if (r.initial != Tier::kHost || c.tier != Tier::kUnpopulated || !c.resting()) return;
        count_moved(Tier::kUnpopulated, Tier::kHost);
        c.tier = c.target = Tier::kHost;
        c.dirty = true;
        make_evictable(c);
      });
      break;
    }
    case HintKind::kPin: {
      uint64_t more = 0;
      each_chunk([&](Region& r, Chunk& c) { more += c.pinned ? 0 : r.chunk_size; });
      if (!pins_fit(more)) return Status::kNoSpace;
      ctx.pinned = true;
      each_chunk([&](Region&, Chunk& c) {
        if (c.in_policy) make_unevictable(c);
        c.pinned = true;
      });
      break;
    }
    case HintKind::kUnpin:
      ctx.pinned = false;
      each_chunk([&](Region&, Chunk& c) {
        c.pinned = false;
        if (c.resting() && (c.tier == Tier::kHbm || c.tier == Tier::kHost)) make_evictable(c);
      });
      break;
  }
  HintEvent ev{id, kind};
  dispatch([&](Prefetcher& p) { p.on_hint(ev, *this); });
  balance();
  return Status::kOk;
}

uint64_t Pager::pinned_bytes() const {
  uint64_t n = 0;
  for (const auto& r : regions_) {
    if (!r) continue;
    for (uint32_t i = 0; i < r->nchunks; ++i) n += r->chunks[i].pinned ? r->chunk_size : 0;  // HBM counts whole chunks
  }
  return n;
}

uint64_t Pager::pin_limit(const Config& resolved) { return fraction_of(resolved.hbm_budget, resolved.low_watermark); }

bool Pager::pins_fit(uint64_t more) const { return more == 0 || pinned_bytes() + more <= pin_limit(cfg_); }

// ---------------------------------------------------------------- moves

EvictionPolicy* Pager::policy_for(Tier t) const {
  if (t == Tier::kHbm) return policies_[0].get();
  if (t == Tier::kHost) return policies_[1].get();
  return nullptr;
}

void Pager::make_evictable(Chunk& c) {
  if (c.in_policy || c.pinned || c.in_flight()) return;
  if (EvictionPolicy* p = policy_for(c.tier)) p->insert(c);
  KVPAGER_CHECK_CHUNK(c);
}

void Pager::make_unevictable(Chunk& c) {
  if (!c.in_policy) return;
  policy_for(c.tier)->erase(c);
}

ObjectKey Pager::key_for(const Region& r, uint32_t i) const {
  return chunk_key("", contexts_[r.ctx]->name, r.key_base + i);
}

Status Pager::start_move(Region& r, Chunk& c, MoveKind kind, Tier to, bool demand, uint8_t prefetcher,
                         bool freeing) {
  Status s = check_transition(c, kind, to);
  if (!ok(s)) return s;
  const uint64_t len = r.chunk_len(c.index);
  MoveRequest req;
  req.tag = reinterpret_cast<uint64_t>(&c);
  req.kind = kind;
  req.from = c.tier;
  req.to = to;
  req.region = r.id;
  req.chunk = c.index;
  req.addr = r.base + r.chunk_offset(c.index);
  req.len = len;
  req.demand = demand;
  if (kind == MoveKind::kSpill || kind == MoveKind::kRestore || (kind == MoveKind::kDiscard && c.store_copy)) {
    req.key = key_for(r, c.index);
  }
  req.write_back = c.dirty || !c.store_copy;
  // A restored chunk keeps its store copy (a clean one spills again without
  // a write) unless that copy would hold room spills need: under a finite
  // nvme_capacity, or while spills wait for room, it is erased as it lands.
  const bool drop_on_restore = kind == MoveKind::kRestore && (cfg_.nvme_capacity != 0 || spill_ceiling_ != kNoCeiling);
  req.drop_store_copy = (kind == MoveKind::kDiscard && c.store_copy) || drop_on_restore;
  req.freeing = kind == MoveKind::kDiscard && freeing;

  const bool was_evictable = c.in_policy;
  make_unevictable(c);
  s = mover_.submit(req);
  if (!ok(s)) {
    ++counters_.move_failures_by_kind[static_cast<size_t>(kind)];
    if (kind == MoveKind::kSpill && s == Status::kNoSpace) spills_refused();
    if (was_evictable) make_evictable(c);
    return s;
  }
  if (prefetcher != 0) c.prefetcher = prefetcher;
  c.drop_copy = drop_on_restore;
  begin_move(c, to);
  outbound_[index(c.tier)] += cfg_.chunk_size;
  inbound_[index(to)] += cfg_.chunk_size;
  return Status::kOk;
}

void Pager::count_moved(Tier from, Tier to) {
  resident_[index(from)] -= cfg_.chunk_size;
  resident_[index(to)] += cfg_.chunk_size;
  --chunks_in_[index(from)];
  ++chunks_in_[index(to)];
}

void Pager::on_complete(const MoveCompletion& done) {
  Chunk& c = *reinterpret_cast<Chunk*>(done.tag);
  Region& r = *regions_[c.region];
  const uint64_t len = r.chunk_len(c.index);
  const Tier from = c.tier, to = c.target;
  const MoveKind kind = kind_of(from, to);
  const uint64_t footprint = cfg_.chunk_size;
  outbound_[index(from)] -= footprint;
  inbound_[index(to)] -= footprint;
  if (ok(done.status)) {
    count_moved(from, to);
    if (c.prefetcher != 0 && from == Tier::kHbm) prefetch_wasted(c, len);
    complete_move(c, kind);
    // Nothing will say whether the program writes it: its store copy may go
    // stale from now on, so the next spill writes it back.
    if (kind == MoveKind::kRestore && writes_ == WriteTracking::kUnobserved) c.dirty = true;
    if (to == Tier::kHost) next_spill_check_ns_ = 0;  // it may be spillable: look again
    // A spill landed past the ceiling a refusal set: the room is back.
    if (kind == MoveKind::kSpill && committed_bytes(Tier::kNvme) > spill_ceiling_) spill_ceiling_ = kNoCeiling;
    ++counters_.moves[static_cast<size_t>(kind)];
    counters_.move_bytes[static_cast<size_t>(kind)] += len;
  } else {
    ++counters_.move_failures_by_kind[static_cast<size_t>(kind)];
    if (kind == MoveKind::kSpill && done.status == Status::kNoSpace) spills_refused();
    // The mover could not spill now (it cannot yet prove nothing reads the
    // chunk, or the copy or the store failed): try again a little later, not
    // on every tick (nor in a loop in drain()).
    if (kind == MoveKind::kSpill && done.status != Status::kNoSpace)
      next_spill_check_ns_ = std::max(next_spill_check_ns_, mover_.clock().now_ns() + kSpillRetryNs);
    abort_move(c);
    last_error_chunk_ = &c;
    last_error_ = done.status;
  }
  make_evictable(c);
}

size_t Pager::collect(bool block) {
  size_t n = block ? mover_.wait(completions_) : mover_.poll(completions_);
  for (size_t i = 0; i < n; ++i) on_complete(completions_[i]);
  now_ = mover_.clock().now_ns();
  return n;
}

Status Pager::wait_for(const Chunk& c) {
  const Tier expected = c.target;
  const uint64_t t0 = mover_.clock().now_ns();
  while (c.in_flight()) {
    if (collect(true) == 0 && c.in_flight()) break;  // the mover lost it: never spin
  }
  counters_.stall_ns += mover_.clock().now_ns() - t0;
  if (c.resting() && c.tier == expected) return Status::kOk;
  return last_error_chunk_ == &c ? last_error_ : Status::kIoError;
}

void Pager::drain() {
  // Moves that were in flight when a budget fell may land above it: balance
  // after each wave until nothing moves.
  for (;;) {
    while (mover_.pending() > 0) {
      if (collect(true) == 0) return;
    }
    balance();
    if (mover_.pending() == 0) return;
  }
}

void Pager::tick() {
  now_ = mover_.clock().now_ns();
  while (collect(false) > 0) {
  }
  balance();
  issue_wanted();
  issue_pending();
}

// ---------------------------------------------------------------- budget

Status Pager::make_room_sync(uint64_t bytes) {
  EvictionPolicy& hbm = *policies_[0];
  for (;;) {
    const uint64_t committed = committed_bytes(Tier::kHbm);
    if (committed + bytes <= hbm_limit_) return Status::kOk;
    if (committed - outbound_[index(Tier::kHbm)] + bytes <= hbm_limit_) {
      collect(true);  // what is already leaving makes enough room
      continue;
    }
    if (Chunk* v = hbm.victim()) {
      Status s = start_move(*regions_[v->region], *v, MoveKind::kDemote, Tier::kHost, false);
      if (!ok(s)) return s;
      ++counters_.evictions;
      continue;
    }
    if (mover_.pending() > 0 && collect(true) > 0) continue;
    return Status::kNoSpace;  // HBM holds only pinned chunks
  }
}

void Pager::balance() {
  balance_hbm();
  balance_host();
}

void Pager::balance_hbm() {
  if (committed_bytes(Tier::kHbm) <= fraction_of(hbm_limit_, cfg_.high_watermark)) return;
  const uint64_t low = fraction_of(hbm_limit_, cfg_.low_watermark);
  EvictionPolicy& hbm = *policies_[0];
  while (committed_bytes(Tier::kHbm) - outbound_[index(Tier::kHbm)] > low) {
    Chunk* v = hbm.victim();
    if (!v || !ok(start_move(*regions_[v->region], *v, MoveKind::kDemote, Tier::kHost, false))) break;
    ++counters_.evictions;
  }
}

bool Pager::may_spill(const Context& ctx) const {
  if (ctx.pinned) return false;
  uint64_t last = context_last_access(ctx);
  if (ctx.parked && last <= ctx.parked_at_ns) return true;
  return now_ >= last && now_ - last >= cfg_.spill_idle_ns;
}

// The NVMe tier refused a spill for room (a full disk, or the store's own
// count of nvme_capacity, which includes its file headers): what it held
// then is its ceiling. Spills refill it up to there as chunks leave it (one
// for one, not a burst the store refuses); one spill tries past it every
// kSpillProbeNs, for room freed where the pager does not see it (another
// process, a copy dropped); a spill that lands past it lifts it.
void Pager::spills_refused() {
  spill_ceiling_ = committed_bytes(Tier::kNvme);
  next_spill_probe_ns_ = now_ + kSpillProbeNs;
}

// Whether a spill of len bytes may start; `take` uses up the probe past the
// ceiling if that is what lets it.
bool Pager::spill_room(uint64_t len, bool take) {
  const uint64_t after = committed_bytes(Tier::kNvme) + len;
  if (cfg_.nvme_capacity != 0 && after > cfg_.nvme_capacity) return false;
  if (after <= spill_ceiling_) return true;
  if (now_ < next_spill_probe_ns_) return false;
  if (take) next_spill_probe_ns_ = now_ + kSpillProbeNs;
  return true;
}

void Pager::balance_host() {
  if (now_ < next_spill_check_ns_ || !spill_room(cfg_.chunk_size, false)) return;
  if (committed_bytes(Tier::kHost) <= fraction_of(host_limit_, cfg_.high_watermark)) return;
  const uint64_t low = fraction_of(host_limit_, cfg_.low_watermark);
  auto above_low = [&] { return committed_bytes(Tier::kHost) - outbound_[index(Tier::kHost)] > low; };

  // Contexts that may spill, least recently used first. The earliest time
  // another becomes eligible bounds how long we need not look again.
  std::vector<std::pair<uint64_t, Context*>> candidates;
  uint64_t next_eligible = UINT64_MAX;
  for (auto& ctx : contexts_) {
    if (!ctx) continue;
    uint64_t last = context_last_access(*ctx);
    if (may_spill(*ctx)) candidates.emplace_back(last, ctx.get());
    else if (!ctx->pinned) next_eligible = std::min(next_eligible, last + cfg_.spill_idle_ns);
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const auto& a, const auto& b) { return a.first != b.first ? a.first < b.first : a.second->id < b.second->id; });
  uint64_t started = 0;
  for (auto& [last, ctx] : candidates) {
    for (RegionId rid : ctx->regions) {
      Region& r = *lookup(rid);
      for (uint32_t i = 0; i < r.nchunks && above_low(); ++i) {
        Chunk& c = r.chunks[i];
        if (c.tier != Tier::kHost || !c.resting() || c.pinned) continue;
        if (!spill_room(cfg_.chunk_size, true)) return;
        if (!ok(start_move(r, c, MoveKind::kSpill, Tier::kNvme, false))) {
          if (!spill_room(cfg_.chunk_size, false)) return;  // refused for room
          continue;
        }
        ++started;
        ++counters_.evictions;
      }
      if (!above_low()) return;
    }
  }
  // Still above and nothing more could start: look again when another
  // context has been idle long enough (or sooner: a hint, a live change or a
  // chunk arriving in host RAM resets this).
  if (started == 0) next_spill_check_ns_ = next_eligible;
}

// ---------------------------------------------------------------- prefetch

template <typename Fn>
void Pager::dispatch(Fn&& fn) {
  for (size_t i = 0; i < prefetchers_.size(); ++i) {
    Throttle& t = throttles_[i];
    if (t.muted_events > 0) {
      if (--t.muted_events == 0) prefetch_stats_[i].throttled = false;
      continue;
    }
    current_prefetcher_ = static_cast<uint8_t>(i + 1);
    fn(*prefetchers_[i]);
  }
  current_prefetcher_ = 0;
}

bool Pager::stage(Region& r, Chunk& c, uint8_t prefetcher) {
  if (committed_bytes(Tier::kHbm) + cfg_.chunk_size > fraction_of(hbm_limit_, cfg_.high_watermark)) return false;
  return ok(bring_in(r, c, prefetcher));
}

// Starts c (in host RAM or NVMe) on its way to HBM, credited to the
// prefetcher (1-based) that asked for it, if one did.
Status Pager::bring_in(Region& r, Chunk& c, uint8_t prefetcher) {
  const MoveKind kind = c.tier == Tier::kNvme ? MoveKind::kRestore : MoveKind::kPromote;
  const Status s = start_move(r, c, kind, Tier::kHbm, false, prefetcher);
  if (ok(s) && prefetcher != 0) prefetch_stats_[prefetcher - 1].issued_bytes += r.chunk_len(c.index);
  return s;
}

uint32_t Pager::prefetch(RegionId id, uint32_t first, uint32_t count) {
  Region* r = lookup(id);
  if (!r || current_prefetcher_ == 0) return 0;
  // A referenced region waiting to come in whole is coming (issue_wanted):
  // a guess about it adds nothing but entries in the ring.
  if (r->reference_queued) return 0;
  uint32_t end = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{first} + count, r->nchunks));
  uint32_t queued = 0;
  for (uint32_t i = first; i < end; ++i) {
    Chunk& c = r->chunks[i];
    if (c.pending || c.in_flight() || (c.tier != Tier::kHost && c.tier != Tier::kNvme)) continue;
    if (stage(*r, c, current_prefetcher_)) {
      ++queued;
    } else if (pending_count_ < pending_.size()) {
      pending_[(pending_head_ + pending_count_++) % pending_.size()] = {id.slot, id.gen, i, current_prefetcher_};
      c.pending = true;
      ++queued;
    } else {
      ++counters_.prefetch_dropped;
    }
  }
  return queued;
}

uint32_t Pager::prefetch_region(RegionId id) {
  const Region* r = lookup(id);
  return r ? prefetch(id, 0, r->nchunks) : 0;
}

uint32_t Pager::stage_context(ContextId id) {
  if (id >= contexts_.size() || !contexts_[id] || current_prefetcher_ == 0) return 0;
  uint32_t queued = 0;
  for (RegionId rid : contexts_[id]->regions) {
    Region* r = lookup(rid);
    if (!r) continue;
    uint32_t missing = 0;
    for (uint32_t i = 0; i < r->nchunks; ++i) {
      Chunk& c = r->chunks[i];
      if (c.resting() && (c.tier == Tier::kHost || c.tier == Tier::kNvme)) ++missing;
      // What is in HBM already is wanted too: else making room would take
      // the context's own chunks first (they are likely the coldest).
      else if (c.tier == Tier::kHbm && c.resting()) warm(c);
    }
    if (missing == 0 || r->reference_queued) continue;
    r->reference_queued = r->hint_queued = true;
    wanted_.push_back(Wanted{rid, 0, 0, r->nchunks, true, current_prefetcher_});
    queued += missing;
  }
  issue_wanted();
  return queued;
}

uint32_t Pager::prefetch_context(ContextId id) {
  if (id >= contexts_.size() || !contexts_[id]) return 0;
  uint32_t n = 0;
  for (RegionId rid : contexts_[id]->regions) n += prefetch_region(rid);
  return n;
}

void Pager::issue_pending() {
  while (pending_count_ > 0) {
    const Pending& p = pending_[pending_head_];
    Region* r = lookup(RegionId{p.region_slot, p.region_gen});
    bool done = true;
    Chunk* c = r && p.index < r->nchunks ? &r->chunks[p.index] : nullptr;
    if (c) {
      bool wanted = !c->in_flight() && (c->tier == Tier::kHost || c->tier == Tier::kNvme);
      if (wanted && throttles_[p.prefetcher - 1].muted_events == 0) done = stage(*r, *c, p.prefetcher);
    }
    if (!done) return;  // no room yet
    if (c) c->pending = false;
    pending_head_ = (pending_head_ + 1) % pending_.size();
    --pending_count_;
  }
}

void Pager::prefetch_used(Chunk& c, uint64_t len) {
  size_t i = c.prefetcher - 1u;
  c.prefetcher = 0;
  prefetch_stats_[i].used_bytes += len;
  throttles_[i].used += 1;
}

void Pager::prefetch_wasted(Chunk& c, uint64_t len) {
  size_t i = c.prefetcher - 1u;
  c.prefetcher = 0;
  prefetch_stats_[i].wasted_bytes += len;
  if (!prefetchers_[i]->throttled_by_waste()) return;
  Throttle& t = throttles_[i];
  t.wasted += 1;
  uint64_t judged = t.used + t.wasted;
  if (judged >= kThrottleMinChunks &&
      static_cast<double>(t.wasted) > cfg_.prefetch_waste_ceiling * static_cast<double>(judged)) {
    t.muted_events = kThrottleMuteEvents;
    t.used = t.wasted = 0;
    prefetch_stats_[i].throttled = true;
    ++prefetch_stats_[i].throttle_events;
  }
}

double Pager::restore_ns(const Chunk& c) const {
  const Region& r = *regions_[c.region];
  uint64_t len = r.chunk_len(c.index);
  // From HBM a victim goes to host RAM; from host RAM to NVMe (a clean chunk
  // with a store copy costs no write on the way down).
  if (c.tier == Tier::kHbm) return mover_.estimate_ns(MoveKind::kPromote, Tier::kHost, Tier::kHbm, len);
  double back = mover_.estimate_ns(MoveKind::kRestore, Tier::kNvme, Tier::kHost, len);
  if (c.dirty || !c.store_copy) back += mover_.estimate_ns(MoveKind::kSpill, Tier::kHost, Tier::kNvme, len);
  return back;
}

// ---------------------------------------------------------------- config

void Pager::rebuild_policies() {
  for (int t = 0; t < 2; ++t) {
    auto next = make_policy(cfg_.eviction_policy, cfg_, this);
    if (policies_[t]) policies_[t]->drain([&](Chunk& c) { next->insert(c); });
    policies_[t] = std::move(next);
  }
}

Status Pager::apply(const Config& next, std::string* why) {
  auto fail = [&](std::string msg) {
    if (why) *why = std::move(msg);
    return Status::kInvalid;
  };
  auto errors = validate(next);
  if (!errors.empty()) {
    std::string msg = errors.front();
    for (size_t i = 1; i < errors.size(); ++i) msg += "; " + errors[i];
    return fail(msg);
  }
  Config resolved = next.resolved(mover_.device_hbm_bytes(), physical_ram());
  for (const Knob& k : knobs()) {
    if (!k.live && k.format(resolved) != k.format(cfg_))
      return fail(fmt::format("{} cannot change while the pager runs (it is {}; restart to use {})", k.name,
                              k.format(cfg_), k.format(resolved)));
  }
  if (resolved.hbm_budget > mover_.device_hbm_bytes())
    return fail(fmt::format("hbm_budget = {}: out of range: the device ({}) offers {}",
                            format_bytes(resolved.hbm_budget), mover_.name(),
                            format_bytes(mover_.device_hbm_bytes())));
  // Only a change of the limit is checked: other knobs stay settable as they were.
  if (const uint64_t pinned = pinned_bytes(); pin_limit(resolved) < pin_limit(cfg_) && pinned > pin_limit(resolved))
    return fail(fmt::format("hbm_budget = {}, low_watermark = {}: pinned contexts hold {}, more than low_watermark "
                            "of the budget ({}), and every other access would find no room; unpin first",
                            format_bytes(resolved.hbm_budget), resolved.low_watermark,
                            human_bytes(static_cast<double>(pinned)),
                            human_bytes(static_cast<double>(pin_limit(resolved)))));
  const bool policy_changed =
      resolved.eviction_policy != cfg_.eviction_policy || resolved.cost_sample != cfg_.cost_sample;
  const bool prefetchers_changed = resolved.prefetchers != cfg_.prefetchers;
  cfg_ = resolved;
  hbm_limit_ = cfg_.hbm_budget;
  host_limit_ = cfg_.host_capacity;
  next_spill_check_ns_ = 0;
  if (policy_changed) rebuild_policies();
  if (prefetchers_changed) {
    // Keep the counters of prefetchers that stay; chunks staged by one that
    // goes are no longer attributed to anyone.
    std::vector<PrefetcherStats> stats;
    auto made = make_prefetchers(cfg_);
    for (auto& p : made) {
      auto it = std::find_if(prefetch_stats_.begin(), prefetch_stats_.end(),
                             [&](const PrefetcherStats& s) { return s.name == p->name(); });
      stats.push_back(it != prefetch_stats_.end() ? *it : PrefetcherStats{std::string(p->name())});
    }
    for (auto& slot : regions_) {
      if (!slot) continue;
      slot->hint_queued = false;
      for (uint32_t i = 0; i < slot->nchunks; ++i) {
        slot->chunks[i].prefetcher = 0;
        slot->chunks[i].pending = false;
      }
    }
    pending_count_ = 0;
    for (Wanted& w : wanted_) w.prefetcher = 0;  // indices into the old list: the waits go on unattributed
    prefetchers_ = std::move(made);
    prefetch_stats_ = std::move(stats);
    throttles_.assign(prefetchers_.size(), Throttle{});
  } else {
    for (auto& p : prefetchers_) p->configure(cfg_);
  }
  balance();
  return Status::kOk;
}

// ---------------------------------------------------------------- stats

StatsSnapshot Pager::stats() const {
  StatsSnapshot s = counters_;
  s.now_ns = mover_.clock().now_ns();
  s.move_failures = std::accumulate(s.move_failures_by_kind.begin(), s.move_failures_by_kind.end(), uint64_t{0});
  const uint64_t caps[3] = {hbm_limit_, host_limit_, cfg_.nvme_capacity};
  for (int t = 0; t < 3; ++t) {
    s.tiers[static_cast<size_t>(t)] = TierStats{caps[t], resident_[static_cast<size_t>(t)],
                                                inbound_[static_cast<size_t>(t)], chunks_in_[static_cast<size_t>(t)]};
  }
  s.prefetchers = prefetch_stats_;
  s.spill_disabled = committed_bytes(Tier::kNvme) + cfg_.chunk_size > spill_ceiling_;  // paused at the ceiling
  s.regions = static_cast<uint32_t>(regions_.size() - free_slots_.size());
  s.contexts = static_cast<uint32_t>(context_names_.size());
  return s;
}

std::string Pager::audit() const {
  std::array<uint64_t, kNumTiers> resident{}, inbound{}, outbound{}, chunks{};
  size_t listed[2] = {0, 0};
  for (const auto& r : regions_) {
    if (!r) continue;
    for (uint32_t i = 0; i < r->nchunks; ++i) {
      const Chunk& c = r->chunks[i];
      const char* why = nullptr;
      if (!check_invariants(c, &why)) return fmt::format("region {} chunk {}: {}", r->id.slot, i, why);
      const uint64_t len = cfg_.chunk_size;
      resident[index(c.tier)] += len;
      ++chunks[index(c.tier)];
      if (c.in_flight()) {
        outbound[index(c.tier)] += len;
        inbound[index(c.target)] += len;
      }
      if (c.in_policy) ++listed[c.tier == Tier::kHbm ? 0 : 1];
      bool should_list = c.resting() && !c.pinned && (c.tier == Tier::kHbm || c.tier == Tier::kHost);
      if (should_list != c.in_policy)
        return fmt::format("region {} chunk {}: evictable={} but in_policy={}", r->id.slot, i, should_list,
                           c.in_policy);
    }
  }
  for (size_t t = 0; t < kNumTiers; ++t) {
    if (resident[t] != resident_[t] || inbound[t] != inbound_[t] || outbound[t] != outbound_[t] ||
        chunks[t] != chunks_in_[t])
      return fmt::format("tier {} counters: resident {} vs {}, inbound {} vs {}, outbound {} vs {}, chunks {} vs {}",
                         to_string(static_cast<Tier>(t)), resident_[t], resident[t], inbound_[t], inbound[t],
                         outbound_[t], outbound[t], chunks_in_[t], chunks[t]);
  }
  if (listed[0] != policies_[0]->size() || listed[1] != policies_[1]->size())
    return fmt::format("policy sizes {} / {} vs listed chunks {} / {}", policies_[0]->size(), policies_[1]->size(),
                       listed[0], listed[1]);
  return "";
}

}  // namespace kvpager
