#include "kvpager/store/token_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <random>
#include <tuple>
#include <unordered_set>

#include "fs_util.h"
#include "io_engine.h"

namespace kvpager::store {

namespace {

// strerror(err), and for a permission error whose store it is: a store's
// files are private to the user that made it (0600/0700), so "Permission
// denied" alone leaves the user guessing what to do.
std::string access_error(const std::string& dir, int err) {
  std::string what = std::strerror(err);
  if (err != EACCES && err != EPERM) return what;
  struct stat st{};
  if (stat(dir.c_str(), &st) != 0) {
    return fmt::format("{} (a directory above it is closed to this user; choose a store of your own with --store or "
                       "store_dir)", what);
  }
  if (st.st_uid == geteuid()) return what;
  std::string owner = fmt::format("uid {}", st.st_uid);
  struct passwd pw{};
  struct passwd* found = nullptr;
  char buf[1024];
  if (getpwuid_r(st.st_uid, &pw, buf, sizeof buf, &found) == 0 && found)
    owner = fmt::format("{} (uid {})", pw.pw_name, st.st_uid);
  return fmt::format("{}: the store belongs to {} and its files are private to that user; run as that user, or choose "
                     "a store of your own with --store or store_dir",
                     what, owner);
}

constexpr char kFormatFile[] = "FORMAT";
constexpr std::string_view kFormatText = "kvpager-store 1\n";
constexpr uint64_t kNewLockGraceNs = 60ull * 1'000'000'000;
constexpr uint64_t kUnknownLen = UINT64_MAX;

uint64_t random_u64() {
  std::random_device rd;
  uint64_t v = 0;
  while (v == 0) v = (uint64_t{rd()} << 32) ^ uint64_t{rd()};
  return v;
}

// The host part of a writer id: [A-Za-z0-9-] only, at most 32 characters.
std::string host_tag() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) buf[0] = 0;
  std::string out;
  for (char* p = buf; *p && out.size() < 32; ++p) {
    const char c = *p;
    const bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
    out += keep ? c : '-';
  }
  return out.empty() ? std::string("host") : out;
}

std::string manifest_file(std::string_view ns, std::string_view name) {
  return key_hex(context_id(ns, name)) + ".m";
}

bool ends_with(std::string_view s, std::string_view suffix) { return s.ends_with(suffix); }

void key_to_bytes(const ObjectKey& k, std::byte out[16]) {
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<std::byte>(k.hi >> (8 * i));
    out[8 + i] = static_cast<std::byte>(k.lo >> (8 * i));
  }
}

ObjectKey key_from_bytes(const std::byte* p) {
  ObjectKey k;
  for (int i = 0; i < 8; ++i) {
    k.hi |= static_cast<uint64_t>(std::to_integer<uint8_t>(p[i])) << (8 * i);
    k.lo |= static_cast<uint64_t>(std::to_integer<uint8_t>(p[8 + i])) << (8 * i);
  }
  return k;
}

// Keys listed in a context journal (whole 16-byte records only: a torn tail
// is ignored).
std::vector<ObjectKey> read_journal(int dirfd, const char* name) {
  std::vector<std::byte> bytes;
  std::vector<ObjectKey> keys;
  if (!read_file_at(dirfd, name, &bytes)) return keys;
  for (size_t off = 0; off + 16 <= bytes.size(); off += 16) keys.push_back(key_from_bytes(bytes.data() + off));
  return keys;
}

void default_log(std::string_view msg) { fmt::print(stderr, "kvpager-store: {}\n", msg); }

}  // namespace

uint64_t wall_clock_ns() { return wall_ns(); }

// ---------------------------------------------------------------- options

StoreOptions StoreOptions::from_config(const Config& cfg) {
  StoreOptions o;
  o.dir = cfg.effective_store_dir();
  o.capacity_bytes = cfg.nvme_capacity;
  o.queue_depth = cfg.store_queue_depth;
  o.max_io_bytes = cfg.chunk_size;
  return o;
}

// ---------------------------------------------------------------- jobs

// One object moving between a buffer and a file. A job owns the buffer of its
// slot; a put streams the payload through it in buffer-sized segments (one
// segment for objects up to max_io_bytes), a get reads segments and hashes
// (and copies) the payload as it arrives.
struct TokenStore::Job {
  // A put of a new file: kOpen (create it), kReserve (fallocate), then
  // kTransfer; both first steps go through the engine, so with io_uring the
  // inode allocation happens off the submitting thread.
  enum class Stage : uint8_t { kOpen, kReserve, kTransfer };
  Stage stage = Stage::kTransfer;
  bool active = false;
  bool done = false;  // kInternal: finished, status valid, slot still held
  bool put = false;
  Sink sink = Sink::kInternal;
  Status status = Status::kOk;
  Status size_mismatch = Status::kInvalid;
  uint64_t tag = 0;
  ContextWriter* owner = nullptr;
  Area area = Area::kPrivate;
  ObjectKey key;
  bool from_private = false;  // get: reading this handle's own file
  int fd = -1;
  std::string temp;  // put: temp file in the writer directory, until published
  std::byte* buf = nullptr;
  bool zero_copy = false;
  const std::byte* src = nullptr;  // put, copy mode
  std::byte* dst = nullptr;        // get, copy mode (null: verify only)
  uint64_t dst_len = 0;
  uint64_t len = 0;       // payload bytes
  uint64_t file_len = 0;  // put: bytes written
  uint64_t reserved = 0;  // put: what it adds to used_ once published, held in reserved_ until it ends
  uint64_t pos = 0;       // next file offset
  uint64_t seg_start = 0, seg_end = 0;  // file range the buffer holds / is being filled
  uint64_t expect_len = kUnknownLen;
  bool check_sum = false;
  uint64_t expect_sum = 0;
  bool have_hdr = false;
  ObjectHeader hdr;
  uint64_t end = 0;        // get: file offset where the payload ends
  uint64_t hashed_to = 0;  // get: payload hashed up to this file offset
  XXH3_state_t* xx = nullptr;

  Job() : xx(XXH3_createState()) {}
  // A fresh job on this slot; everything but the buffer and hash state reset.
  void begin(bool is_put, Sink to, uint64_t t, Area a, const ObjectKey& k, int f) {
    stage = Stage::kTransfer;
    active = true;
    done = false;
    put = is_put;
    sink = to;
    status = Status::kOk;
    size_mismatch = Status::kInvalid;
    tag = t;
    owner = nullptr;
    area = a;
    key = k;
    from_private = false;
    fd = f;
    temp.clear();
    zero_copy = false;
    src = nullptr;
    dst = nullptr;
    dst_len = 0;
    len = file_len = reserved = pos = seg_start = seg_end = 0;
    expect_len = kUnknownLen;
    check_sum = false;
    expect_sum = 0;
    have_hdr = false;
    end = hashed_to = 0;
  }
  ~Job() { XXH3_freeState(xx); }
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;
};

// ---------------------------------------------------------------- open

TokenStore::TokenStore(StoreOptions opt) : opt_(std::move(opt)) {
  if (!opt_.log) opt_.log = default_log;
  if (opt_.dir.empty()) throw ConfigError("store_dir: empty path");
  if (opt_.queue_depth < 1 || opt_.queue_depth > 4096)
    throw ConfigError(fmt::format("store.queue_depth = {}: out of range: allowed 1..4096", opt_.queue_depth));
  if (opt_.max_io_bytes < 4096 || opt_.max_io_bytes > 256 * MiB)
    throw ConfigError(fmt::format("chunk_size = {}: the store's I/O buffers allow 4K..256M", format_bytes(opt_.max_io_bytes)));
  open_dirs();
  probe_alignment();
  buf_bytes_ = header_block_ + round_up(opt_.max_io_bytes, header_block_);
  scan();
}

TokenStore::~TokenStore() {
  // Let every I/O finish: the kernel may still be writing into our buffers.
  while (std::any_of(jobs_.begin(), jobs_.end(), [](const auto& j) { return j->active; })) reap(true);
  for (auto& j : jobs_) {
    if (j->fd >= 0) close(j->fd);
    if (!j->temp.empty() && writer_fd_ >= 0) unlinkat(writer_fd_, j->temp.c_str(), 0);
  }
  engine_.reset();
  if (pool_) munmap(pool_, pool_bytes_);
  if (writer_fd_ >= 0) {
    // Private objects are scratch of this handle: they go with it.
    close(writer_fd_);
    remove_flat_dir(writers_fd_, writer_id_.c_str());
    unlinkat(writers_fd_, (writer_id_ + ".lock").c_str(), 0);
    close(writer_lock_fd_);
  }
  for (int fd : {root_fd_, objects_fd_, contexts_fd_, writers_fd_}) {
    if (fd >= 0) close(fd);
  }
}

void TokenStore::log(std::string_view msg) const { opt_.log(msg); }

