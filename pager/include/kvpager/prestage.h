// Prestaging without hints: during the gap between a conversation's turns,
// stage its context into HBM when its next turn is likely to come soon, so the
// turn finds its prefix there on arrival.
//
// The prestager learns the distribution of idle gaps (turn end -> next turn
// start) of all contexts in a log-spaced histogram. While a context is idle
// for `age`, the chance that its next turn comes within the horizon is the
// hazard
//     p(age) = #gaps in (age, age + horizon] / #contexts that stayed idle > age
// where the contexts at risk are those that resumed after more than `age`,
// those idle longer than max_idle (counted as never resumed) and those idle
// now for more than `age` (still waiting: without them the estimate would
// forget the conversations that never come back). On every
// tick it stages the idle contexts with p >= min_probability, most likely
// first, at most max_per_tick of them, each once per idle period. The
// mechanism (PrefetchSink::prefetch_context) decides whether there is room
// and accounts used and wasted bytes.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "kvpager/prefetch.h"

namespace kvpager {

class ResumePrestager final : public Prefetcher {
 public:
  struct Options {
    uint64_t horizon_ns = 30'000'000'000;     // look this far ahead
    double min_probability = 0.05;            // stage when the next turn is at least this likely
    uint32_t max_per_tick = 4;                // contexts staged per tick at most
    uint64_t max_idle_ns = 1800'000'000'000;  // idle longer: counted as never resumed
    uint64_t min_samples = 16;                // gaps to learn before the first prediction
  };
  ResumePrestager() : ResumePrestager(Options{}) {}
  explicit ResumePrestager(const Options& o) : opt_(o) {}
  std::string_view name() const override { return "prestage"; }
  void on_turn(const TurnEvent& ev, PrefetchSink& sink) override;
  void on_tick(uint64_t now_ns, PrefetchSink& sink) override;

  // The hazard above (with the contexts idle at the last tick); 0 until
  // min_samples gaps were seen.
  double resume_probability(uint64_t age_ns) const;
  uint64_t gaps_seen() const { return resumed_; }
  uint64_t never_resumed() const { return expired_; }

 private:
  // Log-linear histogram over milliseconds: 4 buckets per octave (exact below
  // 4 ms), integer arithmetic only. Bucket 159 ends at 2^40 ms.
  static constexpr int kBuckets = 160;
  static constexpr uint64_t kUnitNs = 1'000'000;  // 1 ms
  static int bucket_of(uint64_t ns);
  static uint64_t bucket_low_ns(int b);
  double cdf(uint64_t ns) const;  // learned gaps <= ns (linear within a bucket)
  void refresh_hazard();
  static constexpr uint64_t kNotIdle = UINT64_MAX;

  struct Parked {
    ContextId ctx;
    uint64_t since;
    bool staged;
  };
  Options opt_;
  std::array<uint64_t, kBuckets> hist_{};
  std::array<uint64_t, kBuckets + 1> cum_{};  // cum_[b] = gaps in buckets < b
  std::array<uint64_t, kBuckets + 1> idle_above_{};  // idle_above_[b] = contexts idle now in buckets >= b
  std::array<double, kBuckets> hazard_{};     // resume_probability at each bucket's low edge
  uint64_t resumed_ = 0;
  uint64_t expired_ = 0;
  std::vector<Parked> parked_;        // in park order; entries whose idle period ended are stale
  size_t head_ = 0;
  std::vector<uint64_t> idle_since_;  // by context: start of its live idle period, or kNotIdle
  std::vector<std::pair<double, size_t>> candidates_;  // scratch, reused
};

}  // namespace kvpager
