#include "scan.h"

#include <algorithm>

namespace kvpager::cuda {

namespace {

constexpr uint64_t kCountBits = 16;
constexpr uint64_t kFirstBits = 24;
constexpr uint64_t kUnknown = 0xFFFF;  // count: the driver cannot describe it
constexpr uint32_t kMaxParams = 0xFFFF;

uint64_t pack(uint32_t epoch, uint64_t first, uint64_t count) {
  return (uint64_t{epoch} << (kFirstBits + kCountBits)) | (first << kCountBits) | count;
}
uint32_t epoch_of(uint64_t v) { return static_cast<uint32_t>(v >> (kFirstBits + kCountBits)); }
uint64_t first_of(uint64_t v) { return (v >> kCountBits) & ((uint64_t{1} << kFirstBits) - 1); }
uint64_t count_of(uint64_t v) { return v & ((uint64_t{1} << kCountBits) - 1); }

size_t hash(uintptr_t f) { return static_cast<size_t>((f * 0x9E3779B97F4A7C15ull) >> 40); }

}  // namespace

ParamLayouts::ParamLayouts(const Driver& d)
    : d_(d), table_(new Slot[kTable]), arena_(new uint32_t[kArenaWords]) {}

CUresult ParamLayouts::param_info(CUfunction f, size_t i, size_t* off, size_t* size, bool kernel_handle) const {
  if (kernel_handle)
    return d_.kernelGetParamInfo ? d_.kernelGetParamInfo(reinterpret_cast<CUkernel>(f), i, off, size)
                                 : CUDA_ERROR_NOT_SUPPORTED;
  return d_.funcGetParamInfo ? d_.funcGetParamInfo(f, i, off, size) : CUDA_ERROR_NOT_SUPPORTED;
}

CUresult ParamLayouts::first_param(CUfunction f, size_t* off, size_t* size, bool* kernel_handle) const {
  // cuLaunchKernel takes a CUfunction or a CUkernel cast to one (what cudart
  // uses since CUDA 12; cuda.h, cuLaunchKernel). cuFuncGetParamInfo is not
  // documented to take a CUkernel and documents only CUDA_SUCCESS and
  // CUDA_ERROR_INVALID_VALUE (cuda.h, cuFuncGetParamInfo): it may answer a
  // CUkernel with INVALID_VALUE, which also means "there is no parameter 0".
  // So INVALID_VALUE means "no parameters" only if cuKernelGetParamInfo does
  // not describe the handle either; otherwise a kernel's arguments would go
  // unscanned and it could run on spilled bytes.
  *kernel_handle = false;
  const CUresult rf = param_info(f, 0, off, size, false);
  if (rf == CUDA_SUCCESS) return rf;
  const CUresult rk = param_info(f, 0, off, size, true);
  if (rk == CUDA_SUCCESS) {
    *kernel_handle = true;
    return rk;
  }
  return rf == CUDA_ERROR_INVALID_VALUE || rk == CUDA_ERROR_INVALID_VALUE ? CUDA_ERROR_INVALID_VALUE : rf;
}

bool ParamLayouts::describe(CUfunction f, std::vector<std::pair<size_t, size_t>>& params) const {
  params.clear();
  size_t off = 0, size = 0;
  bool kernel_handle = false;
  CUresult r = first_param(f, &off, &size, &kernel_handle);
  if (r == CUDA_ERROR_INVALID_VALUE) return true;  // no parameters
  if (r != CUDA_SUCCESS) return false;
  params.emplace_back(off, size);
  for (size_t i = 1; i < kMaxParams; ++i) {
    r = param_info(f, i, &off, &size, kernel_handle);
    if (r != CUDA_SUCCESS) return r == CUDA_ERROR_INVALID_VALUE;
    params.emplace_back(off, size);
  }
  return false;
}

int64_t ParamLayouts::compute(CUfunction f, uint32_t* out, size_t cap) const {
  // Same walk as describe(), without allocating: the launch path may be here.
  size_t off = 0, size = 0;
  bool kernel_handle = false;
  CUresult r = first_param(f, &off, &size, &kernel_handle);
  if (r == CUDA_ERROR_INVALID_VALUE) return 0;  // no parameters
  if (r != CUDA_SUCCESS) return -1;
  size_t n = 0;
  bool fits = true;
  for (size_t i = 0; i < kMaxParams; ++i) {
    if (i > 0) {
      r = param_info(f, i, &off, &size, kernel_handle);
      if (r == CUDA_ERROR_INVALID_VALUE) return fits ? static_cast<int64_t>(n) : static_cast<int64_t>(cap) + 1;
      if (r != CUDA_SUCCESS) return -1;
    }
    for (size_t o = (off + 7) & ~size_t{7}; o + 8 <= off + size; o += 8) {
      if (o - off > 0xFFFF) return -1;  // cannot encode (no real parameter is this large)
      if (n < cap) out[n] = static_cast<uint32_t>(i << 16 | (o - off));
      else fits = false;
      ++n;
    }
  }
  return -1;
}

ParamLayouts::Layout ParamLayouts::get(CUfunction f, uint32_t* scratch) {
  const auto key = reinterpret_cast<uintptr_t>(f);
  const uint32_t epoch = epoch_.load(std::memory_order_acquire);
  auto uncached = [&]() -> Layout {
    int64_t n = compute(f, scratch, kScratchWords);
    if (n < 0 || n > static_cast<int64_t>(kScratchWords)) return Layout{};
    return Layout{scratch, static_cast<uint32_t>(n), true};
  };
  auto from = [&](uint64_t v) -> Layout {
    if (count_of(v) == kUnknown) return Layout{};
    return Layout{&arena_[first_of(v)], static_cast<uint32_t>(count_of(v)), true};
  };
  size_t i = hash(key) & (kTable - 1);
  for (size_t probe = 0; probe < 16; ++probe, i = (i + 1) & (kTable - 1)) {
    Slot& s = table_[i];
    uintptr_t k = s.key.load(std::memory_order_acquire);
    bool mine = false;  // we made this slot: we fill it
    if (k == 0) {
      if (s.key.compare_exchange_strong(k, key, std::memory_order_acq_rel)) {
        mine = true;
        used_.fetch_add(1, std::memory_order_relaxed);
      } else if (k != key) {
        continue;
      }
    } else if (k != key) {
      continue;
    }
    uint64_t v = s.value.load(std::memory_order_acquire);
    if (v != 0 && epoch_of(v) == epoch) return from(v);
    if (!mine) {
      // Being filled by another thread (0), or filled before an unload
      // (stale): compute it ourselves, refilling the stale one.
      if (v == 0 || !s.value.compare_exchange_strong(v, 0, std::memory_order_acq_rel)) return uncached();
    }
    int64_t n = compute(f, scratch, kScratchWords);
    if (n < 0) {
      s.value.store(pack(epoch, 0, kUnknown), std::memory_order_release);
      return Layout{};
    }
    if (n > static_cast<int64_t>(kScratchWords)) {
      // Too many words to keep: scanned conservatively, and known to be, so
      // later launches do not ask the driver again (n + 1 calls each).
      s.value.store(pack(epoch, 0, kUnknown), std::memory_order_release);
      return Layout{};
    }
    const size_t first = arena_used_.fetch_add(static_cast<size_t>(n), std::memory_order_relaxed);
    if (first + static_cast<size_t>(n) > kArenaWords || first >= (size_t{1} << kFirstBits))
      return Layout{scratch, static_cast<uint32_t>(n), true};  // arena full: stays 0, computed each time
    std::copy_n(scratch, n, &arena_[first]);
    s.value.store(pack(epoch, first, static_cast<uint64_t>(n)), std::memory_order_release);
    return Layout{&arena_[first], static_cast<uint32_t>(n), true};
  }
  return uncached();
}

bool copy_range(const CUDA_MEMCPY3D& p, bool src, uint64_t* lo, uint64_t* hi) {
  const CUmemorytype type = src ? p.srcMemoryType : p.dstMemoryType;
  if (type != CU_MEMORYTYPE_DEVICE && type != CU_MEMORYTYPE_UNIFIED) return false;
  const uint64_t base = src ? p.srcDevice : p.dstDevice;
  const uint64_t pitch = src ? p.srcPitch : p.dstPitch;
  const uint64_t height = src ? p.srcHeight : p.dstHeight;
  const uint64_t x = src ? p.srcXInBytes : p.dstXInBytes, y = src ? p.srcY : p.dstY, z = src ? p.srcZ : p.dstZ;
  const uint64_t rows = p.Height ? p.Height : 1, depth = p.Depth ? p.Depth : 1;
  const uint64_t row_pitch = pitch ? pitch : p.WidthInBytes;
  const uint64_t slice = row_pitch * (height ? height : rows);
  *lo = base + x + y * row_pitch + z * slice;
  *hi = *lo + (depth - 1) * slice + (rows - 1) * row_pitch + p.WidthInBytes;
  return true;
}

bool copy_range(const CUDA_MEMCPY2D& p, bool src, uint64_t* lo, uint64_t* hi) {
  const CUmemorytype type = src ? p.srcMemoryType : p.dstMemoryType;
  if (type != CU_MEMORYTYPE_DEVICE && type != CU_MEMORYTYPE_UNIFIED) return false;
  const uint64_t base = src ? p.srcDevice : p.dstDevice;
  const uint64_t pitch = src ? p.srcPitch : p.dstPitch;
  const uint64_t x = src ? p.srcXInBytes : p.dstXInBytes, y = src ? p.srcY : p.dstY;
  const uint64_t rows = p.Height ? p.Height : 1;
  const uint64_t row_pitch = pitch ? pitch : p.WidthInBytes;
  *lo = base + x + y * row_pitch;
  *hi = *lo + (rows - 1) * row_pitch + p.WidthInBytes;
  return true;
}

bool scan_kernel_node(const ParamLayouts& layouts, const CUDA_KERNEL_NODE_PARAMS& p, CUgraphNode node,
                      std::vector<GraphRef>& out) {
  CUfunction f = p.func ? p.func : reinterpret_cast<CUfunction>(p.kern);
  if (!p.kernelParams) {
    ParamLayouts::Layout none;
    return scan_launch(none, nullptr, p.extra, [&](uint64_t v) { out.push_back(GraphRef{v, v + 1, true, node}); });
  }
  std::vector<std::pair<size_t, size_t>> params;
  if (!layouts.describe(f, params)) return false;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto [off, size] = params[i];
    for (size_t o = (off + 7) & ~size_t{7}; o + 8 <= off + size; o += 8) {
      uint64_t v;
      std::memcpy(&v, static_cast<const char*>(p.kernelParams[i]) + (o - off), sizeof v);
      out.push_back(GraphRef{v, v + 1, true, node});
    }
  }
  return true;
}

