// The libfuse low-level request handlers: each resolves its inode number to
// a node and answers from TokenFs. Every refusal has one documented errno
// (docs/fs.md) and changes nothing.
#include <fmt/format.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>

#include "import_session.h"
#include "kvpager/fs/writer_exit.h"
#include "token_fs.h"

namespace kvpager::fs {

// ---------------------------------------------------------------- handles

struct TokenFs::DirHandle : Handle {
  Listing listing;  // ".", "..", then the children, as of opendir
};

// kv or one chunk file: bytes [offsets[first], offsets[end]) of a publication.
struct TokenFs::KvHandle : Handle {
  std::shared_ptr<CtxPub> pub;
  uint64_t first = 0, end = 0;  // chunk range
  std::mutex mu;
  std::map<uint64_t, std::shared_ptr<ChunkReader::Load>> window;  // chunks read or being read
  uint64_t next_off = 0;  // where a sequential reader reads next
};

// A generated file: its text as of open. Shared, so a reply still being
// written holds it even if the release of the file overtakes it.
struct TokenFs::TextHandle : Handle {
  std::shared_ptr<const std::string> text = std::make_shared<const std::string>();
};

struct TokenFs::ControlHandle : TextHandle {
  std::string knob;
  int32_t pid = 0;  // 0: every pager (/control)
};

struct TokenFs::ImportHandle : Handle {
  std::shared_ptr<ImportSession> imp;
};

namespace {

TokenFs& self(fuse_req_t req) { return *static_cast<TokenFs*>(fuse_req_userdata(req)); }
pid_t caller(fuse_req_t req) { return fuse_req_ctx(req)->pid; }

template <typename H>
H* handle_as(fuse_file_info* fi) {
  return dynamic_cast<H*>(reinterpret_cast<TokenFs::Handle*>(fi->fh));
}

void reply(fuse_req_t req, int err) { fuse_reply_err(req, err); }

void op_init(void*, fuse_conn_info* conn) {
  // Reads of kv go through the page cache (a publication never changes),
  // with the kernel's asynchronous readahead: several reads in flight.
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  conn->want &= ~static_cast<unsigned>(FUSE_CAP_WRITEBACK_CACHE);  // imports must see every write, in order
}

// The VFS leaves NAME_MAX to each file system.
bool too_long(const char* name) { return std::strlen(name) > kMaxFileName; }

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  if (too_long(name)) return reply(req, ENAMETOOLONG);
  fuse_entry_param e{};
  int err = self(req).lookup(parent, name, caller(req), &e);
  if (err) return reply(req, err);
  fuse_reply_entry(req, &e);
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  self(req).forget(ino, nlookup);
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) self(req).forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  TokenFs& fs = self(req);
  Node n;
  if (!fs.resolve_ino(ino, &n)) return reply(req, ENOENT);
  struct stat st {};
  if (int err = fs.attr_of(n, &st)) return reply(req, err);
  st.st_ino = ino;
  fuse_reply_attr(req, &st, fs.attr_timeout(n));
}

bool read_only_file(NodeKind k) {
  switch (k) {
    case NodeKind::kContextKv:
    case NodeKind::kContextInfo:
    case NodeKind::kChunk:
    case NodeKind::kStats:
    case NodeKind::kProcessStats:
    case NodeKind::kProcessConfig:
      return true;
    default:
      return false;
  }
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  TokenFs& fs = self(req);
  Node n;
  if (!fs.resolve_ino(ino, &n)) return reply(req, ENOENT);
  const bool size = (to_set & FUSE_SET_ATTR_SIZE) != 0;
  switch (n.ref.kind) {
    case NodeKind::kImportFile:
      // The file being imported has no lasting attributes: mode, owner and
      // times (cp -p) are accepted and dropped; a size extends it with zeros.
      if (size) {
        if (int err = n.imp->truncate(fs, static_cast<uint64_t>(attr->st_size))) return reply(req, err);
      }
      break;
    case NodeKind::kControlKnob:
    case NodeKind::kProcessKnob:
      // `echo 8 > knob` truncates first; a knob has no bytes to cut.
      if (to_set != FUSE_SET_ATTR_SIZE || attr->st_size != 0) return reply(req, EPERM);
      break;
    default:
      return reply(req, size && read_only_file(n.ref.kind) ? EROFS : EPERM);
  }
  struct stat st {};
  if (int err = fs.attr_of(n, &st)) return reply(req, err);
  st.st_ino = ino;
  fuse_reply_attr(req, &st, fs.attr_timeout(n));
}

