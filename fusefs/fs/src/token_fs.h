// TokenFs: the kvpager-fs daemon's file system, on the libfuse3 low-level
// API (the model is libfuse's example/passthrough_hp.cc: inode numbers, a
// handle per open file, the multithreaded session loop).
//
// Inode numbers. 1 is the root. The fixed directories and virtual files sit
// at the top of the 64-bit range (as JuiceFS and 3FS reserve theirs), so they
// can never collide with the dynamic ones. Everything else is handed out in
// blocks from a counter that only grows:
//   a context publication (name + generation): dir, kv, info, chunks/, chunk i
//   a live pager (pid):                        dir, stats, config, control/, knob i
//   an import in progress:                     the file
// A new publication of a name is a new block, so the kernel never serves a
// cached page of the old bytes for the new ones.
//
// Threads: the FUSE workers (fuse_session_loop_mt), the ChunkReader's I/O
// thread, a watcher that keeps the context catalog fresh (inotify on the
// store's contexts/ directory, plus polling) and a notifier that passes
// cache invalidations to the kernel outside any request (the notify API must
// not run inside a related request).
//
// Locks, in the order they may nest: an ImportSession's mu (one write or
// close of that file at a time) -> refresh_mu_ (one catalog change at a
// time) -> store_mu_ (the writable store handle) -> mu_ (catalog, inode
// blocks, imports) -> a CtxPub's check_mu. Nothing waits for the kernel or a
// pager while holding mu_.
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "chunk_reader.h"
#include "control/client.h"
#include "control/runtime_dir.h"
#include "kvpager/fs/paths.h"
#include "kvpager/store/token_store.h"

namespace kvpager::fs {

struct FsOptions {
  std::string store_dir;
  std::string ns;           // the namespace this mount shows (-o namespace=NS)
  std::string runtime_dir;  // where live pagers' control sockets are
  uint64_t chunk_size = 2 * MiB;  // store I/O buffer size; raw imports are cut into chunks of this size
  uint32_t queue_depth = 32;      // reads in flight (the ChunkReader's store handle)
  uint64_t capacity = 0;          // nvme_capacity
  bool read_only = false;         // -o ro, or a store this user may only read
  bool allow_other = false;
  double entry_timeout = 10.0;    // contexts subtree: invalidated on change, so it may be long
  double attr_timeout = 10.0;
  uint32_t read_window = 8;       // chunks read ahead of a sequential kv reader
  uint64_t read_ahead_budget = 256 * MiB;  // chunk bytes all readers may hold before read-ahead pauses
  control::Caller::Options control;  // how long live pagers are waited for (and stopped ones)
  std::chrono::milliseconds poll_interval{250};  // catalog refresh without (or besides) inotify
  uid_t uid = 0;
  gid_t gid = 0;
  std::function<void(std::string_view)> log;  // one line per event worth telling
};

// Fixed inode numbers.
inline constexpr fuse_ino_t kTopIno = ~fuse_ino_t{0};
inline constexpr fuse_ino_t kContextsIno = kTopIno - 1;
inline constexpr fuse_ino_t kImportIno = kTopIno - 2;
inline constexpr fuse_ino_t kProcessesIno = kTopIno - 3;
inline constexpr fuse_ino_t kControlIno = kTopIno - 4;
inline constexpr fuse_ino_t kStatsIno = kTopIno - 5;
inline constexpr fuse_ino_t kKnobIno = kTopIno - 0x1000;  // /control/<knob i> = kKnobIno + i
inline constexpr fuse_ino_t kFirstDynamicIno = 2;

// Offsets inside a context's block and a pager's block.
inline constexpr fuse_ino_t kCtxDir = 0, kCtxKv = 1, kCtxInfo = 2, kCtxChunks = 3, kCtxFirstChunk = 4;
inline constexpr fuse_ino_t kProcDir = 0, kProcStats = 1, kProcConfig = 2, kProcControl = 3, kProcFirstKnob = 4;

// One publication of a context, as the mount shows it.
struct CtxPub {
  std::string name;
  uint64_t generation = 0;
  std::vector<store::ManifestChunk> chunks;
  std::vector<uint64_t> offsets;  // chunk i starts at offsets[i]; offsets.back() is the size
  fuse_ino_t base = 0;
  uint64_t size() const { return offsets.back(); }
  uint64_t chunk_of(uint64_t off) const;  // the chunk holding byte off (off < size())

