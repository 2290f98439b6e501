// Linked into the scenario program: with STANDIN_EARLY=1 its constructor uses
// CUDA before main() (and before anything of libkvpager.so ran on its own
// initiative), the way a library initialising at load time does.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>

#include <cstdlib>

namespace {
CUdeviceptr g_ptr = 0;

__attribute__((constructor)) void early() {
  if (!std::getenv("STANDIN_EARLY")) return;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) return;
  auto gpa = reinterpret_cast<PFN_cuGetProcAddress_v12000>(dlsym(lib, "cuGetProcAddress_v2"));
  void *init = nullptr, *retain = nullptr, *set = nullptr, *alloc = nullptr, *launch = nullptr, *fn = nullptr;
  CUdriverProcAddressQueryResult st{};
  gpa("cuInit", &init, 2000, 0, &st);
  gpa("cuDevicePrimaryCtxRetain", &retain, 7000, 0, &st);
  gpa("cuCtxSetCurrent", &set, 4000, 0, &st);
  gpa("cuMemAlloc", &alloc, 3020, 0, &st);
  gpa("cuLaunchKernel", &launch, 4000, 0, &st);
  CUcontext ctx = nullptr;
  reinterpret_cast<PFN_cuInit_v2000>(init)(0);
  reinterpret_cast<PFN_cuDevicePrimaryCtxRetain_v7000>(retain)(&ctx, 0);
  reinterpret_cast<PFN_cuCtxSetCurrent_v4000>(set)(ctx);
  if (reinterpret_cast<PFN_cuMemAlloc_v3020>(alloc)(&g_ptr, 8u << 20) != CUDA_SUCCESS) g_ptr = 0;
  fn = reinterpret_cast<void* (*)(const char*)>(dlsym(lib, "standin_function"))("fill");
  unsigned long long len = 4096;
  unsigned seed = 77;
  void* args[] = {&g_ptr, &len, &seed};
  reinterpret_cast<PFN_cuLaunchKernel_v4000>(launch)(static_cast<CUfunction>(fn), 1, 1, 1, 1, 1, 1, 0, nullptr, args,
                                                     nullptr);
}
}  // namespace

extern "C" CUdeviceptr standin_early_allocation() { return g_ptr; }
