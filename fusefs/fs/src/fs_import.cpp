// /import: files streamed into the store, published when complete.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>

#include "fs_errno.h"
#include "import_session.h"
#include "token_fs.h"

namespace kvpager::fs {

// ---------------------------------------------------------------- the session

int ImportSession::fail(TokenFs& fs, int err, std::string reason) {
  if (error == 0) {
    error = err;
    why = std::move(reason);
    fs.log(fmt::format("import of '{}' refused: {}", file_name, why));
  }
  return error;
}

int ImportSession::write(TokenFs& fs, uint64_t off, std::span<const std::byte> data) {
  std::lock_guard lock(mu);
  if (done) return error ? error : EINVAL;  // the import is over: a write after close
  if (error) return error;
  if (off < received)
    return fail(fs, EINVAL, fmt::format("a write at offset {} over bytes already received ({})", off, received));
  if (off > received) {
    if (int e = feed_zeros(fs, off - received)) return e;
  }
  return feed(fs, data);
}

int ImportSession::truncate(TokenFs& fs, uint64_t size) {
  std::lock_guard lock(mu);
  if (done) return error ? error : EINVAL;
  if (error) return error;
  if (size == received) return 0;
  if (size > received) return feed_zeros(fs, size - received);
  return fail(fs, EINVAL, fmt::format("truncated to {} bytes after {} were received", size, received));
}

int ImportSession::feed_zeros(TokenFs& fs, uint64_t n) {
  static const std::array<std::byte, 64 * 1024> zeros{};
  while (n > 0) {
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n, zeros.size()));
    if (int e = feed(fs, std::span<const std::byte>(zeros.data(), take))) return e;
    n -= take;
  }
  return 0;
}

int ImportSession::feed(TokenFs& fs, std::span<const std::byte> data) {
  received += data.size();
  std::vector<std::byte> first;
  if (format == Format::kUndecided) {
    head.insert(head.end(), data.begin(), data.end());
    switch (sniff_export(head)) {
      case Sniff::kUndecided:
        return 0;
      case Sniff::kRaw:
        format = Format::kRaw;
        break;
      case Sniff::kExport:
        format = Format::kExport;
        reader = std::make_unique<ExportReader>([this, &fs](uint64_t, std::span<const std::byte> chunk) {
          if (int e = fs.import_chunk(*this, chunk)) {
            fail(fs, e, fmt::format("the store refused a chunk: {}", std::strerror(e)));
            return false;
          }
          return true;
        });
        break;
    }
    first.swap(head);
    data = first;
  }
  if (format == Format::kExport) {
    if (reader->feed(data)) return 0;
    return error ? error : fail(fs, EINVAL, reader->error());
  }
  // Raw bytes: whole chunks of chunk_size to the store as they fill up.
  const uint64_t chunk = fs.options().chunk_size;
  while (!data.empty()) {
    if (pending.empty() && data.size() >= chunk) {
      if (int e = fs.import_chunk(*this, data.first(static_cast<size_t>(chunk))))
        return fail(fs, e, fmt::format("the store refused a chunk: {}", std::strerror(e)));
      data = data.subspan(static_cast<size_t>(chunk));
      continue;
    }
    const size_t take = static_cast<size_t>(std::min<uint64_t>(chunk - pending.size(), data.size()));
    if (pending.capacity() < chunk) pending.reserve(static_cast<size_t>(chunk));
    pending.insert(pending.end(), data.begin(), data.begin() + static_cast<ptrdiff_t>(take));
    data = data.subspan(take);
    if (pending.size() == chunk) {
      if (int e = fs.import_chunk(*this, pending))
        return fail(fs, e, fmt::format("the store refused a chunk: {}", std::strerror(e)));
      pending.clear();
    }
  }
  return 0;
}

void ImportSession::abandon(TokenFs& fs, std::string reason) {
  std::lock_guard lock(mu);
  if (!done) fail(fs, ECANCELED, fmt::format("{}, after {} byte(s): not published", reason, received));
}