  // Under TokenFs::mu_.
  store::ContextMeta meta;
  uint64_t last_access_ns = 0;
  std::atomic<bool> gone{false};  // no longer the current publication (set under mu_)
  pid_t removed_by = 0;          // removed through this mount by that process (rm -r in progress)
  uint64_t removed_at_ns = 0;
  int64_t nlookup = 0;           // kernel references to any inode of the block

  // What reads through this mount found (check_mu).
  std::mutex check_mu;
  std::vector<bool> verified;    // chunk read and matched its checksum
  uint64_t verified_count = 0;
  bool corrupt = false, missing = false;
};

struct ImportSession;
struct ProcBlock {
  int32_t pid = 0;
  fuse_ino_t base = 0;
  int64_t nlookup = 0;  // under mu_
};

// What an inode number stands for.
struct Node {
  PathRef ref;
  std::shared_ptr<CtxPub> ctx;
  std::shared_ptr<ImportSession> imp;
};

class TokenFs {
 public:
  // Opens the store (ConfigError if it cannot be used).
  explicit TokenFs(FsOptions opt);
  ~TokenFs();
  TokenFs(const TokenFs&) = delete;
  TokenFs& operator=(const TokenFs&) = delete;

  static const fuse_lowlevel_ops& ops();
  // Starts the threads; call after daemonizing (fork keeps no threads).
  void start(fuse_session* se);
  void stop();

  const FsOptions& options() const { return opt_; }

  // ---- used by the request handlers (fs_*.cpp) ----
  // What an open file or directory's fh points to (kinds: fs_ops.cpp).
  struct Handle {
    virtual ~Handle() = default;
  };
  // Handles are owned here, so those the kernel never released (the
  // connection went with files open) go with the file system.
  uint64_t adopt(std::unique_ptr<Handle> h);
  void drop(uint64_t fh);
  struct DirHandle;
  struct KvHandle;
  struct TextHandle;
  struct ControlHandle;
  struct ImportHandle;

  void log(std::string_view msg) const { opt_.log(msg); }
  bool resolve_ino(fuse_ino_t ino, Node* out);
  // Attributes of a node; errno on failure.
  int attr_of(const Node& n, struct stat* st);
  double entry_timeout(const Node& n) const;
  double attr_timeout(const Node& n) const;
  void note_lookup(const Node& n, uint64_t count);
  void forget(fuse_ino_t ino, uint64_t count);
  int lookup(fuse_ino_t parent, const char* name, pid_t caller, fuse_entry_param* e);
  // A directory's entries. A chunks/ directory's are not spelled out (a
  // 1 TiB context has half a million): they are chunk_count entries named
  // 0.. with inode numbers from chunk_ino, made as readdir reaches them.
  struct DirEntry {
    std::string name;
    fuse_ino_t ino = 0;
    mode_t type = 0;  // S_IFDIR or S_IFREG
  };
  struct Listing {
    std::vector<DirEntry> entries;
    fuse_ino_t chunk_ino = 0;
    uint64_t chunk_count = 0;
  };
  int list_dir(const Node& dir, pid_t caller, Listing* out);

  // Contexts.
  void refresh();  // re-reads the catalog, queues invalidations
  // Removes the publication (EBUSY while a live pager has it pinned).
  int remove_context(const std::shared_ptr<CtxPub>& pub, pid_t caller);
  std::shared_ptr<CtxPub> current(const std::string& name);
  // A context `caller` removed through the mount moments ago (rm -r in progress).
  std::shared_ptr<CtxPub> ghost(const std::string& name, pid_t caller);
  void forget_ghost(const std::string& name, const std::shared_ptr<CtxPub>& pub);
  bool visible(const CtxPub& pub, pid_t caller);
  void note_read(CtxPub& pub, uint64_t chunk, Status st);

  // Virtual files.
  int render(const Node& n, std::string* out);
  std::string render_info(const std::shared_ptr<CtxPub>& pub);
  std::string render_stats();
  int write_knob(const std::string& knob, std::string_view value, int32_t pid);

