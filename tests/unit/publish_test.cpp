// Publishing a live pager context into the token store (tools/publish): the
// bytes the program wrote come out of the store byte-exact wherever the pager
// kept them -- including chunks it had spilled into the same store handle --
// a republication replaces the old one whole, and a failed one leaves nothing.
#include <gtest/gtest.h>

#include <vector>

#include "kvpager/sim/sim_device.h"
#include "kvpager/sim/sim_mover.h"
#include "kvpager/store/token_store.h"
#include "publish/publisher.h"
#include "store_test_util.h"

namespace kvpager {
namespace {

std::vector<std::byte> pattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>((i >> 3) * 167 + i + seed));
  return v;
}

// A pager on the simulated device whose NVMe tier is a real token store, as
// in `kvpager demo` and libkvpager.so: publishing reads spilled chunks back
// through the same handle it writes the publication with.
struct Rig {
  explicit Rig(const std::string& dir) {
    cfg.chunk_size = 64 * KiB;
    cfg.sim_hbm_capacity = 512 * KiB;
    cfg.hbm_budget = 512 * KiB;
    cfg.host_capacity = 256 * KiB;
    cfg.prefetchers = 0;
    cfg.store_dir = dir;
    store = std::make_unique<store::TokenStore>(store::StoreOptions::from_config(cfg));
    mover = std::make_unique<SimMover>(cfg, store.get());
    pager = std::make_unique<Pager>(cfg, *mover);
    dev = std::make_unique<SimDevice>(*pager, *mover);
  }
  ~Rig() {
    dev.reset();
    pager.reset();
  }
  void settle() {
    pager->drain();
    pager->tick();
    pager->drain();
  }
  Config cfg;
  std::unique_ptr<store::TokenStore> store;
  std::unique_ptr<SimMover> mover;
  std::unique_ptr<Pager> pager;
  std::unique_ptr<SimDevice> dev;
};

TEST(Publish, AParkedContextSpreadOverEveryTierIsPublishedByteExact) {
  store::testing::TempDir dir;
  Rig rig(dir.path());
  RegionId a = rig.dev->alloc(1 * MiB + 5 * KiB, "agent-7");  // 17 chunks, the last short
  RegionId b = rig.dev->alloc(128 * KiB, "agent-7");
  auto da = pattern(1 * MiB + 5 * KiB, 1), db = pattern(128 * KiB, 2);
  ASSERT_EQ(rig.dev->write(a, 0, da), Status::kOk);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("agent-7"), HintKind::kPark), Status::kOk);
  rig.settle();
  ASSERT_EQ(rig.dev->write(b, 0, db), Status::kOk);
  StatsSnapshot s = rig.pager->stats();
  ASSERT_GT(s.tiers[index(Tier::kNvme)].resident_bytes, 0u) << "the setup must spill part of it";
  ASSERT_GT(s.tiers[index(Tier::kHbm)].resident_bytes, 0u);

  publish::Published p;
  std::string why;
  ASSERT_EQ(publish::publish_context(*rig.pager, *rig.store, "agent-7", {}, &p, &why), Status::kOk) << why;
  std::vector<std::byte> want = da;
  want.insert(want.end(), db.begin(), db.end());
  EXPECT_EQ(p.bytes, want.size());
  EXPECT_EQ(p.chunks, 17u + 2u);

  // Another handle (another process would see the same): the manifest names
  // this process as the owner, and every byte is the program's.
  store::StoreOptions ro;
  ro.dir = dir.path();
  ro.read_only = true;
  store::TokenStore reader(ro);
  std::vector<std::byte> got;
  store::Manifest m;
  ASSERT_EQ(reader.read_manifest("", "agent-7", &m), Status::kOk);
  EXPECT_EQ(m.meta.owner_pid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(m.meta.generation, p.generation);
  ASSERT_EQ(reader.get_context("", "agent-7", &got), Status::kOk);
  EXPECT_TRUE(got == want) << "published bytes differ from what the program wrote";

  // The pager's own state is untouched: the context still reads back intact.
  std::vector<std::byte> back(da.size());
  ASSERT_EQ(rig.dev->read(a, 0, back), Status::kOk);
  EXPECT_TRUE(back == da);
  EXPECT_EQ(rig.pager->audit(), "");
}

