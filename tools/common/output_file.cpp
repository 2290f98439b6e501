#include "common/output_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstring>
#include <filesystem>

namespace kvpager::tools {

namespace {

// The descriptor a path names by itself ("-", /dev/stdout, /dev/fd/3), or -1.
int named_descriptor(std::string_view p) {
  if (p == "-" || p == "/dev/stdout") return STDOUT_FILENO;
  if (p == "/dev/stderr") return STDERR_FILENO;
  for (std::string_view prefix : {"/dev/fd/", "/proc/self/fd/"}) {
    if (!p.starts_with(prefix)) continue;
    std::string_view digits = p.substr(prefix.size());
    int fd = -1;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), fd);
    if (ec == std::errc() && end == digits.data() + digits.size() && !digits.empty()) return fd;
  }
  return -1;
}

std::string parent_of(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

// Follows `path` while it is a symbolic link (a dangling one too: its target
// is where the output goes). Stops at a descriptor name (/proc/self/fd/1 is
// a link to "pipe:[1234]", which names no file).
bool resolve_links(std::string* path, std::string* error) {
  for (int hops = 0; hops < 40; ++hops) {
    if (named_descriptor(*path) >= 0) return true;
    struct stat st{};
    if (lstat(path->c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return true;
    char buf[PATH_MAX];
    ssize_t n = readlink(path->c_str(), buf, sizeof buf - 1);
    if (n < 0) {
      *error = fmt::format("cannot read the link {}: {}", *path, std::strerror(errno));
      return false;
    }
    std::string to(buf, static_cast<size_t>(n));
    const std::string dir = std::filesystem::path(*path).parent_path().string();
    *path = to.starts_with('/') || dir.empty() ? to : dir + "/" + to;
  }
  *error = fmt::format("{}: too many levels of symbolic links", *path);
  return false;
}

// A fresh name next to `target`: ".NAME.kvpager-<16 hex>" (hidden; the
// stem is shortened so the name fits NAME_MAX).
std::string temp_name(const std::string& target, int attempt) {
  std::filesystem::path p(target);
  std::string stem = p.filename().string().substr(0, 200);
  uint64_t r = 0;
  if (getrandom(&r, sizeof r, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof r))
    r = (static_cast<uint64_t>(getpid()) << 32) ^
        static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
        static_cast<uint64_t>(attempt);
  return fmt::format("{}/.{}.kvpager-{:016x}", parent_of(target), stem, r);
}

}  // namespace

OutputFile::~OutputFile() { discard(); }

OutputFile::OutputFile(OutputFile&& o) noexcept
    : fd_(o.fd_), own_fd_(o.own_fd_), direct_(o.direct_), replacing_(o.replacing_), target_(std::move(o.target_)), temp_(std::move(o.temp_)) {
  o.fd_ = -1;
  o.own_fd_ = false;
  o.temp_.clear();
}

OutputFile& OutputFile::operator=(OutputFile&& o) noexcept {
  if (this != &o) {
    discard();
    fd_ = o.fd_;
    own_fd_ = o.own_fd_;
    direct_ = o.direct_;
    replacing_ = o.replacing_;
    target_ = std::move(o.target_);
    temp_ = std::move(o.temp_);
    o.fd_ = -1;
    o.own_fd_ = false;
    o.temp_.clear();
  }
  return *this;
}

bool OutputFile::open(const std::string& path, std::string* error) {
  discard();
  target_ = path;
  if (!resolve_links(&target_, error)) return false;
  if (int fd = named_descriptor(target_); fd >= 0) {
    if (fcntl(fd, F_GETFD) < 0) {
      *error = fmt::format("{}: descriptor {} is not open", path, fd);
      return false;
    }
    fd_ = fd;
    own_fd_ = false;
    direct_ = true;
    return true;
  }
  struct stat st{};
  bool exists = stat(target_.c_str(), &st) == 0;
  if (!exists && errno != ENOENT) {
    *error = fmt::format("cannot write {}: {}", target_, std::strerror(errno));
    return false;
  }
  if (exists && S_ISDIR(st.st_mode)) {
    *error = fmt::format("{} is a directory; name a file", target_);
    return false;
  }
  if (exists && !S_ISREG(st.st_mode)) {
    // A device, FIFO or socket: the user means "write into it".
    fd_ = ::open(target_.c_str(), O_WRONLY | O_CLOEXEC | O_NOCTTY);
    if (fd_ < 0) {
      *error = fmt::format("cannot open {}: {}", target_, std::strerror(errno));
      return false;
    }
    own_fd_ = true;
    direct_ = true;
    return true;
  }
  // O_EXCL with O_CREAT never follows a link and never opens a file that
  // is already there: the temporary is ours, whatever lies around.
  for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
    std::string name = temp_name(target_, attempt);
    fd_ = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd_ >= 0) temp_ = std::move(name);
    else if (errno != EEXIST) break;
  }
  if (fd_ < 0) {
    *error = fmt::format("cannot create a file in {} (for {}): {}", parent_of(target_), target_, std::strerror(errno));
    return false;
  }
  own_fd_ = true;
  direct_ = false;
  // The replacement keeps the permissions of the file it replaces.
  if (exists) fchmod(fd_, st.st_mode & 07777);
  replacing_ = exists;
  return true;
}

bool OutputFile::write(std::span<const std::byte> bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd_, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) {
      errno = EIO;
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

bool OutputFile::commit(std::string* error) {
  auto fail = [&](std::string_view what) {
    *error = fmt::format("{} {}: {}", what, target_, std::strerror(errno));
    discard();
    return false;
  };
  if (direct_) {
    const int fd = fd_;
    const bool own = own_fd_;
    fd_ = -1;
    own_fd_ = false;
    if (own && close(fd) != 0) return fail("writing");
    return true;
  }
  // Replacing a file: its new bytes are on disk before its name moves, so a
  // crash leaves the old file or the new one, never an empty one.
  if (replacing_ && fdatasync(fd_) != 0) return fail("writing");
  const int fd = fd_;
  fd_ = -1;
  own_fd_ = false;
  if (close(fd) != 0) return fail("writing");
  if (rename(temp_.c_str(), target_.c_str()) != 0) return fail("cannot replace");
  temp_.clear();
  if (replacing_) {
    int dir = ::open(parent_of(target_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      fsync(dir);
      close(dir);
    }
  }
  return true;
}

void OutputFile::discard() {
  if (fd_ >= 0 && own_fd_) close(fd_);
  fd_ = -1;
  own_fd_ = false;
  if (!temp_.empty()) unlink(temp_.c_str());
  temp_.clear();
}

}  // namespace kvpager::tools