// ---------------------------------------------------------------- directories

void op_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  TokenFs& fs = self(req);
  Node n;
  if (!fs.resolve_ino(ino, &n)) return reply(req, ENOENT);
  if (!is_dir(n.ref.kind)) return reply(req, ENOTDIR);
  auto h = std::make_unique<TokenFs::DirHandle>();
  h->listing.entries.push_back({".", ino, S_IFDIR});
  h->listing.entries.push_back({"..", ino, S_IFDIR});
  if (int err = fs.list_dir(n, caller(req), &h->listing)) return reply(req, err);
  fi->fh = fs.adopt(std::move(h));
  if (fuse_reply_open(req, fi) != 0) fs.drop(fi->fh);
}

void op_readdir(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  auto* h = handle_as<TokenFs::DirHandle>(fi);
  if (!h) return reply(req, EBADF);
  const TokenFs::Listing& l = h->listing;
  std::vector<char> buf(size);
  size_t used = 0;
  const uint64_t total = l.entries.size() + l.chunk_count;
  for (uint64_t i = static_cast<uint64_t>(std::max<off_t>(off, 0)); i < total; ++i) {
    struct stat st {};
    std::string chunk_name;
    const char* name;
    if (i < l.entries.size()) {
      name = l.entries[i].name.c_str();
      st.st_ino = l.entries[i].ino;
      st.st_mode = l.entries[i].type;
    } else {
      const uint64_t c = i - l.entries.size();
      chunk_name = std::to_string(c);
      name = chunk_name.c_str();
      st.st_ino = l.chunk_ino + c;
      st.st_mode = S_IFREG;
    }
    const size_t n = fuse_add_direntry(req, buf.data() + used, size - used, name, &st, static_cast<off_t>(i + 1));
    if (n > size - used) break;
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void op_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  self(req).drop(fi->fh);
  reply(req, 0);
}

// ---------------------------------------------------------------- files

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  TokenFs& fs = self(req);
  Node n;
  if (!fs.resolve_ino(ino, &n)) return reply(req, ENOENT);
  const bool writing = (fi->flags & O_ACCMODE) != O_RDONLY;
  std::unique_ptr<TokenFs::Handle> h;
  switch (n.ref.kind) {
    case NodeKind::kContextKv:
    case NodeKind::kChunk: {
      if (writing) return reply(req, EROFS);
      if (!fs.visible(*n.ctx, caller(req)) || n.ctx->gone) return reply(req, ENOENT);
      auto kv = std::make_unique<TokenFs::KvHandle>();
      kv->pub = n.ctx;
      kv->first = n.ref.kind == NodeKind::kChunk ? n.ref.chunk : 0;
      kv->end = n.ref.kind == NodeKind::kChunk ? n.ref.chunk + 1 : n.ctx->chunks.size();
      if (kv->end > n.ctx->chunks.size()) return reply(req, ENOENT);
      // A publication never changes: what the kernel cached stays valid.
      fi->keep_cache = 1;
      h = std::move(kv);
      break;
    }
    case NodeKind::kContextInfo:
    case NodeKind::kStats:
    case NodeKind::kProcessStats:
    case NodeKind::kProcessConfig: {
      if (writing) return reply(req, EROFS);
      auto text = std::make_unique<TokenFs::TextHandle>();
      std::string rendered;
      if (int err = fs.render(n, &rendered)) return reply(req, err);
      text->text = std::make_shared<const std::string>(std::move(rendered));
      fi->direct_io = 1;  // generated: its size is whatever it is at read time
      h = std::move(text);
      break;
    }
    case NodeKind::kControlKnob:
    case NodeKind::kProcessKnob: {
      const Knob* k = find_knob(n.ref.knob);
      if (!k) return reply(req, ENOENT);
      if (writing && !k->live) return reply(req, EPERM);  // fixed at start: nothing to apply it to
      auto c = std::make_unique<TokenFs::ControlHandle>();
      c->knob = n.ref.knob;
      c->pid = n.ref.pid;
      if ((fi->flags & O_ACCMODE) != O_WRONLY) {
        std::string rendered;
        if (int err = fs.render(n, &rendered)) return reply(req, err);
        c->text = std::make_shared<const std::string>(std::move(rendered));
      }
      fi->direct_io = 1;
      h = std::move(c);
      break;
    }
    case NodeKind::kImportFile:
      return reply(req, EBUSY);  // its writer has it; it is not readable before it is imported
    default:
      return reply(req, is_dir(n.ref.kind) ? EISDIR : ENOENT);
  }
  // Only an import has anything to do at close: the others need no flush
  // round trip (and close() succeeds even once the daemon is gone).
  fi->noflush = 1;
  fi->fh = fs.adopt(std::move(h));
  if (fuse_reply_open(req, fi) != 0) fs.drop(fi->fh);
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t, fuse_file_info* fi) {
  TokenFs& fs = self(req);
  Node p;
  if (!fs.resolve_ino(parent, &p)) return reply(req, ENOENT);
  if (p.ref.kind != NodeKind::kImportDir) return reply(req, EPERM);  // only /import takes new files
  if (too_long(name)) return reply(req, ENAMETOOLONG);
  fuse_entry_param e{};
  auto h = std::make_unique<TokenFs::ImportHandle>();
  if (int err = fs.create_import(name, fuse_req_ctx(req), &h->imp, &e)) return reply(req, err);
  fi->direct_io = 1;  // every write reaches the import, in order, and can fail
  auto imp = h->imp;
  fi->fh = fs.adopt(std::move(h));
  if (fuse_reply_create(req, &e, fi) != 0) {
    fs.drop(fi->fh);
    imp->finish(fs);  // the creator is gone: an empty file
    fs.finish_import(imp, EIO);
  }
}

