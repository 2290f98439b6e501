// A simulated device, pager and NVMe stand-in wired together for tests.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

#include "kvpager/pager.h"
#include "kvpager/sim/file_store.h"
#include "kvpager/sim/sim_device.h"
#include "kvpager/sim/sim_mover.h"

namespace kvpager::testing {

// A small default configuration: 64 KiB chunks, a 1 MiB card.
inline Config small_config() {
  Config c;
  c.chunk_size = 64 * KiB;
  c.sim_hbm_capacity = 1 * MiB;
  c.hbm_budget = 1 * MiB;
  c.host_capacity = 2 * MiB;
  c.spill_idle_ns = 1'000'000'000;
  c.store_dir = (std::filesystem::temp_directory_path() / ("kvpager-test-" + std::to_string(getpid()))).string();
  return c;
}

struct SimRig {
  explicit SimRig(const Config& cfg, uint64_t store_capacity = 0, WriteTracking writes = WriteTracking::kEveryChunk)
      : dir(cfg.effective_store_dir()),
        store(std::make_unique<FileStore>(cfg.effective_store_dir(), cfg.chunk_size, store_capacity)),
        mover(std::make_unique<SimMover>(cfg, store.get())),
        pager(std::make_unique<Pager>(cfg, *mover, writes)),
        dev(*pager, *mover) {}
  ~SimRig() {
    pager.reset();
    std::error_code ec;
    std::filesystem::remove(dir, ec);  // only if empty: the store's file is already unlinked
  }
  std::string dir;
  std::unique_ptr<FileStore> store;
  std::unique_ptr<SimMover> mover;
  std::unique_ptr<Pager> pager;
  SimDevice dev;
};

}  // namespace kvpager::testing
