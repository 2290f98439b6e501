#include <gtest/gtest.h>
#include "kvpager/pager.h"
#include "kvpager/sim/sim_mover.h"
#include "kvpager/sim/sim_device.h"
#include "kvpager/sim/file_store.h"
using namespace kvpager;
TEST(Smoke, Builds) {
  Config cfg; cfg.chunk_size = 64*KiB; cfg.sim_hbm_capacity = 1*MiB; cfg.store_dir="/tmp";
  FileStore store("/tmp", cfg.chunk_size);
  SimMover mover(cfg, &store);
  Pager pager(cfg, mover);
  SimDevice dev(pager, mover);
  auto r = dev.alloc(4*MiB);
  std::vector<std::byte> buf(4*MiB, std::byte{7});
  ASSERT_EQ(dev.write(r, 0, buf), Status::kOk);
  std::vector<std::byte> out(4*MiB);
  ASSERT_EQ(dev.read(r, 0, out), Status::kOk);
  EXPECT_EQ(buf, out);
  EXPECT_EQ(pager.audit(), "");
}
