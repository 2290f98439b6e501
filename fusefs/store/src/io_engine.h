// The token store's I/O engines: io_uring (registered buffers, batched
// submission) and a pread/pwrite fallback with the same interface. Private to
// the store.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace kvpager::store {

struct IoOp {
  enum class Kind : uint8_t {
    kRead,       // fd, buf, len, offset
    kWrite,      // fd, buf, len, offset
    kOpen,       // fd: directory, path, flags, mode; the result is the new fd
    kFallocate,  // fd, offset, length (len64)
  };
  uint64_t user = 0;  // handed back in the result
  Kind kind = Kind::kRead;
  int fd = -1;
  std::byte* buf = nullptr;
  uint32_t len = 0;
  uint64_t offset = 0;
  int buf_index = -1;  // registered buffer holding buf, or -1
  const char* path = nullptr;  // kOpen: must stay valid until submitted
  int flags = 0;
  unsigned mode = 0;
  uint64_t len64 = 0;  // kFallocate
};

struct IoResult {
  uint64_t user = 0;
  int32_t res = 0;  // bytes, or -errno
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  virtual std::string_view name() const = 0;
  // Registers the buffers ops will name by index. false: not registered
  // (ops then go without buf_index); *why says why.
  virtual bool register_buffers(std::span<const iovec> bufs, std::string* why) = 0;
  // Queues one op. false: the submission queue is full (submit() first).
  virtual bool queue(const IoOp& op) = 0;
  // Hands queued ops to the kernel. Returns 0 or -errno.
  virtual int submit() = 0;
  // Completed ops, at most out.size(); blocks for at least one if `wait` and
  // anything is outstanding.
  virtual size_t reap(std::span<IoResult> out, bool wait) = 0;
  // Ops queued or in flight whose results reap() has not handed back yet.
  virtual size_t outstanding() const = 0;
};

// nullptr (and the reason in *why) if io_uring cannot be set up here.
std::unique_ptr<IoEngine> make_uring_engine(unsigned queue_depth, std::string* why);
std::unique_ptr<IoEngine> make_sync_engine();

}  // namespace kvpager::store
