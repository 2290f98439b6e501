// The token store in one process: round trips, replacement, the async path,
// contexts, capacity eviction, pins and TTLs, corruption, ENOSPC, fallbacks,
// and the pager running on it.
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <random>
#include <thread>

#include "kvpager/pager.h"
#include "kvpager/sim/sim_device.h"
#include "kvpager/sim/sim_mover.h"
#include "io_engine.h"  // fusefs/store/src: the engine a test wraps
#include "kvpager/store/token_store.h"
#include "store_test_util.h"

using namespace kvpager;
using namespace kvpager::store;
using namespace kvpager::store::testing;

namespace {

StoreOptions opts(const std::string& dir, std::vector<std::string>* log = nullptr) {
  StoreOptions o;
  o.dir = dir;
  o.max_io_bytes = 2 * MiB;
  o.queue_depth = 32;
  if (log) o.log = [log](std::string_view m) { log->emplace_back(m); };
  else o.log = [](std::string_view) {};
  return o;
}

ContextMeta meta(std::string name, uint64_t tokens = 0) {
  ContextMeta m;
  m.name = std::move(name);
  m.token_count = tokens;
  return m;
}

std::string object_file(const std::string& dir, const ObjectKey& k) {
  std::string hex = key_hex(k);
  return dir + "/objects/" + hex.substr(0, 2) + "/" + hex;
}

// Moves a context's last use (its manifest's mtime) into the past: tests
// stage LRU order and TTL expiry without sleeping.
void age_context(const std::string& dir, const std::string& name, int seconds_ago) {
  const std::string file = dir + "/contexts/" + key_hex(context_id("", name)) + ".m";
  const timespec t[2] = {{0, UTIME_OMIT}, {time(nullptr) - seconds_ago, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, file.c_str(), t, 0), 0) << file;
}

// The simulated device and the pager with a TokenStore as the NVMe tier.
struct PagerOnStore {
  Config cfg;
  TokenStore store;
  SimMover mover;
  Pager pager;
  SimDevice dev;
  PagerOnStore(const Config& c, StoreOptions o)
      : cfg(c), store(with_chunk(std::move(o), c)), mover(cfg, &store), pager(cfg, mover), dev(pager, mover) {}
  static StoreOptions with_chunk(StoreOptions o, const Config& c) {
    o.max_io_bytes = c.chunk_size;
    return o;
  }
};

Config small_device(uint64_t chunk, uint64_t hbm, uint64_t host) {
  Config cfg;
  cfg.chunk_size = chunk;
  cfg.sim_hbm_capacity = hbm;
  cfg.host_capacity = host;
  cfg.spill_idle_ns = 0;  // idle contexts may spill at once
  return cfg;
}

size_t count_containing(const std::vector<std::string>& log, std::string_view what) {
  return static_cast<size_t>(std::count_if(log.begin(), log.end(), [&](const std::string& l) {
    return l.find(what) != std::string::npos;
  }));
}

}  // namespace

// --------------------------------------------------------------- objects

TEST(TokenStore, PrivateObjectsRoundTripAtOddSizes) {
  TempDir d;
  TokenStore s(opts(d.path()));
  const size_t sizes[] = {1, 2, 511, 512, 4095, 4096, 4097, 65537, 2 * MiB - 1, 2 * MiB, 2 * MiB + 1, 7 * MiB + 3};
  for (size_t i = 0; i < std::size(sizes); ++i) {
    auto data = pattern(i, sizes[i]);
    ObjectKey k = chunk_key("", "odd", i);
    ASSERT_EQ(s.put(k, data), Status::kOk) << sizes[i];
    std::vector<std::byte> out(sizes[i]);
    ASSERT_EQ(s.get(k, out), Status::kOk) << sizes[i];
    EXPECT_EQ(out, data) << sizes[i];
  }
  StoreStats st = s.stats();
  EXPECT_EQ(st.puts, std::size(sizes));
  EXPECT_EQ(st.gets, std::size(sizes));
  EXPECT_EQ(st.corruption_events, 0u);
  EXPECT_TRUE(st.direct_io) << "ext4 under /var/tmp takes O_DIRECT";
  EXPECT_EQ(st.engine, "io_uring");
}

TEST(TokenStore, GetOfAbsentKeyOrWrongSizeIsAStatusNotData) {
  TempDir d;
  TokenStore s(opts(d.path()));
  std::vector<std::byte> out(10, std::byte{1});
  EXPECT_EQ(s.get(chunk_key("", "none", 0), out), Status::kNotFound);
  ASSERT_EQ(s.put(chunk_key("", "x", 0), pattern(1, 100)), Status::kOk);
  EXPECT_EQ(s.get(chunk_key("", "x", 0), out), Status::kInvalid);
  EXPECT_EQ(s.erase(chunk_key("", "none", 0)), Status::kNotFound);
  EXPECT_EQ(s.stats().misses, 1u);
}

// The pager's mutable chunks: the same key spilled again with other bytes.
TEST(TokenStore, PutUnderAnExistingKeyReplacesWholeAndAReaderInFlightKeepsTheOldBytes) {
  TempDir d;
  TokenStore s(opts(d.path()));
  ObjectKey k = chunk_key("", "chunk", 0);
  auto v1 = pattern(1, 3 * MiB + 5);  // larger than one buffer: streamed
  auto v2 = pattern(2, 1 * MiB + 7);
  ASSERT_EQ(s.put(k, v1), Status::kOk);
  const uint64_t used1 = s.used_bytes();

  // A get submitted before the replacement has opened the old file: it must
  // deliver v1 whole even though v2 is published meanwhile.
  std::vector<std::byte> old_out(v1.size());
  ASSERT_EQ(s.submit_get(1, k, old_out), Status::kOk);
  ASSERT_EQ(s.put(k, v2), Status::kOk);
  TokenStore::Completion c[4];
  size_t n = 0;
  while (n == 0) n = s.wait(c);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(c[0].status, Status::kOk);
  EXPECT_EQ(old_out, v1);

  std::vector<std::byte> out(v2.size());
  ASSERT_EQ(s.get(k, out), Status::kOk);
  EXPECT_EQ(out, v2);
  EXPECT_EQ(s.used_bytes() - s.stats().spare_bytes, s.file_bytes(v2.size())) << "the replaced object is not counted";
  EXPECT_GT(used1, 0u);
  // Same bytes again: idempotent.
  ASSERT_EQ(s.put(k, v2), Status::kOk);
  ASSERT_EQ(s.get(k, out), Status::kOk);
  EXPECT_EQ(out, v2);
}

// A freed file is reused for a later object -- but never while a get of the
// object it held may still be reading it.
TEST(TokenStore, FreedFilesAreReusedButNotUnderAReader) {
  TempDir d;
  TokenStore s(opts(d.path()));
  const ObjectKey a = chunk_key("", "a", 0), b = chunk_key("", "b", 0), c = chunk_key("", "c", 0);
  ASSERT_EQ(s.put(a, pattern(1, 200000)), Status::kOk);
  ASSERT_EQ(s.put(b, pattern(2, 200000)), Status::kOk);
  ASSERT_EQ(s.erase(b), Status::kOk);
  EXPECT_EQ(s.stats().spare_files, 1u);
  // A get of a is in flight (its completion not yet collected): erasing a
  // must drop its file, not keep it for reuse.
  std::vector<std::byte> out(200000);
  ASSERT_EQ(s.submit_get(7, a, out), Status::kOk);
  ASSERT_EQ(s.erase(a), Status::kOk);
  EXPECT_EQ(s.stats().spare_files, 1u);
  TokenStore::Completion done[2];
  ASSERT_EQ(s.wait(done), 1u);
  EXPECT_EQ(done[0].status, Status::kOk);
  EXPECT_EQ(out, pattern(1, 200000)) << "the reader got the bytes it asked for";
  // The spare holds the next object; replacing it frees the old file again.
  ASSERT_EQ(s.put(c, pattern(3, 200000)), Status::kOk);
  EXPECT_EQ(s.stats().spare_files, 0u);
  ASSERT_EQ(s.put(c, pattern(4, 200000)), Status::kOk);
  EXPECT_EQ(s.stats().spare_files, 1u);
  ASSERT_EQ(s.get(c, out), Status::kOk);
  EXPECT_EQ(out, pattern(4, 200000));
  EXPECT_EQ(s.used_bytes(), 2 * s.file_bytes(200000));
  EXPECT_EQ(files_under(d.sub("writers")).size(), 3u) << "lock, c, one spare";
}

