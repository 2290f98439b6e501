// Region: one allocation (base, size) cut into chunks. Context: a named set of
// regions (a conversation, a session, a prefix); one per region when nothing
// names it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvpager/chunk.h"
#include "kvpager/types.h"

namespace kvpager {

struct Region {
  RegionId id;
  uint64_t base = 0;
  uint64_t size = 0;
  uint64_t chunk_size = 0;
  uint32_t nchunks = 0;
  ContextId ctx = kNoContext;
  uint64_t last_access_ns = 0;  // pager clock at the last access to any chunk
  uint64_t hits = 0;            // accesses that found their chunk resting in HBM (per-context hits)
  // Store name of chunk i: chunk key_base + i of its context. Given when the
  // region joins the context and never renumbered, so a spilled chunk keeps
  // its name when other regions of the context come and go.
  uint64_t key_base = 0;
  bool reference_queued = false;  // the pager has it queued to stage after a reference (or a hint)
  bool hint_queued = false;       // ... and that entry is a hint's (Pager::stage_context)
  // Where its chunks started: kHost for memory that exists from the start
  // (CUDA managed memory), where a dropped chunk goes back to as well.
  Tier initial = Tier::kUnpopulated;
  std::unique_ptr<Chunk[]> chunks;

  uint64_t chunk_offset(uint32_t i) const { return uint64_t{i} * chunk_size; }
  uint64_t chunk_len(uint32_t i) const {
    uint64_t off = chunk_offset(i);
    return size - off < chunk_size ? size - off : chunk_size;
  }
};

struct Context {
  ContextId id = kNoContext;
  std::string name;
  std::vector<RegionId> regions;  // in the order they joined (a split tail follows its head)
  uint64_t next_key = 0;          // key_base of the next region to join
  bool parked = false;
  uint64_t parked_at_ns = 0;
  bool pinned = false;
  // The last drop hint (pager clock): its bytes are gone until a region of
  // it is used again (Pager::bytes_dropped).
  bool dropped = false;
  uint64_t dropped_at_ns = 0;
};

}  // namespace kvpager
