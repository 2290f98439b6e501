// The NVMe tier of the simulated device until a real token store is given:
// objects in fixed slots of one unlinked temporary file, with an XXH3
// checksum each (a mismatch reads as kCorrupt, never as data).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvpager/store.h"

namespace kvpager {

class FileStore final : public Store {
 public:
  // Creates the temporary file in dir (created if missing). slot_bytes: the
  // largest object. capacity_bytes: 0 = unlimited; past it put() is kNoSpace.
  // Throws ConfigError if the directory or file cannot be made.
  FileStore(const std::string& dir, uint64_t slot_bytes, uint64_t capacity_bytes = 0);
  ~FileStore() override;
  FileStore(const FileStore&) = delete;
  FileStore& operator=(const FileStore&) = delete;

  Status put(const ObjectKey& key, std::span<const std::byte> bytes) override;
  Status get(const ObjectKey& key, std::span<std::byte> out) override;
  Status erase(const ObjectKey& key) override;
  uint64_t used_bytes() const override { return used_; }
  size_t objects() const { return index_.size(); }
  uint64_t puts() const { return puts_; }  // objects written (successful put calls)
  // For tests: flips one byte of an object on disk.
  bool corrupt(const ObjectKey& key, uint64_t offset);

 private:
  struct Entry {
    uint64_t slot;
    uint64_t len;
    uint64_t checksum;
  };
  int fd_ = -1;
  uint64_t slot_bytes_;
  uint64_t capacity_;
  uint64_t used_ = 0;
  uint64_t puts_ = 0;
  uint64_t next_slot_ = 0;
  std::vector<uint64_t> free_;
  std::unordered_map<ObjectKey, Entry, ObjectKeyHash> index_;
};

}  // namespace kvpager