TEST(TokenStore, PrivateObjectsLeaveWithTheirHandle) {
  TempDir d;
  {
    TokenStore s(opts(d.path()));
    ASSERT_EQ(s.put(chunk_key("", "p", 0), pattern(1, 5000)), Status::kOk);
    EXPECT_GT(s.used_bytes(), 5000u);
    EXPECT_EQ(files_under(d.sub("writers")).size(), 2u) << "lock + the object";
  }
  EXPECT_TRUE(files_under(d.sub("writers")).empty());
  TokenStore s2(opts(d.path()));
  EXPECT_EQ(s2.used_bytes(), 0u);
}

TEST(TokenStore, AsyncPathKeepsTheQueueFullAndReturnsEveryTag) {
  TempDir d;
  TokenStore s(opts(d.path()));
  const uint64_t n = 200;
  // Zero-copy puts from the store's buffers, then zero-copy gets.
  uint64_t next = 0, done = 0;
  TokenStore::Completion c[64];
  std::vector<bool> seen(n, false);
  while (done < n) {
    while (next < n) {
      TokenStore::Buffer b = s.acquire_buffer();
      if (!b.valid()) break;
      const size_t len = 100 * 1024 + next;  // odd sizes
      auto p = pattern(next, len);
      std::memcpy(b.data, p.data(), len);
      ASSERT_EQ(s.submit_put(next, chunk_key("", "async", next), b, len), Status::kOk);
      ++next;
    }
    EXPECT_LE(s.pending(), 32u);
    s.flush();
    size_t got = s.wait(c);
    ASSERT_GT(got, 0u);
    for (size_t i = 0; i < got; ++i) {
      ASSERT_EQ(c[i].status, Status::kOk);
      ASSERT_LT(c[i].tag, n);
      EXPECT_FALSE(seen[c[i].tag]);
      seen[c[i].tag] = true;
      ++done;
    }
  }
  next = done = 0;
  while (done < n) {
    while (next < n) {
      TokenStore::Buffer b = s.acquire_buffer();
      if (!b.valid()) break;
      ASSERT_EQ(s.submit_get(next, chunk_key("", "async", next), b), Status::kOk);
      ++next;
    }
    size_t got = s.wait(c);
    for (size_t i = 0; i < got; ++i) {
      ASSERT_EQ(c[i].status, Status::kOk);
      const size_t len = 100 * 1024 + c[i].tag;
      ASSERT_EQ(c[i].bytes, len);
      auto p = pattern(c[i].tag, len);
      EXPECT_EQ(std::memcmp(c[i].buffer.data, p.data(), len), 0) << c[i].tag;
      s.release_buffer(c[i].buffer);
      ++done;
    }
  }
  EXPECT_EQ(s.pending(), 0u);
  // With every buffer lent out, a submit says so instead of blocking.
  std::vector<TokenStore::Buffer> all;
  for (auto b = s.acquire_buffer(); b.valid(); b = s.acquire_buffer()) all.push_back(b);
  EXPECT_EQ(all.size(), 32u);
  EXPECT_EQ(s.submit_put(1, chunk_key("", "x", 0), pattern(1, 10)), Status::kAgain);
  EXPECT_EQ(s.put(chunk_key("", "x", 0), pattern(1, 10)), Status::kBusy);
  for (auto b : all) s.release_buffer(b);
  EXPECT_EQ(s.put(chunk_key("", "x", 0), pattern(1, 10)), Status::kOk);
}

// --------------------------------------------------------------- contexts

TEST(TokenStore, RandomContextsRoundTripFromOneByteUp) {
  TempDir d;
  TokenStore s(opts(d.path()));
  std::mt19937_64 rng(42);
  std::vector<std::pair<std::string, std::vector<std::byte>>> all;
  const size_t fixed[] = {0, 1, 2, 4095, 4097, 2 * MiB, 2 * MiB + 1, 9 * MiB + 17};
  for (size_t i = 0; i < std::size(fixed) + 12; ++i) {
    size_t n = i < std::size(fixed) ? fixed[i] : std::uniform_int_distribution<size_t>(1, 12 * MiB)(rng);
    std::string name = "ctx-" + std::to_string(i);
    auto data = pattern(i + 100, n);
    ASSERT_EQ(s.put_context(meta(name, n / 4), data), Status::kOk) << n;
    all.emplace_back(name, std::move(data));
  }
  for (const auto& [name, data] : all) {
    std::vector<std::byte> out;
    Manifest m;
    ASSERT_EQ(s.read_manifest("", name, &m), Status::kOk);
    EXPECT_EQ(m.total_bytes(), data.size());
    ASSERT_EQ(s.get_context("", name, &out), Status::kOk) << name;
    EXPECT_EQ(out, data) << name;
  }
  // A second handle rebuilds the same picture from the directory.
  TokenStore again(opts(d.path()));
  auto list = again.list_contexts();
  ASSERT_EQ(list.size(), all.size());
  for (const auto& e : list) EXPECT_EQ(e.missing_chunks, 0u) << e.meta.name;
  EXPECT_EQ(again.used_bytes(), s.used_bytes());
  std::vector<std::byte> out;
  ASSERT_EQ(again.get_context("", all.back().first, &out), Status::kOk);
  EXPECT_EQ(out, all.back().second);
}

TEST(TokenStore, OneGibibyteContextRoundTrips) {
  TempDir d;
  TokenStore s(opts(d.path()));
  const size_t n = scale_down(1 * GiB, 16) + 12345;  // odd: the last chunk is short
  auto data = pattern(7, n);
  ASSERT_EQ(s.put_context(meta("big"), data), Status::kOk);
  std::vector<std::byte> out;
  out.reserve(n);
  ASSERT_EQ(s.get_context("", "big", &out), Status::kOk);
  ASSERT_EQ(out.size(), n);
  EXPECT_TRUE(out == data);
}

