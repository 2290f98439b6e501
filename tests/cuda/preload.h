// LD_PRELOAD for running a program under libkvpager.so in the tests. In
// sanitizer builds the library needs the sanitizer runtime loaded first.
#pragma once

#include <string>

namespace kvpager::testing {

inline std::string preload_value() {
  std::string p = KVPAGER_PRELOAD_LIB;
#ifdef KVPAGER_ASAN_RUNTIME
  p = std::string(KVPAGER_ASAN_RUNTIME) + ":" + p;
#endif
  return p;
}

}  // namespace kvpager::testing
