// One file being written into /import. The bytes stream into the store as
// they arrive (a chunk at a time, never the whole file in memory); the
// context is published only when the writer closes the file and everything
// checked out, else everything written so far is removed.
//
// What the file may hold (decided by its first 8 bytes):
//  - a context export (export_format.h): every chunk is checked against its
//    checksum as it arrives, and at close the file must end exactly after
//    the last chunk. Anything else -- bad magic after a matching start, a bad
//    header, a chunk that does not match, a truncated file, bytes after the
//    end -- fails with EINVAL and leaves nothing behind.
//  - anything else: the context's raw bytes (what /contexts/<name>/kv and
//    `kvpager store get` give), cut into chunk_size chunks. Raw bytes carry
//    no checksum, so only the transfer itself can fail.
// A writer that dies with the file open (killed, or exiting with a failure
// status: writer_exit.h) abandons the import, whatever its format.
// Writes must come in order (cp, cat, dd do); a write past the end leaves a
// hole that reads as zeros (cp of a sparse file); a write over bytes already
// received is refused with EINVAL.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "kvpager/fs/export_format.h"
#include "kvpager/store/token_store.h"

namespace kvpager::fs {

class TokenFs;

struct ImportSession {
  std::string file_name;  // as created under /import
  std::string name;       // the context it becomes
  uint64_t ino = 0;
  uint32_t uid = 0;
  pid_t pid = 0;
  int64_t nlookup = 0;    // under TokenFs::mu_
  bool finished = false;  // under TokenFs::mu_: published or given up; the file is gone

  std::mutex mu;  // one write / flush at a time; guards everything below
  enum class Format : uint8_t { kUndecided, kRaw, kExport } format = Format::kUndecided;
  uint64_t received = 0;         // the file's size so far
  int error = 0;                 // sticky: the first failure's errno
  bool done = false;             // finish() ran (result in error)
  std::vector<std::byte> head;   // the first bytes, until they say which format
  std::vector<std::byte> pending;  // raw: the chunk being filled
  std::unique_ptr<ExportReader> reader;
  std::string why;               // what was wrong, for the log
  // Written by TokenFs under its store lock.
  std::unique_ptr<store::ContextWriter> writer;
  uint64_t chunks = 0;

  // These take mu. 0 or an errno.
  int write(TokenFs& fs, uint64_t off, std::span<const std::byte> data);
  int truncate(TokenFs& fs, uint64_t size);
  // Publishes the context (or fails and removes what was written). Runs
  // once; later calls return the same result.
  int finish(TokenFs& fs);
  // The writer went away mid-file (reason: for the log): finish() then removes
  // what was written instead of publishing it. No effect once finished.
  void abandon(TokenFs& fs, std::string reason);

 private:
  int feed(TokenFs& fs, std::span<const std::byte> data);
  int feed_zeros(TokenFs& fs, uint64_t n);
  int fail(TokenFs& fs, int err, std::string reason);
};

}  // namespace kvpager::fs
