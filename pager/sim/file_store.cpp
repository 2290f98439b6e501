#include "kvpager/sim/file_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "kvpager/config.h"

namespace kvpager {

namespace {
Status from_errno(int e) {
  if (e == ENOSPC || e == EDQUOT) return Status::kNoSpace;
  return Status::kIoError;
}
}  // namespace

FileStore::FileStore(const std::string& dir, uint64_t slot_bytes, uint64_t capacity_bytes)
    : slot_bytes_(slot_bytes), capacity_(capacity_bytes) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw ConfigError(fmt::format("store_dir = {}: cannot create it: {}", dir, ec.message()));
  std::string tmpl = dir + "/.kvpager-sim-XXXXXX";
  fd_ = mkstemp(tmpl.data());
  if (fd_ < 0) throw ConfigError(fmt::format("store_dir = {}: cannot create a file there: {}", dir, std::strerror(errno)));
  unlink(tmpl.c_str());  // gone when the process is
}

FileStore::~FileStore() {
  if (fd_ >= 0) close(fd_);
}

Status FileStore::put(const ObjectKey& key, std::span<const std::byte> bytes) {
  if (bytes.size() > slot_bytes_) return Status::kInvalid;
  auto it = index_.find(key);
  const uint64_t old_len = it != index_.end() ? it->second.len : 0;
  if (capacity_ != 0 && used_ - old_len + bytes.size() > capacity_) return Status::kNoSpace;
  uint64_t slot;
  if (it != index_.end()) {
    slot = it->second.slot;
  } else if (!free_.empty()) {
    slot = free_.back();
    free_.pop_back();
  } else {
    slot = next_slot_++;
  }
  auto give_back = [&] {
    if (it == index_.end()) free_.push_back(slot);
  };
  const auto off = static_cast<off_t>(slot * slot_bytes_);
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = pwrite(fd_, bytes.data() + done, bytes.size() - done, off + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status s = n < 0 ? from_errno(errno) : Status::kIoError;
      give_back();
      return s;  // the old object (if any) is now suspect: forget it
    }
    done += static_cast<size_t>(n);
  }
  Entry e{slot, bytes.size(), XXH3_64bits(bytes.data(), bytes.size())};
  used_ = used_ - old_len + bytes.size();
  index_[key] = e;
  ++puts_;
  return Status::kOk;
}

Status FileStore::get(const ObjectKey& key, std::span<std::byte> out) {
  auto it = index_.find(key);
  if (it == index_.end()) return Status::kNotFound;
  const Entry& e = it->second;
  if (out.size() != e.len) return Status::kInvalid;
  size_t done = 0;
  const auto off = static_cast<off_t>(e.slot * slot_bytes_);
  while (done < out.size()) {
    ssize_t n = pread(fd_, out.data() + done, out.size() - done, off + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::kIoError;
    done += static_cast<size_t>(n);
  }
  if (XXH3_64bits(out.data(), out.size()) != e.checksum) return Status::kCorrupt;
  return Status::kOk;
}

Status FileStore::erase(const ObjectKey& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return Status::kNotFound;
  used_ -= it->second.len;
  free_.push_back(it->second.slot);
  index_.erase(it);
  return Status::kOk;
}

bool FileStore::corrupt(const ObjectKey& key, uint64_t offset) {
  auto it = index_.find(key);
  if (it == index_.end() || offset >= it->second.len) return false;
  const auto off = static_cast<off_t>(it->second.slot * slot_bytes_ + offset);
  unsigned char b = 0;
  if (pread(fd_, &b, 1, off) != 1) return false;
  b ^= 0xFF;
  return pwrite(fd_, &b, 1, off) == 1;
}

}  // namespace kvpager