namespace {
template <typename P>
CUDA_KERNEL_NODE_PARAMS what_a_scan_reads(const P& p) {
  CUDA_KERNEL_NODE_PARAMS kp{};
  kp.func = p.func;
  kp.kernelParams = p.kernelParams;
  kp.extra = p.extra;
  return kp;
}
}  // namespace

CUDA_KERNEL_NODE_PARAMS kernel_params(const CUDA_KERNEL_NODE_PARAMS_v1& p) { return what_a_scan_reads(p); }

CUDA_KERNEL_NODE_PARAMS kernel_params(const CUDA_KERNEL_NODE_PARAMS_v3& p) {
  CUDA_KERNEL_NODE_PARAMS kp = what_a_scan_reads(p);
  kp.kern = p.kern;
  return kp;
}

void scan_memcpy_node(const CUDA_MEMCPY3D& p, CUgraphNode node, std::vector<GraphRef>& out) {
  uint64_t lo = 0, hi = 0;
  if (copy_range(p, true, &lo, &hi)) out.push_back(GraphRef{lo, hi, false, node});
  if (copy_range(p, false, &lo, &hi)) out.push_back(GraphRef{lo, hi, false, node});
}

namespace {

// CUDA_MEMSET_NODE_PARAMS and its _v2 (the same fields, and a context).
template <typename P>
void scan_memset(const P& p, CUgraphNode node, std::vector<GraphRef>& out) {
  const uint64_t rows = p.height ? p.height : 1;
  const uint64_t row = uint64_t{p.width} * p.elementSize;
  out.push_back(GraphRef{p.dst, p.dst + (rows - 1) * (p.pitch ? p.pitch : row) + row, false, node});
}

// A kernel node whose parameters the GPU itself may rewrite
// (CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE, CUDA 12.4: another kernel
// calls cudaGraphKernelNodeUpdatesApply): what it reads cannot be listed on
// the host. A driver that does not know the attribute has no such nodes.
bool device_updatable(const Driver& d, CUgraphNode node) {
  if (!d.graphKernelNodeGetAttribute) return false;
  CUkernelNodeAttrValue v{};
  if (d.graphKernelNodeGetAttribute(node, CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE, &v) != CUDA_SUCCESS)
    return false;
  return v.deviceUpdatableKernelNode.deviceUpdatable != 0;
}

// Node types that read and write no memory the pager manages.
bool touches_nothing(CUgraphNodeType type) {
  switch (type) {
    case CU_GRAPH_NODE_TYPE_EMPTY:
    case CU_GRAPH_NODE_TYPE_HOST:  // a host function cannot read device memory
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT:
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD:
    case CU_GRAPH_NODE_TYPE_EXT_SEMAS_SIGNAL:
    case CU_GRAPH_NODE_TYPE_EXT_SEMAS_WAIT:
    case CU_GRAPH_NODE_TYPE_MEM_ALLOC:
    case CU_GRAPH_NODE_TYPE_MEM_FREE:
      return true;
    default:
      return false;
  }
}

}  // namespace

