#include "kvpager/stats.h"

#include <numeric>

namespace kvpager {

double StatsSnapshot::prefetch_accuracy() const {
  uint64_t used = 0, wasted = 0;
  for (const auto& p : prefetchers) {
    used += p.used_bytes;
    wasted += p.wasted_bytes;
  }
  return used + wasted ? static_cast<double>(used) / static_cast<double>(used + wasted) : 0.0;
}

uint64_t StatsSnapshot::total_moves() const { return std::accumulate(moves.begin(), moves.end(), uint64_t{0}); }

}  // namespace kvpager
