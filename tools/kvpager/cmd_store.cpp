// kvpager store put|get|ls|rm|fsck|bench: the NVMe token store from the
// command line. put/get are also how a context moves between machines:
// `store get` on one, copy the file, `store put` on the other.
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli.h"
#include "common/output_file.h"
#include "common/printable.h"
#include "common/progress.h"
#include "common/user_paths.h"
#include "kvpager/fs/export_format.h"
#include "kvpager/fs/paths.h"
#include "kvpager/store/token_store.h"

namespace kvpager::cli {

namespace {

using store::TokenStore;
using tools::printable;

struct StoreArgs {
  std::string dir;  // --store; "" = store_dir from the configuration
  std::string ns;   // --namespace
  std::vector<CLI::Option*> ns_options;  // store's --namespace, and ls's own (shown in its --help)
  bool ns_given() const {
    return std::any_of(ns_options.begin(), ns_options.end(), [](CLI::Option* o) { return o->count() > 0; });
  }
  // put
  std::string file;
  std::string context;
  bool pin = false;
  std::string ttl;
  uint64_t tokens = 0;
  // get
  std::string name;
  std::string out;
  bool export_file = false;
  // ls, fsck, bench
  bool json = false;
  bool repair = false;
  std::string bench_size = "1G";
  bool bench_copy = false;
};

// What a command does with the store: kRead and kChange need one that is
// there (a typo in --store must not pass for a new, empty store); kRead
// settles for reading someone else's; kCreate makes a missing one.
enum class Use { kRead, kChange, kCreate };

std::unique_ptr<TokenStore> open_store(const Globals& g, const StoreArgs& a, Use use, bool durable = false) {
  Config cfg = g.config();
  store::StoreOptions o = store::StoreOptions::from_config(cfg);
  if (!a.dir.empty()) o.dir = a.dir;
  o.durable = durable;
  if (use != Use::kCreate) {
    if (auto why = tools::missing_store(o.dir, "store_dir / --store")) throw ConfigError(*why);
    // Nor is an empty directory one (a mount point, a fresh mkdir): opening
    // it laid a store out in it, from a command that only reads (ls) or
    // finds nothing to remove.
    std::error_code ec;
    if (std::filesystem::is_directory(o.dir, ec) && std::filesystem::is_empty(o.dir, ec) && !ec)
      throw ConfigError(fmt::format("no store at {}: it is an empty directory (store put makes one there)", o.dir));
  }
  try {
    return std::make_unique<TokenStore>(o);
  } catch (const ConfigError&) {
    if (use != Use::kRead || access(o.dir.c_str(), F_OK) != 0) throw;
    o.read_only = true;  // e.g. someone else's store we may only read
    return std::make_unique<TokenStore>(o);
  }
}

// "put 1.25 GiB of 4.00 GiB (1.90 GB/s)" ("put 1.25 GiB (...)" from a pipe):
// on a terminal in place, in a log every 10 s (common/progress.h).
class ByteProgress {
 public:
  ByteProgress(std::string verb, uint64_t total)
      : line_("kvpager store", tools::ProgressLine::for_stderr()), verb_(std::move(verb)), total_(total) {}
  void update(uint64_t done) {
    line_.update(
        [&] {
          const double s = line_.elapsed_s();
          return fmt::format("{} {}{} ({:.2f} GB/s)", verb_, human_bytes(static_cast<double>(done)),
                             total_ ? " of " + human_bytes(static_cast<double>(total_)) : "",  // 0: a pipe
                             s > 0 ? static_cast<double>(done) / s / 1e9 : 0.0);
        },
        total_ && done >= total_);
  }
  void clear() { line_.clear(); }

