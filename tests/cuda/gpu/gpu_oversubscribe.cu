// An ordinary CUDA program, built by nvcc with its default static cudart:
// cudaMalloc'd buffers, kernels that fill them and verify every byte. Run
// under LD_PRELOAD=libkvpager.so with a small budget it uses 4x more memory
// than the budget; with --expect-kvpager it also tags its buffers as
// contexts, parks half of them (they spill to the store) and reads them
// again, proving that each launch reading a spilled buffer finds its bytes
// restored first. Exit status 0 only if every byte was right every time.
//   gpu_oversubscribe --buffers N --mib M [--passes P] [--expect-kvpager]
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "check.cuh"
#include "kvpager.h"


__host__ __device__ inline uint8_t pattern(uint64_t i, uint32_t seed) {
  return static_cast<uint8_t>(i * 131 + seed * 7 + (i >> 12));
}

__global__ void fill(uint8_t* p, uint64_t n, uint32_t seed) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x)
    p[i] = pattern(i, seed);
}

__global__ void verify(const uint8_t* p, uint64_t n, uint32_t seed, unsigned long long* bad) {
  unsigned long long mine = 0;
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x)
    mine += p[i] != pattern(i, seed);
  if (mine) atomicAdd(bad, mine);
}

static uint64_t stat(const char* key) {
  std::vector<char> buf(1 << 20);
  if (!kvpager_stats(buf.data(), buf.size())) return 0;
  std::string text(buf.data()), k = std::string("\n") + key + "=";
  text.insert(0, "\n");
  size_t at = text.find(k);
  return at == std::string::npos ? 0 : std::strtoull(text.c_str() + at + k.size(), nullptr, 10);
}

int main(int argc, char** argv) {
  int buffers = 16, passes = 2;
  uint64_t mib = 64;
  bool expect = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--buffers" && i + 1 < argc) buffers = std::atoi(argv[++i]);
    else if (a == "--mib" && i + 1 < argc) mib = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--passes" && i + 1 < argc) passes = std::atoi(argv[++i]);
    else if (a == "--expect-kvpager") expect = true;
    else {
      std::fprintf(stderr, "usage: %s --buffers N --mib M [--passes P] [--expect-kvpager]\n", argv[0]);
      return 2;
    }
  }
  if (expect && !kvpager_loaded()) {
    std::fprintf(stderr, "libkvpager.so is not loaded (run with LD_PRELOAD)\n");
    return 1;
  }
  const uint64_t bytes = mib << 20;
  size_t free0 = 0, total = 0;
  CHECK(cudaMemGetInfo(&free0, &total));
  std::vector<uint8_t*> buf(buffers);
  for (auto& b : buf) CHECK(cudaMalloc(&b, bytes));
  unsigned long long* bad = nullptr;
  CHECK(cudaMalloc(&bad, sizeof *bad));  // small: the driver's own memory
  size_t free1 = 0;
  CHECK(cudaMemGetInfo(&free1, &total));
  std::printf("cudaMemGetInfo: total %zu MiB, free %zu -> %zu MiB after %llu MiB\n", total >> 20, free0 >> 20,
              free1 >> 20, static_cast<unsigned long long>(mib * buffers));

  auto check_all = [&](const char* what) {
    for (int i = 0; i < buffers; ++i) {
      CHECK(cudaMemset(bad, 0, sizeof *bad));
      verify<<<512, 256>>>(buf[i], bytes, uint32_t(i), bad);
      CHECK(cudaGetLastError());
      unsigned long long n = 0;
      CHECK(cudaMemcpy(&n, bad, sizeof n, cudaMemcpyDeviceToHost));
      if (n) {
        std::printf("%s: buffer %d has %llu wrong bytes\n", what, i, n);
        std::exit(1);
      }
    }
  };
  for (int i = 0; i < buffers; ++i) fill<<<512, 256>>>(buf[i], bytes, uint32_t(i));
  CHECK(cudaDeviceSynchronize());
  for (int p = 0; p < passes; ++p) check_all("pass");

  if (expect) {
    for (int i = 0; i < buffers; ++i) {
      std::string name = "buf" + std::to_string(i);
      if (kvpager_tag_context(reinterpret_cast<uint64_t>(buf[i]), bytes, name.c_str()) != KVPAGER_OK) {
        std::printf("cannot tag %s\n", name.c_str());
        return 1;
      }
    }
    for (int i = 0; i < buffers; i += 2) kvpager_park_context(("buf" + std::to_string(i)).c_str());
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (stat("pager.nvme_bytes") == 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const uint64_t spilled = stat("pager.nvme_bytes"), restores = stat("restores");
    std::printf("spilled to the store: %llu MiB\n", static_cast<unsigned long long>(spilled >> 20));
    if (spilled == 0) return 1;
    check_all("after park");  // direct pointers into parked, spilled buffers: restored first
    const bool restored = stat("restores") > restores && stat("unsafe_chunks") < spilled / (2u << 20);
    std::printf("restored before launch: %s\n", restored ? "yes" : "no");
    if (!restored) return 1;
    // A copy to the host reads a spilled buffer too: restored first as well.
    for (int i = 0; i < buffers; i += 2) kvpager_park_context(("buf" + std::to_string(i)).c_str());
    until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (stat("unsafe_chunks") == 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::vector<uint8_t> host(bytes);
    CHECK(cudaMemcpy(host.data(), buf[0], bytes, cudaMemcpyDeviceToHost));
    for (uint64_t k = 0; k < bytes; ++k) {
      if (host[k] != pattern(k, 0)) {
        std::printf("copy of a spilled buffer: byte %llu wrong\n", static_cast<unsigned long long>(k));
        return 1;
      }
    }
    std::printf("copy of a spilled buffer: all bytes right\n");
  }
  for (auto b : buf) CHECK(cudaFree(b));
  std::printf("all bytes verified (%d buffers x %llu MiB, %d passes)\n", buffers, static_cast<unsigned long long>(mib),
              passes);
  return 0;
}
