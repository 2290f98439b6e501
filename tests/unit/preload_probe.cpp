// A stand-in for libkvpager.so, built only for the `kvpager run` tests: when
// preloaded it says so on stderr, so a test can tell that the preload
// happened (the real library comes from cuda/, target kvpager_preload).
#include <unistd.h>

#include <cstdio>

namespace {

__attribute__((constructor)) void announce() {
  char msg[96];
  int n = std::snprintf(msg, sizeof msg, "kvpager-test-preload: loaded in pid %d\n", static_cast<int>(getpid()));
  if (n > 0) {
    [[maybe_unused]] ssize_t w = write(STDERR_FILENO, msg, static_cast<size_t>(n));
  }
}

}  // namespace
