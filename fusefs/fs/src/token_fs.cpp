// TokenFs core: the store handles, the inode space, the context catalog
// (refresh, removal) and the threads that keep the kernel's caches honest.
#include "token_fs.h"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "control/client.h"
#include "control/runtime_dir.h"
#include "fs_errno.h"
#include "import_session.h"

namespace kvpager::fs {

namespace {

// How long a context removed through the mount stays reachable by name for
// the process that removed it: `rm -r` removes the context with its first
// unlink (kv), then unlinks the other entries and removes the directories.
constexpr uint64_t kGhostNs = 10'000'000'000;

timespec to_timespec(uint64_t ns) {
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

store::StoreOptions store_options(const FsOptions& o, bool read_only, uint32_t queue_depth) {
  store::StoreOptions s;
  s.dir = o.store_dir;
  s.capacity_bytes = o.capacity;
  s.queue_depth = queue_depth;
  s.max_io_bytes = o.chunk_size;
  s.read_only = read_only;
  s.log = o.log;
  return s;
}

}  // namespace

uint64_t CtxPub::chunk_of(uint64_t off) const {
  auto it = std::upper_bound(offsets.begin(), offsets.end(), off);
  return static_cast<uint64_t>(it - offsets.begin()) - 1;
}

TokenFs::TokenFs(FsOptions opt) : opt_(std::move(opt)), mounted_ns_(store::wall_clock_ns()) {
  if (!opt_.log) opt_.log = [](std::string_view m) { fmt::print(stderr, "kvpager-fs: {}\n", m); };
  if (!opt_.read_only) {
    try {
      store_ = std::make_unique<store::TokenStore>(store_options(opt_, false, 4));
    } catch (const ConfigError&) {
      // Someone else's store, or a read-only medium: show it, change nothing.
      // Anything else (not a store, a newer format) is the error it is.
      if (access(opt_.store_dir.c_str(), F_OK) != 0 || access(opt_.store_dir.c_str(), W_OK) == 0) throw;
      const int err = errno;
      opt_.read_only = true;
      log(fmt::format("{}: not writable ({}): mounted read-only (no imports, no removals)", opt_.store_dir,
                      std::strerror(err)));
    }
  }
  if (!store_) store_ = std::make_unique<store::TokenStore>(store_options(opt_, true, 4));
  // Absolute from here on: a daemon works from "/".
  if (char* real = realpath(opt_.store_dir.c_str(), nullptr)) {
    opt_.store_dir = real;
    std::free(real);
  }
  // Reads have a handle of their own, driven by the ChunkReader's thread.
  reader_store_ = std::make_unique<store::TokenStore>(store_options(opt_, true, opt_.queue_depth));
}

TokenFs::~TokenFs() { stop(); }

void TokenFs::start(fuse_session* se) {
  se_ = se;
  reader_ = std::make_unique<ChunkReader>(std::move(reader_store_));
  refresh();
  notifier_ = std::thread([this] { notify_loop(); });
  watcher_ = std::thread([this] { watch_loop(); });
}

void TokenFs::stop() {
  if (stopping_.exchange(true)) return;
  {
    std::lock_guard lock(watch_mu_);
    watch_cv_.notify_all();
  }
  {
    std::lock_guard lock(notify_mu_);
    notify_cv_.notify_all();
  }
  if (watcher_.joinable()) watcher_.join();
  if (notifier_.joinable()) notifier_.join();
  // Imports still open are aborted: nothing half-written stays behind.
  std::vector<std::shared_ptr<ImportSession>> open;
  {
    std::unique_lock lock(mu_);
    for (auto& [name, imp] : imports_) open.push_back(imp);
  }
  for (auto& imp : open) abort_import(*imp);
  {
    std::lock_guard lock(handles_mu_);
    handles_.clear();  // what the kernel never released: the session is over
  }
  reader_.reset();
}

uint64_t TokenFs::adopt(std::unique_ptr<Handle> h) {
  const auto fh = reinterpret_cast<uint64_t>(h.get());
  std::lock_guard lock(handles_mu_);
  handles_.emplace(fh, std::move(h));
  return fh;
}

void TokenFs::drop(uint64_t fh) {
  std::unique_ptr<Handle> gone;
  {
    std::lock_guard lock(handles_mu_);
    auto it = handles_.find(fh);
    if (it == handles_.end()) return;
    gone = std::move(it->second);
    handles_.erase(it);
  }
  // Destroyed outside the lock: a kv handle's window may still be loading.
}

// ---------------------------------------------------------------- inodes

fuse_ino_t TokenFs::allocate(uint64_t count) {
  const fuse_ino_t base = next_ino_;
  next_ino_ += count;
  return base;
}

bool TokenFs::resolve_ino(fuse_ino_t ino, Node* out) {
  *out = Node{};
  PathRef& r = out->ref;
  if (ino == FUSE_ROOT_ID) r.kind = NodeKind::kRoot;
  else if (ino == kContextsIno) r.kind = NodeKind::kContextsDir;
  else if (ino == kImportIno) r.kind = NodeKind::kImportDir;
  else if (ino == kProcessesIno) r.kind = NodeKind::kProcessesDir;
  else if (ino == kControlIno) r.kind = NodeKind::kControlDir;
  else if (ino == kStatsIno) r.kind = NodeKind::kStats;
  else if (ino >= kKnobIno && ino < kKnobIno + knobs().size()) {
    r.kind = NodeKind::kControlKnob;
    r.knob = std::string(knobs()[ino - kKnobIno].name);
  }
  if (r.kind != NodeKind::kNone) return true;

  std::shared_lock lock(mu_);
  auto it = blocks_.upper_bound(ino);
  if (it == blocks_.begin()) return false;
  --it;
  const fuse_ino_t base = it->first;
  if (ino >= base + it->second.count) return false;
  const fuse_ino_t off = ino - base;
  if (auto* pub = std::get_if<std::shared_ptr<CtxPub>>(&it->second.owner)) {
    out->ctx = *pub;
    r.context = (*pub)->name;
    switch (off) {
      case kCtxDir: r.kind = NodeKind::kContextDir; break;
      case kCtxKv: r.kind = NodeKind::kContextKv; break;
      case kCtxInfo: r.kind = NodeKind::kContextInfo; break;
      case kCtxChunks: r.kind = NodeKind::kChunksDir; break;
      default:
        r.kind = NodeKind::kChunk;
        r.chunk = off - kCtxFirstChunk;
    }
  } else if (auto* imp = std::get_if<std::shared_ptr<ImportSession>>(&it->second.owner)) {
    out->imp = *imp;
    r.kind = NodeKind::kImportFile;
    r.context = (*imp)->file_name;
  } else {
    const auto& proc = std::get<std::shared_ptr<ProcBlock>>(it->second.owner);
    r.pid = proc->pid;
    switch (off) {
      case kProcDir: r.kind = NodeKind::kProcessDir; break;
      case kProcStats: r.kind = NodeKind::kProcessStats; break;
      case kProcConfig: r.kind = NodeKind::kProcessConfig; break;
      case kProcControl: r.kind = NodeKind::kProcessControlDir; break;
      default:
        r.kind = NodeKind::kProcessKnob;
        r.knob = std::string(knobs()[off - kProcFirstKnob].name);
    }
  }
  return true;
}

void TokenFs::note_lookup(const Node& n, uint64_t count) {
  const auto c = static_cast<int64_t>(count);
  std::unique_lock lock(mu_);
  if (n.ctx) {
    n.ctx->nlookup += c;
    // The block may have been dropped (gone, unreferenced) since it was
    // resolved: the kernel now holds an inode of it again.
    blocks_.try_emplace(n.ctx->base, Block{kCtxFirstChunk + n.ctx->chunks.size(), n.ctx});
  } else if (n.imp) {
    n.imp->nlookup += c;
    blocks_.try_emplace(n.imp->ino, Block{1, n.imp});
  } else if (n.ref.pid != 0) {
    auto it = procs_.find(n.ref.pid);
    if (it != procs_.end()) it->second->nlookup += c;
  }
}

void TokenFs::forget(fuse_ino_t ino, uint64_t count) {
  const auto c = static_cast<int64_t>(count);
  std::unique_lock lock(mu_);
  auto it = blocks_.upper_bound(ino);
  if (it == blocks_.begin()) return;
  --it;
  if (ino >= it->first + it->second.count) return;
  if (auto* pub = std::get_if<std::shared_ptr<CtxPub>>(&it->second.owner)) {
    (*pub)->nlookup = std::max<int64_t>(0, (*pub)->nlookup - c);
  } else if (auto* imp = std::get_if<std::shared_ptr<ImportSession>>(&it->second.owner)) {
    (*imp)->nlookup = std::max<int64_t>(0, (*imp)->nlookup - c);
  } else {
    auto& proc = std::get<std::shared_ptr<ProcBlock>>(it->second.owner);
    proc->nlookup = std::max<int64_t>(0, proc->nlookup - c);
  }
  drop_block_if_unused(it->first);
}

void TokenFs::drop_block_if_unused(fuse_ino_t base) {
  auto it = blocks_.find(base);
  if (it == blocks_.end()) return;
  bool drop = false;
  if (auto* pub = std::get_if<std::shared_ptr<CtxPub>>(&it->second.owner)) {
    drop = (*pub)->gone && (*pub)->nlookup <= 0;
  } else if (auto* imp = std::get_if<std::shared_ptr<ImportSession>>(&it->second.owner)) {
    drop = (*imp)->finished && (*imp)->nlookup <= 0;
  }
  // Pager blocks stay: a pid's inode numbers are reused if it serves again.
  if (drop) blocks_.erase(it);
}

std::shared_ptr<ProcBlock> TokenFs::proc_block(int32_t pid) {
  std::unique_lock lock(mu_);
  auto& slot = procs_[pid];
  if (!slot) {
    slot = std::make_shared<ProcBlock>();
    slot->pid = pid;
    slot->base = allocate(kProcFirstKnob + knobs().size());
    blocks_.emplace(slot->base, Block{kProcFirstKnob + knobs().size(), slot});
  }
  return slot;
}

std::vector<control::Endpoint> TokenFs::live_pagers() const { return control::list_pagers(opt_.runtime_dir).live; }

bool TokenFs::pager_live(int32_t pid) const {
  if (access(pager(pid).socket.c_str(), F_OK) != 0) return false;
  return kill(pid, 0) == 0 || errno == EPERM;
}

// ---------------------------------------------------------------- attributes

namespace {

bool visible_to(const CtxPub& p, pid_t caller, uint64_t now) {
  return !p.gone || (p.removed_by != 0 && p.removed_by == caller && now - p.removed_at_ns < kGhostNs);
}

int knob_index(std::string_view name) {
  auto ks = knobs();
  for (size_t i = 0; i < ks.size(); ++i)
    if (ks[i].name == name) return static_cast<int>(i);
  return -1;
}

}  // namespace

bool TokenFs::visible(const CtxPub& pub, pid_t caller) {
  std::shared_lock lock(mu_);
  return visible_to(pub, caller, store::wall_clock_ns());
}

double TokenFs::entry_timeout(const Node& n) const {
  switch (n.ref.kind) {
    case NodeKind::kContextDir:
    case NodeKind::kContextKv:
    case NodeKind::kContextInfo:
    case NodeKind::kChunksDir:
    case NodeKind::kChunk:
      return opt_.entry_timeout;  // invalidated when the context changes
    case NodeKind::kRoot:
    case NodeKind::kContextsDir:
    case NodeKind::kImportDir:
    case NodeKind::kProcessesDir:
    case NodeKind::kControlDir:
    case NodeKind::kStats:
    case NodeKind::kControlKnob:
      return 3600.0;  // fixed names
    default:
      return 0.0;  // imports and pagers come and go
  }
}

double TokenFs::attr_timeout(const Node& n) const {
  switch (n.ref.kind) {
    case NodeKind::kContextDir:
    case NodeKind::kContextKv:
    case NodeKind::kChunksDir:
    case NodeKind::kChunk:
      return opt_.attr_timeout;  // a publication never changes size
    case NodeKind::kRoot:
    case NodeKind::kContextsDir:
    case NodeKind::kImportDir:
    case NodeKind::kProcessesDir:
    case NodeKind::kControlDir:
      return 3600.0;
    default:
      return 0.0;  // generated files: sizes change with their contents
  }
}

int TokenFs::attr_of(const Node& n, struct stat* st) {
  std::memset(st, 0, sizeof *st);
  st->st_uid = opt_.uid;
  st->st_gid = opt_.gid;
  st->st_nlink = 1;
  st->st_blksize = 1 << 20;
  st->st_atim = st->st_mtim = st->st_ctim = to_timespec(mounted_ns_);
  auto dir = [&](mode_t mode) {
    st->st_mode = S_IFDIR | mode;
    st->st_nlink = 2;
  };
  auto file = [&](mode_t mode, uint64_t size) {
    st->st_mode = S_IFREG | mode;
    st->st_size = static_cast<off_t>(size);
    st->st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  };
  auto generated = [&](mode_t mode) {
    std::string text;
    int e = render(n, &text);
    if (e == 0) file(mode, text.size());
    return e;
  };
  if (n.ctx) {
    std::shared_lock lock(mu_);
    const store::ContextMeta& m = n.ctx->meta;
    st->st_uid = m.owner_uid;
    st->st_mtim = st->st_ctim = to_timespec(m.created_ns);
    st->st_atim = to_timespec(n.ctx->last_access_ns);
  }
  switch (n.ref.kind) {
    case NodeKind::kNone: return ENOENT;
    case NodeKind::kRoot: dir(0755); st->st_nlink = 7; return 0;
    case NodeKind::kContextsDir: dir(opt_.allow_other ? 01777 : 0755); return 0;
    case NodeKind::kContextDir: dir(0700); st->st_nlink = 3; return 0;
    case NodeKind::kContextKv: file(0400, n.ctx->size()); return 0;
    case NodeKind::kContextInfo: return generated(0400);
    case NodeKind::kChunksDir: dir(0700); return 0;
    case NodeKind::kChunk:
      if (n.ref.chunk >= n.ctx->chunks.size()) return ENOENT;
      file(0400, n.ctx->chunks[n.ref.chunk].bytes);
      return 0;
    case NodeKind::kImportDir: dir(0755); return 0;
    case NodeKind::kImportFile: {
      std::lock_guard lock(n.imp->mu);
      st->st_uid = n.imp->uid;
      file(0600, n.imp->received);
      return 0;
    }
    // The pagers' metrics and command lines: the mounting user's, as their
    // control sockets are, also when allow_other lets others in.
    case NodeKind::kStats: return generated(0400);
    case NodeKind::kProcessesDir: dir(0500); return 0;
    case NodeKind::kProcessDir: dir(0500); return 0;
    case NodeKind::kProcessStats:
    case NodeKind::kProcessConfig: return generated(0400);
    case NodeKind::kProcessControlDir:
    case NodeKind::kControlDir: dir(0700); return 0;
    case NodeKind::kProcessKnob:
    case NodeKind::kControlKnob: {
      const Knob* k = find_knob(n.ref.knob);
      return generated(k && k->live ? 0600 : 0400);
    }
  }
  return ENOENT;
}

// ---------------------------------------------------------------- lookup

int TokenFs::lookup(fuse_ino_t parent, const char* name, pid_t caller, fuse_entry_param* e) {
  Node p;
  if (!resolve_ino(parent, &p)) return ENOENT;
  Node n;
  n.ref = child(p.ref, name);
  fuse_ino_t ino = 0;
  const uint64_t now = store::wall_clock_ns();
  switch (n.ref.kind) {
    case NodeKind::kNone:
    case NodeKind::kRoot:
      return ENOENT;
    case NodeKind::kContextsDir: ino = kContextsIno; break;
    case NodeKind::kImportDir: ino = kImportIno; break;
    case NodeKind::kProcessesDir: ino = kProcessesIno; break;
    case NodeKind::kControlDir: ino = kControlIno; break;
    case NodeKind::kStats: ino = kStatsIno; break;
    case NodeKind::kContextDir:
      n.ctx = current(n.ref.context);
      if (!n.ctx) n.ctx = ghost(n.ref.context, caller);
      if (!n.ctx) return ENOENT;
      ino = n.ctx->base + kCtxDir;
      break;
    case NodeKind::kContextKv:
    case NodeKind::kContextInfo:
    case NodeKind::kChunksDir:
    case NodeKind::kChunk: {
      n.ctx = p.ctx;
      {
        std::shared_lock lock(mu_);
        if (!visible_to(*n.ctx, caller, now)) return ENOENT;
        // A removed context's chunks/ is empty for the process removing it.
        if (n.ref.kind == NodeKind::kChunk && n.ctx->gone) return ENOENT;
      }
      if (n.ref.kind == NodeKind::kContextKv) ino = n.ctx->base + kCtxKv;
      else if (n.ref.kind == NodeKind::kContextInfo) ino = n.ctx->base + kCtxInfo;
      else if (n.ref.kind == NodeKind::kChunksDir) ino = n.ctx->base + kCtxChunks;
      else if (n.ref.chunk < n.ctx->chunks.size()) ino = n.ctx->base + kCtxFirstChunk + n.ref.chunk;
      else return ENOENT;
      break;
    }
    case NodeKind::kImportFile: {
      std::shared_lock lock(mu_);
      auto it = imports_.find(n.ref.context);
      if (it == imports_.end()) return ENOENT;
      n.imp = it->second;
      ino = n.imp->ino;
      break;
    }
    case NodeKind::kProcessDir:
    case NodeKind::kProcessStats:
    case NodeKind::kProcessConfig:
    case NodeKind::kProcessControlDir:
    case NodeKind::kProcessKnob: {
      if (!pager_live(n.ref.pid)) return ENOENT;
      auto proc = proc_block(n.ref.pid);
      if (n.ref.kind == NodeKind::kProcessDir) ino = proc->base + kProcDir;
      else if (n.ref.kind == NodeKind::kProcessStats) ino = proc->base + kProcStats;
      else if (n.ref.kind == NodeKind::kProcessConfig) ino = proc->base + kProcConfig;
      else if (n.ref.kind == NodeKind::kProcessControlDir) ino = proc->base + kProcControl;
      else {
        int k = knob_index(n.ref.knob);
        if (k < 0) return ENOENT;
        ino = proc->base + kProcFirstKnob + static_cast<fuse_ino_t>(k);
      }
      break;
    }
    case NodeKind::kControlKnob: {
      int k = knob_index(n.ref.knob);
      if (k < 0) return ENOENT;
      ino = kKnobIno + static_cast<fuse_ino_t>(k);
      break;
    }
  }
  int err = attr_of(n, &e->attr);
  if (err) return err;
  e->ino = ino;
  e->attr.st_ino = ino;
  e->generation = 0;
  e->entry_timeout = entry_timeout(n);
  e->attr_timeout = attr_timeout(n);
  note_lookup(n, 1);
  return 0;
}

int TokenFs::list_dir(const Node& dir, pid_t caller, Listing* out) {
  auto add = [&](std::string name, fuse_ino_t ino, mode_t type) {
    out->entries.push_back(DirEntry{std::move(name), ino, type});
  };
  const uint64_t now = store::wall_clock_ns();
  switch (dir.ref.kind) {
    case NodeKind::kRoot:
      add("contexts", kContextsIno, S_IFDIR);
      add("import", kImportIno, S_IFDIR);
      add("processes", kProcessesIno, S_IFDIR);
      add("control", kControlIno, S_IFDIR);
      add("stats", kStatsIno, S_IFREG);
      return 0;
    case NodeKind::kContextsDir: {
      std::shared_lock lock(mu_);
      for (const auto& [name, pub] : by_name_) add(name, pub->base + kCtxDir, S_IFDIR);
      return 0;
    }
    case NodeKind::kContextDir: {
      std::shared_lock lock(mu_);
      if (!visible_to(*dir.ctx, caller, now)) return ENOENT;
      // kv first: `rm -r` removes entries in this order, and unlinking kv is
      // what removes the context (see fs_ops.cpp, unlink).
      add("kv", dir.ctx->base + kCtxKv, S_IFREG);
      add("info", dir.ctx->base + kCtxInfo, S_IFREG);
      add("chunks", dir.ctx->base + kCtxChunks, S_IFDIR);
      return 0;
    }
    case NodeKind::kChunksDir: {
      std::shared_lock lock(mu_);
      if (!visible_to(*dir.ctx, caller, now)) return ENOENT;
      if (dir.ctx->gone) return 0;
      out->chunk_ino = dir.ctx->base + kCtxFirstChunk;
      out->chunk_count = dir.ctx->chunks.size();
      return 0;
    }
    case NodeKind::kImportDir: {
      std::shared_lock lock(mu_);
      for (const auto& [name, imp] : imports_) add(name, imp->ino, S_IFREG);
      return 0;
    }
    case NodeKind::kProcessesDir:
      for (const control::Endpoint& e : live_pagers()) {
        auto proc = proc_block(e.pid);
        add(std::to_string(e.pid), proc->base + kProcDir, S_IFDIR);
      }
      return 0;
    case NodeKind::kProcessDir: {
      if (!pager_live(dir.ref.pid)) return ENOENT;
      auto proc = proc_block(dir.ref.pid);
      add("stats", proc->base + kProcStats, S_IFREG);
      add("config", proc->base + kProcConfig, S_IFREG);
      add("control", proc->base + kProcControl, S_IFDIR);
      return 0;
    }
    case NodeKind::kProcessControlDir: {
      if (!pager_live(dir.ref.pid)) return ENOENT;
      auto proc = proc_block(dir.ref.pid);
      auto ks = knobs();
      for (size_t i = 0; i < ks.size(); ++i) add(std::string(ks[i].name), proc->base + kProcFirstKnob + i, S_IFREG);
      return 0;
    }
    case NodeKind::kControlDir: {
      auto ks = knobs();
      for (size_t i = 0; i < ks.size(); ++i) add(std::string(ks[i].name), kKnobIno + i, S_IFREG);
      return 0;
    }
    default:
      return ENOTDIR;
  }
}

// ---------------------------------------------------------------- catalog

std::shared_ptr<CtxPub> TokenFs::current(const std::string& name) {
  std::shared_lock lock(mu_);
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::shared_ptr<CtxPub> TokenFs::ghost(const std::string& name, pid_t caller) {
  std::shared_lock lock(mu_);
  auto it = ghosts_.find(name);
  if (it == ghosts_.end() || !visible_to(*it->second, caller, store::wall_clock_ns())) return nullptr;
  return it->second;
}

void TokenFs::forget_ghost(const std::string& name, const std::shared_ptr<CtxPub>& pub) {
  std::unique_lock lock(mu_);
  auto it = ghosts_.find(name);
  if (it != ghosts_.end() && it->second == pub) ghosts_.erase(it);
}

std::shared_ptr<CtxPub> TokenFs::make_pub(const std::string& name, store::Manifest m, uint64_t last_access_ns) {
  auto pub = std::make_shared<CtxPub>();
  pub->name = name;
  pub->generation = m.meta.generation;
  pub->meta = std::move(m.meta);
  pub->chunks = std::move(m.chunks);
  pub->offsets.reserve(pub->chunks.size() + 1);
  uint64_t off = 0;
  pub->offsets.push_back(0);
  for (const auto& c : pub->chunks) pub->offsets.push_back(off += c.bytes);
  pub->last_access_ns = last_access_ns;
  pub->verified.assign(pub->chunks.size(), false);
  pub->base = allocate(kCtxFirstChunk + pub->chunks.size());
  blocks_.emplace(pub->base, Block{kCtxFirstChunk + pub->chunks.size(), pub});
  return pub;
}

void TokenFs::retire(const std::shared_ptr<CtxPub>& pub) {
  pub->gone = true;
  queue_inval_entry(kContextsIno, pub->name);
  queue_inval_inode(pub->base + kCtxKv);  // its cached pages go now, not under memory pressure
  drop_block_if_unused(pub->base);
}

void TokenFs::refresh() {
  std::lock_guard serial(refresh_mu_);
  struct Fresh {
    std::string name;
    store::Manifest manifest;
    uint64_t last_access_ns;
  };
  std::vector<store::ContextEntry> list;
  std::vector<Fresh> fresh;
  StoreTotals totals;
  {
    std::lock_guard lock(store_mu_);
    list = store_->list_contexts();
    for (const auto& e : list) {
      ++totals.contexts;
      totals.bytes += e.bytes;
      totals.pinned += e.meta.pinned ? 1 : 0;
      if (e.meta.ns != opt_.ns) continue;
      if (!valid_context_name(e.meta.name)) {
        ++totals.hidden;
        continue;
      }
      auto have = current(e.meta.name);
      if (have && have->generation == e.meta.generation) continue;
      Fresh f{e.meta.name, {}, e.last_access_ns};
      if (ok(store_->read_manifest(opt_.ns, e.meta.name, &f.manifest))) fresh.push_back(std::move(f));
    }
    used_bytes_ = store_->used_bytes();
    store_stats_ = store_->stats();
  }
  std::unique_lock lock(mu_);
  totals_ = totals;
  std::map<std::string, const store::ContextEntry*> listed;
  for (const auto& e : list)
    if (e.meta.ns == opt_.ns && valid_context_name(e.meta.name)) listed.emplace(e.meta.name, &e);
  // Gone from the store.
  for (auto it = by_name_.begin(); it != by_name_.end();) {
    if (listed.count(it->first)) {
      ++it;
      continue;
    }
    retire(it->second);
    it = by_name_.erase(it);
  }
  // Settings and last use of the publications we have.
  for (auto& [name, pub] : by_name_) {
    const store::ContextEntry& e = *listed.at(name);
    if (e.meta.generation != pub->generation) continue;
    if (!(e.meta == pub->meta)) {
      pub->meta = e.meta;
      queue_inval_inode(pub->base + kCtxInfo);
    }
    pub->last_access_ns = e.last_access_ns;
  }
  // New names and new publications of known names.
  for (Fresh& f : fresh) {
    auto it = by_name_.find(f.name);
    if (it != by_name_.end()) {
      if (it->second->generation == f.manifest.meta.generation) continue;
      retire(it->second);
    }
    by_name_[f.name] = make_pub(f.name, std::move(f.manifest), f.last_access_ns);
  }
  // Ghosts past their time.
  const uint64_t now = store::wall_clock_ns();
  std::erase_if(ghosts_, [&](const auto& g) { return now - g.second->removed_at_ns >= kGhostNs; });
}

int TokenFs::remove_context(const std::shared_ptr<CtxPub>& pub, pid_t caller) {
  if (opt_.read_only) return EROFS;
  if (int e = check_unpinned(pub->name)) return e;
  std::lock_guard serial(refresh_mu_);
  {
    std::shared_lock lock(mu_);
    if (pub->gone) return visible_to(*pub, caller, store::wall_clock_ns()) ? 0 : ENOENT;
  }
  {
    std::lock_guard lock(store_mu_);
    store::Manifest m;
    Status s = store_->read_manifest(opt_.ns, pub->name, &m);
    // Replaced or removed meanwhile by someone else: what the caller named
    // is gone, and the new publication is not theirs to remove.
    if (s == Status::kNotFound || (ok(s) && m.meta.generation != pub->generation)) return ENOENT;
    s = store_->remove_context(opt_.ns, pub->name);
    if (!ok(s) && s != Status::kNotFound) {
      log(fmt::format("removing context '{}': {}", pub->name, to_string(s)));
      return errno_of(s);
    }
  }
  std::unique_lock lock(mu_);
  pub->removed_by = caller;
  pub->removed_at_ns = store::wall_clock_ns();
  auto it = by_name_.find(pub->name);
  if (it != by_name_.end() && it->second == pub) by_name_.erase(it);
  ghosts_[pub->name] = pub;
  retire(pub);
  contexts_removed.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

int TokenFs::check_unpinned(const std::string& name) {
  auto pagers = live_pagers();
  if (pagers.empty()) return 0;
  auto replies = pagers_.call_all(pagers, {{"op", "contexts"}});
  for (size_t i = 0; i < pagers.size(); ++i) {
    const control::Reply& r = replies[i];
    if (r.code == control::Errc::kGone || r.code == control::Errc::kDenied) continue;  // not ours to ask
    if (!r.ok()) {
      log(fmt::format("not removing context '{}': pid {} did not say whether it has it pinned ({})", name,
                      pagers[i].pid, r.error));
      return EBUSY;
    }
    const auto& list = r.body.contains("contexts") ? r.body["contexts"] : nlohmann::json::array();
    for (const auto& c : list) {
      if (c.is_object() && c.value("name", std::string()) == name && c.value("pinned", false)) return EBUSY;
    }
  }
  return 0;
}

void TokenFs::note_read(CtxPub& pub, uint64_t chunk, Status st) {
  std::lock_guard lock(pub.check_mu);
  if (ok(st)) {
    if (chunk < pub.verified.size() && !pub.verified[chunk]) {
      pub.verified[chunk] = true;
      ++pub.verified_count;
    }
    return;
  }
  const bool first = !pub.corrupt && !pub.missing;
  if (st == Status::kNotFound) pub.missing = true;
  else pub.corrupt = true;
  if (first)
    log(fmt::format("context '{}': chunk {} {}: reads fail with EIO", pub.name, chunk,
                    st == Status::kNotFound ? "is missing from the store" : fmt::format("could not be read ({})", to_string(st))));
}

// ---------------------------------------------------------------- threads

void TokenFs::queue_inval_entry(fuse_ino_t parent, std::string name) {
  {
    std::lock_guard lock(notify_mu_);
    invals_.push_back(Inval{parent, 0, std::move(name)});
  }
  notify_cv_.notify_one();
}

void TokenFs::queue_inval_inode(fuse_ino_t ino) {
  {
    std::lock_guard lock(notify_mu_);
    invals_.push_back(Inval{0, ino, {}});
  }
  notify_cv_.notify_one();
}

void TokenFs::notify_loop() {
  for (;;) {
    Inval v;
    {
      std::unique_lock lock(notify_mu_);
      notify_cv_.wait(lock, [&] { return stopping_.load() || !invals_.empty(); });
      if (stopping_.load()) return;
      v = std::move(invals_.front());
      invals_.pop_front();
    }
    // No lock held: the kernel may need to finish a request of ours first.
    // ENOENT just means the kernel had nothing cached.
    if (v.name.empty()) fuse_lowlevel_notify_inval_inode(se_, v.ino, 0, 0);
    else fuse_lowlevel_notify_inval_entry(se_, v.parent, v.name.c_str(), v.name.size());
  }
}

void TokenFs::watch_loop() {
  // inotify on contexts/ sees publications and removals at once; polling
  // covers what it cannot see (another node of a shared file system).
  int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  int err = errno;
  const std::string dir = opt_.store_dir + "/contexts";
  if (ifd >= 0 &&
      inotify_add_watch(ifd, dir.c_str(), IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ATTRIB) < 0) {
    err = errno;
    close(ifd);
    ifd = -1;
  }
  if (ifd < 0)
    log(fmt::format("cannot watch {} (inotify: {}): changes are seen by polling alone, every {} ms", dir,
                    std::strerror(err), opt_.poll_interval.count()));
  struct stat opened {};
  const bool identity = stat(opt_.store_dir.c_str(), &opened) == 0;
  auto next_poll = std::chrono::steady_clock::now() + opt_.poll_interval;
  while (!stopping_.load()) {
    bool due = false;
    if (ifd >= 0) {
      pollfd p{ifd, POLLIN, 0};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next_poll - std::chrono::steady_clock::now());
      // Short waits, so stop() is seen promptly.
      int ms = static_cast<int>(std::clamp<int64_t>(left.count(), 0, 50));
      if (poll(&p, 1, ms) > 0 && (p.revents & POLLIN)) {
        char buf[8192];
        while (read(ifd, buf, sizeof buf) > 0) {
        }
        due = true;
      }
    } else {
      std::unique_lock lock(watch_mu_);
      watch_cv_.wait_for(lock, std::chrono::milliseconds(50), [&] { return stopping_.load(); });
    }
    if (std::chrono::steady_clock::now() >= next_poll) due = true;
    if (!due || stopping_.load()) continue;
    next_poll = std::chrono::steady_clock::now() + opt_.poll_interval;
    if (identity && store_dir_replaced(opened.st_dev, opened.st_ino)) continue;  // nothing new can come
    refresh();
  }
  if (ifd >= 0) close(ifd);
}

bool TokenFs::store_dir_replaced(dev_t dev, ino_t ino) {
  if (store_lost_.load()) return true;
  struct stat now {};
  const bool there = stat(opt_.store_dir.c_str(), &now) == 0;
  if (there && now.st_dev == dev && now.st_ino == ino) return false;
  store_lost_.store(true);
  log(fmt::format("the store directory {} was {} while mounted: this mount still serves the one it opened, which "
                  "no writer can reach any more; unmount it and mount again",
                  opt_.store_dir, there ? "replaced by another" : "removed"));
  return true;
}

}  // namespace kvpager::fs