TEST(TokenStore, ContextMetadataIsKeptAndNamesAreScopedByNamespace) {
  TempDir d;
  TokenStore s(opts(d.path()));
  ContextMeta m = meta("chat", 4096);
  m.ns = "model-a";
  m.ttl_ns = 3'600'000'000'000ull;
  ASSERT_EQ(s.put_context(m, pattern(1, 1000)), Status::kOk);
  ContextMeta m2 = meta("chat", 1);
  m2.ns = "model-b";
  ASSERT_EQ(s.put_context(m2, pattern(2, 2000)), Status::kOk);

  Manifest got;
  ASSERT_EQ(s.read_manifest("model-a", "chat", &got), Status::kOk);
  EXPECT_EQ(got.meta.token_count, 4096u);
  EXPECT_EQ(got.meta.ttl_ns, m.ttl_ns);
  EXPECT_EQ(got.meta.owner_pid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(got.meta.owner_uid, static_cast<uint32_t>(getuid()));
  EXPECT_GT(got.meta.created_ns, 0u);
  std::vector<std::byte> out;
  ASSERT_EQ(s.get_context("model-b", "chat", &out), Status::kOk);
  EXPECT_EQ(out, pattern(2, 2000));
  EXPECT_EQ(s.get_context("", "chat", &out), Status::kNotFound);
}

TEST(TokenStore, RepublishingANameSwapsWholeAndDropsTheOldObjects) {
  TempDir d;
  TokenStore s(opts(d.path()));
  ASSERT_EQ(s.put_context(meta("c"), pattern(1, 5 * MiB)), Status::kOk);
  Manifest old;
  ASSERT_EQ(s.read_manifest("", "c", &old), Status::kOk);
  ASSERT_EQ(s.put_context(meta("c"), pattern(2, 3 * MiB)), Status::kOk);
  std::vector<std::byte> out;
  ASSERT_EQ(s.get_context("", "c", &out), Status::kOk);
  EXPECT_EQ(out, pattern(2, 3 * MiB));
  for (const auto& ch : old.chunks) EXPECT_FALSE(std::filesystem::exists(object_file(d.path(), ch.key)));
  EXPECT_EQ(files_under(d.sub("objects")).size(), 2u);
  EXPECT_EQ(s.used_bytes(), 2 * s.file_bytes(2 * MiB) - s.file_bytes(2 * MiB) + s.file_bytes(1 * MiB));
}

// A context replaced while it is read loses its old chunks with their
// generation. That is a race, not damage: with begin the read starts again
// from the new publication (the sink never ends up with two publications'
// bytes), kAgain once it raced on every attempt or when it cannot start
// again; only a chunk missing from the current publication is kNotFound.
// Deterministic: one chunk in flight at a time, and the sink republishes
// (through another handle, as another process would) after chunk 0.
TEST(TokenStore, AContextReplacedWhileItIsReadIsReadAgainNotCalledIncomplete) {
  TempDir d;
  StoreOptions ro = opts(d.path());
  ro.queue_depth = 1;  // chunk 1 is opened only after the sink had chunk 0
  TokenStore reader(ro);
  TokenStore writer(opts(d.path()));
  uint64_t seed = 1;
  ASSERT_EQ(writer.put_context(meta("race"), pattern(seed, 3000), 1000), Status::kOk);
  int replace = 1;  // how many more times the sink republishes
  int begins = 0;
  std::vector<std::byte> got;
  auto sink = [&](uint64_t i, std::span<const std::byte> p) {
    got.insert(got.end(), p.begin(), p.end());
    if (i == 0 && replace > 0) {
      --replace;
      EXPECT_EQ(writer.put_context(meta("race"), pattern(++seed, 3000), 1000), Status::kOk);
    }
    return Status::kOk;
  };
  auto begin = [&](const Manifest&) {
    ++begins;
    got.clear();
    return Status::kOk;
  };
  Manifest used;
  EXPECT_EQ(reader.get_context("", "race", sink, &used, begin), Status::kOk);
  EXPECT_EQ(begins, 2);
  EXPECT_EQ(got, pattern(seed, 3000)) << "the new publication, whole";

  replace = 100;  // replaced on every attempt
  begins = 0;
  EXPECT_EQ(reader.get_context("", "race", sink, &used, begin), Status::kAgain);
  EXPECT_EQ(begins, TokenStore::kContextReadAttempts);

  replace = 1;  // without begin it cannot start again
  EXPECT_EQ(reader.get_context("", "race", sink), Status::kAgain);

  // Damage: a chunk of the current publication is gone.
  replace = 0;
  ASSERT_EQ(reader.read_manifest("", "race", &used), Status::kOk);
  ASSERT_TRUE(std::filesystem::remove(object_file(d.path(), used.chunks[1].key)));
  begins = 0;
  EXPECT_EQ(reader.get_context("", "race", sink, nullptr, begin), Status::kNotFound);
  EXPECT_EQ(begins, 1) << "not read again: nothing replaced it";

  // Removed while read: tried again, then no such context (kNotFound, and no
  // manifest: `store get` says "no context", not "incomplete").
  ASSERT_EQ(writer.put_context(meta("race"), pattern(++seed, 3000), 1000), Status::kOk);
  auto removing = [&](uint64_t i, std::span<const std::byte>) {
    if (i == 0) {
      EXPECT_EQ(writer.remove_context("", "race"), Status::kOk);
    }
    return Status::kOk;
  };
  begins = 0;
  EXPECT_EQ(reader.get_context("", "race", removing, nullptr, begin), Status::kNotFound);
  EXPECT_EQ(begins, 1);
  EXPECT_EQ(reader.read_manifest("", "race", &used), Status::kNotFound);
}

TEST(TokenStore, UncommittedContextLeavesNothing) {
  TempDir d;
  TokenStore s(opts(d.path()));
  {
    auto w = s.begin_context(meta("draft"));
    ASSERT_EQ(w->append(pattern(1, 3 * MiB)), Status::kOk);
    ASSERT_EQ(w->append(pattern(2, 100)), Status::kOk);
  }  // dropped without commit
  Manifest m;
  EXPECT_EQ(s.read_manifest("", "draft", &m), Status::kNotFound);
  EXPECT_TRUE(files_under(d.sub("objects")).empty());
  EXPECT_EQ(s.used_bytes(), 0u);
}

TEST(TokenStore, ContentKeysAreStoredOnce) {
  TempDir d;
  TokenStore s(opts(d.path()));
  auto shared = pattern(9, 300000);
  ObjectKey k = chunk_key("content", "prefix-hash", 0);
  for (const char* name : {"a", "b"}) {
    auto w = s.begin_context(meta(name));
    ASSERT_EQ(w->append(shared, &k), Status::kOk);
    ASSERT_EQ(w->append(pattern(static_cast<uint64_t>(name[0]), 1000)), Status::kOk);
    ASSERT_EQ(w->commit(), Status::kOk);
  }
  EXPECT_EQ(files_under(d.sub("objects")).size(), 3u);
  ASSERT_EQ(s.remove_context("", "a"), Status::kOk);
  EXPECT_TRUE(std::filesystem::exists(object_file(d.path(), k))) << "b still names it";
  std::vector<std::byte> out;
  ASSERT_EQ(s.get_context("", "b", &out), Status::kOk);
  EXPECT_EQ(std::vector<std::byte>(out.begin(), out.begin() + 300000), shared);
  ASSERT_EQ(s.remove_context("", "b"), Status::kOk);
  EXPECT_TRUE(files_under(d.sub("objects")).empty());
  EXPECT_EQ(s.remove_context("", "b"), Status::kNotFound);
}

// --------------------------------------------------------------- capacity, pins, TTL

TEST(TokenStore, OverCapacityTheLeastRecentlyUsedUnpinnedContextsGoWhole) {
  TempDir d;
  StoreOptions o = opts(d.path());
  const uint64_t ctx_bytes = 2 * MiB;
  TokenStore probe(o);
  const uint64_t per = probe.file_bytes(ctx_bytes);
  o.capacity_bytes = 4 * per;  // room for four contexts
  TokenStore s(o);
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(s.put_context(meta("c" + std::to_string(i)), pattern(static_cast<uint64_t>(i), ctx_bytes)), Status::kOk);
    age_context(d.path(), "c" + std::to_string(i), 100 - i);  // c0 oldest ... c3 newest
  }
  // Use c0 (now most recent), pin c1: c2 then c3 are the next victims.
  std::vector<std::byte> out;
  ASSERT_EQ(s.get_context("", "c0", &out), Status::kOk);
  ASSERT_EQ(s.set_pinned("", "c1", true), Status::kOk);
  ASSERT_EQ(s.put_context(meta("c4"), pattern(4, ctx_bytes)), Status::kOk);
  auto names = [&] {
    std::vector<std::string> n;
    for (const auto& e : s.list_contexts()) n.push_back(e.meta.name);
    return n;
  };
  EXPECT_EQ(names(), (std::vector<std::string>{"c0", "c1", "c3", "c4"}));
  ASSERT_EQ(s.put_context(meta("c5"), pattern(5, ctx_bytes)), Status::kOk);
  EXPECT_EQ(names(), (std::vector<std::string>{"c0", "c1", "c4", "c5"}));
  EXPECT_EQ(s.stats().contexts_evicted, 2u);
  EXPECT_LE(s.used_bytes(), o.capacity_bytes);
  // Survivors are intact.
  for (const char* n : {"c0", "c1", "c4", "c5"}) {
    ASSERT_EQ(s.get_context("", n, &out), Status::kOk) << n;
    EXPECT_EQ(out, pattern(static_cast<uint64_t>(n[1] - '0'), ctx_bytes)) << n;
  }
  // Everything pinned: nothing can go, a new context is refused whole.
  for (const char* n : {"c0", "c4", "c5"}) ASSERT_EQ(s.set_pinned("", n, true), Status::kOk);
  EXPECT_EQ(s.put_context(meta("c6"), pattern(6, ctx_bytes)), Status::kNoSpace);
  Manifest m;
  EXPECT_EQ(s.read_manifest("", "c6", &m), Status::kNotFound);
  EXPECT_EQ(files_under(d.sub("objects")).size(), 4u);
  // A spill of the pager finds no room either, and says so.
  EXPECT_EQ(s.put(chunk_key("", "spill", 0), pattern(1, ctx_bytes)), Status::kNoSpace);
}

