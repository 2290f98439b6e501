#include <algorithm>
#include <bit>

#include "kvpager/prestage.h"

namespace kvpager {

int ResumePrestager::bucket_of(uint64_t ns) {
  const uint64_t ms = ns / kUnitNs;
  if (ms < 4) return static_cast<int>(ms);
  const int octave = static_cast<int>(std::bit_width(ms)) - 1;  // >= 2
  const int sub = static_cast<int>((ms >> (octave - 2)) & 3);
  return std::min(4 * (octave - 1) + sub, kBuckets - 1);
}

uint64_t ResumePrestager::bucket_low_ns(int b) {
  if (b < 4) return static_cast<uint64_t>(b) * kUnitNs;
  const int octave = b / 4 + 1, sub = b % 4;
  return ((uint64_t{4} + static_cast<uint64_t>(sub)) << (octave - 2)) * kUnitNs;
}

double ResumePrestager::cdf(uint64_t ns) const {
  const int b = bucket_of(ns);
  const auto ub = static_cast<size_t>(b);
  const double lo = static_cast<double>(bucket_low_ns(b)), hi = static_cast<double>(bucket_low_ns(b + 1));
  const double frac = std::clamp((static_cast<double>(ns) - lo) / (hi - lo), 0.0, 1.0);
  return static_cast<double>(cum_[ub]) + frac * static_cast<double>(hist_[ub]);
}

double ResumePrestager::resume_probability(uint64_t age_ns) const {
  if (resumed_ < opt_.min_samples) return 0.0;
  const double at = cdf(age_ns);
  const auto waiting = static_cast<double>(idle_above_[static_cast<size_t>(bucket_of(age_ns))]);
  const double at_risk = static_cast<double>(resumed_) - at + static_cast<double>(expired_) + waiting;
  if (at_risk <= 0.0) return 0.0;
  return std::clamp((cdf(age_ns + opt_.horizon_ns) - at) / at_risk, 0.0, 1.0);
}

void ResumePrestager::refresh_hazard() {
  for (int b = 0; b < kBuckets; ++b) hazard_[static_cast<size_t>(b)] = resume_probability(bucket_low_ns(b));
}

void ResumePrestager::on_turn(const TurnEvent& ev, PrefetchSink&) {
  if (idle_since_.size() <= ev.ctx) idle_since_.resize(size_t{ev.ctx} + 1, kNotIdle);
  uint64_t& since = idle_since_[ev.ctx];
  if (ev.start) {
    if (since != kNotIdle && ev.now_ns >= since) {  // a resumed turn: learn its gap
      const auto b = static_cast<size_t>(bucket_of(ev.now_ns - since));
      ++hist_[b];
      for (size_t i = b + 1; i < cum_.size(); ++i) ++cum_[i];
      ++resumed_;
    }
    since = kNotIdle;
    return;
  }
  since = ev.now_ns;
  parked_.push_back({ev.ctx, ev.now_ns, false});
}

void ResumePrestager::on_tick(uint64_t now_ns, PrefetchSink& sink) {
  auto live = [&](const Parked& p) { return idle_since_[p.ctx] == p.since; };
  // Retire contexts idle for too long (oldest first) and stale entries at the front.
  while (head_ < parked_.size()) {
    const Parked& p = parked_[head_];
    if (live(p)) {
      if (now_ns < p.since || now_ns - p.since <= opt_.max_idle_ns) break;
      idle_since_[p.ctx] = kNotIdle;
      ++expired_;
    }
    ++head_;
  }
  if (head_ > 4096 && head_ * 2 > parked_.size()) {
    parked_.erase(parked_.begin(), parked_.begin() + static_cast<std::ptrdiff_t>(head_));
    head_ = 0;
  }
  if (resumed_ < opt_.min_samples) return;
  // The contexts idle now, by age: they are at risk of resuming too.
  idle_above_.fill(0);
  for (size_t i = head_; i < parked_.size(); ++i) {
    const Parked& p = parked_[i];
    if (now_ns >= p.since && live(p)) ++idle_above_[static_cast<size_t>(bucket_of(now_ns - p.since))];
  }
  for (size_t b = kBuckets; b-- > 0;) idle_above_[b] += idle_above_[b + 1];
  refresh_hazard();
  candidates_.clear();
  for (size_t i = head_; i < parked_.size(); ++i) {
    const Parked& p = parked_[i];
    if (p.staged || now_ns < p.since || !live(p)) continue;
    const double prob = hazard_[static_cast<size_t>(bucket_of(now_ns - p.since))];
    if (prob >= opt_.min_probability) candidates_.emplace_back(prob, i);
  }
  const size_t n = std::min<size_t>(candidates_.size(), opt_.max_per_tick);
  std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(n), candidates_.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t k = 0; k < n; ++k) {
    Parked& p = parked_[candidates_[k].second];
    p.staged = true;
    sink.prefetch_context(p.ctx);
  }
}

}  // namespace kvpager