int ImportSession::finish(TokenFs& fs) {
  std::lock_guard lock(mu);
  if (done) return error;
  done = true;
  if (!error) {
    switch (format) {
      case Format::kUndecided:
        // Fewer than 8 bytes, all of them the start of the export magic.
        if (!head.empty()) fail(fs, EINVAL, fmt::format("truncated: {} byte(s) of an export header", head.size()));
        break;
      case Format::kRaw:
        if (!pending.empty()) {
          if (int e = fs.import_chunk(*this, pending))
            fail(fs, e, fmt::format("the store refused a chunk: {}", std::strerror(e)));
        }
        break;
      case Format::kExport:
        if (!reader->finish()) fail(fs, EINVAL, reader->error());
        break;
    }
  }
  if (!error) {
    if (int e = fs.commit_import(*this)) {
      fail(fs, e, e == EEXIST ? std::string("a context of that name appeared meanwhile")
                              : fmt::format("publishing it failed: {}", std::strerror(e)));
    }
  }
  if (error) fs.abort_import(*this);
  pending = {};
  head = {};
  reader.reset();
  return error;
}

// ---------------------------------------------------------------- TokenFs side

namespace {

store::ContextMeta import_meta(const ImportSession& imp, const std::string& ns) {
  store::ContextMeta m;
  m.ns = ns;
  m.name = imp.name;
  m.owner_uid = imp.uid;
  m.owner_pid = static_cast<uint32_t>(imp.pid);
  if (imp.reader && imp.reader->header()) {
    const ExportHeader& h = *imp.reader->header();
    m.created_ns = h.created_ns;
    m.token_count = h.token_count;
    m.ttl_ns = h.ttl_ns;
    m.pinned = h.pinned;
  }
  return m;
}

}  // namespace

int TokenFs::create_import(const std::string& file_name, const fuse_ctx* caller, std::shared_ptr<ImportSession>* out,
                           fuse_entry_param* e) {
  auto name = import_context_name(file_name);
  if (!name) return EINVAL;
  if (opt_.read_only) return EROFS;
  if (current(*name)) return EEXIST;
  auto imp = std::make_shared<ImportSession>();
  imp->file_name = file_name;
  imp->name = *name;
  imp->uid = caller->uid;
  imp->pid = caller->pid;
  {
    std::unique_lock lock(mu_);
    for (const auto& [f, other] : imports_)
      if (f == file_name || other->name == *name) return EEXIST;
    imp->ino = allocate(1);
    imp->nlookup = 1;  // the reply to create is a lookup
    blocks_.emplace(imp->ino, Block{1, imp});
    imports_.emplace(file_name, imp);
  }
  Node n;
  n.ref.kind = NodeKind::kImportFile;
  n.ref.context = file_name;
  n.imp = imp;
  attr_of(n, &e->attr);
  e->ino = imp->ino;
  e->attr.st_ino = imp->ino;
  e->entry_timeout = 0;
  e->attr_timeout = 0;
  *out = std::move(imp);
  return 0;
}

int TokenFs::import_chunk(ImportSession& imp, std::span<const std::byte> chunk) {
  std::lock_guard lock(store_mu_);
  if (!imp.writer) imp.writer = store_->begin_context(import_meta(imp, opt_.ns));
  Status s = imp.writer->append(chunk);
  if (!ok(s)) return errno_of(s);
  ++imp.chunks;
  return 0;
}

int TokenFs::commit_import(ImportSession& imp) {
  {
    std::lock_guard lock(store_mu_);
    // Never replaces a context: one that appeared since the file was created
    // (another process published the name) wins, and this import fails.
    store::Manifest existing;
    if (store_->read_manifest(opt_.ns, imp.name, &existing) != Status::kNotFound) return EEXIST;
    if (!imp.writer) imp.writer = store_->begin_context(import_meta(imp, opt_.ns));  // an empty context
    Status s = imp.writer->commit();
    imp.writer.reset();
    if (!ok(s)) return errno_of(s);
  }
  refresh();  // it is under /contexts before close() returns
  return 0;
}

void TokenFs::abort_import(ImportSession& imp) {
  std::lock_guard lock(store_mu_);
  if (imp.writer) {
    imp.writer->abort();
    imp.writer.reset();
  }
}

void TokenFs::finish_import(const std::shared_ptr<ImportSession>& imp, int err) {
  {
    std::unique_lock lock(mu_);
    if (imp->finished) return;
    imp->finished = true;
    auto it = imports_.find(imp->file_name);
    if (it != imports_.end() && it->second == imp) imports_.erase(it);
    drop_block_if_unused(imp->ino);
  }
  (err == 0 ? imports_ok : err == EINVAL ? imports_rejected : imports_failed).fetch_add(1, std::memory_order_relaxed);
  queue_inval_entry(kImportIno, imp->file_name);
}

}  // namespace kvpager::fs