  // Imports.
  int create_import(const std::string& file_name, const fuse_ctx* caller, std::shared_ptr<ImportSession>* out,
                    fuse_entry_param* e);
  // The file leaves /import (err: 0 published, else why not).
  void finish_import(const std::shared_ptr<ImportSession>& imp, int err);
  int import_chunk(ImportSession& imp, std::span<const std::byte> chunk);
  int commit_import(ImportSession& imp);
  void abort_import(ImportSession& imp);

  ChunkReader& reader() { return *reader_; }
  uint32_t read_window() const { return opt_.read_window; }

  // Live pagers.
  std::vector<control::Endpoint> live_pagers() const;
  // The pager `pid` serves (its control socket), and for pid 0 every live one.
  control::Endpoint pager(int32_t pid) const { return {pid, control::socket_path(opt_.runtime_dir, pid)}; }
  std::vector<control::Endpoint> pagers_of(int32_t pid) const { return pid != 0 ? std::vector{pager(pid)} : live_pagers(); }
  bool pager_live(int32_t pid) const;
  std::shared_ptr<ProcBlock> proc_block(int32_t pid);

  // Counters for /stats.
  std::atomic<uint64_t> reads_failed{0}, imports_ok{0}, imports_rejected{0}, imports_failed{0}, contexts_removed{0};

 private:
  void watch_loop();
  // True once the store directory is no longer the one this mount opened
  // (removed, or replaced by another at its path): said once, loudly.
  bool store_dir_replaced(dev_t dev, ino_t ino);
  std::atomic<bool> store_lost_{false};
  void notify_loop();
  void queue_inval_entry(fuse_ino_t parent, std::string name);
  void queue_inval_inode(fuse_ino_t ino);
  fuse_ino_t allocate(uint64_t count);  // under mu_ (exclusive)
  std::shared_ptr<CtxPub> make_pub(const std::string& name, store::Manifest m, uint64_t last_access_ns);
  void drop_block_if_unused(fuse_ino_t base);  // under mu_ (exclusive)
  void retire(const std::shared_ptr<CtxPub>& pub);  // under mu_ (exclusive)
  int check_unpinned(const std::string& name);

  FsOptions opt_;
  control::Caller pagers_{opt_.control};  // every question to a live pager goes through it
  fuse_session* se_ = nullptr;
  const uint64_t mounted_ns_;

  // The writable store handle (read-only for a read-only mount): catalog
  // refreshes, removals, imports. One thread at a time: store_mu_.
  std::mutex refresh_mu_;
  std::mutex store_mu_;
  std::unique_ptr<store::TokenStore> store_;
  std::unique_ptr<store::TokenStore> reader_store_;  // handed to the ChunkReader by start()
  std::unique_ptr<ChunkReader> reader_;

  mutable std::shared_mutex mu_;
  std::map<std::string, std::shared_ptr<CtxPub>> by_name_;  // current publications of this namespace
  std::map<std::string, std::shared_ptr<CtxPub>> ghosts_;   // removed through the mount moments ago
  struct Block {
    uint64_t count = 0;
    std::variant<std::shared_ptr<CtxPub>, std::shared_ptr<ImportSession>, std::shared_ptr<ProcBlock>> owner;
  };
  std::map<fuse_ino_t, Block> blocks_;  // by base inode
  std::map<std::string, std::shared_ptr<ImportSession>> imports_;
  std::unordered_map<int32_t, std::shared_ptr<ProcBlock>> procs_;
  fuse_ino_t next_ino_ = kFirstDynamicIno;
  // Store-wide numbers from the last refresh (every namespace), for /stats.
  struct StoreTotals {
    uint64_t contexts = 0, bytes = 0, pinned = 0, hidden = 0;  // hidden: names the mount cannot show
  } totals_;
  uint64_t used_bytes_ = 0;
  store::StoreStats store_stats_;

  // Invalidations for the notifier.
  struct Inval {
    fuse_ino_t parent = 0;  // entry (parent, name), or inode (ino) when name is empty
    fuse_ino_t ino = 0;
    std::string name;
  };
  std::mutex notify_mu_;
  std::condition_variable notify_cv_;
  std::deque<Inval> invals_;

  std::mutex handles_mu_;
  std::unordered_map<uint64_t, std::unique_ptr<Handle>> handles_;

  std::atomic<bool> stopping_{false};
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  std::thread watcher_, notifier_;
};

}  // namespace kvpager::fs