void scan_memset_node(const CUDA_MEMSET_NODE_PARAMS& p, CUgraphNode node, std::vector<GraphRef>& out) {
  scan_memset(p, node, out);
}

namespace {

// owner: the top-level node whose child graph g is (null for the top level).
bool scan_nodes(const Driver& d, const ParamLayouts& layouts, CUgraph g, std::vector<GraphRef>& out,
                std::vector<CUgraphNode>* own_nodes, CUgraphNode owner, int depth) {
  if (depth > 16 || !d.graphGetNodes || !d.graphNodeGetType) return false;
  size_t n = 0;
  if (d.graphGetNodes(g, nullptr, &n) != CUDA_SUCCESS) return false;
  std::vector<CUgraphNode> nodes(n);
  if (n && d.graphGetNodes(g, nodes.data(), &n) != CUDA_SUCCESS) return false;
  for (CUgraphNode node : nodes) {
    const CUgraphNode as = owner ? owner : node;
    CUgraphNodeType type{};
    if (d.graphNodeGetType(node, &type) != CUDA_SUCCESS) return false;
    switch (type) {
      case CU_GRAPH_NODE_TYPE_KERNEL: {
        CUDA_KERNEL_NODE_PARAMS p{};
        if (!d.graphKernelNodeGetParams || d.graphKernelNodeGetParams(node, &p) != CUDA_SUCCESS) return false;
        if (device_updatable(d, node) || !scan_kernel_node(layouts, p, as, out)) return false;
        break;
      }
      case CU_GRAPH_NODE_TYPE_MEMCPY: {
        CUDA_MEMCPY3D p{};
        if (!d.graphMemcpyNodeGetParams || d.graphMemcpyNodeGetParams(node, &p) != CUDA_SUCCESS) return false;
        scan_memcpy_node(p, as, out);
        break;
      }
      case CU_GRAPH_NODE_TYPE_MEMSET: {
        CUDA_MEMSET_NODE_PARAMS p{};
        if (!d.graphMemsetNodeGetParams || d.graphMemsetNodeGetParams(node, &p) != CUDA_SUCCESS) return false;
        scan_memset(p, as, out);
        break;
      }
      case CU_GRAPH_NODE_TYPE_GRAPH: {
        CUgraph child = nullptr;
        if (!d.graphChildGraphNodeGetGraph || d.graphChildGraphNodeGetGraph(node, &child) != CUDA_SUCCESS)
          return false;
        if (!scan_nodes(d, layouts, child, out, nullptr, as, depth + 1)) return false;
        break;
      }
      default:
        // conditional bodies, batch memory operations, node types newer than this code
        if (!touches_nothing(type)) return false;
    }
    if (own_nodes && !owner) own_nodes->push_back(node);
  }
  return true;
}

}  // namespace

