#include "chunk_reader.h"

#include <algorithm>
#include <array>
#include <vector>

namespace kvpager::fs {

BufferPool::~BufferPool() {
  for (std::byte* p : free_) delete[] p;
}

ChunkBuffer BufferPool::take(size_t bytes) {
  held_.fetch_add(bytes, std::memory_order_relaxed);
  std::byte* p = nullptr;
  if (bytes <= bytes_) {
    std::lock_guard lock(mu_);
    if (!free_.empty()) {
      p = free_.back();
      free_.pop_back();
    }
  }
  // Not zeroed: the store fills it, or it is never served.
  if (!p) p = new std::byte[std::max(bytes, bytes_)];
  return ChunkBuffer(p, PoolDelete{shared_from_this(), bytes});
}

void BufferPool::give_back(std::byte* p, size_t bytes) {
  held_.fetch_sub(bytes, std::memory_order_relaxed);
  if (bytes <= bytes_) {
    std::lock_guard lock(mu_);
    if (free_.size() < keep_) {
      free_.push_back(p);
      return;
    }
  }
  delete[] p;
}

void PoolDelete::operator()(std::byte* p) const {
  if (pool) pool->give_back(p, bytes);
  else delete[] p;
}

ChunkReader::ChunkReader(std::unique_ptr<store::TokenStore> store) : store_(std::move(store)) {
  // Enough for a few sequential readers' windows; more are allocated and freed.
  pool_ = std::make_shared<BufferPool>(static_cast<size_t>(store_->options().max_io_bytes), 32);
  stats_ = store_->stats();
  thread_ = std::thread([this] { loop(); });
}

ChunkReader::~ChunkReader() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

std::shared_ptr<ChunkReader::Load> ChunkReader::start(const store::ManifestChunk& chunk) {
  auto load = std::make_shared<Load>();
  load->chunk = chunk;
  load->data = pool_->take(static_cast<size_t>(chunk.bytes));
  {
    std::lock_guard lock(mu_);
    if (stop_) {
      load->status = Status::kIoError;
      load->done = true;
      return load;
    }
    queue_.push_back(load);
  }
  work_cv_.notify_one();
  return load;
}

Status ChunkReader::wait(const Load& load) {
  std::unique_lock lock(mu_);
  done_cv_.wait(lock, [&] { return load.done; });
  return load.status;
}

store::StoreStats ChunkReader::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void ChunkReader::complete(const std::shared_ptr<Load>& load, Status st) {
  if (ok(st)) {
    chunks_read_.fetch_add(1, std::memory_order_relaxed);
    bytes_read_.fetch_add(load->chunk.bytes, std::memory_order_relaxed);
  } else {
    failures_.fetch_add(1, std::memory_order_relaxed);
    load->data.reset();  // never served
  }
  std::lock_guard lock(mu_);
  load->status = st;
  load->done = true;
}

void ChunkReader::loop() {
  std::unordered_map<uint64_t, std::shared_ptr<Load>> inflight;
  std::deque<std::shared_ptr<Load>> waiting;
  std::array<store::TokenStore::Completion, 64> done{};
  uint64_t next_tag = 1;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (inflight.empty() && waiting.empty()) work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) break;
      while (!queue_.empty()) {
        waiting.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    bool finished = false;
    while (!waiting.empty()) {
      const std::shared_ptr<Load>& load = waiting.front();
      const uint64_t tag = next_tag++;
      Status s = store_->submit_get(tag, load->chunk,
                                    std::span<std::byte>(load->data.get(), static_cast<size_t>(load->chunk.bytes)));
      if (s == Status::kAgain) break;  // every buffer is busy: after the next completion
      if (ok(s)) {
        inflight.emplace(tag, load);
      } else {
        complete(load, s);  // absent object, unreadable file: known at submit
        finished = true;
      }
      waiting.pop_front();
    }
    store_->flush();
    if (!inflight.empty()) {
      const size_t n = store_->wait(done);
      for (size_t i = 0; i < n; ++i) {
        auto it = inflight.find(done[i].tag);
        if (it == inflight.end()) continue;
        complete(it->second, done[i].status);
        inflight.erase(it);
      }
      finished = finished || n > 0;
    }
    if (finished) {
      store::StoreStats st = store_->stats();
      {
        std::lock_guard lock(mu_);
        stats_ = std::move(st);
      }
      done_cv_.notify_all();
    }
  }
  // Let the kernel finish with our buffers before the loads they copy into go.
  store_.reset();
  for (auto& [tag, load] : inflight) complete(load, Status::kIoError);
  std::deque<std::shared_ptr<Load>> rest;
  {
    std::lock_guard lock(mu_);
    rest.swap(queue_);
  }
  for (auto& load : waiting) complete(load, Status::kIoError);
  for (auto& load : rest) complete(load, Status::kIoError);
  done_cv_.notify_all();
}

}  // namespace kvpager::fs
