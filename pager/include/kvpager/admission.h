// Admission control: whether a chunk may enter a tier that is full, at the
// price of the victim the tier's eviction policy picked. The other half of a
// cache policy: eviction orders what is in, admission filters what comes in.
//
// Only a cache may decline: a chunk that is not admitted anywhere is dropped
// and must be recomputed. That is true of KV blocks (kvpager replay: prefill
// recomputes them) but not of program memory, so the pager itself does not
// consult an admission policy; `kvpager replay` does, for every tier.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "kvpager/chunk.h"

namespace kvpager {

struct AdmitQuery {
  const Chunk* candidate;  // wants to enter `tier`, which is full
  const Chunk* victim;     // what the tier's eviction policy would evict to make room
  Tier tier;
  uint64_t len;       // how much of its chunk the candidate fills (bytes or tokens) ...
  uint64_t full_len;  // ... of this much
};

class AdmissionPolicy {
 public:
  virtual ~AdmissionPolicy() = default;
  virtual std::string_view name() const = 0;
  // Every access of a chunk, hit or miss (feeds frequency estimates).
  virtual void on_access(const Chunk&) {}
  // true: evict the victim and admit the candidate; false: the candidate
  // bypasses this tier (it goes on to the next one down, or is dropped).
  virtual bool admit(const AdmitQuery& q) = 0;
};

// Declines partially filled chunks: the last block of a request holds the end
// of a prompt that the next turn extends, so its id changes and it is almost
// never used again (a one-off tail). Full chunks are always admitted.
class TailAdmission final : public AdmissionPolicy {
 public:
  std::string_view name() const override { return "tail"; }
  bool admit(const AdmitQuery& q) override { return q.len >= q.full_len; }
};

// TinyLFU (Einziger et al., 2017): a count-min sketch estimates how often each
// chunk was accessed recently; the candidate is admitted only if it is at
// least as popular as the victim. 4 rows of 8-bit saturating counters,
// conservative update, all counters halved every 10 x width accesses (aging).
class TinyLfuAdmission final : public AdmissionPolicy {
 public:
  // expected_items: about how many distinct chunks compete (sizes the sketch).
  explicit TinyLfuAdmission(uint64_t expected_items);
  std::string_view name() const override { return "tinylfu"; }
  void on_access(const Chunk& c) override;
  bool admit(const AdmitQuery& q) override;
  uint32_t estimate(const Chunk& c) const;

 private:
  static constexpr int kRows = 4;
  size_t slot(uint64_t h, int row) const;
  std::vector<uint8_t> counters_;  // kRows x width
  size_t width_;
  uint64_t additions_ = 0;
  uint64_t sample_;  // additions between halvings
};

// By name: "none" (nullptr: admit everything), "tail", "tinylfu". Returns
// nullptr with *known = false for an unknown name.
std::unique_ptr<AdmissionPolicy> make_admission(std::string_view name, uint64_t expected_items, bool* known);
std::span<const std::string_view> admission_names();

}  // namespace kvpager