TEST(Publish, ARepublicationReplacesTheOldOneWhole) {
  store::testing::TempDir dir;
  Rig rig(dir.path());
  RegionId a = rig.dev->alloc(256 * KiB, "s");
  ASSERT_EQ(rig.dev->write(a, 0, pattern(256 * KiB, 3)), Status::kOk);
  publish::Published first, second;
  ASSERT_EQ(publish::publish_context(*rig.pager, *rig.store, "s", {}, &first), Status::kOk);
  auto v2 = pattern(256 * KiB, 4);
  ASSERT_EQ(rig.dev->write(a, 0, v2), Status::kOk);
  ASSERT_EQ(publish::publish_context(*rig.pager, *rig.store, "s", {}, &second), Status::kOk);
  EXPECT_NE(first.generation, second.generation);
  std::vector<std::byte> got;
  ASSERT_EQ(rig.store->get_context("", "s", &got), Status::kOk);
  EXPECT_TRUE(got == v2) << "the new bytes, never a mix with the old";
  EXPECT_EQ(rig.store->list_contexts().size(), 1u);
}

TEST(Publish, UnknownContextsAndFailedWritesLeaveNothingBehind) {
  store::testing::TempDir dir;
  Rig rig(dir.path());
  RegionId a = rig.dev->alloc(256 * KiB, "s");
  ASSERT_EQ(rig.dev->write(a, 0, pattern(256 * KiB, 5)), Status::kOk);
  std::string why;
  EXPECT_EQ(publish::publish_context(*rig.pager, *rig.store, "nobody", {}, nullptr, &why), Status::kNotFound);
  EXPECT_NE(why.find("nobody"), std::string::npos) << why;

  // A store that refuses writes: the publication fails and nothing appears.
  store::StoreOptions ro;
  ro.dir = dir.path();
  ro.read_only = true;
  store::TokenStore readonly(ro);
  EXPECT_NE(publish::publish_context(*rig.pager, readonly, "s", {}, nullptr, &why), Status::kOk);
  EXPECT_NE(why.find("writing to the store"), std::string::npos) << why;
  EXPECT_TRUE(rig.store->list_contexts().empty());

  // The control reply says the same in the protocol's terms.
  auto handler = publish::control_handler(*rig.store);
  nlohmann::json r = handler(*rig.pager, "nobody");
  EXPECT_EQ(r["ok"], false);
  EXPECT_EQ(r["code"], "not_found") << r.dump();
  auto readonly_handler = publish::control_handler(readonly);
  r = readonly_handler(*rig.pager, "s");
  EXPECT_EQ(r["code"], "failed") << "a store failure is not a bad request: " << r.dump();
  r = handler(*rig.pager, "s");
  EXPECT_EQ(r["ok"], true) << r.dump();
  EXPECT_EQ(r["bytes"], 256 * KiB);
}

// After a drop hint the context's memory holds nothing of it (discarded, or
// whatever the program left there): publishing it would replace a good
// stored copy with that. Refused until the program uses the memory again.
TEST(Publish, ADroppedContextIsNotPublishedOverItsGoodCopyUntilUsedAgain) {
  store::testing::TempDir dir;
  Rig rig(dir.path());
  RegionId a = rig.dev->alloc(256 * KiB, "s");
  const auto v1 = pattern(256 * KiB, 6);
  ASSERT_EQ(rig.dev->write(a, 0, v1), Status::kOk);
  publish::Published first;
  ASSERT_EQ(publish::publish_context(*rig.pager, *rig.store, "s", {}, &first), Status::kOk);
  ASSERT_EQ(rig.pager->hint(rig.pager->find_context("s"), HintKind::kDrop), Status::kOk);
  EXPECT_TRUE(rig.pager->contexts().at(0).dropped);

  std::string why;
  EXPECT_EQ(publish::publish_context(*rig.pager, *rig.store, "s", {}, nullptr, &why), Status::kInvalid);
  EXPECT_NE(why.find("'s' was dropped"), std::string::npos) << why;
  nlohmann::json r = publish::control_handler(*rig.store)(*rig.pager, "s");
  EXPECT_EQ(r["code"], "refused") << r.dump();
  std::vector<std::byte> got;
  ASSERT_EQ(rig.store->get_context("", "s", &got), Status::kOk);
  EXPECT_TRUE(got == v1) << "the earlier publication stays whole";
  ASSERT_EQ(rig.store->list_contexts().size(), 1u);
  EXPECT_EQ(rig.store->list_contexts()[0].meta.generation, first.generation);

  // The program writes the memory again (a new session in it): a new use.
  rig.dev->compute(1000);
  const auto v2 = pattern(256 * KiB, 7);
  ASSERT_EQ(rig.dev->write(a, 0, v2), Status::kOk);
  EXPECT_FALSE(rig.pager->contexts().at(0).dropped);
  ASSERT_EQ(publish::publish_context(*rig.pager, *rig.store, "s", {}), Status::kOk);
  ASSERT_EQ(rig.store->get_context("", "s", &got), Status::kOk);
  EXPECT_TRUE(got == v2);
}

}  // namespace
}  // namespace kvpager
