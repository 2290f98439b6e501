// A CUDA program's view of the driver, for the scenarios that run under
// LD_PRELOAD=libkvpager.so against the stand-in driver: it loads libcuda the
// way cudart does (dlopen("libcuda.so.1") + dlsym("cuGetProcAddress_v2"), then
// every entry point through cuGetProcAddress), and reads the pager's and the
// stand-in's state back for assertions.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kvpager.h"
#include "standin.h"

namespace kvpager::testing {

inline constexpr uint64_t kMiB = 1024 * 1024;

struct Program {
  void* lib = nullptr;
  PFN_cuGetProcAddress_v12000 gpa = nullptr;
  CUcontext ctx = nullptr;

  PFN_cuInit_v2000 init = nullptr;
  PFN_cuDevicePrimaryCtxRetain_v7000 retain = nullptr;
  PFN_cuCtxSetCurrent_v4000 set_current = nullptr;
  PFN_cuMemAlloc_v3020 alloc = nullptr;
  PFN_cuMemAllocPitch_v3020 alloc_pitch = nullptr;
  PFN_cuMemAllocAsync_v11020 alloc_async = nullptr;
  PFN_cuMemFree_v3020 free = nullptr;
  PFN_cuMemFreeAsync_v11020 free_async = nullptr;
  PFN_cuMemGetInfo_v3020 get_info = nullptr;
  PFN_cuLaunchKernel_v4000 launch = nullptr;
  PFN_cuLaunchKernel_v4000 launch_ptsz = nullptr;
  PFN_cuMemcpyDtoH_v3020 dtoh = nullptr;
  PFN_cuMemcpyHtoD_v3020 htod = nullptr;
  PFN_cuMemsetD8_v3020 memset8 = nullptr;
  PFN_cuStreamCreate_v2000 stream_create = nullptr;
  PFN_cuStreamDestroy_v4000 stream_destroy = nullptr;
  PFN_cuStreamBeginCapture_v10010 begin_capture = nullptr;
  PFN_cuStreamEndCapture_v10000 end_capture = nullptr;

  // Loads the driver and makes the primary context current.
  Program() {
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!lib) throw std::runtime_error(std::string("dlopen libcuda.so.1: ") + dlerror());
    gpa = reinterpret_cast<PFN_cuGetProcAddress_v12000>(dlsym(lib, "cuGetProcAddress_v2"));
    if (!gpa) throw std::runtime_error("no cuGetProcAddress_v2");
    get(init, "cuInit", 2000);
    get(retain, "cuDevicePrimaryCtxRetain", 7000);
    get(set_current, "cuCtxSetCurrent", 4000);
    get(alloc, "cuMemAlloc", 3020);
    get(alloc_pitch, "cuMemAllocPitch", 3020);
    get(alloc_async, "cuMemAllocAsync", 11020);
    get(free, "cuMemFree", 3020);
    get(free_async, "cuMemFreeAsync", 11020);
    get(get_info, "cuMemGetInfo", 3020);
    get(launch, "cuLaunchKernel", 4000);
    get(launch_ptsz, "cuLaunchKernel", 7000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    get(dtoh, "cuMemcpyDtoH", 3020);
    get(htod, "cuMemcpyHtoD", 3020);
    get(memset8, "cuMemsetD8", 3020);
    get(stream_create, "cuStreamCreate", 2000);
    get(stream_destroy, "cuStreamDestroy", 4000);
    get(begin_capture, "cuStreamBeginCapture", 10010);
    get(end_capture, "cuStreamEndCapture", 10000);
    if (init(0) != CUDA_SUCCESS) throw std::runtime_error("cuInit");
    make_current();
  }

  void make_current() {
    if (retain(&ctx, 0) != CUDA_SUCCESS || set_current(ctx) != CUDA_SUCCESS) throw std::runtime_error("context");
  }

  // What cuGetProcAddress hands out for (name, version, flags); null if nothing.
  void* raw(const char* name, int version, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT) {
    void* p = nullptr;
    CUdriverProcAddressQueryResult st{};
    return gpa(name, &p, version, flags, &st) == CUDA_SUCCESS ? p : nullptr;
  }
  template <typename F>
  void get(F& fn, const char* name, int version, cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT) {
    void* p = raw(name, version, flags);
    if (!p) throw std::runtime_error(std::string("cuGetProcAddress ") + name);
    fn = reinterpret_cast<F>(p);
  }

