// The NVMe tier as the pager and the movers see it: a key -> bytes object
// store. The token store (fusefs/store) implements it for real; the simulated
// device uses a temporary-file stand-in (sim/file_store.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "kvpager/status.h"

namespace kvpager {

struct ObjectKey {
  uint64_t hi = 0;
  uint64_t lo = 0;
  friend constexpr bool operator==(const ObjectKey&, const ObjectKey&) = default;
};

struct ObjectKeyHash {
  size_t operator()(const ObjectKey& k) const { return static_cast<size_t>(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
};

// XXH3-128 of namespace + context key + chunk index: the name of one chunk of
// one context in the store, stable across processes and machines.
ObjectKey chunk_key(std::string_view ns, std::string_view context, uint64_t chunk_index);

class Store {
 public:
  virtual ~Store() = default;
  // Writes the object whole, or not at all. Writing a key again replaces it.
  virtual Status put(const ObjectKey& key, std::span<const std::byte> bytes) = 0;
  // Reads the whole object into out (out.size() must equal its size).
  // kNotFound if absent, kCorrupt if its checksum fails (never the bytes).
  virtual Status get(const ObjectKey& key, std::span<std::byte> out) = 0;
  virtual Status erase(const ObjectKey& key) = 0;
  virtual uint64_t used_bytes() const = 0;
};

}  // namespace kvpager