// A context is written as many chunk puts in flight at once (queue depth
// 32): each must count what the others will add, or together they pass the
// capacity check that each passed alone (`store put` once stored 19 MiB under
// a 12 MiB nvme_capacity, and 14 MiB after evicting one context of three).
TEST(TokenStore, PutsInFlightCountAgainstTheCapacity) {
  TempDir d;
  StoreOptions o = opts(d.path());
  TokenStore probe(o);
  const uint64_t chunk_file = probe.file_bytes(o.max_io_bytes);
  o.capacity_bytes = 6 * chunk_file;
  TokenStore s(o);
  // Larger than the whole capacity, in chunks each of which fits alone.
  EXPECT_EQ(s.put_context(meta("huge"), pattern(1, 10 * o.max_io_bytes)), Status::kNoSpace);
  Manifest m;
  EXPECT_EQ(s.read_manifest("", "huge", &m), Status::kNotFound);
  EXPECT_LE(s.used_bytes(), o.capacity_bytes);
  // Three contexts of two chunks fill it; a fourth makes room by evicting
  // the least recently used, as many as it needs, and ends within capacity.
  for (int i = 0; i < 3; ++i) {
    const std::string name = "c" + std::to_string(i);
    ASSERT_EQ(s.put_context(meta(name), pattern(static_cast<uint64_t>(i), 2 * o.max_io_bytes)), Status::kOk);
    age_context(d.path(), name, 100 - i);
  }
  ASSERT_EQ(s.put_context(meta("big"), pattern(9, 4 * o.max_io_bytes)), Status::kOk);
  std::vector<std::string> names;
  for (const auto& e : s.list_contexts()) names.push_back(e.meta.name);
  EXPECT_EQ(names, (std::vector<std::string>{"big", "c2"}));
  EXPECT_EQ(s.stats().contexts_evicted, 2u);
  EXPECT_LE(s.used_bytes(), o.capacity_bytes);
}

TEST(TokenStore, ExpiredContextsGoButPinnedOnesStay) {
  TempDir d;
  TokenStore s(opts(d.path()));
  const uint64_t minute = 60'000'000'000ull;
  ContextMeta a = meta("short");
  a.ttl_ns = minute;
  ContextMeta b = meta("pinned");
  b.ttl_ns = minute;
  b.pinned = true;
  ContextMeta c = meta("long");
  c.ttl_ns = 60 * minute;
  for (const auto& m : {a, b, c}) ASSERT_EQ(s.put_context(m, pattern(1, 1000)), Status::kOk);
  EXPECT_EQ(s.expire(), 0u);
  for (const char* n : {"short", "pinned", "long"}) age_context(d.path(), n, 120);  // idle for two minutes
  EXPECT_EQ(s.expire(), 1u);
  std::vector<std::byte> out;
  EXPECT_EQ(s.get_context("", "short", &out), Status::kNotFound);
  EXPECT_EQ(s.get_context("", "pinned", &out), Status::kOk);
  EXPECT_EQ(s.get_context("", "long", &out), Status::kOk);
  EXPECT_EQ(s.stats().contexts_expired, 1u);
  // Unpinned and idle, it expires too -- here at the next open.
  ASSERT_EQ(s.set_pinned("", "pinned", false), Status::kOk);
  age_context(d.path(), "pinned", 120);
  TokenStore again(opts(d.path()));
  ASSERT_EQ(again.list_contexts().size(), 1u);
  EXPECT_EQ(again.list_contexts()[0].meta.name, "long");
}

