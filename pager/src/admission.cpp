#include "kvpager/admission.h"

#include <algorithm>
#include <array>
#include <bit>

namespace kvpager {

namespace {
uint64_t chunk_hash(const Chunk& c) {
  uint64_t h = (uint64_t{c.region} << 32 | c.index) ^ 0x6A09E667F3BCC909ull;
  h = (h ^ (h >> 33)) * 0xFF51AFD7ED558CCDull;
  h = (h ^ (h >> 33)) * 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 33);
}
}  // namespace

TinyLfuAdmission::TinyLfuAdmission(uint64_t expected_items)
    : width_(std::bit_ceil(std::clamp<uint64_t>(expected_items, 1024, uint64_t{1} << 24))),
      sample_(10 * width_) {
  counters_.assign(kRows * width_, 0);
}

size_t TinyLfuAdmission::slot(uint64_t h, int row) const {
  // Four independent-enough indices from one 64-bit hash (double hashing).
  const uint64_t step = (h >> 32) | 1;
  return static_cast<size_t>(row) * width_ + static_cast<size_t>((h + static_cast<uint64_t>(row) * step) & (width_ - 1));
}

uint32_t TinyLfuAdmission::estimate(const Chunk& c) const {
  const uint64_t h = chunk_hash(c);
  uint32_t m = UINT8_MAX;
  for (int r = 0; r < kRows; ++r) m = std::min<uint32_t>(m, counters_[slot(h, r)]);
  return m;
}

void TinyLfuAdmission::on_access(const Chunk& c) {
  const uint64_t h = chunk_hash(c);
  const uint32_t m = estimate(c);
  if (m < UINT8_MAX) {
    for (int r = 0; r < kRows; ++r) {
      uint8_t& v = counters_[slot(h, r)];
      if (v == m) ++v;  // conservative update: raise only the minimum counters
    }
  }
  if (++additions_ >= sample_) {
    for (uint8_t& v : counters_) v = static_cast<uint8_t>(v >> 1);
    additions_ /= 2;
  }
}

bool TinyLfuAdmission::admit(const AdmitQuery& q) { return estimate(*q.candidate) >= estimate(*q.victim); }

namespace {
constexpr std::array<std::string_view, 3> kAdmissionNames{"none", "tail", "tinylfu"};
}

std::span<const std::string_view> admission_names() { return kAdmissionNames; }

std::unique_ptr<AdmissionPolicy> make_admission(std::string_view name, uint64_t expected_items, bool* known) {
  if (known) *known = true;
  if (name == "none" || name.empty()) return nullptr;
  if (name == "tail") return std::make_unique<TailAdmission>();
  if (name == "tinylfu") return std::make_unique<TinyLfuAdmission>(expected_items);
  if (known) *known = false;
  return nullptr;
}

}  // namespace kvpager
