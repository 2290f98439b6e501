// How fast opening a token store rebuilds its index by scanning the
// directory (issue 3: >= 100k objects/s), against the least work any
// rebuild must do on the same tree: listing every object directory and
// reading every manifest (the baseline, same run).
//
// The store (1000 contexts x 100 one-byte chunks = 100k objects by default)
// is built once under $KVPAGER_BENCH_DIR (default /var/tmp) and reused by
// later runs. Caches are warm: the numbers are the CPU side of the scan.
#include <benchmark/benchmark.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "kvpager/store/token_store.h"

using namespace kvpager;
using namespace kvpager::store;

namespace {

constexpr int kChunksPerContext = 100;

StoreOptions options(const std::string& dir) {
  StoreOptions o;
  o.dir = dir;
  o.log = [](std::string_view) {};
  return o;
}

// The store with `objects` objects, built on first use.
std::string fixture(int64_t objects) {
  const char* base = std::getenv("KVPAGER_BENCH_DIR");
  const std::string dir =
      std::string(base && *base ? base : "/var/tmp") + "/kvpager-bench-scan-" + std::to_string(objects);
  const std::string done = dir + ".ready";
  if (std::filesystem::exists(done)) return dir;
  std::filesystem::remove_all(dir);
  TokenStore s(options(dir));
  const std::byte one{1};
  for (int64_t c = 0; c * kChunksPerContext < objects; ++c) {
    ContextMeta m;
    m.name = "context-" + std::to_string(c);
    auto w = s.begin_context(m);
    for (int i = 0; i < kChunksPerContext; ++i) {
      if (w->append(std::span<const std::byte>(&one, 1)) != Status::kOk) std::abort();
    }
    if (w->commit() != Status::kOk) std::abort();
  }
  FILE* f = std::fopen(done.c_str(), "w");
  if (f) std::fclose(f);
  return dir;
}

void BM_StoreOpenScan(benchmark::State& state) {
  const std::string dir = fixture(state.range(0));
  for (auto _ : state) {
    TokenStore s(options(dir));
    benchmark::DoNotOptimize(s.used_bytes());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.counters["objects"] = static_cast<double>(state.range(0));
}

// Baseline: readdir every objects/<hh>/ and read every manifest file.
void BM_BaselineWalk(benchmark::State& state) {
  const std::string dir = fixture(state.range(0));
  std::vector<char> buf(1 << 16);
  for (auto _ : state) {
    size_t entries = 0, bytes = 0;
    for (const auto& sub : std::filesystem::directory_iterator(dir + "/objects")) {
      DIR* d = opendir(sub.path().c_str());
      while (dirent* e = readdir(d)) entries += e->d_name[0] != '.';
      closedir(d);
    }
    for (const auto& m : std::filesystem::directory_iterator(dir + "/contexts")) {
      int fd = open(m.path().c_str(), O_RDONLY | O_CLOEXEC);
      ssize_t n = read(fd, buf.data(), buf.size());
      bytes += n > 0 ? static_cast<size_t>(n) : 0;
      close(fd);
    }
    benchmark::DoNotOptimize(entries + bytes);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

}  // namespace

BENCHMARK(BM_StoreOpenScan)->Arg(100'000)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BaselineWalk)->Arg(100'000)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
