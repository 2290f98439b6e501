// TokenStore::bench: sequential write then read of block-sized objects
// through the asynchronous data path at the store's queue depth -- what the
// movers do when they spill and restore. scripts/bench-store runs it next to
// fio.
#include <chrono>
#include <cstring>
#include <vector>

#include "kvpager/store/token_store.h"

namespace kvpager::store {

namespace {
void fill_random(std::byte* p, size_t n, uint64_t seed) {
  uint64_t x = seed | 1;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(p + i, &x, 8);
  }
}
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

Status TokenStore::bench(const BenchOptions& o, BenchResult* out) {
  if (opt_.read_only) return Status::kUnsupported;
  if (o.block_bytes == 0 || o.block_bytes > opt_.max_io_bytes || o.total_bytes < o.block_bytes) return Status::kInvalid;
  if (pending() != 0) return Status::kBusy;
  if (Status io = io_status(); !ok(io)) return io;
  Status s = ensure_writer();
  if (!ok(s)) return s;
  const uint64_t n = o.total_bytes / o.block_bytes;
  const uint64_t qd = opt_.queue_depth;
  auto key = [&](uint64_t i) { return chunk_key("kvpager-bench", writer_id_, i); };

  // Payload bytes: random, written once (fio also reuses its buffers).
  std::vector<Buffer> bufs;
  for (Buffer b = acquire_buffer(); b.valid(); b = acquire_buffer()) bufs.push_back(b);
  for (size_t i = 0; i < bufs.size(); ++i) fill_random(bufs[i].data, o.block_bytes, i + 1);
  for (Buffer b : bufs) release_buffer(b);
  std::vector<std::vector<std::byte>> mem;  // copy mode: the caller's memory
  std::vector<uint64_t> free_mem;
  if (o.copy) {
    mem.assign(qd, std::vector<std::byte>(o.block_bytes));
    for (uint64_t i = 0; i < qd; ++i) {
      fill_random(mem[i].data(), o.block_bytes, i + 1);
      free_mem.push_back(i);
    }
  }

  std::vector<Completion> done(qd);
  Status failed = Status::kOk;
  bool stopped = false;
  // Submits op(i) for i in [0, n) keeping the queue full; on_done per completion.
  auto run = [&](auto&& submit, auto&& on_done) {
    uint64_t next = 0, finished = 0;
    while (finished < n && ok(failed)) {
      if (o.stop && o.stop()) {
        stopped = true;
        break;
      }
      while (next < n) {
        Status r = submit(next);
        if (r == Status::kAgain) break;
        if (!ok(r)) {
          failed = r;
          break;
        }
        ++next;
      }
      flush();
      size_t got = wait(done);
      if (got == 0 && next == finished) break;
      for (size_t i = 0; i < got; ++i) {
        if (!ok(done[i].status) && ok(failed)) failed = done[i].status;
        on_done(done[i]);
        ++finished;
      }
    }
    while (pending() > 0) {  // after a failure or a stop: collect the rest
      size_t got = wait(done);
      for (size_t i = 0; i < got; ++i) on_done(done[i]);
    }
  };

  // One pass over every key, puts or gets, through caller memory or through
  // the registered buffers (zero copy).
  auto pass = [&](bool put) {
    if (o.copy) {
      run(
          [&](uint64_t i) {
            if (free_mem.empty()) return Status::kAgain;
            const uint64_t m = free_mem.back();
            Status r = put ? submit_put(m, key(i), mem[m]) : submit_get(m, key(i), mem[m]);
            if (ok(r)) free_mem.pop_back();
            return r;
          },
          [&](const Completion& c) { free_mem.push_back(c.tag); });
    } else {
      run(
          [&](uint64_t i) {
            Buffer b = acquire_buffer();
            if (!b.valid()) return Status::kAgain;
            Status r = put ? submit_put(i, key(i), b, o.block_bytes) : submit_get(i, key(i), b);
            if (!ok(r)) release_buffer(b);
            return r;
          },
          [&](const Completion& c) {
            if (!put) release_buffer(c.buffer);  // a get hands its buffer back
          });
    }
  };
  auto timed = [&](bool put) {
    if (!ok(failed) || stopped) return 0.0;
    auto t0 = std::chrono::steady_clock::now();
    pass(put);
    return seconds_since(t0);
  };

  BenchResult res;
  res.objects = n;
  res.bytes = n * o.block_bytes;
  res.write_s = timed(true);
  res.rewrite_s = timed(true);  // the same keys again: the pager re-spilling written chunks
  res.read_s = timed(false);
  for (uint64_t i = 0; i < n; ++i) erase(key(i));
  res.stopped = stopped;
  if (out) *out = res;
  return failed;
}

}  // namespace kvpager::store