TEST(TokenStore, AReadIsAnAccessThatDefersTheTtl) {
  TempDir d;
  TokenStore s(opts(d.path()));
  for (const char* n : {"read", "unread"}) {
    ContextMeta m = meta(n);
    m.ttl_ns = 60'000'000'000ull;
    ASSERT_EQ(s.put_context(m, pattern(1, 1000)), Status::kOk);
    age_context(d.path(), n, 50);  // 10 s left
  }
  std::vector<std::byte> out;
  ASSERT_EQ(s.get_context("", "read", &out), Status::kOk);  // a use: a full minute again
  age_context(d.path(), "unread", 70);
  EXPECT_EQ(s.expire(), 1u);
  EXPECT_EQ(s.get_context("", "read", &out), Status::kOk);
  EXPECT_EQ(s.get_context("", "unread", &out), Status::kNotFound);
  // Changing a setting is not a use: the idle time is kept.
  age_context(d.path(), "read", 30);
  ASSERT_EQ(s.set_ttl("", "read", 20'000'000'000ull), Status::kOk);
  EXPECT_EQ(s.expire(), 1u);
}

// --------------------------------------------------------------- corruption

TEST(TokenStore, FlippedBytesAreDetectedCountedAndNeverServed) {
  TempDir d;
  std::vector<std::string> log;
  TokenStore s(opts(d.path(), &log));
  // A published context of three chunks.
  auto data = pattern(3, 5 * MiB);
  ASSERT_EQ(s.put_context(meta("victim"), data), Status::kOk);
  Manifest m;
  ASSERT_EQ(s.read_manifest("", "victim", &m), Status::kOk);
  ASSERT_EQ(m.chunks.size(), 3u);
  // Payload byte of chunk 1, header byte of chunk 2.
  ASSERT_TRUE(flip_byte(object_file(d.path(), m.chunks[1].key), 4096 + 1000));
  std::vector<std::byte> out;
  EXPECT_EQ(s.get_context("", "victim", &out), Status::kCorrupt);
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(s.stats().corruption_events, 1u);
  EXPECT_EQ(count_containing(log, "corrupt object"), 1u);

  // A private object: every byte position class.
  ObjectKey k = chunk_key("", "p", 0);
  auto p = pattern(4, 10000);
  for (uint64_t off : {uint64_t{20}, uint64_t{4096}, uint64_t{4096 + 9999}}) {
    ASSERT_EQ(s.put(k, p), Status::kOk);
    std::string file = d.sub("writers/" + s.writer_id() + "/" + key_hex(k));
    ASSERT_TRUE(flip_byte(file, off));
    std::vector<std::byte> o(p.size(), std::byte{0x77});
    EXPECT_EQ(s.get(k, o), Status::kCorrupt) << off;
    EXPECT_EQ(o, std::vector<std::byte>(p.size())) << "nothing of it is handed out";
  }
  // Truncated.
  ASSERT_EQ(s.put(k, p), Status::kOk);
  ASSERT_EQ(truncate(d.sub("writers/" + s.writer_id() + "/" + key_hex(k)).c_str(), 4096 + 5000), 0);
  std::vector<std::byte> o(p.size());
  EXPECT_EQ(s.get(k, o), Status::kCorrupt);
  EXPECT_EQ(s.stats().corruption_events, 5u);

  // fsck finds the bad object and the context it breaks; repair removes both.
  FsckReport r = s.fsck(false);
  EXPECT_EQ(r.bad_objects, 1u);
  EXPECT_FALSE(r.clean());
  r = s.fsck(true);
  EXPECT_GE(r.removed, 3u) << "bad object, manifest, and the context's other objects";
  EXPECT_TRUE(s.fsck(false).clean());
  EXPECT_EQ(s.get_context("", "victim", &out), Status::kNotFound);
  EXPECT_TRUE(files_under(d.sub("objects")).empty());
}

TEST(TokenStore, ABadManifestReadsAsCorruptAndFsckRemovesIt) {
  TempDir d;
  std::vector<std::string> log;
  TokenStore s(opts(d.path(), &log));
  ASSERT_EQ(s.put_context(meta("m"), pattern(1, 1000)), Status::kOk);
  ASSERT_EQ(s.put_context(meta("fine"), pattern(2, 1000)), Status::kOk);
  std::string file = d.sub("contexts/" + key_hex(context_id("", "m")) + ".m");
  ASSERT_TRUE(flip_byte(file, 40));
  std::vector<std::byte> out;
  EXPECT_EQ(s.get_context("", "m", &out), Status::kCorrupt);
  TokenStore again(opts(d.path(), &log));
  EXPECT_EQ(again.list_contexts().size(), 1u);
  FsckReport r = again.fsck(true);
  EXPECT_EQ(r.bad_manifests, 1u);
  EXPECT_EQ(r.orphan_objects, 0u);
  EXPECT_EQ(r.young_orphans, 1u) << "m's object is now named by nothing (young: kept)";
  EXPECT_EQ(r.left_alone.size(), 1u);
  ASSERT_EQ(again.get_context("", "fine", &out), Status::kOk);
}

// Buffers that cannot be allocated (1 TiB of them here: 4096 x 256M) are
// "out of memory", with the reason logged once; they were "I/O error".
TEST(TokenStore, BuffersThatCannotBeAllocatedAreOutOfMemory) {
  TempDir d;
  std::vector<std::string> log;
  StoreOptions o = opts(d.path(), &log);
  o.queue_depth = 4096;
  o.max_io_bytes = 256 * MiB;
  TokenStore s(o);
  const auto data = pattern(1, 100);
  const Status first = s.put(chunk_key("", "x", 0), data);
  if (first == Status::kOk) GTEST_SKIP() << "this kernel maps 1 TiB (vm.overcommit_memory = 1?)";
  EXPECT_EQ(first, Status::kNoMemory);
  EXPECT_EQ(s.put_context(meta("c"), data), Status::kNoMemory);
  EXPECT_EQ(count_containing(log, "cannot allocate"), 1u);
  EXPECT_EQ(to_string(Status::kNoMemory), "out of memory");
}

// --------------------------------------------------------------- ENOSPC

namespace {
// A size-limited tmpfs mounted for one test; skipped where mount is not
// permitted.
class SmallFs {
 public:
  explicit SmallFs(uint64_t bytes, uint64_t inodes = 0) : dir_() {
    mount_ = d_.sub("mnt");
    std::filesystem::create_directories(mount_);
    std::string opt = "size=" + std::to_string(bytes);
    if (inodes) opt += ",nr_inodes=" + std::to_string(inodes);
    mounted_ = ::mount("tmpfs", mount_.c_str(), "tmpfs", 0, opt.c_str()) == 0;
    if (!mounted_) why_ = std::strerror(errno);
  }
  ~SmallFs() {
    if (mounted_) umount2(mount_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& why() const { return why_; }
  std::string path() const { return mount_ + "/store"; }

 private:
  TempDir d_;
  int dir_;
  std::string mount_, why_;
  bool mounted_ = false;
};
}  // namespace

TEST(TokenStore, EnospcIsAStatusDisablesPutsAndNeverLeavesAPartialObject) {
  SmallFs fs(8 * MiB);
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a size-limited tmpfs here (" << fs.why() << "); needs root";
  std::vector<std::string> log;
  TokenStore s(opts(fs.path(), &log));
  const size_t obj = 1 * MiB + 100;
  uint64_t written = 0;
  Status st = Status::kOk;
  for (; written < 100; ++written) {
    st = s.put(chunk_key("", "fill", written), pattern(written, obj));
    if (st != Status::kOk) break;
  }
  ASSERT_EQ(st, Status::kNoSpace);
  ASSERT_GT(written, 2u);
  EXPECT_TRUE(s.stats().spills_disabled);
  EXPECT_EQ(count_containing(log, "no space left"), 1u);
  // Says whose puts are refused: this handle's (a one-shot `store put` read
  // "further puts are refused", and the next command's put worked).
  EXPECT_EQ(count_containing(log, "puts through this handle are refused until it frees bytes"), 1u);
  // Fails fast now, and still says it only once.
  EXPECT_EQ(s.put(chunk_key("", "fill", 999), pattern(1, 10)), Status::kNoSpace);
  EXPECT_EQ(count_containing(log, "no space left"), 1u);
  // Nothing partial: the writer directory holds exactly the published objects.
  auto files = files_under(fs.path() + "/writers");
  EXPECT_EQ(files.size(), written + 1) << "objects + the lock, no temp file";
  for (uint64_t i = 0; i < written; ++i) {
    std::vector<std::byte> out(obj);
    ASSERT_EQ(s.get(chunk_key("", "fill", i), out), Status::kOk) << i;
    EXPECT_EQ(out, pattern(i, obj));
  }
  // Freeing bytes re-enables puts.
  ASSERT_EQ(s.erase(chunk_key("", "fill", 0)), Status::kOk);
  ASSERT_EQ(s.erase(chunk_key("", "fill", 1)), Status::kOk);
  EXPECT_FALSE(s.stats().spills_disabled);
  EXPECT_EQ(s.put(chunk_key("", "again", 0), pattern(5, obj)), Status::kOk);
  // A context that does not fit fails whole: no manifest, no objects.
  EXPECT_EQ(s.put_context(meta("too-big"), pattern(6, 16 * MiB)), Status::kNoSpace);
  Manifest m;
  EXPECT_EQ(s.read_manifest("", "too-big", &m), Status::kNotFound);
  EXPECT_TRUE(files_under(fs.path() + "/objects").empty());
}

// A full file system may refuse the object's directory (objects/ab/) after
// its file was written: that is "no space" too. It was "not found" (the
// rename's ENOENT after the failed mkdir), seen as `store put` on a full disk
// failing with "not found". Inodes run out at each step of a put in turn
// here (temp file, directory), whatever the keys' hash prefixes.
TEST(TokenStore, AFullDiskIsNoSpaceAtEveryStepOfAPut) {
  for (uint64_t inodes = 6; inodes <= 24; ++inodes) {
    SmallFs fs(64 * MiB, inodes);
    if (!fs.mounted()) GTEST_SKIP() << "cannot mount a size-limited tmpfs here (" << fs.why() << "); needs root";
    std::unique_ptr<TokenStore> s;
    try {
      s = std::make_unique<TokenStore>(opts(fs.path()));
    } catch (const std::exception&) {
      continue;  // too few inodes for the store's own directories
    }
    Status st = Status::kOk;
    for (uint64_t i = 0; i < 64 && ok(st); ++i) st = s->put_context(meta("c" + std::to_string(i)), pattern(i, 4096));
    EXPECT_EQ(st, Status::kNoSpace) << inodes << " inodes: " << to_string(st);
    // Never a partial object: no temp file ("t<n>") is left behind.
    for (const auto& f : files_under(fs.path() + "/writers"))
      EXPECT_EQ(std::filesystem::path(f).filename().string().rfind('t', 0), std::string::npos) << inodes << ": " << f;
  }
}

TEST(TokenStore, ThePagerKeepsRunningWhenTheStoreFillsUp) {
  SmallFs fs(4 * MiB);
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a size-limited tmpfs here (" << fs.why() << "); needs root";
  StoreOptions o = opts(fs.path());
  o.queue_depth = 4;
  PagerOnStore env(small_device(64 * KiB, 1 * MiB, 2 * MiB), o);
  auto& [cfg, store, mover, pager, dev] = env;
  // 16 MiB of KV: far more than HBM + host + the 4 MiB store.
  std::vector<RegionId> regions;
  for (int i = 0; i < 16; ++i) {
    regions.push_back(dev.alloc(1 * MiB, "ctx" + std::to_string(i)));
    auto p = pattern(static_cast<uint64_t>(i), 1 * MiB);
    ASSERT_EQ(dev.write(regions.back(), 0, p), Status::kOk);
    dev.compute(1'000'000);
  }
  pager.drain();
  EXPECT_TRUE(pager.stats().spill_disabled);
  EXPECT_TRUE(store.stats().spills_disabled);
  for (int i = 0; i < 16; ++i) {
    std::vector<std::byte> out(1 * MiB);
    ASSERT_EQ(dev.read(regions[static_cast<size_t>(i)], 0, out), Status::kOk) << i;
    EXPECT_EQ(out, pattern(static_cast<uint64_t>(i), 1 * MiB)) << i;
  }
  EXPECT_EQ(pager.audit(), "");
}

// --------------------------------------------------------------- the pager on the store

namespace {
// The pager on a token store whose nvme_capacity the store enforces too
// (it counts a header per object: a few chunks fewer fit than the pager counts).
struct FiniteTier {
  static Config config(uint64_t capacity) {
    Config c = small_device(64 * KiB, 256 * KiB, 256 * KiB);
    c.nvme_capacity = capacity;
    c.prefetchers = 0;
    return c;
  }
  static StoreOptions store_options(const TempDir& d, uint64_t capacity) {
    StoreOptions o = opts(d.path());
    o.capacity_bytes = capacity;
    return o;
  }
  FiniteTier(const TempDir& d, uint64_t capacity) : rig(config(capacity), store_options(d, capacity)) {}
  void settle() {
    for (int i = 0; i < 4; ++i) {
      rig.pager.tick();
      rig.pager.drain();
    }
  }
  PagerOnStore rig;
};
}  // namespace

// Under a finite nvme_capacity the NVMe tier keeps working: a restored
// chunk gives its store copy up (it used to stay on disk, unseen by the
// pager's count of the tier, until every spill was refused for good: `demo
// --nvme-capacity 100M` spilled 49 chunks, restored them, and never spilled
// again), and a spill refused for room waits until the tier frees a chunk
// instead of stopping for good.
TEST(TokenStore, AFiniteNvmeTierKeepsSpillingAfterItFilledOnce) {
  TempDir d;
  FiniteTier env(d, 512 * KiB);  // 8 chunks of payload; fewer files fit (each has a header)
  auto& [cfg, store, mover, pager, dev] = env.rig;
  const StoreOptions& o = store.options();
  auto settle = [&] { env.settle(); };
  auto in_nvme = [&](RegionId id) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < pager.region(id)->nchunks; ++i) n += pager.region(id)->chunks[i].tier == Tier::kNvme;
    return n;
  };
  const RegionId a = dev.alloc(512 * KiB, "a"), b = dev.alloc(512 * KiB, "b");
  ASSERT_EQ(dev.write(a, 0, pattern(1, 512 * KiB)), Status::kOk);
  ASSERT_EQ(dev.write(b, 0, pattern(2, 512 * KiB)), Status::kOk);
  // a fills the tier as far as the store takes it.
  pager.hint(pager.find_context("a"), HintKind::kPark);
  settle();
  const uint32_t a_spilled = in_nvme(a);
  ASSERT_GE(a_spilled, 6u);
  EXPECT_TRUE(pager.stats().spill_disabled) << "the store refused the chunk past its room";
  // a comes back whole; its copies go, so the tier is empty again.
  std::vector<std::byte> out(512 * KiB);
  ASSERT_EQ(dev.read(a, 0, out), Status::kOk);
  EXPECT_EQ(out, pattern(1, 512 * KiB));
  settle();
  EXPECT_EQ(in_nvme(a), 0u);
  // b spills as a did: into room a's copies would still hold.
  pager.hint(pager.find_context("b"), HintKind::kPark);
  settle();
  EXPECT_GE(in_nvme(b), a_spilled) << "spills stopped for good after the first refusal";
  EXPECT_LE(store.used_bytes(), o.capacity_bytes);
  ASSERT_EQ(dev.read(b, 0, out), Status::kOk);
  EXPECT_EQ(out, pattern(2, 512 * KiB));
  EXPECT_EQ(pager.audit(), "");
}

// The store counts a header per object, so a finite tier fills a few chunks
// short of what the pager counts. Refused there once, the pager refills it
// to that level as chunks leave, one for one: it used to start a burst of
// spills up to nvme_capacity that the store refused all but one of.
TEST(TokenStore, AFullNvmeTierIsRefilledWithoutABurstOfRefusedSpills) {
  TempDir d;
  FiniteTier env(d, 64 * 64 * KiB);  // 64 chunks of payload; about 60 files with their headers
  auto& [cfg, store, mover, pager, dev] = env.rig;
  const StoreOptions& o = store.options();
  auto settle = [&] { env.settle(); };
  auto spill_failures = [&] { return pager.stats().move_failures_by_kind[static_cast<size_t>(MoveKind::kSpill)]; };
  const RegionId a = dev.alloc(64 * 64 * KiB, "a");
  ASSERT_EQ(dev.write(a, 0, pattern(4, 64 * 64 * KiB)), Status::kOk);
  pager.hint(pager.find_context("a"), HintKind::kPark);
  settle();
  const uint64_t full = pager.stats().tiers[index(Tier::kNvme)].resident_bytes;
  ASSERT_LT(full, cfg.nvme_capacity - 2 * 64 * KiB) << "the store's headers leave a gap of several chunks";
  const uint64_t refused = spill_failures();
  EXPECT_GE(refused, 1u);
  for (int round = 0; round < 5; ++round) {
    std::vector<std::byte> out(8 * 64 * KiB);  // 8 chunks come back...
    ASSERT_EQ(dev.read(a, static_cast<uint64_t>(round) * out.size(), out), Status::kOk);
    pager.hint(pager.find_context("a"), HintKind::kPark);  // ...and go again
    settle();
    EXPECT_EQ(pager.stats().tiers[index(Tier::kNvme)].resident_bytes, full) << round;
  }
  EXPECT_EQ(spill_failures(), refused) << "refills stopped at the level the store refused";
  EXPECT_LE(store.used_bytes(), o.capacity_bytes);
  EXPECT_EQ(pager.audit(), "");
}

TEST(TokenStore, ServesAsThePagersNvmeTierWithByteExactRestores) {
  TempDir d;
  PagerOnStore env(small_device(256 * KiB, 2 * MiB, 4 * MiB), opts(d.path()));
  auto& [cfg, store, mover, pager, dev] = env;
  // 24 MiB of KV in 12 contexts: most of it must spill.
  const int n = 12;
  const size_t region = 2 * MiB + 100 * KiB;  // a short last chunk
  std::vector<RegionId> regions;
  for (int i = 0; i < n; ++i) {
    regions.push_back(dev.alloc(region, "session-" + std::to_string(i)));
    ASSERT_EQ(dev.write(regions.back(), 0, pattern(static_cast<uint64_t>(i), region)), Status::kOk);
    dev.compute(1'000'000);
  }
  pager.drain();
  EXPECT_GT(pager.stats().moves[static_cast<size_t>(MoveKind::kSpill)], 0u);
  EXPECT_GT(store.stats().puts, 0u);
  EXPECT_GT(store.used_bytes(), 0u);
  // Rewrite some contexts (their chunks are spilled again under the same
  // keys with new bytes), then read everything back.
  for (int round = 0; round < 3; ++round) {
    for (int i = round; i < n; i += 3) {
      auto p = pattern(static_cast<uint64_t>(1000 * (round + 1) + i), region);
      ASSERT_EQ(dev.write(regions[static_cast<size_t>(i)], 0, p), Status::kOk);
      dev.compute(1'000'000);
    }
  }
  for (int i = 0; i < n; ++i) {
    int last_round = -1;
    for (int round = 0; round < 3; ++round)
      if (i >= round && (i - round) % 3 == 0) last_round = round;
    uint64_t seed = last_round < 0 ? static_cast<uint64_t>(i) : static_cast<uint64_t>(1000 * (last_round + 1) + i);
    std::vector<std::byte> out(region);
    ASSERT_EQ(dev.read(regions[static_cast<size_t>(i)], 0, out), Status::kOk) << i;
    EXPECT_EQ(out, pattern(seed, region)) << i;
  }
  EXPECT_GT(store.stats().gets, 0u);
  EXPECT_EQ(store.stats().corruption_events, 0u);
  EXPECT_EQ(pager.audit(), "");
  // Freed regions take their store copies with them.
  for (RegionId r : regions) ASSERT_EQ(dev.free(r), Status::kOk);
  pager.drain();
  EXPECT_EQ(store.stats().private_objects, 0u);
  EXPECT_EQ(store.used_bytes(), store.stats().spare_bytes) << "only files kept for reuse remain";
  EXPECT_LE(store.stats().spare_files, 64u);
}

// --------------------------------------------------------------- fallbacks

namespace {
// Runs fn in a child under a seccomp filter that makes io_uring_setup fail
// with ENOSYS (no_uring) or openat with O_DIRECT fail with EINVAL
// (no_direct), as a kernel without io_uring or a file system refusing
// O_DIRECT would. Returns the child's exit status.
int in_restricted_child(bool no_uring, bool no_direct, const std::function<int()>& fn) {
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<sock_filter> f;
    f.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
    if (no_uring) {
      f.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1));
      f.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)));
    }
    if (no_direct) {
      f.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 3));
      f.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2])));
      f.push_back(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, O_DIRECT, 0, 1));
      f.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EINVAL & SECCOMP_RET_DATA)));
    }
    f.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    sock_fprog prog{static_cast<unsigned short>(f.size()), f.data()};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) _exit(99);
    _exit(fn());
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