  template <typename T>
  T standin(const char* name) const {
    return reinterpret_cast<T>(dlsym(lib, name));
  }
  CUfunction kernel(const char* name) const {
    return reinterpret_cast<CUfunction>(standin<void* (*)(const char*)>("standin_function")(name));
  }

  CUdeviceptr must_alloc(uint64_t size) {
    CUdeviceptr p = 0;
    if (CUresult r = alloc(&p, size)) throw std::runtime_error("cuMemAlloc failed: " + std::to_string(r));
    return p;
  }

  // Kernels of the stand-in.
  CUresult fill(CUdeviceptr p, uint64_t len, uint32_t seed, CUstream s = nullptr) {
    void* args[] = {&p, &len, &seed};
    return launch(kernel("fill"), 1, 1, 1, 1, 1, 1, 0, s, args, nullptr);
  }
  // Mismatching bytes a "check" kernel saw (UINT64_MAX if the launch failed).
  uint64_t check(CUdeviceptr p, uint64_t len, uint32_t seed, CUstream s = nullptr) {
    uint64_t bad = UINT64_MAX;
    uint64_t* out = &bad;
    void* args[] = {&p, &len, &seed, &out};
    if (launch(kernel("check"), 1, 1, 1, 1, 1, 1, 0, s, args, nullptr) != CUDA_SUCCESS) return UINT64_MAX;
    return bad;
  }
  // What the host sees at p right now (stand-in: device pointers are host addresses).
  static uint64_t host_mismatches(CUdeviceptr p, uint64_t len, uint32_t seed) {
    auto* b = reinterpret_cast<const uint8_t*>(p);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < len; ++i) bad += b[i] != standin_pattern(i, seed);
    return bad;
  }

  // --- the stand-in's call log
  std::vector<std::string> log() const {
    auto count = standin<size_t (*)()>("standin_log_count");
    auto line = standin<size_t (*)(size_t, char*, size_t)>("standin_log_line");
    std::vector<std::string> out;
    char buf[512];
    for (size_t i = 0, n = count(); i < n; ++i) {
      line(i, buf, sizeof buf);
      out.emplace_back(buf);
    }
    return out;
  }
  void clear_log() const { standin<void (*)()>("standin_log_clear")(); }
  size_t count_log(const std::string& prefix) const {
    size_t n = 0;
    for (const auto& l : log()) n += l.rfind(prefix, 0) == 0;
    return n;
  }
  // Index of the first line starting with prefix at or after `from`, or -1.
  long find_log(const std::string& prefix, long from = 0) const {
    auto lines = log();
    for (size_t i = static_cast<size_t>(from); i < lines.size(); ++i)
      if (lines[i].rfind(prefix, 0) == 0) return static_cast<long>(i);
    return -1;
  }
};

// The pager's stats (kvpager_stats) as a map; context lines split up.
struct Stats {
  std::map<std::string, std::string> kv;
  uint64_t num(const std::string& k) const {
    auto it = kv.find(k);
    return it == kv.end() ? 0 : std::stoull(it->second);
  }
  std::string str(const std::string& k) const {
    auto it = kv.find(k);
    return it == kv.end() ? "" : it->second;
  }
  // context.NAME=size hbm=.. host=.. nvme=.. parked=..: one field of it.
  uint64_t context(const std::string& name, const std::string& field) const {
    auto it = kv.find("context." + name);
    if (it == kv.end()) return UINT64_MAX;
    std::istringstream in(it->second);
    std::string tok;
    while (in >> tok) {
      auto eq = tok.find('=');
      if (eq != std::string::npos && tok.substr(0, eq) == field) return std::stoull(tok.substr(eq + 1));
    }
    return UINT64_MAX;
  }
};

inline Stats stats() {
  Stats s;
  std::string buf(1 << 16, '\0');
  unsigned long long n = kvpager_stats(buf.data(), buf.size());
  if (n == 0) return s;
  buf.resize(std::min<size_t>(n - 1, buf.size() - 1));
  std::istringstream in(buf);
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) s.kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return s;
}

// Polls until pred() holds (the pager thread works in the background).
inline bool eventually(const std::function<bool()>& pred, double seconds = 10.0) {
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

}  // namespace kvpager::testing
