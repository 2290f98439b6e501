#include "kvpager/prefetch.h"

#include <algorithm>

namespace kvpager {

namespace {
bool staged(const Chunk& c) { return c.tier == Tier::kHbm || c.target == Tier::kHbm; }
}  // namespace

void SequentialPrefetcher::on_fault(const FaultEvent& ev, PrefetchSink& sink) {
  const Region& r = *ev.region;
  const uint32_t i = ev.index;
  if (last_.size() <= r.id.slot) last_.resize(r.id.slot + 1);  // grows with the region table, not per event
  Last& last = last_[r.id.slot];
  const bool sequential = last.region == r.id.packed() && last.index + 1 == i;
  last = {r.id.packed(), i};

  if (ev.prefetch_hit || sequential) {
    // The stream goes on: keep `depth` chunks staged ahead of it.
    sink.prefetch(r.id, i + 1, depth_);
    return;
  }
  // Density: the largest aligned window around i that is more than half
  // staged gets the rest of it staged.
  uint32_t best_lo = 0, best_len = 0;
  for (uint32_t w = 2; w <= 2 * depth_ && w / 2 < r.nchunks; w <<= 1) {
    uint32_t lo = i & ~(w - 1);
    uint32_t hi = std::min(lo + w, r.nchunks);
    uint32_t n = 0;
    for (uint32_t j = lo; j < hi; ++j) n += staged(r.chunks[j]) ? 1u : 0u;
    if (2 * n > hi - lo) {
      best_lo = lo;
      best_len = hi - lo;
    }
  }
  if (best_len > 0) sink.prefetch(r.id, best_lo, best_len);
}

void CorrelationPrefetcher::configure(const Config& cfg) {
  depth_ = std::clamp<uint32_t>(cfg.prefetch_depth, 1, kMaxDepth);
}

void CorrelationPrefetcher::on_launch(const LaunchEvent& ev, PrefetchSink& sink) {
  // Learn: the launch `depth` launches ago was followed by this one.
  if (launches_ >= depth_) {
    uint64_t before = history_[(launches_ - depth_) % kMaxDepth];
    Entry& e = table_[before & (kTableSize - 1)];
    e.signature = before;
    e.count = static_cast<uint32_t>(std::min(ev.regions.size(), kMaxRegions));
    std::copy_n(ev.regions.begin(), e.count, e.regions);
  }
  history_[launches_ % kMaxDepth] = ev.signature;
  ++launches_;
  // Predict: stage what followed this signature last time.
  const Entry& e = table_[ev.signature & (kTableSize - 1)];
  if (e.signature != ev.signature) return;
  for (uint32_t k = 0; k < e.count; ++k) sink.prefetch_region(e.regions[k]);
}

void HintPrefetcher::on_hint(const HintEvent& ev, PrefetchSink& sink) {
  if (ev.kind == HintKind::kPrefetch) sink.stage_context(ev.ctx);
}

std::vector<std::unique_ptr<Prefetcher>> make_prefetchers(const Config& cfg) {
  std::vector<std::unique_ptr<Prefetcher>> out;
  if (cfg.prefetchers & kPrefetchSequential) out.push_back(std::make_unique<SequentialPrefetcher>(cfg));
  if (cfg.prefetchers & kPrefetchCorrelation) out.push_back(std::make_unique<CorrelationPrefetcher>(cfg));
  if (cfg.prefetchers & kPrefetchHint) out.push_back(std::make_unique<HintPrefetcher>());
  return out;
}

}  // namespace kvpager