// Round trips through a fresh store; 0 if all is well and the log has
// exactly one line containing `said`.
int roundtrip_and_count(const std::string& dir, std::string_view said, std::string_view engine, bool direct) {
  std::vector<std::string> log;
  TokenStore s(opts(dir, &log));
  for (uint64_t i = 0; i < 20; ++i) {
    auto p = pattern(i, 300000 + i);
    if (s.put(chunk_key("", "fb", i), p) != Status::kOk) return 1;
    std::vector<std::byte> out(p.size());
    if (s.get(chunk_key("", "fb", i), out) != Status::kOk || out != p) return 2;
  }
  if (s.put_context(meta("fb"), pattern(1, 5 * MiB)) != Status::kOk) return 3;
  std::vector<std::byte> out;
  if (s.get_context("", "fb", &out) != Status::kOk || out != pattern(1, 5 * MiB)) return 4;
  if (count_containing(log, said) != 1) return 5;
  if (s.stats().engine != engine || s.stats().direct_io != direct) return 6;
  return 0;
}
}  // namespace

TEST(TokenStore, WithoutIoUringItFallsBackToPreadPwriteAndSaysSoOnce) {
  TempDir d;
  int code = in_restricted_child(true, false, [&] {
    return roundtrip_and_count(d.path(), "io_uring unavailable", "pread/pwrite", true);
  });
  if (code == 99) GTEST_SKIP() << "seccomp filters are not available here";
  EXPECT_EQ(code, 0) << "1-4: a round trip failed, 5: not said exactly once, 6: wrong engine";
}

