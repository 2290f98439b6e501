// Store statuses as the errno a file operation returns.
#pragma once

#include <cerrno>

#include "kvpager/status.h"

namespace kvpager::fs {

constexpr int errno_of(Status s) {
  switch (s) {
    case Status::kOk: return 0;
    case Status::kNotFound: return ENOENT;
    case Status::kNoSpace: return ENOSPC;
    case Status::kBusy: return EBUSY;
    case Status::kInvalid: return EINVAL;
    case Status::kUnsupported: return EROFS;  // a read-only store handle
    case Status::kAgain: return EAGAIN;
    case Status::kNoMemory: return ENOMEM;
    case Status::kIoError:
    case Status::kCorrupt:
      return EIO;  // never the bytes of a chunk that failed its checksum
  }
  return EIO;
}

}  // namespace kvpager::fs
