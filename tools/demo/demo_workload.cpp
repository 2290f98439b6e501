#include "demo_workload.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace kvpager::demo {

namespace {
uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
constexpr uint64_t kHeadBytes = 4096;
}  // namespace

uint64_t region_bytes_for(const DemoOptions& opt, uint64_t hbm_budget, uint64_t chunk_size) {
  const auto total = static_cast<uint64_t>(static_cast<double>(hbm_budget) * opt.kv_factor);
  const uint64_t per_region = total / (uint64_t{std::max(opt.sessions, 1u)} * std::max(opt.layers, 1u));
  return std::max<uint64_t>(1, per_region / chunk_size) * chunk_size;
}

DemoWorkload::DemoWorkload(SimDevice& dev, const DemoOptions& opt)
    : dev_(dev), opt_(opt), chunk_size_(dev.pager().config().chunk_size), rng_(opt.seed) {
  opt_.sessions = std::max(opt_.sessions, 1u);
  opt_.layers = std::max(opt_.layers, 1u);
  if (opt_.park_horizon == 0) opt_.park_horizon = std::max(1u, opt_.sessions / 2);
  region_bytes_ = region_bytes_for(opt_, dev.pager().config().hbm_budget, chunk_size_);
  chunks_per_region_ = static_cast<uint32_t>(region_bytes_ / chunk_size_);
  sessions_.resize(opt_.sessions);
  versions_.assign(size_t{opt_.sessions} * opt_.layers * chunks_per_region_, 0);
  buf_.resize(chunk_size_);
  expect_.resize(chunk_size_);
  for (uint32_t s = 0; s < opt_.sessions; ++s) active_.push_back(s);
  active_.resize(std::max<size_t>(1, opt_.sessions / 2));
}

void DemoWorkload::fill(uint32_t s, uint32_t layer, uint32_t chunk, std::span<std::byte> out) const {
  size_t idx = (size_t{s} * opt_.layers + layer) * chunks_per_region_ + chunk;
  uint64_t key = splitmix(opt_.seed ^ (uint64_t{s} << 40) ^ (uint64_t{layer} << 24) ^ (uint64_t{chunk} << 4) ^
                          (uint64_t{versions_[idx]} << 48));
  for (size_t w = 0; w * 8 < out.size(); ++w) {
    uint64_t v = splitmix(key + w);
    std::memcpy(out.data() + w * 8, &v, std::min<size_t>(8, out.size() - w * 8));
  }
}

void DemoWorkload::write_chunk(uint32_t s, uint32_t layer, uint32_t chunk) {
  fill(s, layer, chunk, buf_);
  if (!ok(dev_.write(sessions_[s].layers[layer], uint64_t{chunk} * chunk_size_, buf_))) ++failed_accesses_;
}

void DemoWorkload::verify_chunk(uint32_t s, uint32_t layer, uint32_t chunk, bool full) {
  std::span<std::byte> got(buf_.data(), full ? chunk_size_ : std::min(kHeadBytes, chunk_size_));
  std::span<std::byte> want(expect_.data(), got.size());
  if (!ok(dev_.read(sessions_[s].layers[layer], uint64_t{chunk} * chunk_size_, got))) {
    ++failed_accesses_;
    return;
  }
  fill(s, layer, chunk, want);
  verified_bytes_ += got.size();
  if (std::memcmp(got.data(), want.data(), got.size()) == 0) return;
  // A `drop` hint from outside (kvpager hint drop, kvpager-fs /control)
  // discards a session's bytes: they read back as zeros, and the server
  // recomputes them, as an engine re-prefills. Only then are zeros expected:
  // the demo itself never drops, so without a discard they are corruption.
  const bool zeros = std::all_of(got.begin(), got.end(), [](std::byte b) { return b == std::byte{0}; });
  if (zeros && dev_.pager().stats().moves[static_cast<size_t>(MoveKind::kDiscard)] > 0) {
    ++recomputed_chunks_;
    write_chunk(s, layer, chunk);
    return;
  }
  ++corrupt_chunks_;
}