void read_kv(TokenFs& fs, fuse_req_t req, TokenFs::KvHandle& h, size_t size, off_t off) {
  const CtxPub& p = *h.pub;
  const uint64_t start = p.offsets[h.first];
  const uint64_t file_size = p.offsets[h.end] - start;
  const auto pos = static_cast<uint64_t>(off);
  if (pos >= file_size || size == 0) return static_cast<void>(fuse_reply_buf(req, nullptr, 0));
  const uint64_t end = std::min<uint64_t>(pos + size, file_size);
  const uint64_t a = start + pos, b = start + end;
  const uint64_t c0 = p.chunk_of(a), c1 = p.chunk_of(b - 1);
  std::vector<std::shared_ptr<ChunkReader::Load>> need;
  {
    std::lock_guard lock(h.mu);
    // Sequential readers (cp, cat: the kernel's readahead) get a window of
    // chunks read ahead, while all readers together hold less than the
    // budget; a reader that jumps gets what it asked for.
    const bool sequential = pos == h.next_off || h.window.count(c0) != 0;
    const bool room = fs.reader().held_bytes() < fs.options().read_ahead_budget;
    const uint64_t until = sequential && room ? std::min<uint64_t>(h.end, c1 + 1 + fs.read_window()) : c1 + 1;
    for (uint64_t c = c0; c < until; ++c) {
      auto& slot = h.window[c];
      if (!slot) slot = fs.reader().start(p.chunks[c]);
    }
    // One chunk behind stays: readahead requests arrive slightly out of
    // order. Chunks ahead that a reader which jumped back left behind go
    // once they are more than a window's worth, so a handle holds at most
    // about two windows.
    h.window.erase(h.window.begin(), h.window.lower_bound(c0 == 0 ? 0 : c0 - 1));
    if (h.window.size() > 2 * (uint64_t{fs.read_window()} + 2))
      h.window.erase(h.window.lower_bound(until), h.window.end());
    for (uint64_t c = c0; c <= c1; ++c) need.push_back(h.window[c]);
    h.next_off = end;
  }
  std::vector<iovec> iov;
  iov.reserve(need.size());
  for (size_t i = 0; i < need.size(); ++i) {
    const uint64_t c = c0 + i;
    Status st = fs.reader().wait(*need[i]);
    fs.note_read(*h.pub, c, st);
    if (!ok(st)) {
      fs.reads_failed.fetch_add(1, std::memory_order_relaxed);
      return reply(req, EIO);  // never bytes that did not match their checksum
    }
    const uint64_t lo = std::max(a, p.offsets[c]) - p.offsets[c];
    const uint64_t hi = std::min(b, p.offsets[c + 1]) - p.offsets[c];
    iov.push_back(iovec{const_cast<std::byte*>(need[i]->bytes().data()) + lo, static_cast<size_t>(hi - lo)});
  }
  fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
}

