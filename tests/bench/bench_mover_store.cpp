// Spill and restore throughput of the CUDA mover into the token store on
// this machine's disk, against the stand-in driver (no GPU needed: its copies
// are memcpy, so the store is what is measured), in one run:
//   queue     the store's io_uring queue, several chunks in flight (what
//             libkvpager.so runs)
//   blocking  the store's blocking put/get, one chunk at a time on the pager
//             thread (the mover before the queue)
//   store     TokenStore::bench alone at its queue depth: the ceiling
// Variants alternate within each round (the disk is shared and noisy); the
// medians and the ratios to `blocking` and to `store` are printed as markdown.
// Run by scripts/bench-mover-store.
//   bench_mover_store [--mib N] [--reps R] [--store DIR]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "mover_rig.h"

using namespace kvpager;
using WallClock = std::chrono::steady_clock;

namespace {

double seconds(WallClock::time_point t) { return std::chrono::duration<double>(WallClock::now() - t).count(); }
// CPU seconds this thread (the one that drives the pager) has used.
double thread_cpu() {
  rusage u{};
  getrusage(RUSAGE_THREAD, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Times {
  std::vector<double> spill, restore;
  std::vector<double> spill_busy, restore_busy;  // pager-thread CPU / wall
  uint64_t peak = 0;
  std::string engine;
};

// One context of `bytes` parked (every chunk spills) and restored; false
// with a reason on stderr if a byte or a tier is not what it must be.
bool round(const Config& c, bool queue, uint64_t bytes, int seed, Times* t) {
  testing::RigStore rs{0, true, {}};
  if (!queue) rs.queue = [](Store& s) { return std::make_unique<BlockingStoreQueue>(s); };
  testing::MoverRig rig(STANDIN_LIBCUDA, c, rs);
  if (!rig.ok()) {
    std::fprintf(stderr, "bench_mover_store: %s\n", rig.why.c_str());
    return false;
  }
  auto r = rig.alloc(bytes, "bench");
  if (!r.id.valid()) {
    std::fprintf(stderr, "bench_mover_store: cannot allocate %llu bytes\n", static_cast<unsigned long long>(bytes));
    return false;
  }
  for (uint64_t i = 0; i < bytes; i += 4096) r.bytes()[i] = std::byte(i / 4096 + static_cast<uint64_t>(seed));
  auto start = WallClock::now();
  double cpu = thread_cpu();
  rig.pager->hint(rig.pager->find_context("bench"), HintKind::kPark);
  rig.pager->drain();
  rig.pager->tick();
  rig.pager->drain();
  t->spill.push_back(seconds(start));
  t->spill_busy.push_back((thread_cpu() - cpu) / t->spill.back());
  if (rig.pager->stats().tiers[index(Tier::kNvme)].resident_bytes != bytes) {
    std::fprintf(stderr, "bench_mover_store: the park did not spill it all\n");
    return false;
  }
  start = WallClock::now();
  cpu = thread_cpu();
  if (rig.pager->restore(r.id) != Status::kOk) {
    std::fprintf(stderr, "bench_mover_store: restore failed\n");
    return false;
  }
  rig.pager->drain();
  t->restore.push_back(seconds(start));
  t->restore_busy.push_back((thread_cpu() - cpu) / t->restore.back());
  for (uint64_t i = 0; i < bytes; i += 4096) {
    if (r.bytes()[i] != std::byte(i / 4096 + static_cast<uint64_t>(seed))) {
      std::fprintf(stderr, "bench_mover_store: byte %llu came back wrong\n", static_cast<unsigned long long>(i));
      return false;
    }
  }
  t->peak = std::max(t->peak, rig.mover->stats().store_peak);
  const store::StoreStats st = rig.token->stats();
  t->engine = st.engine + (st.direct_io ? ", O_DIRECT" : ", buffered");
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t mib = 1024;
  int reps = 3;
  std::string dir = "/var/tmp/kvpager-bench-mover-store";
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") {
      std::printf("usage: bench_mover_store [--mib N (1024)] [--reps R (3)] [--store DIR (%s)]\n", dir.c_str());
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_mover_store: %s needs a value (see --help)\n", k.c_str());
      return 2;
    }
    const char* v = argv[++i];
    if (k == "--mib") mib = std::strtoull(v, nullptr, 10);
    else if (k == "--reps") reps = std::atoi(v);
    else if (k == "--store") dir = v;
    else {
      std::fprintf(stderr, "bench_mover_store: unknown argument %s (see --help)\n", k.c_str());
      return 2;
    }
  }
  if (mib == 0 || reps <= 0) {
    std::fprintf(stderr, "bench_mover_store: --mib and --reps must be positive\n");
    return 2;
  }
  const uint64_t bytes = mib << 20;
  Config c;
  c.chunk_size = 2 * MiB;
  c.hbm_budget = 64 * MiB;
  c.host_capacity = c.chunk_size;  // a parked context spills whole
  c.prefetchers = kPrefetchHint;
  c.spill_idle_ns = 3'600'000'000'000;
  c.store_dir = dir;
  std::filesystem::create_directories(dir);

  Times q, b;
  std::vector<double> store_w, store_r;
  for (int rep = 0; rep < reps; ++rep) {
    std::fprintf(stderr, "round %d/%d\n", rep + 1, reps);
    if (!round(c, true, bytes, rep, &q) || !round(c, false, bytes, rep, &b)) return 1;
    store::StoreOptions o = store::StoreOptions::from_config(c);
    o.dir = dir + "/raw";
    store::TokenStore ts(o);
    store::BenchResult res;
    store::BenchOptions bo;
    bo.total_bytes = bytes;
    bo.block_bytes = c.chunk_size;
    if (!ok(ts.bench(bo, &res))) {
      std::fprintf(stderr, "bench_mover_store: the store's own bench failed\n");
      return 1;
    }
    store_w.push_back(res.write_s);
    store_r.push_back(res.read_s);
  }
  auto gbs = [&](double secs) { return double(bytes) / secs / 1e9; };
  const double qs = gbs(median(q.spill)), qr = gbs(median(q.restore));
  const double bs = gbs(median(b.spill)), br = gbs(median(b.restore));
  const double ss = gbs(median(store_w)), sr = gbs(median(store_r));
  std::printf("%llu MiB in 2 MiB chunks into %s (%s), median of %d; queue: at most %llu in flight\n\n",
              static_cast<unsigned long long>(mib), dir.c_str(), q.engine.c_str(), reps,
              static_cast<unsigned long long>(q.peak));
  std::printf("| move | queue GB/s | blocking GB/s | store alone GB/s | queue / blocking | queue / store |"
              " pager thread busy (queue, blocking) |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  std::printf("| spill (park) | %.2f | %.2f | %.2f (write) | %.2f | %.2f | %.0f %%, %.0f %% |\n", qs, bs, ss, qs / bs,
              qs / ss, 100 * median(q.spill_busy), 100 * median(b.spill_busy));
  std::printf("| restore | %.2f | %.2f | %.2f (read) | %.2f | %.2f | %.0f %%, %.0f %% |\n", qr, br, sr, qr / br,
              qr / sr, 100 * median(q.restore_busy), 100 * median(b.restore_busy));
  std::error_code ec;
  std::filesystem::remove_all(dir + "/raw", ec);
  return 0;
}
