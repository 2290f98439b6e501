// Every driver entry point libkvpager.so intercepts: the name cuGetProcAddress
// is asked for, the ABI versions our wrapper is written for (lo <= version <
// hi; outside them the driver's own function is handed out untouched), and
// the function-pointer type of that ABI.
//
// Everything not listed passes through untouched, notably cuMemCreate /
// cuMemMap (virtual memory management), host allocations and cuInit.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

namespace kvpager::cuda {

inline constexpr int kNoMax = 1 << 30;

// X(enum, PFN type, cuGetProcAddress name, lo, hi)
#define KVP_APIS(X)                                                                                     \
  X(kGetProcAddress, PFN_cuGetProcAddress_v11030, "cuGetProcAddress", 11030, 12000)                    \
  X(kGetProcAddressV2, PFN_cuGetProcAddress_v12000, "cuGetProcAddress", 12000, kNoMax)                 \
  X(kMemAlloc, PFN_cuMemAlloc_v3020, "cuMemAlloc", 3020, kNoMax)                                       \
  X(kMemAllocPitch, PFN_cuMemAllocPitch_v3020, "cuMemAllocPitch", 3020, kNoMax)                        \
  X(kMemAllocAsync, PFN_cuMemAllocAsync_v11020, "cuMemAllocAsync", 11020, kNoMax)                      \
  X(kMemAllocFromPoolAsync, PFN_cuMemAllocFromPoolAsync_v11020, "cuMemAllocFromPoolAsync", 11020, kNoMax) \
  X(kMemFree, PFN_cuMemFree_v3020, "cuMemFree", 3020, kNoMax)                                          \
  X(kMemFreeAsync, PFN_cuMemFreeAsync_v11020, "cuMemFreeAsync", 11020, kNoMax)                         \
  X(kMemGetInfo, PFN_cuMemGetInfo_v3020, "cuMemGetInfo", 3020, kNoMax)                                 \
  X(kIpcGetMemHandle, PFN_cuIpcGetMemHandle_v4010, "cuIpcGetMemHandle", 4010, kNoMax)                  \
  X(kLaunchKernel, PFN_cuLaunchKernel_v4000, "cuLaunchKernel", 4000, kNoMax)                           \
  X(kLaunchKernelEx, PFN_cuLaunchKernelEx_v11060, "cuLaunchKernelEx", 11060, kNoMax)                   \
  X(kLaunchCooperativeKernel, PFN_cuLaunchCooperativeKernel_v9000, "cuLaunchCooperativeKernel", 9000, kNoMax) \
  X(kGraphLaunch, PFN_cuGraphLaunch_v10000, "cuGraphLaunch", 10000, kNoMax)                            \
  X(kGraphInstantiateWithFlags, PFN_cuGraphInstantiateWithFlags_v11040, "cuGraphInstantiateWithFlags", 11040, kNoMax) \
  X(kGraphInstantiateWithParams, PFN_cuGraphInstantiateWithParams_v12000, "cuGraphInstantiateWithParams", 12000, kNoMax) \
  X(kGraphExecDestroy, PFN_cuGraphExecDestroy_v10000, "cuGraphExecDestroy", 10000, kNoMax)             \
  X(kGraphExecKernelNodeSetParams1, PFN_cuGraphExecKernelNodeSetParams_v10010, "cuGraphExecKernelNodeSetParams", 10010, 12000) \
  X(kGraphExecKernelNodeSetParams, PFN_cuGraphExecKernelNodeSetParams_v12000, "cuGraphExecKernelNodeSetParams", 12000, kNoMax) \
  X(kGraphExecMemcpyNodeSetParams, PFN_cuGraphExecMemcpyNodeSetParams_v10020, "cuGraphExecMemcpyNodeSetParams", 10020, kNoMax) \
  X(kGraphExecMemsetNodeSetParams, PFN_cuGraphExecMemsetNodeSetParams_v10020, "cuGraphExecMemsetNodeSetParams", 10020, kNoMax) \
  X(kGraphExecChildGraphNodeSetParams, PFN_cuGraphExecChildGraphNodeSetParams_v11010, "cuGraphExecChildGraphNodeSetParams", 11010, kNoMax) \
  X(kGraphExecNodeSetParams, PFN_cuGraphExecNodeSetParams_v12020, "cuGraphExecNodeSetParams", 12020, kNoMax) \
  X(kGraphExecUpdate1, PFN_cuGraphExecUpdate_v10020, "cuGraphExecUpdate", 10020, 12000)                \
  X(kGraphExecUpdate, PFN_cuGraphExecUpdate_v12000, "cuGraphExecUpdate", 12000, kNoMax)                \
  X(kModuleUnload, PFN_cuModuleUnload_v2000, "cuModuleUnload", 2000, kNoMax)                           \
  X(kLibraryUnload, PFN_cuLibraryUnload_v12000, "cuLibraryUnload", 12000, kNoMax)                      \
  X(kStreamDestroy, PFN_cuStreamDestroy_v4000, "cuStreamDestroy", 4000, kNoMax)                        \
  X(kStreamBeginCapture, PFN_cuStreamBeginCapture_v10010, "cuStreamBeginCapture", 10010, kNoMax)       \
  X(kStreamBeginCaptureToGraph, PFN_cuStreamBeginCaptureToGraph_v12030, "cuStreamBeginCaptureToGraph", 12030, kNoMax) \
  X(kStreamEndCapture, PFN_cuStreamEndCapture_v10000, "cuStreamEndCapture", 10000, kNoMax)             \
  X(kMemcpy, PFN_cuMemcpy_v4000, "cuMemcpy", 4000, kNoMax)                                             \
  X(kMemcpyAsync, PFN_cuMemcpyAsync_v4000, "cuMemcpyAsync", 4000, kNoMax)                              \
  X(kMemcpyHtoD, PFN_cuMemcpyHtoD_v3020, "cuMemcpyHtoD", 3020, kNoMax)                                 \
  X(kMemcpyDtoH, PFN_cuMemcpyDtoH_v3020, "cuMemcpyDtoH", 3020, kNoMax)                                 \
  X(kMemcpyDtoD, PFN_cuMemcpyDtoD_v3020, "cuMemcpyDtoD", 3020, kNoMax)                                 \
  X(kMemcpyHtoDAsync, PFN_cuMemcpyHtoDAsync_v3020, "cuMemcpyHtoDAsync", 3020, kNoMax)                  \
  X(kMemcpyDtoHAsync, PFN_cuMemcpyDtoHAsync_v3020, "cuMemcpyDtoHAsync", 3020, kNoMax)                  \
  X(kMemcpyDtoDAsync, PFN_cuMemcpyDtoDAsync_v3020, "cuMemcpyDtoDAsync", 3020, kNoMax)                  \
  X(kMemcpy2D, PFN_cuMemcpy2D_v3020, "cuMemcpy2D", 3020, kNoMax)                                       \
  X(kMemcpy2DUnaligned, PFN_cuMemcpy2DUnaligned_v3020, "cuMemcpy2DUnaligned", 3020, kNoMax)            \
  X(kMemcpy2DAsync, PFN_cuMemcpy2DAsync_v3020, "cuMemcpy2DAsync", 3020, kNoMax)                        \
  X(kMemcpy3D, PFN_cuMemcpy3D_v3020, "cuMemcpy3D", 3020, kNoMax)                                       \
  X(kMemcpy3DAsync, PFN_cuMemcpy3DAsync_v3020, "cuMemcpy3DAsync", 3020, kNoMax)                        \
  X(kMemcpyPeer, PFN_cuMemcpyPeer_v4000, "cuMemcpyPeer", 4000, kNoMax)                                 \
  X(kMemcpyPeerAsync, PFN_cuMemcpyPeerAsync_v4000, "cuMemcpyPeerAsync", 4000, kNoMax)                  \
  X(kMemsetD8, PFN_cuMemsetD8_v3020, "cuMemsetD8", 3020, kNoMax)                                       \
  X(kMemsetD16, PFN_cuMemsetD16_v3020, "cuMemsetD16", 3020, kNoMax)                                    \
  X(kMemsetD32, PFN_cuMemsetD32_v3020, "cuMemsetD32", 3020, kNoMax)                                    \
  X(kMemsetD8Async, PFN_cuMemsetD8Async_v3020, "cuMemsetD8Async", 3020, kNoMax)                        \
  X(kMemsetD16Async, PFN_cuMemsetD16Async_v3020, "cuMemsetD16Async", 3020, kNoMax)                     \
  X(kMemsetD32Async, PFN_cuMemsetD32Async_v3020, "cuMemsetD32Async", 3020, kNoMax)                     \
  X(kMemsetD2D8, PFN_cuMemsetD2D8_v3020, "cuMemsetD2D8", 3020, kNoMax)                                 \
  X(kMemsetD2D16, PFN_cuMemsetD2D16_v3020, "cuMemsetD2D16", 3020, kNoMax)                              \
  X(kMemsetD2D32, PFN_cuMemsetD2D32_v3020, "cuMemsetD2D32", 3020, kNoMax)                              \
  X(kMemsetD2D8Async, PFN_cuMemsetD2D8Async_v3020, "cuMemsetD2D8Async", 3020, kNoMax)                  \
  X(kMemsetD2D16Async, PFN_cuMemsetD2D16Async_v3020, "cuMemsetD2D16Async", 3020, kNoMax)               \
  X(kMemsetD2D32Async, PFN_cuMemsetD2D32Async_v3020, "cuMemsetD2D32Async", 3020, kNoMax)               \
  X(kMemcpy3DPeer, PFN_cuMemcpy3DPeer_v4000, "cuMemcpy3DPeer", 4000, kNoMax)                           \
  X(kMemcpy3DPeerAsync, PFN_cuMemcpy3DPeerAsync_v4000, "cuMemcpy3DPeerAsync", 4000, kNoMax)            \
  X(kMemcpyBatchAsync12, PFN_cuMemcpyBatchAsync_v12080, "cuMemcpyBatchAsync", 12080, 13000)            \
  X(kMemcpyBatchAsync13, PFN_cuMemcpyBatchAsync_v13000, "cuMemcpyBatchAsync", 13000, kNoMax)           \
  X(kMemcpy3DBatchAsync12, PFN_cuMemcpy3DBatchAsync_v12080, "cuMemcpy3DBatchAsync", 12080, 13000)      \
  X(kMemcpy3DBatchAsync13, PFN_cuMemcpy3DBatchAsync_v13000, "cuMemcpy3DBatchAsync", 13000, kNoMax)

// The exported libcuda symbol names of each (api, variant): variant 1 is the
// per-thread default stream one (_ptsz / _ptds). E(name, api, variant)
#define KVP_EXPORTS(E)                                                                                   \
  E(cuGetProcAddress, kGetProcAddress, 0)                                                               \
  E(cuGetProcAddress_v2, kGetProcAddressV2, 0)                                                          \
  E(cuMemAlloc_v2, kMemAlloc, 0)                                                                        \
  E(cuMemAllocPitch_v2, kMemAllocPitch, 0)                                                              \
  E(cuMemAllocAsync, kMemAllocAsync, 0)                                                                 \
  E(cuMemAllocAsync_ptsz, kMemAllocAsync, 1)                                                            \
  E(cuMemAllocFromPoolAsync, kMemAllocFromPoolAsync, 0)                                                 \
  E(cuMemAllocFromPoolAsync_ptsz, kMemAllocFromPoolAsync, 1)                                            \
  E(cuMemFree_v2, kMemFree, 0)                                                                          \
  E(cuMemFreeAsync, kMemFreeAsync, 0)                                                                   \
  E(cuMemFreeAsync_ptsz, kMemFreeAsync, 1)                                                              \
  E(cuMemGetInfo_v2, kMemGetInfo, 0)                                                                    \
  E(cuIpcGetMemHandle, kIpcGetMemHandle, 0)                                                             \
  E(cuLaunchKernel, kLaunchKernel, 0)                                                                   \
  E(cuLaunchKernel_ptsz, kLaunchKernel, 1)                                                              \
  E(cuLaunchKernelEx, kLaunchKernelEx, 0)                                                               \
  E(cuLaunchKernelEx_ptsz, kLaunchKernelEx, 1)                                                          \
  E(cuLaunchCooperativeKernel, kLaunchCooperativeKernel, 0)                                             \
  E(cuLaunchCooperativeKernel_ptsz, kLaunchCooperativeKernel, 1)                                        \
  E(cuGraphLaunch, kGraphLaunch, 0)                                                                     \
  E(cuGraphLaunch_ptsz, kGraphLaunch, 1)                                                                \
  E(cuGraphInstantiateWithFlags, kGraphInstantiateWithFlags, 0)                                         \
  E(cuGraphInstantiateWithParams, kGraphInstantiateWithParams, 0)                                       \
  E(cuGraphInstantiateWithParams_ptsz, kGraphInstantiateWithParams, 1)                                  \
  E(cuGraphExecDestroy, kGraphExecDestroy, 0)                                                           \
  E(cuGraphExecKernelNodeSetParams, kGraphExecKernelNodeSetParams1, 0)                                  \
  E(cuGraphExecKernelNodeSetParams_v2, kGraphExecKernelNodeSetParams, 0)                                \
  E(cuGraphExecMemcpyNodeSetParams, kGraphExecMemcpyNodeSetParams, 0)                                   \
  E(cuGraphExecMemsetNodeSetParams, kGraphExecMemsetNodeSetParams, 0)                                   \
  E(cuGraphExecChildGraphNodeSetParams, kGraphExecChildGraphNodeSetParams, 0)                           \
  E(cuGraphExecNodeSetParams, kGraphExecNodeSetParams, 0)                                               \
  E(cuGraphExecUpdate, kGraphExecUpdate1, 0)                                                             \
  E(cuGraphExecUpdate_v2, kGraphExecUpdate, 0)                                                          \
  E(cuModuleUnload, kModuleUnload, 0)                                                                   \
  E(cuLibraryUnload, kLibraryUnload, 0)                                                                 \
  E(cuStreamDestroy_v2, kStreamDestroy, 0)                                                              \
  E(cuStreamBeginCapture_v2, kStreamBeginCapture, 0)                                                    \
  E(cuStreamBeginCapture_v2_ptsz, kStreamBeginCapture, 1)                                               \
  E(cuStreamBeginCaptureToGraph, kStreamBeginCaptureToGraph, 0)                                         \
  E(cuStreamBeginCaptureToGraph_ptsz, kStreamBeginCaptureToGraph, 1)                                    \
  E(cuStreamEndCapture, kStreamEndCapture, 0)                                                           \
  E(cuStreamEndCapture_ptsz, kStreamEndCapture, 1)                                                      \
  E(cuMemcpy, kMemcpy, 0)                                                                               \
  E(cuMemcpy_ptds, kMemcpy, 1)                                                                          \
  E(cuMemcpyAsync, kMemcpyAsync, 0)                                                                     \
  E(cuMemcpyAsync_ptsz, kMemcpyAsync, 1)                                                                \
  E(cuMemcpyHtoD_v2, kMemcpyHtoD, 0)                                                                    \
  E(cuMemcpyHtoD_v2_ptds, kMemcpyHtoD, 1)                                                               \
  E(cuMemcpyDtoH_v2, kMemcpyDtoH, 0)                                                                    \
  E(cuMemcpyDtoH_v2_ptds, kMemcpyDtoH, 1)                                                               \
  E(cuMemcpyDtoD_v2, kMemcpyDtoD, 0)                                                                    \
  E(cuMemcpyDtoD_v2_ptds, kMemcpyDtoD, 1)                                                               \
  E(cuMemcpyHtoDAsync_v2, kMemcpyHtoDAsync, 0)                                                          \
  E(cuMemcpyHtoDAsync_v2_ptsz, kMemcpyHtoDAsync, 1)                                                     \
  E(cuMemcpyDtoHAsync_v2, kMemcpyDtoHAsync, 0)                                                          \
  E(cuMemcpyDtoHAsync_v2_ptsz, kMemcpyDtoHAsync, 1)                                                     \
  E(cuMemcpyDtoDAsync_v2, kMemcpyDtoDAsync, 0)                                                          \
  E(cuMemcpyDtoDAsync_v2_ptsz, kMemcpyDtoDAsync, 1)                                                     \
  E(cuMemcpy2D_v2, kMemcpy2D, 0)                                                                        \
  E(cuMemcpy2D_v2_ptds, kMemcpy2D, 1)                                                                   \
  E(cuMemcpy2DUnaligned_v2, kMemcpy2DUnaligned, 0)                                                      \
  E(cuMemcpy2DUnaligned_v2_ptds, kMemcpy2DUnaligned, 1)                                                 \
  E(cuMemcpy2DAsync_v2, kMemcpy2DAsync, 0)                                                              \
  E(cuMemcpy2DAsync_v2_ptsz, kMemcpy2DAsync, 1)                                                         \
  E(cuMemcpy3D_v2, kMemcpy3D, 0)                                                                        \
  E(cuMemcpy3D_v2_ptds, kMemcpy3D, 1)                                                                   \
  E(cuMemcpy3DAsync_v2, kMemcpy3DAsync, 0)                                                              \
  E(cuMemcpy3DAsync_v2_ptsz, kMemcpy3DAsync, 1)                                                         \
  E(cuMemcpyPeer, kMemcpyPeer, 0)                                                                       \
  E(cuMemcpyPeer_ptds, kMemcpyPeer, 1)                                                                  \
  E(cuMemcpyPeerAsync, kMemcpyPeerAsync, 0)                                                             \
  E(cuMemcpyPeerAsync_ptsz, kMemcpyPeerAsync, 1)                                                        \
  E(cuMemsetD8_v2, kMemsetD8, 0)                                                                        \
  E(cuMemsetD8_v2_ptds, kMemsetD8, 1)                                                                   \
  E(cuMemsetD16_v2, kMemsetD16, 0)                                                                      \
  E(cuMemsetD16_v2_ptds, kMemsetD16, 1)                                                                 \
  E(cuMemsetD32_v2, kMemsetD32, 0)                                                                      \
  E(cuMemsetD32_v2_ptds, kMemsetD32, 1)                                                                 \
  E(cuMemsetD8Async, kMemsetD8Async, 0)                                                                 \
  E(cuMemsetD8Async_ptsz, kMemsetD8Async, 1)                                                            \
  E(cuMemsetD16Async, kMemsetD16Async, 0)                                                               \
  E(cuMemsetD16Async_ptsz, kMemsetD16Async, 1)                                                          \
  E(cuMemsetD32Async, kMemsetD32Async, 0)                                                               \
  E(cuMemsetD32Async_ptsz, kMemsetD32Async, 1)                                                          \
  E(cuMemsetD2D8_v2, kMemsetD2D8, 0)                                                                    \
  E(cuMemsetD2D8_v2_ptds, kMemsetD2D8, 1)                                                               \
  E(cuMemsetD2D16_v2, kMemsetD2D16, 0)                                                                  \
  E(cuMemsetD2D16_v2_ptds, kMemsetD2D16, 1)                                                             \
  E(cuMemsetD2D32_v2, kMemsetD2D32, 0)                                                                  \
  E(cuMemsetD2D32_v2_ptds, kMemsetD2D32, 1)                                                             \
  E(cuMemsetD2D8Async, kMemsetD2D8Async, 0)                                                             \
  E(cuMemsetD2D8Async_ptsz, kMemsetD2D8Async, 1)                                                        \
  E(cuMemsetD2D16Async, kMemsetD2D16Async, 0)                                                           \
  E(cuMemsetD2D16Async_ptsz, kMemsetD2D16Async, 1)                                                      \
  E(cuMemsetD2D32Async, kMemsetD2D32Async, 0)                                                           \
  E(cuMemsetD2D32Async_ptsz, kMemsetD2D32Async, 1)                                                      \
  E(cuMemcpy3DPeer, kMemcpy3DPeer, 0)                                                                   \
  E(cuMemcpy3DPeer_ptds, kMemcpy3DPeer, 1)                                                              \
  E(cuMemcpy3DPeerAsync, kMemcpy3DPeerAsync, 0)                                                         \
  E(cuMemcpy3DPeerAsync_ptsz, kMemcpy3DPeerAsync, 1)                                                    \
  E(cuMemcpyBatchAsync, kMemcpyBatchAsync12, 0)                                                         \
  E(cuMemcpyBatchAsync_ptsz, kMemcpyBatchAsync12, 1)                                                    \
  E(cuMemcpyBatchAsync_v2, kMemcpyBatchAsync13, 0)                                                      \
  E(cuMemcpyBatchAsync_v2_ptsz, kMemcpyBatchAsync13, 1)                                                 \
  E(cuMemcpy3DBatchAsync, kMemcpy3DBatchAsync12, 0)                                                     \
  E(cuMemcpy3DBatchAsync_ptsz, kMemcpy3DBatchAsync12, 1)                                                \
  E(cuMemcpy3DBatchAsync_v2, kMemcpy3DBatchAsync13, 0)                                                  \
  E(cuMemcpy3DBatchAsync_v2_ptsz, kMemcpy3DBatchAsync13, 1)

enum class Api : uint16_t {
#define KVP_ENUM(e, pfn, name, lo, hi) e,
  KVP_APIS(KVP_ENUM)
#undef KVP_ENUM
      kCount
};
inline constexpr size_t kApiCount = static_cast<size_t>(Api::kCount);

template <Api A>
struct ApiPfn;
#define KVP_PFN(e, pfn, name, lo, hi) \
  template <>                         \
  struct ApiPfn<Api::e> {             \
    using type = pfn;                 \
  };
KVP_APIS(KVP_PFN)
#undef KVP_PFN

struct ApiInfo {
  const char* name;  // as cuGetProcAddress is asked for it
  int lo, hi;        // ABI versions our wrapper serves
};
inline constexpr ApiInfo kApiInfo[] = {
#define KVP_INFO(e, pfn, name, lo, hi) {name, lo, hi},
    KVP_APIS(KVP_INFO)
#undef KVP_INFO
};

struct ExportInfo {
  const char* name;
  Api api;
  int variant;
};
inline constexpr ExportInfo kExports[] = {
#define KVP_EXPORT_INFO(name, api, v) {#name, Api::api, v},
    KVP_EXPORTS(KVP_EXPORT_INFO)
#undef KVP_EXPORT_INFO
};

}  // namespace kvpager::cuda
