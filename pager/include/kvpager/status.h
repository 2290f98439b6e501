// Status codes for the data path. The pager and its movers never throw on the
// data path: every operation that can fail returns a Status (or a value
// paired with one). Exceptions are reserved for configuration and start-up.
#pragma once

#include <cstdint>
#include <string_view>

namespace kvpager {

enum class Status : uint8_t {
  kOk = 0,
  kNotFound,      // no such region / context / object
  kNoSpace,       // a tier (or the store) cannot make room
  kBusy,          // pinned or in flight: the operation may not touch it now
  kInvalid,       // a caller error: bad argument, illegal state transition
  kIoError,       // EIO, short read/write from the store
  kCorrupt,       // checksum mismatch: the bytes are never served
  kUnsupported,   // the mover cannot do this (e.g. no store configured)
  kAgain,         // nothing completed yet; try again
  kNoMemory,      // buffers could not be allocated (ENOMEM)
};

constexpr std::string_view to_string(Status s) {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kNotFound: return "not found";
    case Status::kNoSpace: return "no space";
    case Status::kBusy: return "busy";
    case Status::kInvalid: return "invalid";
    case Status::kIoError: return "I/O error";
    case Status::kCorrupt: return "corrupt";
    case Status::kUnsupported: return "unsupported";
    case Status::kAgain: return "again";
    case Status::kNoMemory: return "out of memory";
  }
  return "?";
}

constexpr bool ok(Status s) { return s == Status::kOk; }

}  // namespace kvpager
