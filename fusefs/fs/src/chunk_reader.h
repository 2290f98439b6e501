// ChunkReader: reads context chunks from the token store on its own thread,
// at the store's queue depth, for the FUSE threads that serve kv and chunk
// files. A FUSE thread asks for the chunks a read needs plus a window ahead
// (the kernel reads files front to back, so the next chunks are usually
// read before they are asked for) and waits only for the ones it needs.
//
// Every chunk is checked against its manifest entry and its own header (the
// store's submit_get for manifest chunks); a chunk that fails comes back
// with kCorrupt / kNotFound / kIoError and no bytes, and the file read fails
// with EIO. Memory: each Load owns its chunk's bytes; it lives as long as a
// file handle's window or a waiting read holds it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kvpager/store/token_store.h"

namespace kvpager::fs {

// Chunk buffers, reused: a fresh 2 MiB allocation per chunk would cost a
// page fault per page and an madvise when it is freed. Also counts the bytes
// every reader holds, so read-ahead can stop at a budget.
class BufferPool;
struct PoolDelete {
  std::shared_ptr<BufferPool> pool;
  size_t bytes = 0;
  void operator()(std::byte* p) const;
};
using ChunkBuffer = std::unique_ptr<std::byte[], PoolDelete>;

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  BufferPool(size_t bytes, size_t keep) : bytes_(bytes), keep_(keep) {}
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;
  // A buffer of at least `bytes` (pooled when it fits the pool's size).
  ChunkBuffer take(size_t bytes);
  uint64_t held() const { return held_.load(std::memory_order_relaxed); }

 private:
  friend struct PoolDelete;
  void give_back(std::byte* p, size_t bytes);
  const size_t bytes_, keep_;
  std::mutex mu_;
  std::vector<std::byte*> free_;
  std::atomic<uint64_t> held_{0};
};

class ChunkReader {
 public:
  struct Load {
    store::ManifestChunk chunk;
    ChunkBuffer data;  // chunk.bytes, valid once done with kOk
    Status status = Status::kOk;
    bool done = false;  // guarded by the reader's mutex
    std::span<const std::byte> bytes() const { return {data.get(), static_cast<size_t>(chunk.bytes)}; }
  };

  // Takes a store handle of its own (read-only is enough); throws nothing.
  explicit ChunkReader(std::unique_ptr<store::TokenStore> store);
  ~ChunkReader();
  ChunkReader(const ChunkReader&) = delete;
  ChunkReader& operator=(const ChunkReader&) = delete;

  // Queues a read of one chunk. Never blocks on I/O.
  std::shared_ptr<Load> start(const store::ManifestChunk& chunk);
  // Blocks until the load is done; returns its status.
  Status wait(const Load& load);

  store::StoreStats stats() const;
  // Bytes of chunks held by loads alive (windows, reads in flight).
  uint64_t held_bytes() const { return pool_->held(); }
  uint64_t chunks_read() const { return chunks_read_.load(std::memory_order_relaxed); }
  uint64_t bytes_read() const { return bytes_read_.load(std::memory_order_relaxed); }
  uint64_t failures() const { return failures_.load(std::memory_order_relaxed); }

 private:
  void loop();
  void complete(const std::shared_ptr<Load>& load, Status st);

  std::unique_ptr<store::TokenStore> store_;  // the I/O thread's alone (stats() copies under mu_)
  std::shared_ptr<BufferPool> pool_;          // buffers of the store's max_io_bytes
  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // new loads queued, or stopping
  std::condition_variable done_cv_;  // a load finished
  std::deque<std::shared_ptr<Load>> queue_;
  bool stop_ = false;
  store::StoreStats stats_;  // refreshed by the I/O thread
  std::atomic<uint64_t> chunks_read_{0}, bytes_read_{0}, failures_{0};
  std::thread thread_;
};

}  // namespace kvpager::fs
