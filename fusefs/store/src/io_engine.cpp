#include "io_engine.h"

#include <fmt/format.h>
#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>

namespace kvpager::store {

namespace {

class UringEngine final : public IoEngine {
 public:
  ~UringEngine() override { io_uring_queue_exit(&ring_); }

  bool init(unsigned depth, std::string* why) {
    io_uring_params p{};
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = depth * 2;
    // COOP_TASKRUN (5.19+) avoids interrupting the submitter for
    // completions; fall back to plain flags on older kernels.
    p.flags |= IORING_SETUP_COOP_TASKRUN;
    int r = io_uring_queue_init_params(depth, &ring_, &p);
    if (r == -EINVAL) {
      p = io_uring_params{};
      p.flags = IORING_SETUP_CQSIZE;
      p.cq_entries = depth * 2;
      r = io_uring_queue_init_params(depth, &ring_, &p);
    }
    if (r < 0) {
      if (why) *why = fmt::format("io_uring_queue_init: {}", std::strerror(-r));
      return false;
    }
    return true;
  }

  std::string_view name() const override { return "io_uring"; }

  bool register_buffers(std::span<const iovec> bufs, std::string* why) override {
    int r = io_uring_register_buffers(&ring_, bufs.data(), static_cast<unsigned>(bufs.size()));
    if (r < 0) {
      if (why) *why = std::strerror(-r);
      return false;
    }
    return true;
  }

  bool queue(const IoOp& op) override {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) return false;
    switch (op.kind) {
      case IoOp::Kind::kRead:
        if (op.buf_index >= 0) io_uring_prep_read_fixed(sqe, op.fd, op.buf, op.len, op.offset, op.buf_index);
        else io_uring_prep_read(sqe, op.fd, op.buf, op.len, op.offset);
        break;
      case IoOp::Kind::kWrite:
        if (op.buf_index >= 0) io_uring_prep_write_fixed(sqe, op.fd, op.buf, op.len, op.offset, op.buf_index);
        else io_uring_prep_write(sqe, op.fd, op.buf, op.len, op.offset);
        break;
      case IoOp::Kind::kOpen:
        io_uring_prep_openat(sqe, op.fd, op.path, op.flags, op.mode);
        break;
      case IoOp::Kind::kFallocate:
        io_uring_prep_fallocate(sqe, op.fd, 0, static_cast<off_t>(op.offset), static_cast<off_t>(op.len64));
        break;
    }
    io_uring_sqe_set_data64(sqe, op.user);
    ++queued_;
    return true;
  }

  int submit() override {
    if (queued_ == 0) return 0;
    int r;
    do {
      r = io_uring_submit(&ring_);
    } while (r == -EINTR);
    if (r < 0) return r;
    inflight_ += static_cast<unsigned>(r);
    queued_ -= static_cast<unsigned>(r);
    return 0;
  }

  size_t reap(std::span<IoResult> out, bool wait) override {
    if (out.empty()) return 0;
    submit();
    if (wait && inflight_ > 0 && io_uring_cq_ready(&ring_) == 0) {
      io_uring_cqe* cqe = nullptr;
      int r;
      do {
        r = io_uring_wait_cqe(&ring_, &cqe);
      } while (r == -EINTR || r == -EAGAIN);
    }
    io_uring_cqe* cqes[64];
    const unsigned want = static_cast<unsigned>(std::min<size_t>(out.size(), 64));
    const unsigned got = io_uring_peek_batch_cqe(&ring_, cqes, want);
    for (unsigned i = 0; i < got; ++i) out[i] = IoResult{io_uring_cqe_get_data64(cqes[i]), cqes[i]->res};
    io_uring_cq_advance(&ring_, got);
    const size_t n = got;
    // Floored: an op the store gave up on as lost may still complete late.
    inflight_ -= std::min(inflight_, static_cast<unsigned>(n));
    return n;
  }

  size_t outstanding() const override { return size_t{queued_} + inflight_; }

 private:
  io_uring ring_{};
  unsigned queued_ = 0;
  unsigned inflight_ = 0;
};

// Does each op at once with pread/pwrite; results wait in a queue.
class SyncEngine final : public IoEngine {
 public:
  std::string_view name() const override { return "pread/pwrite"; }
  bool register_buffers(std::span<const iovec>, std::string* why) override {
    if (why) *why = "not applicable";
    return false;
  }
  bool queue(const IoOp& op) override {
    ssize_t r = 0;
    do {
      switch (op.kind) {
        case IoOp::Kind::kRead: r = pread(op.fd, op.buf, op.len, static_cast<off_t>(op.offset)); break;
        case IoOp::Kind::kWrite: r = pwrite(op.fd, op.buf, op.len, static_cast<off_t>(op.offset)); break;
        case IoOp::Kind::kOpen: r = openat(op.fd, op.path, op.flags, op.mode); break;
        case IoOp::Kind::kFallocate:
          r = fallocate(op.fd, 0, static_cast<off_t>(op.offset), static_cast<off_t>(op.len64));
          break;
      }
    } while (r < 0 && errno == EINTR);
    done_.push_back(IoResult{op.user, r < 0 ? -errno : static_cast<int32_t>(r)});
    return true;
  }
  int submit() override { return 0; }
  size_t reap(std::span<IoResult> out, bool) override {
    size_t n = 0;
    while (n < out.size() && !done_.empty()) {
      out[n++] = done_.front();
      done_.pop_front();
    }
    return n;
  }

  size_t outstanding() const override { return done_.size(); }

 private:
  std::deque<IoResult> done_;
};

}  // namespace

std::unique_ptr<IoEngine> make_uring_engine(unsigned queue_depth, std::string* why) {
  auto e = std::make_unique<UringEngine>();
  if (!e->init(queue_depth, why)) return nullptr;
  return e;
}

std::unique_ptr<IoEngine> make_sync_engine() { return std::make_unique<SyncEngine>(); }

}  // namespace kvpager::store
