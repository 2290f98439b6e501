// Helpers shared by the token store's tests.
#pragma once

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace kvpager::store::testing {

// Heavy loops shrink under sanitizers: KVPAGER_TEST_SCALE (a divisor) or
// the ASan build's own define.
inline uint64_t scale_down(uint64_t n, uint64_t asan_divisor) {
  if (const char* s = std::getenv("KVPAGER_TEST_SCALE"); s && *s) {
    uint64_t d = std::strtoull(s, nullptr, 10);
    return d ? std::max<uint64_t>(1, n / d) : n;
  }
#if defined(__SANITIZE_ADDRESS__)
  return std::max<uint64_t>(1, n / asan_divisor);
#else
  (void)asan_divisor;
  return n;
#endif
}

// A fresh directory on a disk file system (O_DIRECT works there), removed at
// the end. $KVPAGER_TEST_DIR, else /var/tmp.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("KVPAGER_TEST_DIR");
    std::string tmpl = std::string(base && *base ? base : "/var/tmp") + "/kvpager-store-test-XXXXXX";
    if (!mkdtemp(tmpl.data())) std::abort();
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Deterministic bytes from a seed (xorshift): tests regenerate what a writer
// wrote from the seed it recorded.
inline std::vector<std::byte> pattern(uint64_t seed, size_t n) {
  std::vector<std::byte> out(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
  for (; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<std::byte>(x);
  }
  return out;
}

// Regular files under dir (recursive), paths relative to dir.
inline std::vector<std::string> files_under(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file()) out.push_back(std::filesystem::relative(it->path(), dir).string());
  }
  return out;
}

// Flips one byte of a file in place.
inline bool flip_byte(const std::string& path, uint64_t offset) {
  FILE* f = std::fopen(path.c_str(), "r+b");
  if (!f) return false;
  bool good = std::fseek(f, static_cast<long>(offset), SEEK_SET) == 0;
  int c = good ? std::fgetc(f) : EOF;
  good = good && c != EOF && std::fseek(f, static_cast<long>(offset), SEEK_SET) == 0 &&
         std::fputc(c ^ 0x5A, f) != EOF;
  return std::fclose(f) == 0 && good;
}

}  // namespace kvpager::store::testing
