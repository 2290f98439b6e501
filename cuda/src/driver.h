// The real CUDA driver, as libkvpager.so (and its tests) call it: entry points
// resolved at run time through the driver's own cuGetProcAddress, at the ABI
// version this code was written against. Nothing links against libcuda, so
// the library builds and loads on machines without a GPU or a driver.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include <string>

namespace kvpager::cuda {

struct Driver {
  void* handle = nullptr;  // libcuda.so.1
  int version = 0;         // cuDriverGetVersion: 13000 for CUDA 13.0
  PFN_cuGetProcAddress_v12000 getProcAddress = nullptr;

  // Contexts and devices
  PFN_cuDriverGetVersion_v2020 driverGetVersion = nullptr;
  PFN_cuCtxGetCurrent_v4000 ctxGetCurrent = nullptr;
  PFN_cuCtxSetCurrent_v4000 ctxSetCurrent = nullptr;
  PFN_cuCtxGetDevice_v2000 ctxGetDevice = nullptr;
  PFN_cuDeviceGetAttribute_v2000 deviceGetAttribute = nullptr;
  PFN_cuDeviceTotalMem_v3020 deviceTotalMem = nullptr;
  PFN_cuDeviceGetMemPool_v11020 deviceGetMemPool = nullptr;

  // Memory
  PFN_cuMemGetInfo_v3020 memGetInfo = nullptr;
  PFN_cuMemAllocManaged_v6000 memAllocManaged = nullptr;
  PFN_cuMemFree_v3020 memFree = nullptr;
  PFN_cuMemAdvise_v12020 memAdvise = nullptr;                       // with a CUmemLocation
  PFN_cuMemPrefetchAsync_v12020 memPrefetchAsync = nullptr;         // with a CUmemLocation
  PFN_cuMemDiscardBatchAsync_v13000 memDiscardBatchAsync = nullptr;  // CUDA 13; null before
  PFN_cuMemcpyHtoDAsync_v3020 memcpyHtoDAsync = nullptr;
  PFN_cuMemcpyDtoHAsync_v3020 memcpyDtoHAsync = nullptr;
  PFN_cuMemHostAlloc_v2020 memHostAlloc = nullptr;
  PFN_cuMemFreeHost_v2000 memFreeHost = nullptr;

  // Streams and events
  PFN_cuStreamCreate_v2000 streamCreate = nullptr;
  PFN_cuStreamDestroy_v4000 streamDestroy = nullptr;
  PFN_cuStreamSynchronize_v2000 streamSynchronize = nullptr;
  PFN_cuStreamIsCapturing_v10000 streamIsCapturing = nullptr;
  PFN_cuThreadExchangeStreamCaptureMode_v10010 threadExchangeStreamCaptureMode = nullptr;
  PFN_cuEventCreate_v2000 eventCreate = nullptr;
  PFN_cuEventRecord_v2000 eventRecord = nullptr;
  PFN_cuEventQuery_v2000 eventQuery = nullptr;
  PFN_cuEventSynchronize_v2000 eventSynchronize = nullptr;
  PFN_cuEventDestroy_v4000 eventDestroy = nullptr;

  // Kernels and graphs (for scanning launches)
  PFN_cuFuncGetParamInfo_v12040 funcGetParamInfo = nullptr;  // CUDA 12.4; null before
  PFN_cuKernelGetParamInfo_v12040 kernelGetParamInfo = nullptr;
  PFN_cuGraphGetNodes_v10000 graphGetNodes = nullptr;
  PFN_cuGraphNodeGetType_v10000 graphNodeGetType = nullptr;
  PFN_cuGraphKernelNodeGetParams_v12000 graphKernelNodeGetParams = nullptr;
  PFN_cuGraphMemcpyNodeGetParams_v10000 graphMemcpyNodeGetParams = nullptr;
  PFN_cuGraphMemsetNodeGetParams_v10000 graphMemsetNodeGetParams = nullptr;
  PFN_cuGraphChildGraphNodeGetGraph_v10000 graphChildGraphNodeGetGraph = nullptr;
  PFN_cuGraphKernelNodeGetAttribute_v11000 graphKernelNodeGetAttribute = nullptr;  // device-updatable nodes

  // Resolves every entry point from an already opened libcuda. Returns false
  // (and *why says which required one is missing) if the driver is too old.
  bool load(void* libcuda, std::string* why);
  // The driver the process has loaded (RTLD_NOLOAD), or nullptr.
  static void* loaded_libcuda();
  // Whether this driver can move managed memory: prefetch/advise with a
  // location (CUDA 12.2) and, for spills, discard (CUDA 13).
  bool can_page() const { return memAdvise && memPrefetchAsync; }
  bool can_spill() const { return can_page() && memDiscardBatchAsync; }
};

// Code that may run before a sanitizer runtime has initialised (our dlsym).
#define KVP_NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))

// The libc dlsym, bypassing libkvpager's own (which hands out wrappers).
void* real_dlsym(void* handle, const char* name);
void* real_dlsym_function();

const char* error_name(CUresult r);

}  // namespace kvpager::cuda
