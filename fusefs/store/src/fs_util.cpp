#include "fs_util.h"

#include <cstring>

namespace kvpager::store {

bool for_each_entry(int dirfd, const char* path, const std::function<void(const char*, unsigned char)>& fn) {
  int fd = openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  DIR* d = fdopendir(fd);
  if (!d) {
    int e = errno;
    close(fd);
    errno = e;
    return false;
  }
  while (dirent* e = readdir(d)) {
    const char* n = e->d_name;
    if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
    fn(n, e->d_type);
  }
  closedir(d);
  return true;
}

bool read_fd(int fd, std::vector<std::byte>* out, struct stat* st) {
  struct stat s{};
  if (fstat(fd, &s) != 0) return false;
  if (st) *st = s;
  out->resize(static_cast<size_t>(s.st_size));
  size_t done = 0;
  while (done < out->size()) {
    ssize_t n = pread(fd, out->data() + done, out->size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) break;  // shrank under us
    done += static_cast<size_t>(n);
  }
  out->resize(done);
  return true;
}

bool read_file_at(int dirfd, const char* name, std::vector<std::byte>* out, struct stat* st) {
  UniqueFd fd(openat(dirfd, name, O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  return read_fd(fd.get(), out, st);
}

namespace {
// Calls io(p, n, done) until len bytes are done; EINTR is retried, no
// progress is EIO.
template <typename Io>
bool all_of_it(const void* data, size_t len, Io&& io) {
  const auto* p = static_cast<const char*>(data);
  size_t done = 0;
  while (done < len) {
    ssize_t n = io(p + done, len - done, done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) {
      errno = EIO;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}
}  // namespace

bool write_all(int fd, const void* data, size_t len, uint64_t offset) {
  return all_of_it(data, len, [&](const char* p, size_t n, size_t done) {
    return pwrite(fd, p, n, static_cast<off_t>(offset + done));
  });
}

bool append_all(int fd, const void* data, size_t len) {
  return all_of_it(data, len, [&](const char* p, size_t n, size_t) { return ::write(fd, p, n); });
}

size_t remove_flat_dir(int dirfd, const char* name) {
  size_t removed = 0;
  int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    std::vector<std::string> names;
    for_each_entry(fd, ".", [&](const char* n, unsigned char) { names.emplace_back(n); });
    for (const std::string& n : names) {
      if (unlinkat(fd, n.c_str(), 0) == 0) ++removed;
    }
    close(fd);
  }
  unlinkat(dirfd, name, AT_REMOVEDIR);
  return removed;
}

}  // namespace kvpager::store
