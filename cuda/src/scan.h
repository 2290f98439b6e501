// What a launch reads: kernel parameter layouts and the scans of launch
// arguments, copy operands and graphs.
//
// A kernel's parameters are described by the driver (cuFuncGetParamInfo /
// cuKernelGetParamInfo: offset and size of each). Every 8-byte aligned word of
// the parameter buffer is a candidate pointer: a struct passed by value is
// scanned word by word, a 4-byte int is not. Layouts are cached per function
// handle in a fixed table and arena made at start-up: the launch path reads
// the cache without a lock, fills a miss with a few driver calls (no lock held)
// and never allocates. If the cache is full, or the driver cannot describe a
// kernel, the scan is done from the driver's answers directly, or the launch
// is marked unscannable (the caller then treats it as reading everything).
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "driver.h"

namespace kvpager::cuda {

class ParamLayouts {
 public:
  static constexpr size_t kTable = 16384;        // functions (power of two)
  static constexpr size_t kArenaWords = 1 << 20;  // words over all functions (4 MiB)

  // One candidate word: parameter index << 16 | byte offset inside the parameter.
  struct Layout {
    const uint32_t* words = nullptr;
    uint32_t count = 0;
    bool known = false;  // false: the driver cannot describe this function
  };

  explicit ParamLayouts(const Driver& d);
  ParamLayouts(const ParamLayouts&) = delete;
  ParamLayouts& operator=(const ParamLayouts&) = delete;

  // Launch path. `scratch` (kScratchWords) is used when the cache cannot
  // hold the layout; the returned words then point into it.
  static constexpr size_t kScratchWords = 512;
  Layout get(CUfunction f, uint32_t* scratch);
  // Modules or libraries were unloaded: function handles may be reused.
  void invalidate() { epoch_.fetch_add(1, std::memory_order_acq_rel); }
  size_t cached() const { return used_.load(std::memory_order_relaxed); }

  // The driver's description of f: (offset, size) per parameter. false if it
  // has none (driver older than 12.4, or not a kernel handle).
  bool describe(CUfunction f, std::vector<std::pair<size_t, size_t>>& params) const;

 private:
  struct Slot {
    std::atomic<uintptr_t> key{0};
    std::atomic<uint64_t> value{0};  // epoch << 40 | first << 16... see .cpp
  };
  // Appends f's words to out (up to cap); returns the count, or -1 if the
  // driver cannot describe f, or cap + 1 if it did not fit.
  int64_t compute(CUfunction f, uint32_t* out, size_t cap) const;
  CUresult param_info(CUfunction f, size_t i, size_t* off, size_t* size, bool kernel_handle) const;
  // Parameter 0 of f, and which entry point describes f (kernel_handle: the
  // CUkernel one). CUDA_ERROR_INVALID_VALUE: f has no parameters; another
  // error: the driver cannot describe f.
  CUresult first_param(CUfunction f, size_t* off, size_t* size, bool* kernel_handle) const;

  const Driver& d_;
  std::unique_ptr<Slot[]> table_;
  std::unique_ptr<uint32_t[]> arena_;
  std::atomic<size_t> arena_used_{0};
  std::atomic<size_t> used_{0};
  std::atomic<uint32_t> epoch_{1};
};

// Calls visit(value) for every candidate word of a launch's arguments.
// Returns false if the arguments cannot be scanned (unknown layout, or an
// `extra` list we do not understand).
template <typename Visit>
bool scan_launch(const ParamLayouts::Layout& layout, void** params, void** extra, Visit&& visit) {
  if (params) {
    if (!layout.known) return false;
    for (uint32_t k = 0; k < layout.count; ++k) {
      const uint32_t w = layout.words[k];
      uint64_t v;
      std::memcpy(&v, static_cast<const char*>(params[w >> 16]) + (w & 0xFFFF), sizeof v);
      visit(v);
    }
    return true;
  }
  if (!extra) return true;  // no parameters at all
  const char* buffer = nullptr;
  size_t size = 0;
  bool have_size = false;
  for (int i = 0; i < 64; i += 2) {
    void* key = extra[i];
    if (key == CU_LAUNCH_PARAM_END) break;
    if (key == CU_LAUNCH_PARAM_BUFFER_POINTER) {
      buffer = static_cast<const char*>(extra[i + 1]);
    } else if (key == CU_LAUNCH_PARAM_BUFFER_SIZE) {
      if (!extra[i + 1]) return false;
      std::memcpy(&size, extra[i + 1], sizeof size);
      have_size = true;
    } else {
      return false;  // an option we do not know could carry parameters
    }
  }
  if (!buffer || !have_size) return !buffer;
  for (size_t off = 0; off + 8 <= size; off += 8) {
    uint64_t v;
    std::memcpy(&v, buffer + off, sizeof v);
    visit(v);
  }
  return true;
}

// A memory range a graph node touches. `point`: a kernel parameter value (the
// kernel may use anything in the allocation it points into); otherwise the
// exact bytes [lo, hi) of a copy or memset.
struct GraphRef {
  uint64_t lo;
  uint64_t hi;
  bool point;
  CUgraphNode node;  // the graph's own node it comes from (for a child graph's nodes, the child graph node)
};

// Every reference of a graph's nodes (child graphs included). false if a node
// can read or write memory in ways we cannot list (conditional bodies, batch
// memory operations, an undescribed kernel): launch the graph as reading
// everything. own_nodes, if given, gets the graph's own nodes (not those of
// its child graphs): the nodes a change through the executable can name.
bool scan_graph(const Driver& d, const ParamLayouts& layouts, CUgraph g, std::vector<GraphRef>& out,
                std::vector<CUgraphNode>* own_nodes = nullptr);

// A kernel node's parameters in the form scan_kernel_node reads (the CUDA 11
// form and the generic call's carry the same fields that matter).
inline const CUDA_KERNEL_NODE_PARAMS& kernel_params(const CUDA_KERNEL_NODE_PARAMS& p) { return p; }
CUDA_KERNEL_NODE_PARAMS kernel_params(const CUDA_KERNEL_NODE_PARAMS_v1& p);
CUDA_KERNEL_NODE_PARAMS kernel_params(const CUDA_KERNEL_NODE_PARAMS_v3& p);

// One node's references, as `node`'s, from the parameters an executable is
// given for it (cuGraphExec*NodeSetParams). false if they cannot be listed.
bool scan_kernel_node(const ParamLayouts& layouts, const CUDA_KERNEL_NODE_PARAMS& p, CUgraphNode node,
                      std::vector<GraphRef>& out);
void scan_memcpy_node(const CUDA_MEMCPY3D& p, CUgraphNode node, std::vector<GraphRef>& out);
void scan_memset_node(const CUDA_MEMSET_NODE_PARAMS& p, CUgraphNode node, std::vector<GraphRef>& out);
// A child graph node's new graph: every node of it, as `node`'s.
bool scan_child_graph(const Driver& d, const ParamLayouts& layouts, CUgraph child, CUgraphNode node,
                      std::vector<GraphRef>& out);
// cuGraphExecNodeSetParams: any node type, by its tag.
bool scan_node_params(const Driver& d, const ParamLayouts& layouts, const CUgraphNodeParams& p, CUgraphNode node,
                      std::vector<GraphRef>& out);

// Byte ranges of 2D/3D copies, for one side (src or dst). Empty if that side
// is not device memory.
bool copy_range(const CUDA_MEMCPY3D& p, bool src, uint64_t* lo, uint64_t* hi);
bool copy_range(const CUDA_MEMCPY2D& p, bool src, uint64_t* lo, uint64_t* hi);

}  // namespace kvpager::cuda
