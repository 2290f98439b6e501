#include "kvpager/sim/sim_device.h"

#include <algorithm>
#include <cstring>

namespace kvpager {

RegionId SimDevice::alloc(uint64_t size, std::string_view context) {
  const uint64_t chunk = pager_.config().chunk_size;
  RegionId id = pager_.add_region(next_addr_, size, context);
  next_addr_ += (size + chunk - 1) / chunk * chunk + chunk;  // a guard chunk between regions
  return id;
}

template <typename Copy>
Status SimDevice::each_chunk(RegionId id, uint64_t offset, uint64_t len, bool write, Copy&& copy) {
  const Region* r = pager_.region(id);
  if (!r || offset > r->size || len > r->size - offset) return Status::kInvalid;
  uint64_t done = 0;
  while (done < len) {
    uint64_t pos = offset + done;
    auto i = static_cast<uint32_t>(pos / r->chunk_size);
    uint64_t within = pos % r->chunk_size;
    uint64_t n = std::min(len - done, r->chunk_len(i) - within);
    Status s = pager_.access(id, i, write);
    if (!ok(s)) return s;
    std::span<std::byte> bytes = mover_.hbm_bytes(id, i, r->chunk_len(i));
    if (bytes.empty()) return Status::kIoError;  // the pager said HBM; the device disagrees
    copy(bytes.subspan(within, n), done);
    done += n;
  }
  return Status::kOk;
}

Status SimDevice::write(RegionId id, uint64_t offset, std::span<const std::byte> in) {
  return each_chunk(id, offset, in.size(), true, [&](std::span<std::byte> dst, uint64_t at) {
    std::memcpy(dst.data(), in.data() + at, dst.size());
  });
}

Status SimDevice::read(RegionId id, uint64_t offset, std::span<std::byte> out) {
  return each_chunk(id, offset, out.size(), false, [&](std::span<std::byte> src, uint64_t at) {
    std::memcpy(out.data() + at, src.data(), src.size());
  });
}

void SimDevice::compute(uint64_t ns) {
  mover_.virtual_clock().advance(ns);
  pager_.tick();
}

}  // namespace kvpager