void op_read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  auto* base = reinterpret_cast<TokenFs::Handle*>(fi->fh);
  if (auto* kv = dynamic_cast<TokenFs::KvHandle*>(base)) return read_kv(self(req), req, *kv, size, off);
  if (auto* h = dynamic_cast<TokenFs::TextHandle*>(base)) {
    const std::shared_ptr<const std::string> text = h->text;
    const auto pos = static_cast<size_t>(std::max<off_t>(off, 0));
    if (pos >= text->size()) return static_cast<void>(fuse_reply_buf(req, nullptr, 0));
    fuse_reply_buf(req, text->data() + pos, std::min(size, text->size() - pos));
    return;
  }
  reply(req, EBADF);
}

void op_write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  TokenFs& fs = self(req);
  auto* base = reinterpret_cast<TokenFs::Handle*>(fi->fh);
  if (auto* imp = dynamic_cast<TokenFs::ImportHandle*>(base)) {
    int err = imp->imp->write(fs, static_cast<uint64_t>(off), std::as_bytes(std::span<const char>(buf, size)));
    if (err) return reply(req, err);
    fuse_reply_write(req, size);
    return;
  }
  if (auto* c = dynamic_cast<TokenFs::ControlHandle*>(base)) {
    // One write is one value, as in sysfs.
    int err = fs.write_knob(c->knob, std::string_view(buf, size), c->pid);
    if (err) return reply(req, err);
    fuse_reply_write(req, size);
    return;
  }
  reply(req, EBADF);
}

void op_flush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  auto* h = dynamic_cast<TokenFs::ImportHandle*>(reinterpret_cast<TokenFs::Handle*>(fi->fh));
  if (!h) return reply(req, 0);
  // The import completes at the first close after data arrived, so close()
  // returns its verdict (EINVAL for a truncated export). A close before any
  // data -- a shell's redirection closing its first descriptor after dup2 --
  // is not the end; an import that never receives data completes at release.
  {
    std::lock_guard lock(h->imp->mu);
    if (h->imp->received == 0 && !h->imp->done) return reply(req, 0);
  }
  TokenFs& fs = self(req);
  // A close in the writer's exit path: if it was killed or failed, what
  // arrived may be only part of the file (writer_exit.h). (Not for a close
  // before any data: a child that inherited the descriptor and failed at
  // something else, grep in `exec 3>f; grep ...; cat x >&3`.)
  const pid_t writer = fuse_req_ctx(req)->pid;
  if (std::optional<std::string> how = failed_exit_of(writer))
    h->imp->abandon(fs, fmt::format("its writer (pid {}) {} with the file open", writer, *how));
  int err = h->imp->finish(fs);
  fs.finish_import(h->imp, err);
  reply(req, err);
}

void op_release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  auto* base = reinterpret_cast<TokenFs::Handle*>(fi->fh);
  if (auto* h = dynamic_cast<TokenFs::ImportHandle*>(base)) {
    TokenFs& fs = self(req);
    int err = h->imp->finish(fs);
    fs.finish_import(h->imp, err);
  }
  self(req).drop(fi->fh);
  reply(req, 0);
}