 private:
  tools::ProgressLine line_;
  std::string verb_;
  uint64_t total_;
};

// 90s, 15min, 2h, 3d: idle times and TTLs at a glance.
std::string short_duration(uint64_t ns) {
  const uint64_t s = ns / 1'000'000'000;
  if (s < 120) return fmt::format("{}s", s);
  if (s < 7200) return fmt::format("{}min", s / 60);
  if (s < 2 * 86400) return fmt::format("{}h", s / 3600);
  return fmt::format("{}d", s / 86400);
}

// 1h, 90min, 45s: exact, in a form --ttl takes.
std::string ttl_text(uint64_t ns) {
  if (ns % 1'000'000'000 != 0) return format_duration(ns);
  const uint64_t s = ns / 1'000'000'000;
  if (s % 3600 == 0) return fmt::format("{}h", s / 3600);
  if (s % 60 == 0) return fmt::format("{}min", s / 60);
  return fmt::format("{}s", s);
}

// A replaced context's settings are not carried over (the flags define the
// new one); "; the old one was pinned, TTL 1h: give --pin/--ttl to keep
// them" when it had some the new one lacks, so that none is lost unnoticed.
std::string settings_dropped(const store::ContextMeta& old, const store::ContextMeta& now) {
  std::vector<std::string> had, flags;
  auto lost = [&](bool gone, std::string what, const char* flag) {
    if (!gone) return;
    had.push_back(std::move(what));
    flags.push_back(flag);
  };
  lost(old.pinned && !now.pinned, "pinned", "--pin");
  lost(old.ttl_ns && !now.ttl_ns, "TTL " + ttl_text(old.ttl_ns), "--ttl");
  lost(old.token_count && !now.token_count, fmt::format("{} tokens", old.token_count), "--tokens");
  if (had.empty()) return "";
  return fmt::format("; the old one was {}: give {} to keep {}", fmt::join(had, ", "), fmt::join(flags, "/"),
                     had.size() == 1 ? "it" : "them");
}

// "'x1', 'x2' (namespace 'n')": contexts named in one line; the publication
// `replaced` (name and generation) is marked as the one the put replaces.
std::string context_names(const std::vector<store::ContextEntry>& list, const store::ContextMeta* replaced) {
  auto is_replaced = [&](const store::ContextMeta& m) {
    return replaced && m.ns == replaced->ns && m.name == replaced->name && m.generation == replaced->generation;
  };
  std::vector<std::string> names;
  for (const auto& e : list)
    names.push_back(fmt::format("'{}'{}{}", printable(e.meta.name),
                                e.meta.ns.empty() ? "" : fmt::format(" (namespace '{}')", printable(e.meta.ns)),
                                is_replaced(e.meta) ? " (the version this put replaces)" : ""));
  return fmt::format("{}", fmt::join(names, ", "));
}

// Under nvme_capacity a put makes room by dropping other contexts: say
// which, so that none vanishes unnoticed. before: the contexts before the put.
void report_dropped(TokenStore& s, const std::vector<store::ContextEntry>& before, const store::StoreStats& was,
                    const store::ContextMeta& put) {
  const store::StoreStats now = s.stats();
  const uint64_t evicted = now.contexts_evicted - was.contexts_evicted;
  const uint64_t expired = now.contexts_expired - was.contexts_expired;
  if (evicted == 0 && expired == 0) return;
  // Gone: no context of that name and generation is left. The put's own
  // name was replaced anyway; its old version counts only when dropping it
  // is what made room (the others gone are fewer than the drops).
  std::vector<store::ContextEntry> gone = before;
  const auto after = s.list_contexts();
  std::erase_if(gone, [&](const store::ContextEntry& e) {
    return std::any_of(after.begin(), after.end(), [&](const store::ContextEntry& a) {
      return a.meta.ns == e.meta.ns && a.meta.name == e.meta.name && a.meta.generation == e.meta.generation;
    });
  });
  auto own = std::find_if(gone.begin(), gone.end(), [&](const store::ContextEntry& e) {
    return e.meta.ns == put.ns && e.meta.name == put.name;
  });
  std::optional<store::ContextMeta> own_old;
  if (own != gone.end()) {
    if (gone.size() - 1 < evicted + expired) own_old = own->meta;
    else gone.erase(own);
  }
  const store::ContextMeta* replaced = own_old ? &*own_old : nullptr;
  const uint64_t wall = store::wall_clock_ns();
  auto idle_past_ttl = [&](const store::ContextEntry& e) {
    return e.meta.ttl_ns != 0 && wall >= e.last_access_ns && wall - e.last_access_ns >= e.meta.ttl_ns;
  };
  std::vector<store::ContextEntry> lru, ttl;
  for (const auto& e : gone) (idle_past_ttl(e) ? ttl : lru).push_back(e);
  if (evicted)
    fmt::print("evicted {} least recently used context(s) ({}) to stay within nvme_capacity = {}: {}\n", evicted,
               human_bytes(static_cast<double>(now.evicted_bytes - was.evicted_bytes)),
               format_bytes(s.options().capacity_bytes), context_names(lru, replaced));
  if (expired) fmt::print("dropped {} context(s) idle past their TTL: {}\n", expired, context_names(ttl, replaced));
}

std::string fail_msg(const TokenStore& s, std::string_view what, Status st) {
  return fmt::format("{} ({}): {}", what, s.dir(), to_string(st));
}

std::string when(uint64_t wall_ns) {
  if (wall_ns == 0) return "-";
  std::time_t t = static_cast<std::time_t>(wall_ns / 1'000'000'000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

// Reads until n bytes or the end of the input; the count, or -errno.
ssize_t read_full(int fd, std::byte* buf, size_t n) {
  size_t have = 0;
  while (have < n) {
    ssize_t got = read(fd, buf + have, n - have);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return -errno;
    if (got == 0) break;
    have += static_cast<size_t>(got);
  }
  return static_cast<ssize_t>(have);
}

void cmd_put(const Globals& g, const StoreArgs& a) {
  store::ContextMeta meta;
  meta.ns = a.ns;
  meta.name = a.context;
  meta.pinned = a.pin;
  meta.token_count = a.tokens;
  if (!a.ttl.empty()) {
    auto ttl = parse_duration_ns(a.ttl);
    if (!ttl)
      throw CLI::ValidationError("--ttl",
                                 fmt::format("'{}' is not a duration (30s, 10min, 24h; at most 500 years)", a.ttl));
    meta.ttl_ns = *ttl;
  }
  if (meta.name.size() > store::kMaxNameBytes) throw CLI::ValidationError("--context", "a name of 1..4096 bytes");
  int fd = a.file == "-" ? STDIN_FILENO : open(a.file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw RuntimeError(fmt::format("cannot open {}: {}", a.file, std::strerror(errno)));
  struct FdCloser {
    int fd;
    ~FdCloser() {
      if (fd != STDIN_FILENO) close(fd);
    }
  } closer{fd};
  struct stat st{};
  const uint64_t total = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? static_cast<uint64_t>(st.st_size) : 0;

  auto s = open_store(g, a, Use::kCreate, /*durable=*/true);  // what a user puts by hand survives a power cut
  const uint64_t chunk = s->options().max_io_bytes;
  // Making room may drop other contexts (nvme_capacity): remember them, to name them.
  const std::vector<store::ContextEntry> before =
      s->options().capacity_bytes ? s->list_contexts() : std::vector<store::ContextEntry>{};
  const store::StoreStats stats_before = s->stats();
  std::vector<std::byte> buf(chunk);
  ssize_t first = read_full(fd, buf.data(), buf.size());
  if (first < 0) throw RuntimeError(fmt::format("reading {}: {}", a.file, std::strerror(static_cast<int>(-first))));
  const auto kind = fs::sniff_export(std::span<const std::byte>(buf.data(), static_cast<size_t>(first)));
  // kUndecided: a few bytes of an export's magic, then the end (an empty file is raw).
  const bool is_export = kind == fs::Sniff::kExport || (kind == fs::Sniff::kUndecided && first > 0);
  if (meta.name.empty() && !is_export) throw CLI::ValidationError("--context", "name the context (1..4096 bytes)");

  // An export (`store get --export`) brings its own settings and checksums;
  // flags given here win, and the name is --context's or the export's.
  std::unique_ptr<store::ContextWriter> w;
  std::string stored_name;
  std::optional<store::Manifest> replaced;  // the context of that name before this put
  auto writer = [&](const fs::ExportHeader* h) -> store::ContextWriter& {
    if (!w) {
      store::ContextMeta m = meta;
      if (h) {
        if (m.name.empty()) m.name = h->name;
        if (!a.ns_given()) m.ns = h->ns;
        if (m.token_count == 0) m.token_count = h->token_count;
        if (a.ttl.empty()) m.ttl_ns = h->ttl_ns;
        m.pinned = m.pinned || h->pinned;
        m.created_ns = h->created_ns;
      }
      if (m.name.empty() || m.name.size() > store::kMaxNameBytes)
        throw RuntimeError(fmt::format("{}: the export names no context; give --context", a.file));
      stored_name = m.name;
      store::Manifest old;
      if (ok(s->read_manifest(m.ns, m.name, &old))) replaced = std::move(old);
      w = s->begin_context(std::move(m));
    }
    return *w;
  };
  ByteProgress progress("put", total);
  uint64_t done = 0;
  Status status = Status::kOk;
  std::string bad;  // what is wrong with an export
  if (is_export) {
    fs::ExportReader* rp = nullptr;
    fs::ExportReader reader([&](uint64_t, std::span<const std::byte> c) {
      status = writer(&*rp->header()).append(c);
      return ok(status);
    });
    rp = &reader;
    for (ssize_t have = first; have > 0;) {
      if (!reader.feed(std::span<const std::byte>(buf.data(), static_cast<size_t>(have)))) break;
      done += static_cast<uint64_t>(have);
      progress.update(done);
      have = read_full(fd, buf.data(), buf.size());
      if (have < 0) throw RuntimeError(fmt::format("reading {}: {}", a.file, std::strerror(static_cast<int>(-have))));
    }
    if (ok(status) && !reader.failed() && reader.finish()) writer(&*reader.header());
    else if (ok(status)) bad = reader.error();
  } else {
    for (ssize_t have = first; have > 0;) {
      status = writer(nullptr).append(std::span<const std::byte>(buf.data(), static_cast<size_t>(have)));
      if (!ok(status)) break;
      done += static_cast<uint64_t>(have);
      progress.update(done);
      if (static_cast<uint64_t>(have) < chunk) break;
      have = read_full(fd, buf.data(), buf.size());
      if (have < 0) throw RuntimeError(fmt::format("reading {}: {}", a.file, std::strerror(static_cast<int>(-have))));
    }
    if (ok(status)) writer(nullptr);  // an empty file: an empty context
  }
  progress.clear();  // before the result or the error
  if (!bad.empty()) {
    if (w) w->abort();
    throw RuntimeError(fmt::format("{} is not a valid context export ({}); nothing was stored", a.file, bad));
  }
  if (ok(status)) status = w->commit();
  if (!ok(status)) {
    // What it dropped to make room is gone even though the put failed.
    if (w) report_dropped(*s, before, stats_before, w->meta());
    std::fflush(stdout);  // before the error on stderr
    throw RuntimeError(fail_msg(*s, fmt::format("storing context '{}'", printable(stored_name)), status));
  }
  // Replacing is how a context is updated; say so, so that it is never a surprise.
  const std::string verb =
      replaced ? fmt::format("replaced context '{}' (was {} bytes, generation {:016x})", printable(stored_name),
                             replaced->total_bytes(), replaced->meta.generation)
               : fmt::format("stored context '{}'", printable(stored_name));
  fmt::print("{}: {} in {} chunk(s){}{}\n", verb, human_bytes(static_cast<double>(w->bytes())), w->chunks(),
             is_export ? " (an export: every chunk verified)" : "",
             replaced ? settings_dropped(replaced->meta, w->meta()) : "");
  report_dropped(*s, before, stats_before, w->meta());
  std::fflush(stdout);  // the note after the result
  if (!fs::valid_context_name(stored_name))
    fmt::print(stderr,
               "kvpager: note: a kvpager-fs mount does not show context '{}' (names there are 1..255 bytes, "
               "without '/', not . or ..); store ls and store get find it\n",
               printable(stored_name));
}

// "no context 'x' in DIR", and where a context of that name is, when only
// another namespace has one (a name alone does not find it there).
std::string no_context(TokenStore& s, const StoreArgs& a) {
  std::vector<std::string> elsewhere;
  for (const auto& e : s.list_contexts())
    if (e.meta.name == a.name && e.meta.ns != a.ns) elsewhere.push_back(fmt::format("'{}'", printable(e.meta.ns)));
  std::string msg = fmt::format("no context '{}' in {}", printable(a.name), s.dir());
  if (a.ns.empty() && elsewhere.empty()) return msg;
  msg += a.ns.empty() ? " (default namespace)" : fmt::format(" (namespace '{}')", printable(a.ns));
  if (!elsewhere.empty())
    msg += fmt::format("; namespace(s) {} have one: give --namespace", fmt::join(elsewhere, ", "));
  return msg;
}

void cmd_get(const Globals& g, const StoreArgs& a) {
  if (a.out.empty()) throw CLI::ValidationError("FILE", "an output file name, or - for standard output");
  if (struct stat st{}; stat(a.out.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw CLI::ValidationError("FILE", fmt::format("{} is a directory: name the file to write (e.g. {}/{})", a.out,
                                                   a.out, printable(a.name)));
  auto s = open_store(g, a, Use::kRead);
  const std::string name = printable(a.name);
  // Before FILE is opened (a FIFO waits for its reader).
  store::Manifest m;
  if (Status st = s->read_manifest(a.ns, a.name, &m); st == Status::kNotFound) throw RuntimeError(no_context(*s, a));
  else if (!ok(st)) throw RuntimeError(fail_msg(*s, fmt::format("reading context '{}'", name), st));

  // A file is written beside FILE and renamed onto it: a failed get leaves
  // FILE as it was. A device or FIFO is written into (common/output_file.h).
  tools::OutputFile out;
  std::string err;
  if (!out.open(a.out, &err)) throw RuntimeError(err);
  std::optional<ByteProgress> progress;
  uint64_t done = 0, written = 0;
  int werr = 0;
  bool found = false;     // the manifest was read
  bool reopened = true;   // a failed reopen: err says why
  auto write_out = [&](std::span<const std::byte> p) {
    written += p.size();
    if (out.write(p)) return Status::kOk;
    werr = errno;
    return Status::kIoError;
  };
  // Before each attempt (another one when the context is replaced while it
  // is read): start FILE afresh, so that it never mixes two publications.
  auto begin = [&](const store::Manifest& cur) {
    found = true;
    if (written > 0) {
      if (out.direct()) return Status::kAgain;  // a stream cannot take back what it got
      out.discard();
      reopened = out.open(a.out, &err);
      if (!reopened) return Status::kIoError;
      written = 0;
    }
    done = 0;
    progress.emplace("get", cur.total_bytes());
    if (!a.export_file) return Status::kOk;
    // The self-describing form (fusefs/fs/include/kvpager/fs/export_format.h):
    // settings and every chunk's checksum first, so the receiving side
    // (store put, or a copy into a kvpager-fs mount's /import) verifies it.
    fs::ExportHeader h;
    h.ns = cur.meta.ns;
    h.name = cur.meta.name;
    h.pinned = cur.meta.pinned;
    h.created_ns = cur.meta.created_ns;
    h.token_count = cur.meta.token_count;
    h.ttl_ns = cur.meta.ttl_ns;
    for (const auto& c : cur.chunks) h.chunks.push_back({c.bytes, c.checksum});
    return write_out(fs::encode_export_header(h));
  };
  Status st = s->get_context(
      a.ns, a.name,
      [&](uint64_t, std::span<const std::byte> p) {
        Status ws = write_out(p);
        done += p.size();
        progress->update(done);
        return ws;
      },
      nullptr, begin);
  progress.reset();
  const bool to_descriptor = out.descriptor();  // stdout: no "wrote" line in the same stream
  if (ok(st) && !out.commit(&err)) throw RuntimeError(err);
  out.discard();  // after a failure: FILE stays as it was
  if (!reopened) throw RuntimeError(err);
  if (werr) throw RuntimeError(fmt::format("writing {}: {}", out.target(), std::strerror(werr)));
  store::Manifest now;
  if (st == Status::kNotFound && (!found || s->read_manifest(a.ns, a.name, &now) == Status::kNotFound))
    throw RuntimeError(no_context(*s, a) + (found ? " (removed while it was read)" : ""));
  if (st == Status::kAgain)
    throw RuntimeError(fmt::format("context '{}' was replaced while reading; retry", name));
  if (st == Status::kNotFound)
    throw RuntimeError(fmt::format("context '{}' in {} is incomplete (a chunk is missing); run `kvpager store fsck`",
                                   name, s->dir()));
  if (!ok(st)) throw RuntimeError(fail_msg(*s, fmt::format("reading context '{}'", name), st));
  if (!to_descriptor) fmt::print(stderr, "wrote {} to {}\n", human_bytes(static_cast<double>(done)), out.target());
}

void cmd_ls(const Globals& g, const StoreArgs& a) {
  auto s = open_store(g, a, Use::kRead);
  auto list = s->list_contexts();
  if (a.ns_given()) std::erase_if(list, [&](const store::ContextEntry& e) { return e.meta.ns != a.ns; });
  const uint64_t now = store::wall_clock_ns();
  if (a.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& e : list) {
      out.push_back({{"name", e.meta.name},
                     {"namespace", e.meta.ns},
                     {"bytes", e.bytes},
                     {"chunks", e.chunks},
                     {"missing_chunks", e.missing_chunks},
                     {"token_count", e.meta.token_count},
                     {"created_ns", e.meta.created_ns},
                     {"last_access_ns", e.last_access_ns},
                     {"owner_uid", e.meta.owner_uid},
                     {"owner_pid", e.meta.owner_pid},
                     {"pinned", e.meta.pinned},
                     {"ttl_ns", e.meta.ttl_ns},
                     {"manifest", e.manifest}});
    }
    fmt::print("{}\n", out.dump(2));
    return;
  }
  if (list.empty()) {
    fmt::print("no contexts in {}\n", s->dir());
    return;
  }
  fmt::print("{:<28} {:<14} {:>11} {:>7} {:>9} {:<19} {:>9} {:<4} {:>8}  {}\n", "NAME", "NAMESPACE", "SIZE", "CHUNKS",
             "TOKENS", "LAST USE", "IDLE", "PIN", "TTL", "OWNER");
  uint64_t total = 0;
  for (const auto& e : list) {
    total += e.bytes;
    std::string name = printable(e.meta.name);
    if (e.missing_chunks) name += " (incomplete)";
    // The publishing process, which has usually exited (a `store put`): say
    // so, rather than show a pid that looks alive. Only this machine's.
    const bool exited = e.meta.owner_pid != 0 && kill(static_cast<pid_t>(e.meta.owner_pid), 0) != 0 && errno == ESRCH;
    fmt::print("{:<28} {:<14} {:>11} {:>7} {:>9} {:<19} {:>9} {:<4} {:>8}  uid {} pid {}{}\n", name,
               e.meta.ns.empty() ? "-" : printable(e.meta.ns), human_bytes(static_cast<double>(e.bytes)), e.chunks,
               e.meta.token_count ? fmt::format("{}", e.meta.token_count) : "-", when(e.last_access_ns),
               short_duration(now > e.last_access_ns ? now - e.last_access_ns : 0),
               e.meta.pinned ? "yes" : "-", e.meta.ttl_ns ? short_duration(e.meta.ttl_ns) : "-", e.meta.owner_uid,
               e.meta.owner_pid, exited ? " (exited)" : "");
  }
  fmt::print("{} context(s), {}; store uses {} on disk\n", list.size(), human_bytes(static_cast<double>(total)),
             human_bytes(static_cast<double>(s->used_bytes())));
}

void cmd_rm(const Globals& g, const StoreArgs& a) {
  auto s = open_store(g, a, Use::kChange);
  const std::string name = printable(a.name);
  Status st = s->remove_context(a.ns, a.name);
  if (st == Status::kNotFound) throw RuntimeError(no_context(*s, a));
  if (!ok(st)) throw RuntimeError(fail_msg(*s, fmt::format("removing context '{}'", name), st));
  fmt::print("removed context '{}'\n", name);
}

void cmd_fsck(const Globals& g, Globals& gm, const StoreArgs& a) {
  auto s = open_store(g, a, a.repair ? Use::kChange : Use::kRead);
  // A writable open reclaims dead writers' files first: say so, or fsck
  // would report a store it has just cleaned as having had nothing to clean.
  const uint64_t removed_at_open = s->stats().leftovers_removed;
  std::optional<tools::ProgressLine> progress;
  auto report = s->fsck(a.repair, [&](uint64_t done, uint64_t total) {
    if (!progress) progress.emplace("kvpager store fsck", tools::ProgressLine::for_stderr());
    progress->update([&] { return fmt::format("checked {} of {} objects", done, total); }, done >= total);
  });
  progress.reset();
  store::FsckReport after = report;
  if (a.repair && !report.clean()) after = s->fsck(false);
  if (a.json) {
    nlohmann::json out = {{"store", s->dir()},
                          {"objects_checked", report.objects_checked},
                          {"bytes_checked", report.bytes_checked},
                          {"manifests_checked", report.manifests_checked},
                          {"bad_objects", report.bad_objects},
                          {"bad_manifests", report.bad_manifests},
                          {"missing_objects", report.missing_objects},
                          {"orphan_objects", report.orphan_objects},
                          {"young_orphans", report.young_orphans},
                          {"foreign_entries", report.foreign_entries},
                          {"leftovers", report.leftovers},
                          {"removed", report.removed},
                          {"removed_at_open", removed_at_open},
                          {"problems", report.problems},
                          {"left_alone", report.left_alone},
                          {"clean_after", after.clean()}};
    fmt::print("{}\n", out.dump(2));
  } else {
    for (const auto* lines : {&report.problems, &report.left_alone}) {
      const size_t shown = std::min<size_t>(lines->size(), 50);
      for (size_t i = 0; i < shown; ++i) fmt::print("{}\n", printable((*lines)[i]));
      if (lines->size() > shown) fmt::print("... and {} more\n", lines->size() - shown);
    }
    if (removed_at_open)
      fmt::print("opening the store removed {} leftover file(s) (dead writers' files, old orphans: as every open does)\n", removed_at_open);
    fmt::print("{}: {} object(s) ({}) and {} manifest(s) checked: {} bad object(s), {} bad manifest(s), {} missing, "
               "{} orphan(s), {} dead writer(s){}\n",
               s->dir(), report.objects_checked, human_bytes(static_cast<double>(report.bytes_checked)),
               report.manifests_checked, report.bad_objects, report.bad_manifests, report.missing_objects,
               report.orphan_objects, report.leftovers, a.repair ? fmt::format("; {} file(s) removed", report.removed) : "");
    if (!after.clean())
      fmt::print("{} problem(s) remain ({})\n", after.problems.size(),
                 a.repair ? "--repair could not remove them" : "kvpager store fsck --repair removes them");
    // Not damage, so not in the exit status; but say why they stay.
    if (report.young_orphans)
      fmt::print("{} orphan(s) left alone: younger than the orphan grace ({}), so a writer may still be publishing "
                 "them; --repair removes those still named by nothing from {} on\n",
                 report.young_orphans, short_duration(s->options().orphan_grace_ns), when(report.young_until_ns));
    if (report.foreign_entries)
      fmt::print("{} entry(ies) the store did not make left alone: the store never removes them; remove them by hand\n",
                 report.foreign_entries);
  }
  // Exit 1 while damage remains; what fsck leaves alone on purpose is not damage.
  if (!after.clean()) gm.exit_code = kExitRuntime;
}

void cmd_bench(Globals& g, const StoreArgs& a) {
  // Whole chunks, as the movers write them: a size the bench would round
  // is refused, so that the report is about the bytes asked for.
  const uint64_t block = store::StoreOptions::from_config(g.config()).max_io_bytes;
  auto size = parse_bytes(a.bench_size);
  if (!size) throw CLI::ValidationError("--size", fmt::format("'{}': {}", a.bench_size, describe(*bytes_error(a.bench_size))));
  if (*size < block)
    throw CLI::ValidationError("--size", fmt::format("{}: at least one chunk ({}, chunk_size)", a.bench_size,
                                                     format_bytes(block)));
  if (*size % block != 0)
    throw CLI::ValidationError("--size", fmt::format("{}: not a whole number of chunks ({}, chunk_size); try {} or {}",
                                                     a.bench_size, format_bytes(block),
                                                     format_bytes(*size / block * block),
                                                     format_bytes((*size / block + 1) * block)));
  auto s = open_store(g, a, Use::kCreate);
  // It writes all of it before reading it back: refuse what cannot fit.
  if (struct statvfs fsv {}; statvfs(s->dir().c_str(), &fsv) == 0) {
    const uint64_t free_bytes = uint64_t{fsv.f_bavail} * fsv.f_frsize;
    if (*size > free_bytes)
      throw CLI::ValidationError("--size", fmt::format("{}: the file system of {} has {} free", a.bench_size, s->dir(),
                                                       human_bytes(static_cast<double>(free_bytes))));
  }
  store::BenchOptions o;
  o.total_bytes = *size;
  o.block_bytes = s->options().max_io_bytes;
  o.copy = a.bench_copy;
  // Ctrl-C stops it and removes what it wrote (it used to leave them all).
  stop_on_signals(/*second_one_ends_it=*/true);
  o.stop = [] { return stop_requested(); };
  store::BenchResult r;
  Status st = s->bench(o, &r);
  if (!ok(st)) throw RuntimeError(fail_msg(*s, "bench", st));
  if (r.stopped) {
    fmt::print(stderr, "kvpager store bench: stopped by {}; the objects it wrote are removed\n", strsignal(stop_signal()));
    g.exit_code = stopped_exit_code();
    return;
  }
  store::StoreStats ss = s->stats();
  if (a.json) {
    nlohmann::json out = {{"store", s->dir()},
                          {"bytes", r.bytes},
                          {"block_bytes", o.block_bytes},
                          {"queue_depth", s->options().queue_depth},
                          {"objects", r.objects},
                          {"copy", o.copy},
                          {"write_s", r.write_s},
                          {"rewrite_s", r.rewrite_s},
                          {"rewrite_gbps", r.rewrite_gbps()},
                          {"read_s", r.read_s},
                          {"write_gbps", r.write_gbps()},
                          {"read_gbps", r.read_gbps()},
                          {"engine", ss.engine},
                          {"registered_buffers", ss.registered_buffers},
                          {"direct_io", ss.direct_io}};
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("{}: {} in {} objects of {}, queue depth {}, {}{}{}{}\n", s->dir(), human_bytes(static_cast<double>(r.bytes)),
             r.objects, human_bytes(static_cast<double>(o.block_bytes)), s->options().queue_depth, ss.engine,
             ss.registered_buffers ? ", registered buffers" : "", ss.direct_io ? ", O_DIRECT" : ", buffered",
             o.copy ? ", copying through caller memory" : "");
  fmt::print("  write   {:.2f} GB/s ({:.2f} s)  new keys\n  rewrite {:.2f} GB/s ({:.2f} s)  the same keys again\n"
             "  read    {:.2f} GB/s ({:.2f} s)\n",
             r.write_gbps(), r.write_s, r.rewrite_gbps(), r.rewrite_s, r.read_gbps(), r.read_s);
}

}  // namespace

void add_store_command(CLI::App& app, Globals& g) {
  static StoreArgs a;
  auto* cmd = app.add_subcommand("store",
                                 "The NVMe token store: put, get, list, remove and check contexts; measure the disk path.\n"
                                 "`store get` here and `store put` there moves a context between machines.");
  cmd->require_subcommand(1);
  cmd->fallthrough();
  cmd->add_option("--store", a.dir,
                  "Store directory (default: store_dir from the configuration). It must be a store, except for put "
                  "and bench, which create one where there is none or an empty directory");
  a.ns_options.push_back(cmd->add_option("--namespace", a.ns,
                                "Namespace of the context (model / tenant salt; default: the default namespace, \"\"). "
                                "ls: only that namespace's contexts (default: all). put of an export: default the "
                                "export's"));

  auto* put = cmd->add_subcommand("put",
                                  "Store FILE (or - for stdin) as a context. A context of that name is replaced (the way "
                                  "to update one); the output then says `replaced context NAME (was N bytes, generation G)`, "
                                  "and which of its settings (pin, TTL, tokens) the new one lacks: the flags given here "
                                  "define the new one");
  put->add_option("FILE", a.file, "File to store")->required()->check(CLI::ExistingFile | CLI::IsMember({"-"}));
  put->add_option("--context", a.context, "Context name (default for an export: the name it carries)");
  put->add_flag("--pin", a.pin, "Never drop it for capacity or TTL");
  put->add_option("--ttl", a.ttl, "Drop it once idle this long (30s, 10min, 24h; 0: never, also for an export's)")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string { return v.empty() ? "an empty TTL: give a duration, or 0 for none" : ""; },
          "", "ttl"));
  put->add_option("--tokens", a.tokens, "Token count, when known");
  put->callback([&g] { cmd_put(g, a); });

  auto* get = cmd->add_subcommand("get", "Write context NAME to FILE (or - for stdout)");
  get->add_option("NAME", a.name, "Context name")->required();
  get->add_option("FILE", a.out,
                 "Output file: written beside it and renamed onto it (a failed get leaves it as it was); a symlink's "
                 "target is the file; a device or FIFO (/dev/null) is written into; - or /dev/stdout: standard output")
      ->required();
  get->add_flag("--export", a.export_file,
                "Write a self-describing export (settings and checksums, then the bytes): `store put FILE` or a copy "
                "into a kvpager-fs mount's import/ checks it end to end");
  get->callback([&g] { cmd_get(g, a); });

  auto* ls = cmd->add_subcommand("ls", "List the contexts");
  ls->add_flag("--json", a.json, "Print JSON");
  a.ns_options.push_back(ls->add_option("--namespace", a.ns, "Only the contexts of this namespace (default: all)"));
  ls->callback([&g] { cmd_ls(g, a); });

  auto* rm = cmd->add_subcommand("rm", "Remove context NAME");
  rm->add_option("NAME", a.name, "Context name")->required();
  rm->callback([&g] { cmd_rm(g, a); });

  auto* fsck = cmd->add_subcommand("fsck", "Verify every checksum and manifest; exit 1 if something is damaged");
  fsck->add_flag("--repair", a.repair,
                 "Remove bad objects, broken contexts, old orphans and dead writers' leftovers (not orphans younger "
                 "than the orphan grace, nor entries the store did not make: those are listed and left alone)");
  fsck->add_flag("--json", a.json, "Print JSON");
  fsck->callback([&g] { cmd_fsck(g, g, a); });

  auto* bench = cmd->add_subcommand("bench", "Write, rewrite and read chunk_size objects at the queue depth (the movers' path)");
  bench->add_option("--size", a.bench_size, "Bytes to write and read: a whole number of chunks (chunk_size)")
      ->capture_default_str();
  bench->add_flag("--copy", a.bench_copy, "Through caller memory (a memcpy per object) instead of registered buffers");
  bench->add_flag("--json", a.json, "Print JSON");
  bench->callback([&g] { cmd_bench(g, a); });
}

}  // namespace kvpager::cli
