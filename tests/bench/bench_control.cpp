// Does serving the control socket slow the pager's hot path? The access
// decision (Pager::access, a hit on one of 2^20 resident chunks, random
// order: the same shape as bench_pager's AccessHit) timed in three setups,
// in one run:
//   none      no control server (the baseline);
//   idle      a ControlServer, and the owner calls service() every 1024
//             accesses as a real owner loop would;
//   paced     the same, while a client thread sends 1000 stats requests a
//             second, each on a new connection (what `kvpager status` does;
//             `kvpager top` sends one a second);
//   hammered  the same, with the client sending as fast as it can;
//   elsewhere the control: the same client load against the control server
//             of another pager in the process, none on the measured one. What
//             hammered costs beyond elsewhere is due to serving this pager;
//             what both cost over none is the machine (shared caches, memory
//             bandwidth, the kernel's socket work).
// The owner runs on CPU 0; the server's socket thread and the client on CPU
// 1 (as on a real machine, where the engine's thread has a core of its own),
// so what is measured is interference through the pager's data, not two
// threads taking turns on one core. Run with scripts/bench-control, which
// reports the ratios; results in docs/benchmarks.md.
#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "control/client.h"
#include "control/server.h"
#include "kvpager/pager.h"
#include "null_mover.h"

namespace kvpager {
namespace {

constexpr uint32_t kChunks = 1u << 20;
constexpr uint64_t kChunk = 64 * KiB;
constexpr uint32_t kServiceEvery = 1024;  // accesses between two service() calls

enum Mode : int64_t { kNone = 0, kIdle = 1, kHammered = 2, kElsewhere = 3, kPaced = 4 };

// Pins the calling thread to one CPU (threads it creates inherit it). False
// when the machine has a single CPU or pinning is not allowed.
bool pin_to(unsigned cpu) {
  if (std::thread::hardware_concurrency() < 2) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}
void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (unsigned i = 0; i < std::thread::hardware_concurrency(); ++i) CPU_SET(i, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

void BM_AccessWithControl(benchmark::State& state) {
  const auto mode = static_cast<Mode>(state.range(0));
  testing::NullMover mover(uint64_t{kChunks} * kChunk);
  Config cfg;
  cfg.chunk_size = kChunk;
  cfg.hbm_budget = uint64_t{kChunks} * kChunk;
  cfg.host_capacity = uint64_t{kChunks} * kChunk;
  cfg.prefetchers = 0;
  cfg.high_watermark = 1.0;  // everything stays resident: every timed access is a hit
  cfg.low_watermark = 0.99;
  Pager pager(cfg, mover);
  std::vector<RegionId> regions;
  for (uint32_t r = 0; r < kChunks / 1024; ++r) regions.push_back(pager.add_region(uint64_t{r} << 32, 1024 * kChunk));
  for (uint32_t i = 0; i < kChunks; ++i) pager.access(regions[i / 1024], i % 1024, true);
  std::mt19937 rng(1);
  std::vector<uint32_t> order(1 << 20);
  for (auto& o : order) o = static_cast<uint32_t>(rng() % kChunks);

  char tmpl[] = "/tmp/kvpager-bench-control-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  // The other pager (kElsewhere): small, never accessed.
  testing::NullMover other_mover(16 * MiB);
  Config other_cfg;
  other_cfg.chunk_size = kChunk;
  Pager other(other_cfg, other_mover);
  Pager& served = mode == kElsewhere ? other : pager;

  std::unique_ptr<control::ControlServer> server;
  std::thread client;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> answered{0}, failed{0};
  const bool pinned = pin_to(1);  // the socket thread and the client are born on CPU 1
  if (mode != kNone) {
    control::ControlServer::Options opt;
    opt.runtime_dir = dir;
    opt.device = "null mover";
    server = std::make_unique<control::ControlServer>(opt, served);
  }
  if (mode == kHammered || mode == kElsewhere || mode == kPaced) {
    client = std::thread([&, path = server->socket_path()] {
      const nlohmann::json req = {{"op", "stats"}};
      auto next = std::chrono::steady_clock::now();
      while (!stop.load(std::memory_order_relaxed)) {
        if (mode == kPaced) {
          next += std::chrono::milliseconds(1);
          std::this_thread::sleep_until(next);
        }
        if (control::call(path, req, std::chrono::seconds(5)).ok()) answered.fetch_add(1, std::memory_order_relaxed);
        else failed.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  if (pinned) pin_to(0);  // the owner: CPU 0

  size_t k = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    uint32_t c = order[k & (order.size() - 1)];
    benchmark::DoNotOptimize(pager.access(regions[c >> 10], c & 1023, false));
    if (server && (++k % kServiceEvery) == 0) server->service(served);
    if (!server) ++k;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stop = true;
  if (client.joinable()) client.join();
  server.reset();
  std::filesystem::remove_all(dir);
  unpin();

  if (pager.stats().faults != kChunks) state.SkipWithError("not all accesses were hits");
  if (failed.load() > 0) state.SkipWithError("stats requests failed");
  state.counters["stats_req_per_s"] = static_cast<double>(answered.load()) / seconds;
  static const char* const kNames[] = {"none", "idle", "hammered", "elsewhere", "paced"};
  state.SetLabel(std::string(kNames[mode]) + (pinned ? "" : " (not pinned)"));
}
BENCHMARK(BM_AccessWithControl)
    ->Arg(kNone)
    ->Arg(kIdle)
    ->Arg(kPaced)
    ->Arg(kHammered)
    ->Arg(kElsewhere)
    ->Unit(benchmark::kNanosecond);

}  // namespace
}  // namespace kvpager

BENCHMARK_MAIN();