bool DemoWorkload::prefill(const std::function<bool(uint32_t)>& between) {
  for (uint32_t s = 0; s < opt_.sessions; ++s) {
    std::string name = "session-" + std::to_string(s);
    for (uint32_t l = 0; l < opt_.layers; ++l) sessions_[s].layers.push_back(dev_.alloc(region_bytes_, name));
    sessions_[s].ctx = dev_.pager().find_context(name);
    for (uint32_t l = 0; l < opt_.layers; ++l)
      for (uint32_t c = 0; c < chunks_per_region_; ++c) write_chunk(s, l, c);
    dev_.compute(opt_.turn_ns);
    if (between && !between(s + 1)) return false;
  }
  return true;
}

uint32_t DemoWorkload::next_scheduled() {
  // Every 20 turns one session of the active set is replaced by another.
  if (turns_ > 0 && turns_ % 20 == 0 && opt_.sessions > active_.size()) {
    std::uniform_int_distribution<uint32_t> any(0, opt_.sessions - 1);
    uint32_t incoming = any(rng_);
    if (std::find(active_.begin(), active_.end(), incoming) == active_.end())
      active_[any(rng_) % active_.size()] = incoming;
  }
  std::uniform_real_distribution<double> coin(0, 1);
  if (coin(rng_) < 0.25) return std::uniform_int_distribution<uint32_t>(0, opt_.sessions - 1)(rng_);
  return active_[rr_++ % active_.size()];
}

bool DemoWorkload::run_turn() {
  if (opt_.turns != 0 && turns_ >= opt_.turns) return false;
  while (upcoming_.size() <= opt_.park_horizon) upcoming_.push_back(next_scheduled());
  const uint32_t s = upcoming_.front();
  upcoming_.pop_front();
  Pager& pager = dev_.pager();

  if (opt_.hints) {
    // The next session's tool result is on its way: stage it now.
    pager.hint(sessions_[upcoming_.front()].ctx, HintKind::kPrefetch);
    sessions_[upcoming_.front()].parked = false;
    // Park sessions not due within the horizon.
    for (uint32_t o = 0; o < opt_.sessions; ++o) {
      bool due = o == s || std::find(upcoming_.begin(), upcoming_.end(), o) != upcoming_.end();
      if (!due && !sessions_[o].parked) {
        pager.hint(sessions_[o].ctx, HintKind::kPark);
        sessions_[o].parked = true;
      }
    }
  }
  sessions_[s].parked = false;

  const uint64_t layer_ns = opt_.turn_ns / opt_.layers;
  for (uint32_t l = 0; l < opt_.layers; ++l) {
    RegionId r = sessions_[s].layers[l];
    pager.launch(l + 1, std::span<const RegionId>(&r, 1));
    for (uint32_t c = 0; c < chunks_per_region_; ++c) verify_chunk(s, l, c, (++reads_ % 8) == 0);
    dev_.compute(layer_ns);
  }
  // Append: the reply's KV rewrites one chunk per layer with a new version.
  uint32_t tail = sessions_[s].appends++ % chunks_per_region_;
  for (uint32_t l = 0; l < opt_.layers; ++l) {
    ++versions_[(size_t{s} * opt_.layers + l) * chunks_per_region_ + tail];
    write_chunk(s, l, tail);
  }
  ++turns_;
  return true;
}

DemoResult DemoWorkload::result() const {
  DemoResult r;
  r.stats = dev_.pager().stats();
  r.turns = turns_;
  r.total_kv_bytes = region_bytes_ * opt_.sessions * opt_.layers;
  r.verified_bytes = verified_bytes_;
  r.corrupt_chunks = corrupt_chunks_;
  r.recomputed_chunks = recomputed_chunks_;
  r.failed_accesses = failed_accesses_;
  return r;
}

}  // namespace kvpager::demo
