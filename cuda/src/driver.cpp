#include "driver.h"

#include <dlfcn.h>
#include <fmt/format.h>


namespace kvpager::cuda {

namespace {

using DlsymFn = void* (*)(void*, const char*);
DlsymFn g_real_dlsym = nullptr;  // plain, constant-initialised: read with atomic builtins

}  // namespace

// The dlsym that libc exports. libkvpager.so defines its own dlsym, so a plain
// call would come back to it; dlvsym is not overridden. glibc 2.34 moved
// dlsym into libc under a new version; older ones have only GLIBC_2.2.5.
// Not instrumented by sanitizers: a sanitizer runtime resolves its own
// interceptors through dlsym before it has set itself up.
KVP_NO_SANITIZE void* real_dlsym_function() {
  DlsymFn f = __atomic_load_n(&g_real_dlsym, __ATOMIC_ACQUIRE);
  if (f) return reinterpret_cast<void*>(f);
  void* p = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
  if (!p) p = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
#if defined(__aarch64__)
  if (!p) p = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.17");
#endif
  __atomic_store_n(&g_real_dlsym, reinterpret_cast<DlsymFn>(p), __ATOMIC_RELEASE);
  return p;
}

KVP_NO_SANITIZE void* real_dlsym(void* handle, const char* name) {
  auto f = reinterpret_cast<DlsymFn>(real_dlsym_function());
  return f ? f(handle, name) : nullptr;
}

void* Driver::loaded_libcuda() { return dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD); }

bool Driver::load(void* libcuda, std::string* why) {
  handle = libcuda;
  getProcAddress = reinterpret_cast<PFN_cuGetProcAddress_v12000>(real_dlsym(libcuda, "cuGetProcAddress_v2"));
  if (!getProcAddress) {
    if (why) *why = "the driver has no cuGetProcAddress_v2 (CUDA 12.0 or newer is needed)";
    return false;
  }
  driverGetVersion = reinterpret_cast<PFN_cuDriverGetVersion_v2020>(real_dlsym(libcuda, "cuDriverGetVersion"));
  if (!driverGetVersion || driverGetVersion(&version) != CUDA_SUCCESS) version = 0;

  bool complete = true;
  std::string missing;
  // Entry points newer than the driver are simply absent (nullptr).
  auto get = [&](auto& fn, const char* name, int abi, bool required) {
    void* p = nullptr;
    CUdriverProcAddressQueryResult status{};
    if (abi <= version &&
        getProcAddress(name, &p, abi, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &status) == CUDA_SUCCESS &&
        status == CU_GET_PROC_ADDRESS_SUCCESS) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
    }
    if (!fn && required) {
      complete = false;
      missing += missing.empty() ? name : fmt::format(", {}", name);
    }
  };
  get(ctxGetCurrent, "cuCtxGetCurrent", 4000, true);
  get(ctxSetCurrent, "cuCtxSetCurrent", 4000, true);
  get(ctxGetDevice, "cuCtxGetDevice", 2000, true);
  get(deviceGetAttribute, "cuDeviceGetAttribute", 2000, true);
  get(deviceTotalMem, "cuDeviceTotalMem", 3020, true);
  get(deviceGetMemPool, "cuDeviceGetMemPool", 11020, false);
  get(memGetInfo, "cuMemGetInfo", 3020, true);
  get(memAllocManaged, "cuMemAllocManaged", 6000, true);
  get(memFree, "cuMemFree", 3020, true);
  get(memAdvise, "cuMemAdvise", 12020, false);
  get(memPrefetchAsync, "cuMemPrefetchAsync", 12020, false);
  get(memDiscardBatchAsync, "cuMemDiscardBatchAsync", 13000, false);
  get(memcpyHtoDAsync, "cuMemcpyHtoDAsync", 3020, true);
  get(memcpyDtoHAsync, "cuMemcpyDtoHAsync", 3020, true);
  get(memHostAlloc, "cuMemHostAlloc", 2020, true);
  get(memFreeHost, "cuMemFreeHost", 2000, true);
  get(streamCreate, "cuStreamCreate", 2000, true);
  get(streamDestroy, "cuStreamDestroy", 4000, true);
  get(streamSynchronize, "cuStreamSynchronize", 2000, true);
  get(streamIsCapturing, "cuStreamIsCapturing", 10000, true);
  get(threadExchangeStreamCaptureMode, "cuThreadExchangeStreamCaptureMode", 10010, false);
  get(eventCreate, "cuEventCreate", 2000, true);
  get(eventRecord, "cuEventRecord", 2000, true);
  get(eventQuery, "cuEventQuery", 2000, true);
  get(eventSynchronize, "cuEventSynchronize", 2000, true);
  get(eventDestroy, "cuEventDestroy", 4000, true);
  get(funcGetParamInfo, "cuFuncGetParamInfo", 12040, false);
  get(kernelGetParamInfo, "cuKernelGetParamInfo", 12040, false);
  get(graphGetNodes, "cuGraphGetNodes", 10000, false);
  get(graphNodeGetType, "cuGraphNodeGetType", 10000, false);
  get(graphKernelNodeGetParams, "cuGraphKernelNodeGetParams", 12000, false);
  get(graphMemcpyNodeGetParams, "cuGraphMemcpyNodeGetParams", 10000, false);
  get(graphMemsetNodeGetParams, "cuGraphMemsetNodeGetParams", 10000, false);
  get(graphChildGraphNodeGetGraph, "cuGraphChildGraphNodeGetGraph", 10000, false);
  get(graphKernelNodeGetAttribute, "cuGraphKernelNodeGetAttribute", 11000, false);
  if (!complete && why) *why = fmt::format("driver {} lacks {}", version, missing);
  return complete;
}

const char* error_name(CUresult r) {
  static thread_local char buf[32];
  switch (r) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
    case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
    default: break;
  }
  fmt::format_to_n(buf, sizeof buf - 1, "CUresult {}", static_cast<int>(r)).out[0] = '\0';
  return buf;
}

}  // namespace kvpager::cuda