void op_fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) { reply(req, 0); }

// ---------------------------------------------------------------- names

void op_refuse(fuse_req_t req) { reply(req, EPERM); }
void op_mkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) { op_refuse(req); }
void op_mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { op_refuse(req); }
void op_symlink(fuse_req_t req, const char*, fuse_ino_t, const char*) { op_refuse(req); }
void op_link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { op_refuse(req); }
void op_rename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned int) { op_refuse(req); }

// Removing a context: `rmdir /contexts/<name>`, or `rm -r`, which unlinks the
// directory's entries first -- kv first, as readdir lists it. Unlinking kv
// removes the whole context (the bytes are the context); after that the
// remaining entries of the removed context, for the process that removed it,
// unlink and rmdir without error, so rm -r finishes cleanly. Removing info or
// a chunk of a context that is still there is refused (EPERM): there is no
// partial removal.
void remove_entry(fuse_req_t req, fuse_ino_t parent, const char* name, bool dir) {
  TokenFs& fs = self(req);
  Node p;
  if (!fs.resolve_ino(parent, &p)) return reply(req, ENOENT);
  const PathRef c = child(p.ref, name);
  const pid_t who = caller(req);
  if (c.kind == NodeKind::kNone) return reply(req, ENOENT);
  if (is_dir(c.kind) != dir) return reply(req, dir ? ENOTDIR : EISDIR);
  switch (c.kind) {
    case NodeKind::kContextDir: {
      if (auto g = fs.ghost(c.context, who)) {
        fs.forget_ghost(c.context, g);  // rm -r is done with it
        return reply(req, 0);
      }
      auto pub = fs.current(c.context);
      if (!pub) return reply(req, ENOENT);
      int err = fs.remove_context(pub, who);
      if (err == 0) fs.forget_ghost(c.context, pub);
      return reply(req, err);
    }
    case NodeKind::kContextKv:
    case NodeKind::kContextInfo:
    case NodeKind::kChunksDir:
    case NodeKind::kChunk:
      if (!fs.visible(*p.ctx, who)) return reply(req, ENOENT);
      if (p.ctx->gone) return reply(req, 0);  // removed with its context a moment ago
      if (c.kind != NodeKind::kContextKv) return reply(req, EPERM);
      return reply(req, fs.remove_context(p.ctx, who));
    case NodeKind::kImportFile:
      return reply(req, EBUSY);
    default:
      return reply(req, EPERM);
  }
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) { remove_entry(req, parent, name, false); }
void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) { remove_entry(req, parent, name, true); }

void op_statfs(fuse_req_t req, fuse_ino_t) {
  struct statvfs sv {};
  if (statvfs(self(req).options().store_dir.c_str(), &sv) != 0) return reply(req, errno);
  sv.f_namemax = kMaxFileName;
  fuse_reply_statfs(req, &sv);
}

fuse_lowlevel_ops make_ops() {
  fuse_lowlevel_ops o{};
  o.init = op_init;
  o.lookup = op_lookup;
  o.forget = op_forget;
  o.forget_multi = op_forget_multi;
  o.getattr = op_getattr;
  o.setattr = op_setattr;
  o.opendir = op_opendir;
  o.readdir = op_readdir;
  o.releasedir = op_releasedir;
  o.open = op_open;
  o.create = op_create;
  o.read = op_read;
  o.write = op_write;
  o.flush = op_flush;
  o.release = op_release;
  o.fsync = op_fsync;
  o.mkdir = op_mkdir;
  o.mknod = op_mknod;
  o.symlink = op_symlink;
  o.link = op_link;
  o.rename = op_rename;
  o.unlink = op_unlink;
  o.rmdir = op_rmdir;
  o.statfs = op_statfs;
  return o;
}

}  // namespace

const fuse_lowlevel_ops& TokenFs::ops() {
  static const fuse_lowlevel_ops o = make_ops();
  return o;
}

}  // namespace kvpager::fs
