#include <xxhash.h>

#include <cstring>
#include <string>

#include "kvpager/store.h"

namespace kvpager {

ObjectKey chunk_key(std::string_view ns, std::string_view context, uint64_t chunk_index) {
  // Length-prefixed fields, so ("ab","c") and ("a","bc") differ.
  std::string buf;
  buf.reserve(ns.size() + context.size() + 24);
  auto put_u64 = [&](uint64_t v) {
    char b[8];
    std::memcpy(b, &v, 8);
    buf.append(b, 8);
  };
  put_u64(ns.size());
  buf.append(ns);
  put_u64(context.size());
  buf.append(context);
  put_u64(chunk_index);
  XXH128_hash_t h = XXH3_128bits(buf.data(), buf.size());
  return ObjectKey{h.high64, h.low64};
}

}  // namespace kvpager