bool scan_graph(const Driver& d, const ParamLayouts& layouts, CUgraph g, std::vector<GraphRef>& out,
                std::vector<CUgraphNode>* own_nodes) {
  return scan_nodes(d, layouts, g, out, own_nodes, nullptr, 0);
}

bool scan_child_graph(const Driver& d, const ParamLayouts& layouts, CUgraph child, CUgraphNode node,
                      std::vector<GraphRef>& out) {
  return node && scan_nodes(d, layouts, child, out, nullptr, node, 1);
}

bool scan_node_params(const Driver& d, const ParamLayouts& layouts, const CUgraphNodeParams& p, CUgraphNode node,
                      std::vector<GraphRef>& out) {
  switch (p.type) {
    case CU_GRAPH_NODE_TYPE_KERNEL:
      return scan_kernel_node(layouts, kernel_params(p.kernel), node, out);
    case CU_GRAPH_NODE_TYPE_MEMCPY:
      scan_memcpy_node(p.memcpy.copyParams, node, out);
      return true;
    case CU_GRAPH_NODE_TYPE_MEMSET:
      scan_memset(p.memset, node, out);
      return true;
    case CU_GRAPH_NODE_TYPE_GRAPH:
      return scan_child_graph(d, layouts, p.graph.graph, node, out);
    default:
      return touches_nothing(p.type);
  }
}

}  // namespace kvpager::cuda
