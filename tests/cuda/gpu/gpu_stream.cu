// GPU benchmark program (nvcc, static cudart), run by scripts/bench-gpu-mover.
// A kernel streams over a working set `factor` times the pager's budget, one
// slice per launch (x = x * a + 1 over the slice: read and write), for
// several passes. Modes (same footprint, same kernel):
//   pager     cudaMalloc'd slices under LD_PRELOAD=libkvpager.so; the program
//             tags each slice as a context and, like an engine adapter,
//             prefetches the slices `ahead` launches ahead and parks the ones
//             it is done with (the pager keeps HBM within its budget)
//   uvm       cudaMallocManaged slices, no hints: plain UVM faults
//   explicit  a ring of device buffers and pinned host slices, copied in
//             and out around each launch on two streams
//   launch    only launches: `iters` empty kernels with two pointer
//             arguments into the slices (run with and without LD_PRELOAD:
//             the difference is the interposer's per-launch cost)
// Prints one line: "mode=... factor=... GB/s=... seconds=... first_pass_s=...".
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "check.cuh"
#include "kvpager.h"


__global__ void step(float* x, uint64_t n, float a) {
  for (uint64_t i = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x)
    x[i] = x[i] * a + 1.0f;
}
__global__ void empty(const float*, const float*) {}

using Clock = std::chrono::steady_clock;
static double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int main(int argc, char** argv) {
  std::string mode = "pager";
  uint64_t budget_mib = 1024, slice_mib = 64;
  int factor = 2, passes = 4, ahead = 4;
  long iters = 100000;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--mode") mode = v;
    else if (k == "--budget-mib") budget_mib = std::strtoull(v, nullptr, 10);
    else if (k == "--slice-mib") slice_mib = std::strtoull(v, nullptr, 10);
    else if (k == "--factor") factor = std::atoi(v);
    else if (k == "--passes") passes = std::atoi(v);
    else if (k == "--ahead") ahead = std::atoi(v);
    else if (k == "--iters") iters = std::atol(v);
  }
  const uint64_t slice = slice_mib << 20, n = slice / sizeof(float);
  const int slices = static_cast<int>(budget_mib * factor / slice_mib);
  std::vector<float*> x(slices);
  cudaStream_t s0, s1;
  CHECK(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking));
  CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  const dim3 grid(1024), block(256);

  if (mode == "launch") {
    for (auto& p : x) CHECK(cudaMalloc(&p, slice));
    empty<<<1, 1, 0, s0>>>(x[0], x[1 % slices]);
    CHECK(cudaStreamSynchronize(s0));
    auto t = Clock::now();
    for (long i = 0; i < iters; ++i) empty<<<1, 1, 0, s0>>>(x[i % slices], x[(i + 1) % slices]);
    const double enqueue = since(t);
    CHECK(cudaStreamSynchronize(s0));
    std::printf("mode=launch kvpager=%d iters=%ld us_per_launch=%.3f\n", kvpager_loaded(), iters, enqueue / iters * 1e6);
    return 0;
  }

  auto t_alloc = Clock::now();
  std::vector<float*> host;
  std::vector<float*> ring;
  if (mode == "uvm") {
    for (auto& p : x) CHECK(cudaMallocManaged(&p, slice));
  } else if (mode == "pager") {
    if (!kvpager_loaded()) {
      std::fprintf(stderr, "pager mode needs LD_PRELOAD=libkvpager.so\n");
      return 1;
    }
    for (int i = 0; i < slices; ++i) {
      CHECK(cudaMalloc(&x[i], slice));
      kvpager_tag_context(reinterpret_cast<uint64_t>(x[i]), slice, ("s" + std::to_string(i)).c_str());
    }
  } else if (mode == "explicit") {
    host.resize(slices);
    for (auto& h : host) CHECK(cudaMallocHost(&h, slice));
    ring.resize(2);
    for (auto& d : ring) CHECK(cudaMalloc(&d, slice));
  } else {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  // Initialise on the host side of each slice (as data arriving from elsewhere would).
  for (int i = 0; i < slices; ++i) {
    std::vector<float> init(n, 1.0f);
    CHECK(cudaMemcpy(mode == "explicit" ? host[i] : x[i], init.data(), slice, cudaMemcpyDefault));
  }
  CHECK(cudaDeviceSynchronize());
  std::fprintf(stderr, "setup %.2f s\n", since(t_alloc));

  double first = 0;
  auto t0 = Clock::now();
  for (int p = 0; p < passes; ++p) {
    auto tp = Clock::now();
    for (int i = 0; i < slices; ++i) {
      if (mode == "explicit") {
        float* d = ring[i % 2];
        cudaStream_t s = i % 2 ? s1 : s0;
        CHECK(cudaMemcpyAsync(d, host[i], slice, cudaMemcpyHostToDevice, s));
        step<<<grid, block, 0, s>>>(d, n, 0.5f);
        CHECK(cudaMemcpyAsync(host[i], d, slice, cudaMemcpyDeviceToHost, s));
      } else {
        if (mode == "pager") {
          kvpager_prefetch_context(("s" + std::to_string((i + ahead) % slices)).c_str());
          if (i >= 1) kvpager_park_context(("s" + std::to_string(i - 1)).c_str());
        }
        step<<<grid, block, 0, s0>>>(x[i], n, 0.5f);
      }
    }
    CHECK(cudaDeviceSynchronize());
    if (p == 0) first = since(tp);
  }
  const double secs = since(t0);
  const double gb = double(slice) * slices * passes * (mode == "explicit" ? 1.0 : 1.0) / 1e9;
  // Every element went through `passes` steps x -> x/2 + 1 from 1: check a few.
  float expect = 1.0f;
  for (int p = 0; p < passes; ++p) expect = expect * 0.5f + 1.0f;
  float probe = 0;
  CHECK(cudaMemcpy(&probe, mode == "explicit" ? host[slices - 1] + n / 2 : x[slices - 1] + n / 2, sizeof probe,
                   cudaMemcpyDefault));
  if (probe != expect) {
    std::fprintf(stderr, "wrong result: %f != %f\n", probe, expect);
    return 1;
  }
  std::printf("mode=%s factor=%d budget_mib=%llu slices=%d GB/s=%.2f seconds=%.3f first_pass_s=%.3f\n", mode.c_str(),
              factor, static_cast<unsigned long long>(budget_mib), slices, gb / secs, secs, first);
  return 0;
}
