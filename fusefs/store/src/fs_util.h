// Small POSIX helpers of the token store. Private to the store.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace kvpager::store {

// An owned file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.release();
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

inline uint64_t wall_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

inline uint64_t mtime_ns(const struct stat& st) {
  return static_cast<uint64_t>(st.st_mtim.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(st.st_mtim.tv_nsec);
}

inline uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Calls fn(name, d_type) for every entry of the directory dirfd/path except
// "." and "..". false if the directory cannot be opened (errno set).
bool for_each_entry(int dirfd, const char* path, const std::function<void(const char*, unsigned char)>& fn);

// Reads a whole (small) file. false on error (errno set).
bool read_file_at(int dirfd, const char* name, std::vector<std::byte>* out, struct stat* st = nullptr);
bool read_fd(int fd, std::vector<std::byte>* out, struct stat* st = nullptr);
// pwrite until done; false on error (errno set).
bool write_all(int fd, const void* data, size_t len, uint64_t offset);
// write() until done (for O_APPEND files); false on error (errno set).
bool append_all(int fd, const void* data, size_t len);
// Unlinks every entry of dirfd/name, then the directory. Returns files removed.
size_t remove_flat_dir(int dirfd, const char* name);

}  // namespace kvpager::store