void TokenStore::open_dirs() {
  const std::string& dir = opt_.dir;
  if (!opt_.read_only) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw ConfigError(fmt::format("store_dir = {}: cannot create it: {}", dir, access_error(dir, ec.value())));
  }
  root_fd_ = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root_fd_ < 0) throw ConfigError(fmt::format("store_dir = {}: cannot open it: {}", dir, access_error(dir, errno)));
  // A directory that exists but cannot be written (a read-only file system,
  // another user's) would fail every put later, one EIO at a time.
  if (!opt_.read_only && faccessat(root_fd_, ".", W_OK, AT_EACCESS) != 0)
    throw ConfigError(fmt::format("store_dir = {}: not writable: {}", dir, access_error(dir, errno)));

  std::vector<std::byte> fmt_bytes;
  if (read_file_at(root_fd_, kFormatFile, &fmt_bytes)) {
    std::string_view text(reinterpret_cast<const char*>(fmt_bytes.data()), fmt_bytes.size());
    if (text != kFormatText)
      throw ConfigError(fmt::format("store_dir = {}: {} says '{}', not a kvpager store of this version", dir,
                                    kFormatFile, text.substr(0, text.find('\n'))));
  } else if (errno == EACCES || errno == EPERM) {
    throw ConfigError(fmt::format("store_dir = {}: cannot read {}: {}", dir, kFormatFile, access_error(dir, errno)));
  } else if (errno != ENOENT || opt_.read_only) {
    throw ConfigError(fmt::format("store_dir = {}: not a kvpager store ({}: {})", dir, kFormatFile, std::strerror(errno)));
  } else {
    // A new store: an empty directory, or one another process is making a
    // store of right now (only our own names in it).
    bool foreign = false;
    for_each_entry(root_fd_, ".", [&](const char* n, unsigned char) {
      std::string_view name(n);
      if (name != "objects" && name != "contexts" && name != "writers") foreign = true;
    });
    if (foreign) throw ConfigError(fmt::format("store_dir = {}: the directory is not empty and not a kvpager store", dir));
    UniqueFd fd(openat(root_fd_, kFormatFile, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (fd.valid()) {
      if (!write_all(fd.get(), kFormatText.data(), kFormatText.size(), 0))
        throw ConfigError(fmt::format("store_dir = {}: cannot write {}: {}", dir, kFormatFile, std::strerror(errno)));
    } else if (errno != EEXIST) {  // EEXIST: another process made it first
      throw ConfigError(
          fmt::format("store_dir = {}: cannot create {}: {}", dir, kFormatFile, access_error(dir, errno)));
    }
  }
  auto sub = [&](const char* name) {
    if (!opt_.read_only) mkdirat(root_fd_, name, 0700);
    int fd = openat(root_fd_, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
      throw ConfigError(fmt::format("store_dir = {}: cannot open {}/: {}", dir, name, access_error(dir, errno)));
    return fd;
  };
  objects_fd_ = sub("objects");
  contexts_fd_ = sub("contexts");
  writers_fd_ = sub("writers");
}

void TokenStore::probe_alignment() {
  direct_ = opt_.direct_io;
  struct statx sx{};
  if (statx(root_fd_, kFormatFile, AT_STATX_SYNC_AS_STAT, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
    if (sx.stx_dio_offset_align == 0) {
      // The file system says it cannot do direct I/O.
      if (direct_) fall_back_to_buffered("the file system reports no direct I/O support (statx DIOALIGN)");
    } else {
      mem_align_ = std::max<uint64_t>(sx.stx_dio_mem_align, 1);
      off_align_ = sx.stx_dio_offset_align;
    }
  }
  // Unknown: 4096 serves every common device. The header block keeps the
  // payload aligned for any offset alignment up to itself.
  header_block_ = std::bit_ceil(std::max<uint64_t>(kMinHeaderBlock, off_align_));
  if (header_block_ > kMaxHeaderBlock)
    throw ConfigError(fmt::format("store_dir = {}: direct I/O alignment {} is larger than the store supports",
                                  opt_.dir, off_align_));
  mem_align_ = std::max<uint64_t>(mem_align_, 4096);
}

void TokenStore::fall_back_to_buffered(std::string_view why) {
  if (!direct_) return;
  direct_ = false;
  log(fmt::format("O_DIRECT refused at {} ({}): using buffered I/O", opt_.dir, why));
}

// The ring and the buffers come with the first I/O, so a handle that only
// lists or removes contexts (or a scan-heavy open) does not pin
// queue_depth x max_io_bytes of memory.
bool TokenStore::ensure_io() {
  if (engine_) return true;
  if (io_broken_) return false;
  pool_bytes_ = round_up(buf_bytes_ * opt_.queue_depth, mem_align_);
  void* p = mmap(nullptr, pool_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    io_broken_ = true;
    log(fmt::format("cannot allocate {} of I/O buffers (store.queue_depth = {}): {}",
                    human_bytes(static_cast<double>(pool_bytes_)), opt_.queue_depth, std::strerror(errno)));
    return false;
  }
  madvise(p, pool_bytes_, MADV_HUGEPAGE);  // fewer pages to fault in and pin
  pool_ = static_cast<std::byte*>(p);
  std::string why;
  if (opt_.use_io_uring) {
    engine_ = make_uring_engine(opt_.queue_depth, &why);
    if (!engine_) log(fmt::format("io_uring unavailable ({}): falling back to pread/pwrite", why));
  }
  if (!engine_) engine_ = make_sync_engine();
  if (opt_.wrap_engine) engine_ = opt_.wrap_engine(std::move(engine_));
  std::vector<iovec> iov(opt_.queue_depth);
  for (uint32_t i = 0; i < opt_.queue_depth; ++i) iov[i] = iovec{pool_ + i * buf_bytes_, buf_bytes_};
  if (engine_->name() == "io_uring") {
    registered_ = engine_->register_buffers(iov, &why);
    if (!registered_) log(fmt::format("registered buffers refused ({}): using unregistered buffers", why));
  }
  jobs_.reserve(opt_.queue_depth);
  for (uint32_t i = 0; i < opt_.queue_depth; ++i) {
    jobs_.push_back(std::make_unique<Job>());
    jobs_.back()->buf = pool_ + i * buf_bytes_;
  }
  lent_.assign(opt_.queue_depth, false);
  retired_.assign(opt_.queue_depth, false);
  for (uint32_t i = opt_.queue_depth; i > 0; --i) free_slots_.push_back(static_cast<int>(i - 1));
  return true;
}

Status TokenStore::io_status() {
  if (!ensure_io()) return Status::kNoMemory;
  return retired_count_ < jobs_.size() ? Status::kOk : Status::kIoError;  // every buffer lost (fail_lost_io)
}

Status TokenStore::no_slot_status() {
  const Status io = io_status();
  return ok(io) ? Status::kBusy : io;
}

Status TokenStore::ensure_writer() {
  if (writer_fd_ >= 0) return Status::kOk;
  if (opt_.read_only) return Status::kUnsupported;
  // The lock file must never be seen unlocked while its writer lives, nor
  // outlive a writer killed while making it. So it is created nameless
  // (O_TMPFILE), locked, then linked in; where O_TMPFILE or the link is not
  // available, it is locked under a name cleaners leave alone for a minute
  // and renamed into place.
  std::string id = fmt::format("{}-{}-{:016x}", host_tag(), getpid(), random_u64());
  const std::string lock_name = id + ".lock";
  UniqueFd lock(openat(writers_fd_, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  bool linked = false;
  if (lock.valid() && flock(lock.get(), LOCK_EX) == 0) {
    const std::string proc = fmt::format("/proc/self/fd/{}", lock.get());
    linked = linkat(AT_FDCWD, proc.c_str(), writers_fd_, lock_name.c_str(), AT_SYMLINK_FOLLOW) == 0 ||
             linkat(lock.get(), "", writers_fd_, lock_name.c_str(), AT_EMPTY_PATH) == 0;
  }
  if (!linked) {
    const std::string fresh = ".new-" + lock_name;
    lock.reset(openat(writers_fd_, fresh.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!lock.valid()) return errno_status(errno);
    if (flock(lock.get(), LOCK_EX) != 0 || renameat(writers_fd_, fresh.c_str(), writers_fd_, lock_name.c_str()) != 0) {
      Status s = errno_status(errno);
      unlinkat(writers_fd_, fresh.c_str(), 0);
      return s;
    }
  }
  if (mkdirat(writers_fd_, id.c_str(), 0700) != 0) {
    Status s = errno_status(errno);
    unlinkat(writers_fd_, (id + ".lock").c_str(), 0);
    return s;
  }
  int dfd = openat(writers_fd_, id.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    Status s = errno_status(errno);
    unlinkat(writers_fd_, id.c_str(), AT_REMOVEDIR);
    unlinkat(writers_fd_, (id + ".lock").c_str(), 0);
    return s;
  }
  writer_id_ = std::move(id);
  writer_lock_fd_ = lock.release();
  writer_fd_ = dfd;
  return Status::kOk;
}

uint64_t TokenStore::file_bytes(uint64_t payload) const { return round_up(header_block_ + payload, off_align_); }

std::string TokenStore::object_path(const ObjectKey& key) const {
  std::string hex = key_hex(key);
  return hex.substr(0, 2) + "/" + hex;
}

Status TokenStore::errno_status(int e) {
  if (e == ENOSPC || e == EDQUOT) return note_nospace();
  if (e == ENOENT) return Status::kNotFound;
  ++st_.io_errors;
  return Status::kIoError;
}

Status TokenStore::note_nospace() {
  ++st_.nospace_events;
  drop_spares(UINT64_MAX);  // give the file system back what we hold
  nospace_since_ns_ = wall_ns();
  if (!nospace_) {
    nospace_ = true;
    log(fmt::format("no space left in {}: puts through this handle are refused until it frees bytes or 5 s "
                    "have passed (a new handle, e.g. the next kvpager command, tries again at once)",
                    opt_.dir));
  }
  return Status::kNoSpace;
}

void TokenStore::bytes_freed() { nospace_ = false; }

// ---------------------------------------------------------------- scan

void TokenStore::walk_writers(uint64_t now, std::unordered_set<ObjectKey, ObjectKeyHash>* protect,
                              std::vector<std::pair<std::string, int>>* dead, bool clean) {
  std::vector<std::string> dirs, locks, fresh;
  for_each_entry(writers_fd_, ".", [&](const char* n, unsigned char type) {
    std::string_view name(n);
    if (name.starts_with(".new-")) fresh.emplace_back(name);
    else if (ends_with(name, ".lock")) locks.emplace_back(name.substr(0, name.size() - 5));
    else if (type == DT_DIR || type == DT_UNKNOWN) dirs.emplace_back(name);
  });
  std::unordered_set<std::string> have_lock(locks.begin(), locks.end());
  others_private_ = 0;
  for (const std::string& id : locks) {
    if (id == writer_id_) continue;
    int fd = openat(writers_fd_, (id + ".lock").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      // Its writer is gone (the kernel dropped the lock with the process).
      if (dead) dead->emplace_back(id, fd);
      else close(fd);
      continue;
    }
    close(fd);
    int dfd = openat(writers_fd_, id.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) continue;
    for_each_entry(dfd, ".", [&](const char* n, unsigned char) {
      if (n[0] == 'j') {
        for (const ObjectKey& k : read_journal(dfd, n)) protect->insert(k);
      } else if (parse_key_hex(n)) {
        struct stat st{};
        if (fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) == 0) others_private_ += static_cast<uint64_t>(st.st_size);
      }
    });
    close(dfd);
  }
  if (!clean) return;
  // A lock file that never got its name: its creator died within a few
  // instructions, or is creating it right now (then it is young).
  for (const std::string& name : fresh) {
    struct stat st{};
    UniqueFd fd(openat(writers_fd_, name.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid() || fstat(fd.get(), &st) != 0 || mtime_ns(st) + kNewLockGraceNs > now) continue;
    if (flock(fd.get(), LOCK_EX | LOCK_NB) == 0 && unlinkat(writers_fd_, name.c_str(), 0) == 0) ++st_.leftovers_removed;
  }
  // A directory whose lock is gone: a cleaner died half-way.
  for (const std::string& id : dirs) {
    if (have_lock.count(id) || id == writer_id_) continue;
    if (faccessat(writers_fd_, (id + ".lock").c_str(), F_OK, 0) == 0) continue;
    st_.leftovers_removed += remove_flat_dir(writers_fd_, id.c_str());
  }
}

void TokenStore::scan() {
  const uint64_t start = wall_ns();
  // 1. Writers. Live ones (lock held): their journals protect objects they
  // are publishing. Dead ones: cleaned below, once the manifests are known.
  std::unordered_set<ObjectKey, ObjectKeyHash> protect;
  std::vector<std::pair<std::string, int>> dead;
  walk_writers(start, &protect, opt_.read_only ? nullptr : &dead, !opt_.read_only);

  // 2. Manifests, read after the journals: a publication that completes in
  // between is then seen in its writer's journal, in its manifest, or both.
  contexts_.clear();
  shared_.clear();
  std::vector<std::string> manifests;
  for_each_entry(contexts_fd_, ".", [&](const char* n, unsigned char) {
    if (ends_with(n, ".m")) manifests.emplace_back(n);
  });
  std::vector<std::tuple<std::string, Manifest, uint64_t, uint64_t>> loaded;
  size_t chunks = 0;
  for (const std::string& file : manifests) {
    Manifest m;
    uint64_t ino = 0, mt = 0;
    if (!ok(load_manifest_file(file, &m, &ino, &mt))) continue;
    chunks += m.chunks.size();
    loaded.emplace_back(file, std::move(m), ino, mt);
  }
  shared_.reserve(chunks + chunks / 8);
  contexts_.reserve(loaded.size());
  for (auto& [file, m, ino, mt] : loaded) add_manifest(file, std::move(m), ino, mt);

  // 3. Dead writers: objects of contexts they never published, then the rest.
  for (auto& [id, fd] : dead) cleanup_dead_writer(id, fd);

  // 4. Published objects.
  used_ = 0;
  for_each_entry(objects_fd_, ".", [&](const char* sub, unsigned char) {
    if (std::strlen(sub) != 2) return;
    int dfd = openat(objects_fd_, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return;
    for_each_entry(dfd, ".", [&](const char* n, unsigned char) {
      auto key = parse_key_hex(n);
      if (!key) return;
      auto it = shared_.find(*key);
      if (it != shared_.end() && it->second.refs > 0) {
        it->second.on_disk = true;
        return;
      }
      // Named by no manifest: an orphan unless someone is publishing it.
      struct stat st{};
      if (fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
      if (!opt_.read_only && !protect.count(*key) && mtime_ns(st) + opt_.orphan_grace_ns <= start) {
        if (unlinkat(dfd, n, 0) == 0) ++st_.leftovers_removed;
        return;
      }
      ObjInfo& o = shared_[*key];
      o.on_disk = true;
      o.payload = static_cast<uint64_t>(st.st_size) > header_block_ ? static_cast<uint64_t>(st.st_size) - header_block_ : 0;
    });
    close(dfd);
  });
  for (auto& [key, o] : shared_) {
    if (o.on_disk) used_ += file_bytes(o.payload);
  }
  used_ += others_private_;
  // 5. Expired contexts.
  if (!opt_.read_only) expire();
}

void TokenStore::cleanup_dead_writer(const std::string& id, int lock_fd) {
  int dfd = openat(writers_fd_, id.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    for_each_entry(dfd, ".", [&](const char* n, unsigned char) {
      if (n[0] != 'j') return;
      for (const ObjectKey& k : read_journal(dfd, n)) {
        auto it = shared_.find(k);
        if (it != shared_.end() && it->second.refs > 0) continue;  // published after all
        if (unlinkat(objects_fd_, object_path(k).c_str(), 0) == 0) ++st_.leftovers_removed;
        if (it != shared_.end()) shared_.erase(it);
      }
    });
    close(dfd);
  }
  st_.leftovers_removed += remove_flat_dir(writers_fd_, id.c_str());
  unlinkat(writers_fd_, (id + ".lock").c_str(), 0);
  close(lock_fd);
}

Status TokenStore::load_manifest_file(const std::string& file, Manifest* out, uint64_t* ino, uint64_t* mtime) {
  std::vector<std::byte> bytes;
  struct stat st{};
  if (!read_file_at(contexts_fd_, file.c_str(), &bytes, &st)) return errno == ENOENT ? Status::kNotFound : Status::kIoError;
  std::string why;
  auto m = parse_manifest(bytes, &why);
  if (m && manifest_file(m->meta.ns, m->meta.name) != file) {
    m.reset();
    why = "it names another context";
  }
  if (!m) {
    // Counted and told once per damaged file, however often it is met.
    auto [it, fresh] = bad_manifests_.try_emplace(file, static_cast<uint64_t>(st.st_ino));
    if (fresh || it->second != static_cast<uint64_t>(st.st_ino)) {
      it->second = static_cast<uint64_t>(st.st_ino);
      ++st_.corruption_events;
      log(fmt::format("corrupt manifest {}/contexts/{}: {}; the context reads as corrupt", opt_.dir, file, why));
    }
    return Status::kCorrupt;
  }
  *out = std::move(*m);
  if (ino) *ino = static_cast<uint64_t>(st.st_ino);
  if (mtime) *mtime = mtime_ns(st);
  return Status::kOk;
}

void TokenStore::add_manifest(const std::string& file, Manifest m, uint64_t ino, uint64_t mtime) {
  std::vector<ObjectKey> dropped;
  drop_manifest_refs(file, &dropped);
  CtxInfo c;
  for (const ManifestChunk& ch : m.chunks) {
    ObjInfo& o = shared_[ch.key];
    ++o.refs;
    if (!o.on_disk) o.payload = ch.bytes;
  }
  c.last_access_ns = mtime;  // the manifest's mtime: set at publication, touched by every read
  c.ino = ino;
  c.manifest = std::move(m);
  contexts_[file] = std::move(c);
  // Keys the old entry named and the new one does not: now unreferenced here.
  for (const ObjectKey& k : dropped) forget_if_unreferenced(k);
}

void TokenStore::drop_manifest_refs(const std::string& file, std::vector<ObjectKey>* unreferenced) {
  auto it = contexts_.find(file);
  if (it == contexts_.end()) return;
  for (const ManifestChunk& ch : it->second.manifest.chunks) {
    auto o = shared_.find(ch.key);
    if (o == shared_.end() || o->second.refs == 0) continue;
    if (--o->second.refs == 0 && unreferenced) unreferenced->push_back(ch.key);
  }
  contexts_.erase(it);
}

// An object no manifest names any more, after another process dropped or
// replaced the manifest: that process deleted it (or the next scan finds an
// orphan). Only forgets it here.
void TokenStore::forget_if_unreferenced(const ObjectKey& k) {
  auto o = shared_.find(k);
  if (o == shared_.end() || o->second.refs > 0 || o->second.pending > 0) return;
  if (o->second.on_disk) used_ -= std::min(used_, file_bytes(o->second.payload));
  shared_.erase(o);
}

// Deletes an object this handle dropped the last reference to.
void TokenStore::unlink_shared(const ObjectKey& k) {
  auto o = shared_.find(k);
  if (o != shared_.end() && (o->second.refs > 0 || o->second.pending > 0)) return;
  unlinkat(objects_fd_, object_path(k).c_str(), 0);
  if (o != shared_.end()) {
    if (o->second.on_disk) used_ -= std::min(used_, file_bytes(o->second.payload));
    shared_.erase(o);
  }
  bytes_freed();
}

void TokenStore::refresh_contexts() {
  std::unordered_set<std::string> seen;
  for_each_entry(contexts_fd_, ".", [&](const char* n, unsigned char) {
    if (!ends_with(n, ".m")) return;
    struct stat st{};
    if (fstatat(contexts_fd_, n, &st, 0) != 0) return;
    seen.insert(n);
    auto it = contexts_.find(n);
    if (it != contexts_.end() && it->second.ino == static_cast<uint64_t>(st.st_ino)) {
      it->second.last_access_ns = mtime_ns(st);
      return;
    }
    Manifest m;
    uint64_t ino = 0, mt = 0;
    if (ok(load_manifest_file(n, &m, &ino, &mt))) add_manifest(n, std::move(m), ino, mt);
  });
  std::vector<std::string> gone;
  for (auto& [file, c] : contexts_) {
    if (!seen.count(file)) gone.push_back(file);
  }
  for (const std::string& file : gone) {
    std::vector<ObjectKey> dropped;
    drop_manifest_refs(file, &dropped);
    for (const ObjectKey& k : dropped) forget_if_unreferenced(k);
  }
}

// ---------------------------------------------------------------- job machine

int TokenStore::take_slot() {
  if (!ensure_io() || free_slots_.empty()) return -1;
  int s = free_slots_.back();
  free_slots_.pop_back();
  return s;
}

void TokenStore::release_slot(int slot) {
  Job& j = *jobs_[static_cast<size_t>(slot)];
  j.done = false;
  j.active = false;
  lent_[static_cast<size_t>(slot)] = false;
  if (!retired_[static_cast<size_t>(slot)]) free_slots_.push_back(slot);
}

int TokenStore::wait_slot() {
  if (!ensure_io()) return -1;
  while (free_slots_.empty()) {
    if (!std::any_of(jobs_.begin(), jobs_.end(), [](const auto& j) { return j->active; })) return -1;
    reap(true);
  }
  return take_slot();
}

bool TokenStore::issue(Job& j) {
  IoOp op;
  op.user = static_cast<uint64_t>((j.buf - pool_) / static_cast<ptrdiff_t>(buf_bytes_));
  switch (j.stage) {
    case Job::Stage::kOpen:
      op.kind = IoOp::Kind::kOpen;
      op.fd = writer_fd_;
      op.path = j.temp.c_str();
      op.flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (direct_ ? O_DIRECT : 0);
      op.mode = 0600;
      break;
    case Job::Stage::kReserve:
      op.kind = IoOp::Kind::kFallocate;
      op.fd = j.fd;
      op.offset = 0;
      op.len64 = j.file_len;
      break;
    case Job::Stage::kTransfer:
      op.kind = j.put ? IoOp::Kind::kWrite : IoOp::Kind::kRead;
      op.fd = j.fd;
      op.buf = j.buf + (j.pos - j.seg_start);
      op.len = static_cast<uint32_t>(j.seg_end - j.pos);
      op.offset = j.pos;
      op.buf_index = registered_ ? static_cast<int>(op.user) : -1;
      break;
  }
  if (engine_->queue(op)) return true;
  engine_->submit();
  return engine_->queue(op);
}

bool TokenStore::reap(bool wait) {
  if (!engine_) return false;
  IoResult res[64];
  size_t n = engine_->reap(res, wait);
  for (size_t i = 0; i < n; ++i) {
    Job& j = *jobs_[res[i].user];
    if (j.active) advance(j, res[i].res);  // else failed by fail_lost_io: its buffer is not reused
  }
  if (n == 0 && wait && engine_->outstanding() == 0) return fail_lost_io();
  return n > 0;
}

// An active job always has one op queued or in flight, so a wait that finds
// the engine empty while jobs are active would spin for ever (seen once,
// filling a disk; not reproduced). Fails those jobs instead. Their buffers are
// retired for the life of the handle: if the kernel does hold an op the
// engine lost count of, it may still write into them. The rest go on.
bool TokenStore::fail_lost_io() {
  size_t lost = 0;
  for (size_t slot = 0; slot < jobs_.size(); ++slot) {
    Job& j = *jobs_[slot];
    if (!j.active) continue;
    if (!retired_[slot]) ++retired_count_;
    retired_[slot] = true;
    ++st_.io_errors;
    ++lost;
    finish(j, Status::kIoError);
  }
  if (lost > 0)
    log(fmt::format("internal error at {}: waited for I/O that the {} engine does not hold; failed {} "
                    "I/O(s) and retired their buffers ({} of {} left)",
                    opt_.dir, engine_->name(), lost, jobs_.size() - retired_count_, jobs_.size()));
  return lost > 0;
}

Status TokenStore::open_object(Area area, const ObjectKey& key, int* fd, bool* from_private) {
  if (from_private) *from_private = false;
  if (area != Area::kShared && writer_fd_ >= 0 && private_.count(key)) {
    *fd = open_data(writer_fd_, key_hex(key).c_str(), O_RDONLY);
    if (*fd >= 0) {
      if (from_private) *from_private = true;
      return Status::kOk;
    }
    if (errno != ENOENT) return errno_status(errno);
  }
  if (area == Area::kPrivate) return Status::kNotFound;
  *fd = open_data(objects_fd_, object_path(key).c_str(), O_RDONLY);
  if (*fd >= 0) return Status::kOk;
  return errno_status(errno);
}

// Opens a data file with O_DIRECT while the file system takes it; the first
// EINVAL switches this handle to buffered I/O (said once).
int TokenStore::open_data(int dirfd, const char* path, int flags, mode_t mode) {
  for (;;) {
    int f = openat(dirfd, path, flags | O_CLOEXEC | (direct_ ? O_DIRECT : 0), mode);
    if (f < 0 && errno == EINVAL && direct_) {
      fall_back_to_buffered("open with O_DIRECT failed: EINVAL");
      continue;
    }
    return f;
  }
}

// A put into a spare (a file this handle no longer needs, its blocks already
// allocated and written) is an overwrite in place: no inode to allocate, no
// extent to convert. False if none is usable.
bool TokenStore::take_spare(uint64_t file_len, std::string* name, int* fd) {
  while (!spares_.empty()) {
    auto it = std::find_if(spares_.begin(), spares_.end(), [&](const Spare& sp) { return sp.size == file_len; });
    if (it == spares_.end()) it = spares_.end() - 1;
    Spare sp = *it;
    spares_.erase(it);
    used_ -= std::min(used_, sp.size);
    int f = open_data(writer_fd_, sp.name.c_str(), O_WRONLY);
    if (f < 0) {
      unlinkat(writer_fd_, sp.name.c_str(), 0);
      continue;
    }
    if (sp.size != file_len &&
        (ftruncate(f, static_cast<off_t>(file_len)) != 0 ||
         (file_len > sp.size && fallocate_ && fallocate(f, 0, 0, static_cast<off_t>(file_len)) != 0 &&
          (errno == ENOSPC || errno == EDQUOT)))) {
      close(f);
      unlinkat(writer_fd_, sp.name.c_str(), 0);
      continue;
    }
    *name = std::move(sp.name);
    *fd = f;
    return true;
  }
  return false;
}

// A file of this writer that no longer holds a live object (name: any
// non-key name in the writer directory). Kept for reuse unless someone may
// still be reading it (an in-flight get of `key`) or enough are kept.
void TokenStore::recycle(std::string name, uint64_t size, const ObjectKey* key) {
  const bool read_now = key && reading_.count(*key);
  if (read_now || spares_.size() >= 2 * size_t{opt_.queue_depth}) {
    unlinkat(writer_fd_, name.c_str(), 0);
    bytes_freed();
    return;
  }
  spares_.push_back(Spare{std::move(name), size});
  used_ += size;
}

// Unlinks spares until `bytes` more fit under the capacity (all of them for
// UINT64_MAX). True if it fits.
bool TokenStore::drop_spares(uint64_t bytes) {
  const uint64_t cap = opt_.capacity_bytes;
  while (!spares_.empty() && (bytes == UINT64_MAX || (cap != 0 && used_ + reserved_ + bytes > cap))) {
    unlinkat(writer_fd_, spares_.back().name.c_str(), 0);
    used_ -= std::min(used_, spares_.back().size);
    spares_.pop_back();
  }
  return cap == 0 || used_ + reserved_ + bytes <= cap;
}

// The put segment [seg_start, seg_end) of the file into the buffer: header
// (segment 0 only; already there), payload, zero padding.
void TokenStore::fill_put_segment(Job& j) {
  const uint64_t h = j.hdr.header_block;
  const uint64_t s = j.seg_start, e = j.seg_end;
  const uint64_t copy_from = std::max(s, h), copy_to = std::min(e, h + j.len);
  if (!j.zero_copy && copy_to > copy_from) std::memcpy(j.buf + (copy_from - s), j.src + (copy_from - h), copy_to - copy_from);
  const uint64_t pad_from = std::max(s, h + j.len);
  if (e > pad_from) std::memset(j.buf + (pad_from - s), 0, e - pad_from);
}

Status TokenStore::start_put(Sink sink, uint64_t tag, ContextWriter* owner, Area area, const ObjectKey& key,
                             std::span<const std::byte> bytes, int slot, bool zero_copy, uint64_t len,
                             std::optional<uint64_t> checksum) {
  if (opt_.read_only) return Status::kUnsupported;
  // Refused at once for a while after ENOSPC; then one put tries again (room
  // may have been freed by someone else), and says nothing new if it fails.
  if (nospace_ && wall_ns() - nospace_since_ns_ < kNoSpaceRetryNs) {
    ++st_.nospace_events;
    return Status::kNoSpace;
  }
  if (len > kMaxObjectBytes || (zero_copy && header_block_ + len > buf_bytes_)) return Status::kInvalid;
  Status s = ensure_writer();
  if (!ok(s)) return s;
  const uint64_t fl = file_bytes(len);
  uint64_t old = 0;
  if (area == Area::kPrivate) {
    if (auto it = private_.find(key); it != private_.end()) old = file_bytes(it->second);
  } else if (auto it = shared_.find(key); it != shared_.end() && it->second.on_disk) {
    old = file_bytes(it->second.payload);
  }
  // Puts in flight hold their growth, so a burst of them cannot pass the
  // capacity check together.
  const uint64_t growth = fl > old ? fl - old : 0;
  if (growth > 0) {
    s = make_room(growth);
    if (!ok(s)) return s;
  }

  Job& j = *jobs_[static_cast<size_t>(slot)];
  std::byte* buf = j.buf;
  ObjectHeader h;
  h.key = key;
  h.payload_bytes = len;
  h.checksum = checksum ? *checksum : payload_checksum(zero_copy ? std::span<const std::byte>(buf + header_block_, len) : bytes);
  h.header_block = header_block_;
  h.created_ns = wall_ns();
  h.writer_pid = static_cast<uint32_t>(getpid());
  h.writer_uid = static_cast<uint32_t>(getuid());
  encode_object_header(h, std::span<std::byte, kObjectHeaderBytes>(buf, kObjectHeaderBytes));
  std::memset(buf + kObjectHeaderBytes, 0, header_block_ - kObjectHeaderBytes);

  std::string temp;
  int fd = -1;
  const bool spare = take_spare(fl, &temp, &fd);
  if (!spare) temp = fmt::format("t{}", ++temp_seq_);  // created by the engine

  j.begin(true, sink, tag, area, key, fd);
  j.owner = owner;
  j.temp = std::move(temp);
  j.zero_copy = zero_copy;
  j.src = bytes.data();
  j.len = len;
  j.file_len = fl;
  j.reserved = growth;
  reserved_ += growth;
  j.hdr = h;
  j.have_hdr = true;
  j.seg_end = std::min(buf_bytes_, fl);
  j.stage = spare ? Job::Stage::kTransfer : Job::Stage::kOpen;
  fill_put_segment(j);
  if (sink == Sink::kUser) ++inflight_user_;
  if (!issue(j)) finish(j, Status::kIoError);
  return Status::kOk;
}

Status TokenStore::start_get(Sink sink, uint64_t tag, Area area, const ObjectKey& key, std::span<std::byte> out,
                             bool verify_only, int slot, bool zero_copy, uint64_t expect_len,
                             std::optional<uint64_t> expect_sum, Status size_mismatch) {
  int fd = -1;
  bool from_private = false;
  Status s = open_object(area, key, &fd, &from_private);
  if (!ok(s)) {
    if (s == Status::kNotFound) ++st_.misses;
    return s;
  }
  // While it reads, the file must not be reused for another object.
  if (from_private) ++reading_[key];
  Job& j = *jobs_[static_cast<size_t>(slot)];
  j.begin(false, sink, tag, area, key, fd);
  j.size_mismatch = size_mismatch;
  j.from_private = from_private;
  j.zero_copy = zero_copy;
  j.dst = (zero_copy || verify_only) ? nullptr : out.data();
  j.dst_len = out.size();
  j.expect_len = expect_len;
  j.check_sum = expect_sum.has_value();
  j.expect_sum = expect_sum.value_or(0);
  j.seg_end = buf_bytes_;
  if (expect_len != kUnknownLen) j.seg_end = std::min(buf_bytes_, round_up(header_block_ + expect_len, off_align_));
  if (sink == Sink::kUser) ++inflight_user_;
  if (!issue(j)) finish(j, Status::kIoError);
  return Status::kOk;
}

void TokenStore::corrupt(Job& j, std::string_view why) {
  ++st_.corruption_events;
  log(fmt::format("corrupt object {} in {}: {}; reported as corrupt, never served", key_hex(j.key), opt_.dir, why));
  finish(j, Status::kCorrupt);
}

void TokenStore::advance(Job& j, int32_t res) {
  if (j.stage == Job::Stage::kOpen) {
    if (res == -EINVAL && direct_) {
      fall_back_to_buffered("creating a file with O_DIRECT failed: EINVAL");
      if (!issue(j)) finish(j, Status::kIoError);
      return;
    }
    if (res < 0) return finish(j, errno_status(-res));
    j.fd = res;
    j.stage = fallocate_ ? Job::Stage::kReserve : Job::Stage::kTransfer;
    if (!issue(j)) finish(j, Status::kIoError);
    return;
  }
  if (j.stage == Job::Stage::kReserve) {
    // Reserving the blocks first shows a full disk before any byte is written.
    if (res == -ENOSPC || res == -EDQUOT) return finish(j, note_nospace());
    if (res < 0) fallocate_ = false;  // not supported here: just write
    j.stage = Job::Stage::kTransfer;
    if (!issue(j)) finish(j, Status::kIoError);
    return;
  }
  if (res < 0) {
    finish(j, errno_status(-res));
    return;
  }
  const auto got = static_cast<uint64_t>(res);
  if (j.put) {
    if (got == 0) {
      ++st_.io_errors;
      finish(j, Status::kIoError);
      return;
    }
    j.pos += got;
    if (j.pos < j.seg_end) {  // short write: the rest of the segment
      if (!issue(j)) finish(j, Status::kIoError);
      return;
    }
    if (j.pos < j.file_len) {
      j.seg_start = j.pos;
      j.seg_end = std::min(j.pos + buf_bytes_, j.file_len);
      fill_put_segment(j);
      if (!issue(j)) finish(j, Status::kIoError);
      return;
    }
    finish(j, publish_put(j));
    return;
  }

  // get
  const bool eof = j.pos + got < j.seg_end;  // regular files read short only at the end
  j.pos += got;
  if (!j.have_hdr) {
    std::string why;
    auto h = parse_object_header(std::span<const std::byte>(j.buf, j.pos - j.seg_start), &why);
    if (!h) return corrupt(j, why);
    if (!(h->key == j.key)) return corrupt(j, "its header names another key");
    if (j.expect_len != kUnknownLen && h->payload_bytes != j.expect_len) {
      if (j.size_mismatch == Status::kCorrupt)
        return corrupt(j, fmt::format("{} bytes where the manifest says {}", h->payload_bytes, j.expect_len));
      return finish(j, j.size_mismatch);
    }
    if (j.check_sum && h->checksum != j.expect_sum) return corrupt(j, "its checksum differs from the manifest's");
    if (j.zero_copy && h->header_block + h->payload_bytes > buf_bytes_) return finish(j, Status::kInvalid);
    j.hdr = *h;
    j.have_hdr = true;
    j.len = h->payload_bytes;
    j.end = h->header_block + h->payload_bytes;
    j.hashed_to = h->header_block;
    XXH3_64bits_reset(j.xx);
  }
  const uint64_t a = j.hashed_to, b = std::min(j.pos, j.end);
  if (b > a) {
    const std::byte* p = j.buf + (a - j.seg_start);
    XXH3_64bits_update(j.xx, p, b - a);
    if (j.dst) std::memcpy(j.dst + (a - j.hdr.header_block), p, b - a);
    j.hashed_to = b;
  }
  if (j.pos >= j.end) {
    if (XXH3_64bits_digest(j.xx) != j.hdr.checksum) return corrupt(j, "payload checksum mismatch");
    return finish(j, Status::kOk);
  }
  if (eof) return corrupt(j, fmt::format("truncated at {} of {} bytes", j.pos, j.end));
  if (j.zero_copy) {
    // The whole object fits the buffer: keep filling it in place.
    j.seg_end = std::min(buf_bytes_, round_up(j.end, off_align_));
  } else {
    j.seg_start = j.pos;
    j.seg_end = j.pos + std::min(buf_bytes_, round_up(j.end, off_align_) - j.pos);
  }
  if (!issue(j)) finish(j, Status::kIoError);
}

Status TokenStore::publish_put(Job& j) {
  if (opt_.durable && fdatasync(j.fd) != 0) return errno_status(errno);
  close(j.fd);
  j.fd = -1;
  const std::string hex = key_hex(j.key);
  if (j.area == Area::kPrivate) {
    auto old = private_.find(j.key);
    if (old != private_.end() && exchange_) {
      // Swap names: the object is the new file at once, and the old one
      // (now under the temp name) can hold a later object.
      if (renameat2(writer_fd_, j.temp.c_str(), writer_fd_, hex.c_str(), RENAME_EXCHANGE) == 0) {
        recycle(std::move(j.temp), file_bytes(old->second), &j.key);
        j.temp.clear();
      } else if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
        exchange_ = false;  // not on this file system: replace by rename
      } else {
        return errno_status(errno);
      }
    }
    if (!j.temp.empty() && renameat(writer_fd_, j.temp.c_str(), writer_fd_, hex.c_str()) != 0) return errno_status(errno);
  } else {
    const std::string path = object_path(j.key);
    int r = renameat(writer_fd_, j.temp.c_str(), objects_fd_, path.c_str());
    if (r != 0 && errno == ENOENT) {
      // A full disk refuses the directory: that is the error, not the
      // ENOENT of the rename after it ("not found" said nothing useful).
      if (mkdirat(objects_fd_, path.substr(0, 2).c_str(), 0700) != 0 && errno != EEXIST) return errno_status(errno);
      r = renameat(writer_fd_, j.temp.c_str(), objects_fd_, path.c_str());
    }
    if (r != 0) return errno_status(errno);
    if (opt_.durable) {
      UniqueFd d(openat(objects_fd_, path.substr(0, 2).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (d.valid()) fsync(d.get());
    }
  }
  j.temp.clear();
  const uint64_t fl = file_bytes(j.len);
  if (j.area == Area::kPrivate) {
    auto [it, fresh] = private_.try_emplace(j.key, j.len);
    if (!fresh) used_ -= std::min(used_, file_bytes(it->second));
    it->second = j.len;
  } else {
    ObjInfo& o = shared_[j.key];
    if (o.on_disk) used_ -= std::min(used_, file_bytes(o.payload));
    o.on_disk = true;
    o.payload = j.len;
  }
  used_ += fl;
  ++st_.puts;
  st_.put_bytes += j.len;
  return Status::kOk;
}

void TokenStore::finish(Job& j, Status s) {
  if (j.fd >= 0) {
    close(j.fd);
    j.fd = -1;
  }
  if (j.from_private) {
    auto r = reading_.find(j.key);
    if (r != reading_.end() && --r->second == 0) reading_.erase(r);
    j.from_private = false;
  }
  if (!j.temp.empty()) {
    unlinkat(writer_fd_, j.temp.c_str(), 0);  // never a partial object
    j.temp.clear();
  }
  reserved_ -= std::min(reserved_, j.reserved);
  j.reserved = 0;
  if (!j.put && ok(s)) {
    ++st_.gets;
    st_.get_bytes += j.len;
  }
  if (!j.put && !ok(s)) {
    // Whatever arrived is not served.
    if (j.dst) std::memset(j.dst, 0, j.dst_len);
    if (j.zero_copy) std::memset(j.buf, 0, buf_bytes_);
  }
  j.status = s;
  const int slot = static_cast<int>((j.buf - pool_) / static_cast<ptrdiff_t>(buf_bytes_));
  switch (j.sink) {
    case Sink::kUser: {
      --inflight_user_;
      Completion c{j.tag, s, j.len, Buffer{}};
      if (j.zero_copy && !j.put && !retired_[static_cast<size_t>(slot)]) {  // a retired buffer is nobody's
        const uint64_t off = j.have_hdr ? j.hdr.header_block : header_block_;
        c.buffer = Buffer{j.buf + off, buf_bytes_ - off, static_cast<uint32_t>(slot)};
        j.active = false;
        lent_[static_cast<size_t>(slot)] = true;
      } else {
        release_slot(slot);
      }
      ready_.push_back(c);
      break;
    }
    case Sink::kWriter: {
      ContextWriter* owner = j.owner;
      const uint64_t tag = j.tag;
      release_slot(slot);
      owner->on_done(static_cast<size_t>(tag), s);
      break;
    }
    case Sink::kInternal:
      j.active = false;
      j.done = true;
      break;
  }
}

Status TokenStore::run_sync(int slot) {
  Job& j = *jobs_[static_cast<size_t>(slot)];
  while (!j.done) reap(true);
  Status s = j.status;
  release_slot(slot);
  return s;
}

// ---------------------------------------------------------------- Store

Status TokenStore::put(const ObjectKey& key, std::span<const std::byte> bytes) {
  if (Status io = io_status(); !ok(io)) return io;
  int slot = wait_slot();
  if (slot < 0) return no_slot_status();
  Status s = start_put(Sink::kInternal, 0, nullptr, Area::kPrivate, key, bytes, slot, false, bytes.size(), std::nullopt);
  if (!ok(s)) {
    release_slot(slot);
    return s;
  }
  return run_sync(slot);
}

Status TokenStore::get(const ObjectKey& key, std::span<std::byte> out) {
  if (Status io = io_status(); !ok(io)) return io;
  int slot = wait_slot();
  if (slot < 0) return no_slot_status();
  Status s = start_get(Sink::kInternal, 0, Area::kAny, key, out, false, slot, false, out.size(), std::nullopt,
                       Status::kInvalid);
  if (!ok(s)) {
    release_slot(slot);
    return s;
  }
  return run_sync(slot);
}

Status TokenStore::erase(const ObjectKey& key) {
  auto it = private_.find(key);
  if (it == private_.end()) return Status::kNotFound;
  const uint64_t fb = file_bytes(it->second);
  used_ -= std::min(used_, fb);
  private_.erase(it);
  const std::string spare = fmt::format("t{}", ++temp_seq_);
  if (!reading_.count(key) && renameat(writer_fd_, key_hex(key).c_str(), writer_fd_, spare.c_str()) == 0) {
    recycle(spare, fb, &key);
  } else if (unlinkat(writer_fd_, key_hex(key).c_str(), 0) != 0 && errno != ENOENT) {
    return errno_status(errno);
  }
  bytes_freed();
  return Status::kOk;
}

// ---------------------------------------------------------------- async API

TokenStore::Buffer TokenStore::acquire_buffer() {
  int slot = take_slot();
  if (slot < 0) return Buffer{};
  lent_[static_cast<size_t>(slot)] = true;
  return Buffer{pool_ + static_cast<size_t>(slot) * buf_bytes_ + header_block_, buf_bytes_ - header_block_,
                static_cast<uint32_t>(slot)};
}

bool TokenStore::lent(const Buffer& b) const {
  return b.id < lent_.size() && lent_[b.id] && !retired_[b.id] && b.data >= pool_ + size_t{b.id} * buf_bytes_ &&
         b.data < pool_ + size_t{b.id + 1} * buf_bytes_;
}

void TokenStore::release_buffer(Buffer b) {
  if (!lent(b)) return;
  release_slot(static_cast<int>(b.id));
}

Status TokenStore::submit_put(uint64_t tag, const ObjectKey& key, std::span<const std::byte> bytes) {
  if (Status io = io_status(); !ok(io)) return io;
  int slot = take_slot();
  if (slot < 0) return Status::kAgain;
  Status s = start_put(Sink::kUser, tag, nullptr, Area::kPrivate, key, bytes, slot, false, bytes.size(), std::nullopt);
  if (!ok(s)) release_slot(slot);
  return s;
}

Status TokenStore::submit_put(uint64_t tag, const ObjectKey& key, Buffer buf, uint64_t len) {
  if (!lent(buf) || buf.data != pool_ + size_t{buf.id} * buf_bytes_ + header_block_ || len > buf.capacity)
    return Status::kInvalid;
  lent_[buf.id] = false;
  Status s = start_put(Sink::kUser, tag, nullptr, Area::kPrivate, key, {}, static_cast<int>(buf.id), true, len,
                       std::nullopt);
  if (!ok(s)) lent_[buf.id] = true;  // still the caller's
  return s;
}

Status TokenStore::submit_get(uint64_t tag, const ObjectKey& key, std::span<std::byte> out) {
  if (Status io = io_status(); !ok(io)) return io;
  int slot = take_slot();
  if (slot < 0) return Status::kAgain;
  Status s = start_get(Sink::kUser, tag, Area::kAny, key, out, false, slot, false, out.size(), std::nullopt,
                       Status::kInvalid);
  if (!ok(s)) release_slot(slot);
  return s;
}

Status TokenStore::submit_get(uint64_t tag, const ObjectKey& key, Buffer buf) {
  if (!lent(buf)) return Status::kInvalid;
  lent_[buf.id] = false;
  Status s = start_get(Sink::kUser, tag, Area::kAny, key, {}, false, static_cast<int>(buf.id), true, kUnknownLen,
                       std::nullopt, Status::kInvalid);
  if (!ok(s)) lent_[buf.id] = true;
  return s;
}

Status TokenStore::submit_get(uint64_t tag, const ManifestChunk& chunk, std::span<std::byte> out) {
  if (out.size() != chunk.bytes) return Status::kInvalid;
  if (Status io = io_status(); !ok(io)) return io;
  int slot = take_slot();
  if (slot < 0) return Status::kAgain;
  Status s = start_get(Sink::kUser, tag, Area::kShared, chunk.key, out, false, slot, false, chunk.bytes, chunk.checksum,
                       Status::kCorrupt);
  if (!ok(s)) release_slot(slot);
  return s;
}

void TokenStore::flush() {
  if (engine_) engine_->submit();
}

size_t TokenStore::poll(std::span<Completion> out) {
  while (reap(false)) {
  }
  size_t n = 0;
  while (n < out.size() && !ready_.empty()) {
    out[n++] = ready_.front();
    ready_.pop_front();
  }
  return n;
}

size_t TokenStore::wait(std::span<Completion> out) {
  if (out.empty()) return 0;
  while (ready_.empty()) {
    if (inflight_user_ == 0) return 0;
    reap(true);
  }
  return poll(out);
}

// ---------------------------------------------------------------- contexts

Status TokenStore::read_manifest(std::string_view ns, std::string_view name, Manifest* out) {
  return load_manifest_file(manifest_file(ns, name), out, nullptr, nullptr);
}

std::unique_ptr<ContextWriter> TokenStore::begin_context(ContextMeta meta) {
  std::unique_ptr<ContextWriter> w(new ContextWriter(*this, std::move(meta)));
  ContextMeta& m = w->meta_;
  if (opt_.read_only) w->status_ = Status::kUnsupported;
  else if (m.name.empty() || m.name.size() > kMaxNameBytes || m.ns.size() > kMaxNamespaceBytes) w->status_ = Status::kInvalid;
  m.generation = random_u64();
  if (m.created_ns == 0) m.created_ns = wall_ns();
  m.last_access_ns = m.created_ns;
  if (m.owner_uid == 0) m.owner_uid = static_cast<uint32_t>(getuid());
  if (m.owner_pid == 0) m.owner_pid = static_cast<uint32_t>(getpid());
  return w;
}

Status TokenStore::put_context(ContextMeta meta, std::span<const std::byte> data, uint64_t chunk_bytes) {
  if (chunk_bytes == 0) chunk_bytes = opt_.max_io_bytes;
  auto w = begin_context(std::move(meta));
  for (uint64_t off = 0; off < data.size(); off += chunk_bytes) {
    Status s = w->append(data.subspan(off, std::min<uint64_t>(chunk_bytes, data.size() - off)));
    if (!ok(s)) return s;  // the writer aborts when it goes
  }
  return w->commit();
}

Status TokenStore::read_pipelined(
    size_t n, const std::function<ReadSpec(size_t)>& spec,
    const std::function<Status(size_t, Status, std::span<const std::byte>, const ObjectHeader&)>& done) {
  if (Status io = io_status(); !ok(io)) return io;
  struct Item {
    int slot = -1;
    Status early = Status::kOk;  // failed at submit (not found, ...)
    std::vector<std::byte> big;  // objects larger than a buffer
  };
  std::vector<Item> items(n);
  size_t next_submit = 0, next_done = 0;
  Status result = Status::kOk;
  auto outstanding = [&] { return next_submit - next_done; };
  while (next_done < n) {
    while (next_submit < n && result == Status::kOk && outstanding() < opt_.queue_depth) {
      int slot = take_slot();
      if (slot < 0) {
        if (Status io = io_status(); !ok(io)) result = io;
        break;
      }
      ReadSpec sp = spec(next_submit);
      Item& it = items[next_submit];
      const bool fits = sp.expect_len != kUnknownLen && header_block_ + sp.expect_len <= buf_bytes_;
      Status s;
      if (fits || sp.verify_only) {
        s = start_get(Sink::kInternal, 0, Area::kShared, sp.key, {}, sp.verify_only, slot, fits && !sp.verify_only,
                      sp.expect_len, sp.expect_sum, Status::kCorrupt);
      } else {
        it.big.resize(sp.expect_len);
        s = start_get(Sink::kInternal, 0, Area::kShared, sp.key, it.big, false, slot, false, sp.expect_len,
                      sp.expect_sum, Status::kCorrupt);
      }
      if (ok(s)) {
        it.slot = slot;
      } else {
        release_slot(slot);
        it.early = s;
      }
      ++next_submit;
    }
    if (next_done == next_submit) {
      if (result != Status::kOk) break;
      if (free_slots_.empty() && !std::any_of(jobs_.begin(), jobs_.end(), [](const auto& j) { return j->active; }))
        return Status::kBusy;  // every buffer is lent to the caller
      reap(true);
      continue;
    }
    Item& it = items[next_done];
    if (it.slot >= 0 && !jobs_[static_cast<size_t>(it.slot)]->done) {
      reap(true);
      continue;
    }
    Status s = it.early;
    std::span<const std::byte> payload;
    ObjectHeader hdr;
    if (it.slot >= 0) {
      Job& j = *jobs_[static_cast<size_t>(it.slot)];
      s = j.status;
      if (j.have_hdr) hdr = j.hdr;
      if (ok(s) && !j.zero_copy && it.big.empty()) payload = {};  // verified only
      else if (ok(s)) payload = it.big.empty() ? std::span<const std::byte>(j.buf + j.hdr.header_block, j.len)
                                               : std::span<const std::byte>(it.big);
    }
    if (result == Status::kOk) {
      Status r = done(next_done, s, payload, hdr);
      if (!ok(r)) result = r;
    }
    if (it.slot >= 0) release_slot(it.slot);
    it.big = {};
    ++next_done;
  }
  // Drain what is still in flight after a failure.
  for (size_t i = next_done; i < next_submit; ++i) {
    if (items[i].slot >= 0) {
      while (!jobs_[static_cast<size_t>(items[i].slot)]->done) reap(true);
      release_slot(items[i].slot);
    }
  }
  return result;
}

Status TokenStore::get_context(std::string_view ns, std::string_view name,
                               const std::function<Status(uint64_t, std::span<const std::byte>)>& sink,
                               Manifest* manifest, const std::function<Status(const Manifest&)>& begin) {
  const std::string file = manifest_file(ns, name);
  for (int attempt = 1;; ++attempt) {
    Manifest m;
    bool loaded = false;
    Status s = read_context_once(file, ns, name, begin, sink, &m, &loaded);
    bool replaced = false;
    if (s == Status::kNotFound && loaded) {
      // A chunk is gone. Damage only if the publication read is still the
      // current one; otherwise its replacement dropped it (a race, not damage).
      Manifest now;
      replaced = !ok(load_manifest_file(file, &now, nullptr, nullptr)) || now.meta.generation != m.meta.generation;
      if (replaced) s = Status::kAgain;
    }
    if (!replaced || !begin || attempt == kContextReadAttempts) {
      if (manifest) *manifest = std::move(m);
      return s;
    }
  }
}

Status TokenStore::read_context_once(const std::string& file, std::string_view ns, std::string_view name,
                                     const std::function<Status(const Manifest&)>& begin,
                                     const std::function<Status(uint64_t, std::span<const std::byte>)>& sink,
                                     Manifest* out, bool* loaded) {
  UniqueFd fd(openat(contexts_fd_, file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) {
      ++st_.misses;
      return Status::kNotFound;
    }
    return errno_status(errno);
  }
  std::vector<std::byte> bytes;
  struct stat st{};
  if (!read_fd(fd.get(), &bytes, &st)) return errno_status(errno);
  std::string why;
  auto m = parse_manifest(bytes, &why);
  if (!m || m->meta.ns != ns || m->meta.name != name) {
    ++st_.corruption_events;
    log(fmt::format("corrupt manifest {}/contexts/{}: {}", opt_.dir, file, m ? "names another context" : why));
    return Status::kCorrupt;
  }
  // The read is an access: the manifest's mtime is the context's last use.
  const timespec times[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
  futimens(fd.get(), times);
  if (auto it = contexts_.find(file); it != contexts_.end()) it->second.last_access_ns = wall_ns();
  *loaded = true;
  *out = std::move(*m);
  if (begin) {
    Status b = begin(*out);
    if (!ok(b)) return b;
  }

  const auto& chunks = out->chunks;
  return read_pipelined(
      chunks.size(),
      [&](size_t i) { return ReadSpec{chunks[i].key, chunks[i].bytes, chunks[i].checksum, false}; },
      [&](size_t i, Status got, std::span<const std::byte> payload, const ObjectHeader&) {
        if (got == Status::kNotFound) return Status::kNotFound;  // incomplete: a miss
        if (!ok(got)) return got;
        return sink(i, payload);
      });
}

Status TokenStore::get_context(std::string_view ns, std::string_view name, std::vector<std::byte>* out) {
  out->clear();
  Status s = get_context(
      ns, name,
      [&](uint64_t, std::span<const std::byte> p) {
        out->insert(out->end(), p.begin(), p.end());
        return Status::kOk;
      },
      nullptr,
      [&](const Manifest&) {
        out->clear();  // a replaced context is read again from its start
        return Status::kOk;
      });
  if (!ok(s)) out->clear();
  return s;
}

Status TokenStore::drop_context(const std::string& file, DropReason why) {
  if (opt_.read_only) return Status::kUnsupported;
  // Act on the current publication, not on what this handle remembers.
  Manifest m;
  uint64_t ino = 0, mt = 0;
  Status s = load_manifest_file(file, &m, &ino, &mt);
  if (s == Status::kNotFound) {
    std::vector<ObjectKey> dropped;
    drop_manifest_refs(file, &dropped);
    for (const ObjectKey& k : dropped) forget_if_unreferenced(k);
    return s;
  }
  if (s == Status::kCorrupt && why == DropReason::kRemove) {
    // A damaged manifest can still be removed by name.
    if (unlinkat(contexts_fd_, file.c_str(), 0) != 0) return errno_status(errno);
    contexts_.erase(file);
    return Status::kOk;
  }
  if (!ok(s)) return s;
  const bool pinned = m.meta.pinned;
  const uint64_t total = m.total_bytes();
  add_manifest(file, std::move(m), ino, mt);
  if (why != DropReason::kRemove && pinned) return Status::kBusy;
  if (unlinkat(contexts_fd_, file.c_str(), 0) != 0) return errno_status(errno);
  std::vector<ObjectKey> dropped;
  drop_manifest_refs(file, &dropped);
  for (const ObjectKey& k : dropped) unlink_shared(k);
  bytes_freed();
  if (why == DropReason::kEvict) {
    ++st_.contexts_evicted;
    st_.evicted_bytes += total;
  } else if (why == DropReason::kExpire) {
    ++st_.contexts_expired;
  }
  return Status::kOk;
}

Status TokenStore::remove_context(std::string_view ns, std::string_view name) {
  return drop_context(manifest_file(ns, name), DropReason::kRemove);
}

Status TokenStore::republish(std::string_view ns, std::string_view name, const std::function<void(ContextMeta&)>& edit) {
  if (opt_.read_only) return Status::kUnsupported;
  const std::string file = manifest_file(ns, name);
  Manifest m;
  uint64_t ino = 0, mt = 0;
  Status s = load_manifest_file(file, &m, &ino, &mt);
  if (!ok(s)) return s;
  edit(m.meta);
  s = ensure_writer();
  if (!ok(s)) return s;
  std::vector<std::byte> bytes = encode_manifest(m);
  const std::string temp = fmt::format("m{}", ++temp_seq_);
  UniqueFd fd(openat(writer_fd_, temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return errno_status(errno);
  // Keep the last-access time: changing a setting is not a use.
  const timespec times[2] = {{0, UTIME_OMIT},
                             {static_cast<time_t>(mt / 1'000'000'000), static_cast<long>(mt % 1'000'000'000)}};
  if (!write_all(fd.get(), bytes.data(), bytes.size(), 0) || (opt_.durable && fdatasync(fd.get()) != 0) ||
      futimens(fd.get(), times) != 0 || renameat(writer_fd_, temp.c_str(), contexts_fd_, file.c_str()) != 0) {
    Status e = errno_status(errno);
    unlinkat(writer_fd_, temp.c_str(), 0);
    return e;
  }
  struct stat st{};
  fstat(fd.get(), &st);
  add_manifest(file, std::move(m), static_cast<uint64_t>(st.st_ino), mt);
  return Status::kOk;
}

Status TokenStore::set_pinned(std::string_view ns, std::string_view name, bool pinned) {
  return republish(ns, name, [&](ContextMeta& m) { m.pinned = pinned; });
}

Status TokenStore::set_ttl(std::string_view ns, std::string_view name, uint64_t ttl_ns) {
  return republish(ns, name, [&](ContextMeta& m) { m.ttl_ns = ttl_ns; });
}

std::vector<ContextEntry> TokenStore::list_contexts() {
  refresh_contexts();
  std::vector<ContextEntry> out;
  out.reserve(contexts_.size());
  for (const auto& [file, c] : contexts_) {
    ContextEntry e;
    e.meta = c.manifest.meta;
    e.bytes = c.manifest.total_bytes();
    e.chunks = c.manifest.chunks.size();
    e.last_access_ns = c.last_access_ns;
    for (const ManifestChunk& ch : c.manifest.chunks) {
      auto it = shared_.find(ch.key);
      if (it == shared_.end() || !it->second.on_disk) ++e.missing_chunks;
    }
    e.manifest = file;
    out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(), [](const ContextEntry& a, const ContextEntry& b) {
    return a.meta.ns != b.meta.ns ? a.meta.ns < b.meta.ns : a.meta.name < b.meta.name;
  });
  return out;
}

size_t TokenStore::expire() {
  if (opt_.read_only) return 0;
  refresh_contexts();  // reads by other processes move last-access times
  const uint64_t now = wall_ns();
  std::vector<std::string> expired;
  for (const auto& [file, c] : contexts_) {
    const ContextMeta& m = c.manifest.meta;
    if (!m.pinned && m.ttl_ns != 0 && now >= c.last_access_ns && now - c.last_access_ns >= m.ttl_ns) expired.push_back(file);
  }
  size_t n = 0;
  for (const std::string& file : expired) {
    // Re-checked against the disk: another process may have read it since.
    auto it = contexts_.find(file);
    if (it == contexts_.end()) continue;
    struct stat st{};
    if (fstatat(contexts_fd_, file.c_str(), &st, 0) == 0) {
      it->second.last_access_ns = mtime_ns(st);
      const ContextMeta& m = it->second.manifest.meta;
      if (now < it->second.last_access_ns || now - it->second.last_access_ns < m.ttl_ns) continue;
    }
    if (ok(drop_context(file, DropReason::kExpire))) ++n;
  }
  return n;
}

Status TokenStore::make_room(uint64_t bytes) {
  const uint64_t cap = opt_.capacity_bytes;
  if (cap == 0 || used_ + reserved_ + bytes <= cap) return Status::kOk;
  if (bytes > cap) return Status::kNoSpace;
  if (drop_spares(bytes)) return Status::kOk;
  expire();
  while (used_ + reserved_ + bytes > cap) {
    // The least recently used unpinned context goes whole.
    const std::string* victim = nullptr;
    uint64_t oldest = UINT64_MAX;
    for (const auto& [file, c] : contexts_) {
      if (c.manifest.meta.pinned || c.last_access_ns >= oldest) continue;
      oldest = c.last_access_ns;
      victim = &file;
    }
    if (!victim) return Status::kNoSpace;
    const std::string file = *victim;
    if (ok(drop_context(file, DropReason::kEvict))) continue;
    // Pinned meanwhile (the index now knows), gone, or unreadable: not a
    // candidate any more.
    auto it = contexts_.find(file);
    if (it != contexts_.end() && !it->second.manifest.meta.pinned) {
      std::vector<ObjectKey> dropped;
      drop_manifest_refs(file, &dropped);
      for (const ObjectKey& k : dropped) forget_if_unreferenced(k);
    }
  }
  return Status::kOk;
}

// ---------------------------------------------------------------- stats

StoreStats TokenStore::stats() const {
  StoreStats s = st_;
  s.spills_disabled = nospace_;
  s.private_objects = private_.size();
  s.spare_files = spares_.size();
  for (const Spare& sp : spares_) s.spare_bytes += sp.size;
  s.engine = engine_ ? std::string(engine_->name()) : std::string("not started");
  s.registered_buffers = registered_;
  s.direct_io = direct_;
  s.dio_mem_align = mem_align_;
  s.dio_offset_align = off_align_;
  return s;
}

// ---------------------------------------------------------------- ContextWriter

ContextWriter::~ContextWriter() {
  if (!done_) abort();
}

Status ContextWriter::append(std::span<const std::byte> chunk, const ObjectKey* key) {
  if (done_) return Status::kInvalid;
  if (!ok(status_)) return status_;
  if (chunk.size() > kMaxObjectBytes) return status_ = Status::kInvalid;
  Status s = s_.ensure_writer();
  if (!ok(s)) return status_ = s;
  const size_t index = chunks_.size();
  const ObjectKey k = key ? *key : context_chunk_key(meta_.ns, meta_.name, meta_.generation, index);
  const uint64_t sum = payload_checksum(chunk);
  if (journal_fd_ < 0) {
    journal_ = fmt::format("j{:016x}", meta_.generation);
    journal_fd_ = openat(s_.writer_fd_, journal_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (journal_fd_ < 0) return status_ = s_.errno_status(errno);
  }
  // Journal first: if this process dies, the next open knows what to delete.
  std::byte rec[16];
  key_to_bytes(k, rec);
  if (!append_all(journal_fd_, rec, sizeof rec)) return status_ = s_.errno_status(errno);
  chunks_.push_back(ManifestChunk{k, chunk.size(), sum});
  state_.push_back(0);
  bytes_ += chunk.size();
  auto& info = s_.shared_[k];
  ++info.pending;
  if (key && info.on_disk && faccessat(s_.objects_fd_, s_.object_path(k).c_str(), F_OK, 0) == 0) {
    return Status::kOk;  // a content key already stored: the same bytes
  }
  int slot = s_.wait_slot();
  if (slot < 0) return status_ = s_.no_slot_status();
  s = s_.start_put(TokenStore::Sink::kWriter, index, this, TokenStore::Area::kShared, k, chunk, slot, false,
                   chunk.size(), sum);
  if (!ok(s)) {
    s_.release_slot(slot);
    return status_ = s;
  }
  ++inflight_;
  if (s_.header_block_ + chunk.size() > s_.buf_bytes_) {
    // Streams from the caller's memory: finish before handing it back.
    while (state_[index] == 0) s_.reap(true);
  }
  return status_;
}

void ContextWriter::on_done(size_t index, Status st) {
  --inflight_;
  state_[index] = ok(st) ? 1 : 2;
  if (!ok(st) && ok(status_)) status_ = st;
}

Status ContextWriter::commit() {
  if (done_) return Status::kInvalid;
  while (inflight_ > 0) s_.reap(true);
  if (!ok(status_)) {
    Status s = status_;
    abort();
    return s;
  }
  Status s = s_.ensure_writer();
  if (!ok(s)) {
    abort();
    return s;
  }
  Manifest m{meta_, chunks_};
  const std::vector<std::byte> bytes = encode_manifest(m);
  const std::string file = manifest_file(meta_.ns, meta_.name);
  const std::string temp = fmt::format("m{}", ++s_.temp_seq_);
  {
    UniqueFd fd(openat(s_.writer_fd_, temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd.valid() || !write_all(fd.get(), bytes.data(), bytes.size(), 0) ||
        (s_.opt_.durable && fdatasync(fd.get()) != 0)) {
      s = s_.errno_status(errno);
      unlinkat(s_.writer_fd_, temp.c_str(), 0);
      abort();
      return s;
    }
  }
  // The publication it replaces, as on disk now.
  Manifest old;
  uint64_t ino = 0, mt = 0;
  const bool had_old = ok(s_.load_manifest_file(file, &old, &ino, &mt));
  if (had_old) {
    // Journal the old publication's keys too: if this process dies after
    // the rename, the next open deletes them (nothing names them then);
    // before the rename the old manifest still names them, so they stay.
    std::vector<std::byte> recs(16 * old.chunks.size());
    for (size_t i = 0; i < old.chunks.size(); ++i) key_to_bytes(old.chunks[i].key, recs.data() + 16 * i);
    if (journal_fd_ < 0) {
      journal_ = fmt::format("j{:016x}", meta_.generation);
      journal_fd_ = openat(s_.writer_fd_, journal_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    }
    if (journal_fd_ < 0 || !append_all(journal_fd_, recs.data(), recs.size())) {
      s = s_.errno_status(errno);
      unlinkat(s_.writer_fd_, temp.c_str(), 0);
      abort();
      return s;
    }
    s_.add_manifest(file, std::move(old), ino, mt);
  }
  if (renameat(s_.writer_fd_, temp.c_str(), s_.contexts_fd_, file.c_str()) != 0) {
    s = s_.errno_status(errno);
    unlinkat(s_.writer_fd_, temp.c_str(), 0);
    abort();
    return s;
  }
  if (s_.opt_.durable) fsync(s_.contexts_fd_);
  struct stat st{};
  fstatat(s_.contexts_fd_, file.c_str(), &st, 0);
  for (const ManifestChunk& c : chunks_) {
    auto it = s_.shared_.find(c.key);
    if (it != s_.shared_.end() && it->second.pending > 0) --it->second.pending;
  }
  // Index the new publication; the old one's objects that nothing names now
  // go -- before the journal, which still lists them should we die here.
  std::vector<ObjectKey> dropped;
  s_.drop_manifest_refs(file, &dropped);
  s_.add_manifest(file, std::move(m), static_cast<uint64_t>(st.st_ino), mtime_ns(st));
  for (const ObjectKey& k : dropped) s_.unlink_shared(k);
  if (journal_fd_ >= 0) {
    close(journal_fd_);
    journal_fd_ = -1;
    unlinkat(s_.writer_fd_, journal_.c_str(), 0);
  }
  done_ = true;
  return Status::kOk;
}

void ContextWriter::abort() {
  if (done_) return;
  while (inflight_ > 0) s_.reap(true);
  for (size_t i = 0; i < chunks_.size(); ++i) {
    auto it = s_.shared_.find(chunks_[i].key);
    if (it != s_.shared_.end() && it->second.pending > 0) --it->second.pending;
    if (state_[i] == 1) s_.unlink_shared(chunks_[i].key);
  }
  if (journal_fd_ >= 0) {
    close(journal_fd_);
    journal_fd_ = -1;
    unlinkat(s_.writer_fd_, journal_.c_str(), 0);
  }
  done_ = true;
}

}  // namespace kvpager::store
