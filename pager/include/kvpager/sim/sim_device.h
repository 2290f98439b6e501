// The program's view of the simulated device: allocate regions, read and
// write bytes at offsets, spend compute time. Every chunk a read or write
// touches goes through Pager::access first (a hit, or a fault that waits on
// the virtual clock), then the bytes are copied from the chunk's HBM slot —
// exactly what a kernel on a real card would see.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "kvpager/pager.h"
#include "kvpager/sim/sim_mover.h"

namespace kvpager {

class SimDevice {
 public:
  SimDevice(Pager& pager, SimMover& mover) : pager_(pager), mover_(mover) {}

  // A region at a fresh, chunk-aligned device address.
  RegionId alloc(uint64_t size, std::string_view context = {});
  Status free(RegionId id) { return pager_.remove_region(id); }
  Status write(RegionId id, uint64_t offset, std::span<const std::byte> in);
  Status read(RegionId id, uint64_t offset, std::span<std::byte> out);
  // Touch a whole chunk without copying (a kernel that reads it).
  Status touch(RegionId id, uint32_t chunk, bool write) { return pager_.access(id, chunk, write); }
  // The program computes for ns of virtual time; the pager does its
  // background work meanwhile.
  void compute(uint64_t ns);

  Pager& pager() { return pager_; }
  SimMover& mover() { return mover_; }

 private:
  template <typename Copy>
  Status each_chunk(RegionId id, uint64_t offset, uint64_t len, bool write, Copy&& copy);

  Pager& pager_;
  SimMover& mover_;
  uint64_t next_addr_ = 0x7f0000000000ull;
};

}  // namespace kvpager