TEST(TokenStore, WhenODirectIsRefusedItFallsBackToBufferedIoAndSaysSoOnce) {
  TempDir d;
  int code = in_restricted_child(false, true, [&] {
    return roundtrip_and_count(d.path(), "O_DIRECT refused", "io_uring", false);
  });
  if (code == 99) GTEST_SKIP() << "seccomp filters are not available here";
  EXPECT_EQ(code, 0) << "1-4: a round trip failed, 5: not said exactly once, 6: wrong engine";
}

// --------------------------------------------------------------- opening

TEST(TokenStore, RefusesADirectoryThatIsNotAStore) {
  TempDir d;
  FILE* f = std::fopen(d.sub("precious.txt").c_str(), "w");
  ASSERT_TRUE(f);
  std::fclose(f);
  EXPECT_THROW(TokenStore(opts(d.path())), ConfigError);
  StoreOptions ro = opts(d.sub("missing"));
  ro.read_only = true;
  EXPECT_THROW(TokenStore{ro}, ConfigError);
}

TEST(TokenStore, ALiveWritersTempFilesSurviveAnotherOpenAndADeadOnesDoNot) {
  TempDir d;
  auto first = std::make_unique<TokenStore>(opts(d.path()));
  ASSERT_EQ(first->put(chunk_key("", "p", 0), pattern(1, 1000)), Status::kOk);
  // A write in progress: a temp file in the live writer's directory.
  const std::string wdir = d.sub("writers/" + first->writer_id());
  FILE* f = std::fopen((wdir + "/t999").c_str(), "w");
  ASSERT_TRUE(f);
  std::fclose(f);
  {
    TokenStore second(opts(d.path()));
    EXPECT_TRUE(std::filesystem::exists(wdir + "/t999"));
    EXPECT_EQ(second.stats().leftovers_removed, 0u);
  }
  // The writer dies without cleaning up (its lock is released by the kernel).
  pid_t pid = fork();
  if (pid == 0) {
    TokenStore child(opts(d.path()));
    if (child.put(chunk_key("", "c", 0), pattern(2, 5000)) != Status::kOk) _exit(1);
    FILE* t = std::fopen((d.sub("writers/") + child.writer_id() + "/t1234").c_str(), "w");
    if (t) std::fclose(t);
    _exit(0);  // no destructors: like a crash
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(files_under(d.sub("writers")).size(), 3u + 3u) << "ours: lock, object, temp; the dead one's: lock, object, temp";
  {
    TokenStore third(opts(d.path()));
    EXPECT_EQ(third.stats().leftovers_removed, 2u);
    EXPECT_EQ(files_under(d.sub("writers")).size(), 3u);
  }
  first.reset();
  EXPECT_TRUE(files_under(d.sub("writers")).empty());
}

TEST(TokenStore, OrphanObjectsGoOnceOlderThanTheGrace) {
  TempDir d;
  ObjectKey young_key, old_key;
  {
    TokenStore s(opts(d.path()));
    ASSERT_EQ(s.put_context(meta("a"), pattern(1, 100)), Status::kOk);
    ASSERT_EQ(s.put_context(meta("b"), pattern(2, 100)), Status::kOk);
    Manifest ma, mb;
    ASSERT_EQ(s.read_manifest("", "a", &ma), Status::kOk);
    ASSERT_EQ(s.read_manifest("", "b", &mb), Status::kOk);
    young_key = ma.chunks[0].key;
    old_key = mb.chunks[0].key;
  }
  // Drop both manifests behind the store's back: two orphans.
  std::filesystem::remove(d.sub("contexts/" + key_hex(context_id("", "a")) + ".m"));
  std::filesystem::remove(d.sub("contexts/" + key_hex(context_id("", "b")) + ".m"));
  const std::string old_file = object_file(d.path(), old_key);
  const timespec past[2] = {{0, UTIME_OMIT}, {time(nullptr) - 3600, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, old_file.c_str(), past, 0), 0);
  TokenStore s(opts(d.path()));
  EXPECT_FALSE(std::filesystem::exists(old_file));
  EXPECT_TRUE(std::filesystem::exists(object_file(d.path(), young_key)));
  EXPECT_EQ(s.stats().leftovers_removed, 1u);
}

// --------------------------------------------------------------- lost I/O

namespace {
// The store's engine, except that op number `lose` (0-based) is accepted and
// never issued: an engine that lost count of what it holds. The store once
// spun for ever in such a wait (seen once while filling a disk).
class LosingEngine final : public IoEngine {
 public:
  LosingEngine(std::unique_ptr<IoEngine> real, size_t lose) : real_(std::move(real)), lose_(lose) {}
  std::string_view name() const override { return real_->name(); }
  bool register_buffers(std::span<const iovec> bufs, std::string* why) override {
    return real_->register_buffers(bufs, why);
  }
  bool queue(const IoOp& op) override { return seen_++ == lose_ ? true : real_->queue(op); }
  int submit() override { return real_->submit(); }
  size_t reap(std::span<IoResult> out, bool wait) override { return real_->reap(out, wait); }
  size_t outstanding() const override { return real_->outstanding(); }

 private:
  std::unique_ptr<IoEngine> real_;
  size_t lose_, seen_ = 0;
};

StoreOptions losing(StoreOptions o, size_t lose) {
  o.wrap_engine = [lose](std::unique_ptr<IoEngine> e) -> std::unique_ptr<IoEngine> {
    return std::make_unique<LosingEngine>(std::move(e), lose);
  };
  return o;
}

size_t lost_io_lines(const std::vector<std::string>& log) { return count_containing(log, "waited for I/O that the"); }
}  // namespace

// Each op of a put in turn is the lost one (open, reserve, writes): the put
// fails with an I/O error instead of waiting for ever, leaves no temp file and
// says so. Its buffer is retired (the kernel might still hold it); the handle
// goes on with the others, and closes.
TEST(TokenStore, AnIoTheEngineLostFailsThePutInsteadOfWaitingForEver) {
  for (size_t lose = 0; lose < 3; ++lose) {
    SCOPED_TRACE(lose);
    TempDir d;
    std::vector<std::string> log;
    {
      TokenStore s(losing(opts(d.path(), &log), lose));
      EXPECT_EQ(s.put(chunk_key("", "x", 0), pattern(1, 3 * MiB)), Status::kIoError);
      EXPECT_EQ(lost_io_lines(log), 1u);
      EXPECT_EQ(count_containing(log, "31 of 32 left"), 1u);
      EXPECT_GE(s.stats().io_errors, 1u);
      EXPECT_EQ(files_under(d.sub("writers")).size(), 1u) << "the lock only: no temp file";
      const auto y = pattern(2, 3 * MiB);
      ASSERT_EQ(s.put(chunk_key("", "y", 0), y), Status::kOk) << "the other buffers go on";
      std::vector<std::byte> out(y.size());
      ASSERT_EQ(s.get(chunk_key("", "y", 0), out), Status::kOk);
      EXPECT_EQ(out, y);
    }
    EXPECT_EQ(lost_io_lines(log), 1u);
  }
}

TEST(TokenStore, AnIoTheEngineLostFailsTheContextAndPublishesNothing) {
  TempDir d;
  std::vector<std::string> log;
  TokenStore s(losing(opts(d.path(), &log), 4));
  auto w = s.begin_context(meta("c"));
  Status st = Status::kOk;
  for (uint64_t i = 0; i < 8 && ok(st); ++i) st = w->append(pattern(i, 1 * MiB));
  if (ok(st)) st = w->commit();
  EXPECT_EQ(st, Status::kIoError);
  w.reset();
  Manifest m;
  EXPECT_EQ(s.read_manifest("", "c", &m), Status::kNotFound);
  EXPECT_TRUE(files_under(d.sub("objects")).empty()) << "no object of the failed publication stays";
  EXPECT_EQ(lost_io_lines(log), 1u);
  EXPECT_EQ(s.put_context(meta("c"), pattern(9, 3 * MiB)), Status::kOk) << "published again, whole";
  std::vector<std::byte> out;
  ASSERT_EQ(s.get_context("", "c", &out), Status::kOk);
  EXPECT_EQ(out, pattern(9, 3 * MiB));
}

// The async path: the lost op's completion comes back as an I/O error, and a
// handle closed with a lost op in flight closes. With one buffer, losing it
// leaves none: I/O through the handle is then an error, not a wait.
TEST(TokenStore, AnIoTheEngineLostCompletesAsAnErrorOnTheAsyncPath) {
  TempDir d;
  {
    StoreOptions o = losing(opts(d.path()), 0);
    o.queue_depth = 1;
    TokenStore s(o);
    const auto b = pattern(1, 100);
    ASSERT_EQ(s.submit_put(7, chunk_key("", "a", 0), b), Status::kOk);
    TokenStore::Completion c[2];
    ASSERT_EQ(s.wait(c), 1u);
    EXPECT_EQ(c[0].tag, 7u);
    EXPECT_EQ(c[0].status, Status::kIoError);
    EXPECT_EQ(s.submit_put(8, chunk_key("", "b", 0), b), Status::kIoError);
    EXPECT_EQ(s.put(chunk_key("", "b", 0), b), Status::kIoError);
    std::vector<std::byte> out(100);
    EXPECT_EQ(s.get(chunk_key("", "b", 0), out), Status::kIoError);
  }
  TokenStore s(losing(opts(d.path()), 0));
  const auto b = pattern(2, 100);
  ASSERT_EQ(s.submit_put(8, chunk_key("", "b", 0), b), Status::kOk);
}  // closes here, its put lost

// A zero-copy get whose read was lost: its buffer is retired, so it is not
// handed to the caller (who could submit it again while the kernel may still
// write into it).
TEST(TokenStore, AZeroCopyGetWhoseReadWasLostHandsBackNoBuffer) {
  TempDir d;
  StoreOptions o = losing(opts(d.path()), 3);  // open, reserve, write of the put; then the get's read
  o.queue_depth = 2;
  TokenStore s(o);
  const auto a = pattern(1, 100);
  ASSERT_EQ(s.put(chunk_key("", "a", 0), a), Status::kOk);
  TokenStore::Buffer b = s.acquire_buffer();
  ASSERT_NE(b.data, nullptr);
  ASSERT_EQ(s.submit_get(1, chunk_key("", "a", 0), b), Status::kOk);
  TokenStore::Completion c[2];
  ASSERT_EQ(s.wait(c), 1u);
  EXPECT_EQ(c[0].status, Status::kIoError);
  EXPECT_EQ(c[0].buffer.data, nullptr) << "the retired buffer is not lent";
  EXPECT_EQ(s.submit_get(2, chunk_key("", "a", 0), b), Status::kInvalid) << "nor taken back from an old handle";
  // The other buffer goes on.
  std::vector<std::byte> out(100);
  ASSERT_EQ(s.get(chunk_key("", "a", 0), out), Status::kOk);
  EXPECT_EQ(out, a);
}
