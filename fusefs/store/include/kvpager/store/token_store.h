// The NVMe token store: the warehouse's bottom tier. A directory of immutable,
// checksummed object files plus one manifest per published context.
//
// Layout of a store directory (format: fusefs/store/include/kvpager/store/format.h):
//   FORMAT                       "kvpager-store 1": marks the directory as a store
//   objects/<hh>/<32 hex>        published objects (<hh>: the key's first two hex digits)
//   contexts/<32 hex>.m          one manifest per context, named by context_id(ns, name)
//   writers/<id>.lock            held (flock) by a live writer process for its lifetime
//   writers/<id>/                that writer's temp files, its in-progress journals and
//                                its private objects (the pager's spilled chunks)
//
// Writing. Every file is written under a temp name inside the writer's own
// directory and published by rename(2), so a reader opens either the whole old
// file or the whole new one. Several processes write into one directory with
// no lock on the data path: each has its own writers/<id>/, and publication is
// a rename. The only lock is the writer's flock on its own lock file, which
// tells others it is alive; the kernel drops it when the process dies, even on
// SIGKILL.
//
// Mutable chunks (the design question). The pager spills a chunk, restores it,
// writes it, and spills it again under the same key, while objects must be
// immutable and a put idempotent. A published object file is never modified
// in place: a put under an existing key writes a complete new file and swaps
// it in by rename (for the writer's own objects renameat2(RENAME_EXCHANGE),
// which hands the replaced file back to the writer). The old inode stays
// intact for any reader that opened it, the new one is complete before its
// name appears, and every object carries the key, size and XXH3 of its own
// payload in its header. So a reader gets the whole old bytes, the whole new
// bytes, or a miss -- never a mix, and never bytes whose checksum fails. A
// file handed back is overwritten for a later object only when no get of
// the object it held can still be reading it (gets in flight are counted per
// key; nobody else reads a writer's private files). Putting the same bytes
// twice leaves the same object.
// Contexts go one step further: each publication of a name writes its chunks
// under keys that include a fresh generation (context_chunk_key()), then
// renames the manifest, then drops the previous generation's objects. A
// reader of a context therefore never sees chunks of two publications mixed.
//
// Private objects. Objects written through the Store interface (the pager's
// spills) are scratch that belongs to this handle: they live in its
// writers/<id>/ and are reclaimed with it (on close, or by the next open after
// the process died). Published contexts live in objects/ and contexts/ and
// outlive their writer.
//
// Crash safety. A writer that dies leaves only its writers/<id>/: temp files,
// private objects and the journal of any context it was publishing (each
// key before its object is written, and the replaced publication's keys
// before the manifest rename). The next open of the store -- in any process
// -- finds the lock free, deletes the journalled objects no manifest names, and removes
// the directory; a live writer's lock is held, so its temp files are never
// touched. Objects in objects/ that no manifest and no live journal names are
// removed once older than orphan_grace. Durability across power loss is
// optional (StoreOptions::durable); without it a torn file after power loss
// fails its checksum and reads as a miss, never as data.
//
// Threading: a TokenStore is driven by one thread at a time (like the Pager).
// Several handles -- in one process or many -- may share a directory.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "kvpager/config.h"
#include "kvpager/status.h"
#include "kvpager/store.h"
#include "kvpager/store/format.h"

namespace kvpager::store {

class IoEngine;

struct StoreOptions {
  std::string dir;
  uint64_t capacity_bytes = 0;  // 0: unlimited. Over it, LRU unpinned contexts are dropped whole.
  uint32_t queue_depth = 32;    // I/Os in flight, and registered buffers
  uint64_t max_io_bytes = 2 * MiB;  // payload one buffer holds; larger objects stream through it
  bool read_only = false;       // never writes, never cleans up
  bool durable = false;         // fdatasync each file (and the directory) before it counts
  bool use_io_uring = true;     // false: pread/pwrite (the fallback, also for tests)
  bool direct_io = true;        // false: buffered I/O
  uint64_t orphan_grace_ns = 10ull * 60 * 1'000'000'000;  // unreferenced published objects younger than this stay
  // One line per event worth telling (fallbacks, corruption, a full disk).
  // Default: "kvpager-store: ..." on stderr.
  std::function<void(std::string_view)> log;
  // Tests only: wraps the I/O engine the store made (to inject faults).
  std::function<std::unique_ptr<IoEngine>(std::unique_ptr<IoEngine>)> wrap_engine;

  // store_dir, nvme_capacity, store.queue_depth and chunk_size from the config.
  static StoreOptions from_config(const Config& cfg);
};

struct StoreStats {
  uint64_t puts = 0, put_bytes = 0;
  uint64_t gets = 0, get_bytes = 0;
  uint64_t misses = 0;             // get of an absent object
  uint64_t corruption_events = 0;  // checksum / header / manifest mismatch: reported as kCorrupt, never served
  uint64_t nospace_events = 0;     // ENOSPC from the file system
  uint64_t io_errors = 0;
  uint64_t contexts_evicted = 0, evicted_bytes = 0;  // dropped for capacity
  uint64_t contexts_expired = 0;                     // dropped for TTL
  uint64_t leftovers_removed = 0;  // dead writers' files and orphans removed by open()
  bool spills_disabled = false;    // a put hit ENOSPC; puts fail fast until bytes are freed
  uint64_t private_objects = 0;    // this handle's (the Store interface's objects)
  uint64_t spare_files = 0, spare_bytes = 0;  // freed files kept for reuse (counted in used_bytes)
  // How the data path runs here.
  std::string engine;              // "io_uring" or "pread/pwrite"
  bool registered_buffers = false;
  bool direct_io = false;
  uint64_t dio_mem_align = 0, dio_offset_align = 0;
};

// The wall clock the store's times are in (created_ns, last_access_ns,
// TTLs): nanoseconds since the epoch. Who compares with them reads it here.
uint64_t wall_clock_ns();

// One context as the store lists it.
struct ContextEntry {
  ContextMeta meta;
  uint64_t bytes = 0;            // payload bytes
  uint64_t chunks = 0;
  uint64_t last_access_ns = 0;   // wall clock (the manifest's mtime)
  uint64_t missing_chunks = 0;   // objects the manifest names that this handle did not find
  std::string manifest;          // file name under contexts/
};

struct FsckReport {
  // bytes_checked: the payload of every object read, bad ones included (a
  // file whose header cannot be read: its size).
  uint64_t objects_checked = 0, bytes_checked = 0, manifests_checked = 0;
  std::vector<std::string> problems;  // damage, one line each: what repair removes
  // Not damage, left alone on purpose (repair never removes them), one line
  // each: orphans younger than orphan_grace (a live writer may be publishing
  // them) and entries the store did not make (a directory in objects/, a
  // stray file there): those are for a person to remove.
  std::vector<std::string> left_alone;
  uint64_t bad_objects = 0, bad_manifests = 0, missing_objects = 0, leftovers = 0;
  uint64_t orphan_objects = 0;        // old enough to remove
  uint64_t young_orphans = 0;         // left alone until young_until_ns (wall clock)
  uint64_t young_until_ns = 0;        // when the youngest of them passes the grace
  uint64_t foreign_entries = 0;       // left alone
  uint64_t removed = 0;               // files removed (repair)
  bool clean() const { return problems.empty(); }
};

struct BenchOptions {
  uint64_t total_bytes = 1 * GiB;
  uint64_t block_bytes = 2 * MiB;
  bool copy = false;  // through caller memory (memcpy) instead of the store's registered buffers
  // Asked between completions: true stops the bench (what it wrote is
  // removed; BenchResult::stopped says so).
  std::function<bool()> stop;
};
struct BenchResult {
  uint64_t bytes = 0, objects = 0;
  double write_s = 0;    // new keys: every object a new file
  double rewrite_s = 0;  // the same keys again (a re-spill): files are replaced, and reused
  double read_s = 0;
  bool stopped = false;  // BenchOptions::stop said so: the times are not complete
  double write_gbps() const { return write_s > 0 ? static_cast<double>(bytes) / write_s / 1e9 : 0; }
  double rewrite_gbps() const { return rewrite_s > 0 ? static_cast<double>(bytes) / rewrite_s / 1e9 : 0; }
  double read_gbps() const { return read_s > 0 ? static_cast<double>(bytes) / read_s / 1e9 : 0; }
};

class ContextWriter;

class TokenStore final : public Store {
 public:
  // Opens (creating if needed) the store in opt.dir, rebuilds the index by
  // scanning it and removes leftovers of dead writers. Throws ConfigError
  // naming store_dir if the directory cannot be used.
  explicit TokenStore(StoreOptions opt);
  ~TokenStore() override;
  TokenStore(const TokenStore&) = delete;
  TokenStore& operator=(const TokenStore&) = delete;

  // --- Store: this handle's private objects (the pager's spills) ---
  // put: the object whole or not at all; an existing key is replaced
  // atomically. get: private objects first, then published ones; kNotFound,
  // kCorrupt (never the bytes: out is zeroed), kInvalid if out.size() differs.
  Status put(const ObjectKey& key, std::span<const std::byte> bytes) override;
  Status get(const ObjectKey& key, std::span<std::byte> out) override;
  Status erase(const ObjectKey& key) override;
  // Bytes on disk this handle accounts for: published objects it knows of,
  // its private objects and spare files, other live writers' private
  // objects as of its scan.
  uint64_t used_bytes() const override { return used_; }

  // --- asynchronous data path (the movers) ---
  // A registered, O_DIRECT-aligned buffer of max_io_bytes payload.
  struct Buffer {
    std::byte* data = nullptr;
    uint64_t capacity = 0;
    uint32_t id = UINT32_MAX;
    bool valid() const { return data != nullptr; }
  };
  struct Completion {
    uint64_t tag = 0;
    Status status = Status::kOk;
    uint64_t bytes = 0;  // payload bytes
    Buffer buffer;       // zero-copy get: the buffer, data at the payload; release it
  };
  // A free buffer, or an invalid one when all are in use.
  Buffer acquire_buffer();
  void release_buffer(Buffer b);
  // Each submit queues the I/O; it reaches the kernel in batches (flush(),
  // poll(), wait(), or a full queue). kAgain: every buffer is in use (poll
  // first); other failures leave nothing behind. Completions carry the tag.
  // Copies: up to max_io_bytes at submit (the caller may reuse its memory at
  // once); a larger object streams, and its bytes must stay until completion.
  Status submit_put(uint64_t tag, const ObjectKey& key, std::span<const std::byte> bytes);
  Status submit_put(uint64_t tag, const ObjectKey& key, Buffer buf, uint64_t len);  // zero copy; releases buf
  Status submit_get(uint64_t tag, const ObjectKey& key, std::span<std::byte> out);  // out lives until completion
  Status submit_get(uint64_t tag, const ObjectKey& key, Buffer buf);  // zero copy into buf
  // One chunk of a published context, checked against its manifest entry
  // as well as its own header: a size or checksum that differs from the
  // manifest's is kCorrupt. out.size() must be chunk.bytes. (kvpager-fs
  // reads a context's chunks this way, ahead of the reader.)
  Status submit_get(uint64_t tag, const ManifestChunk& chunk, std::span<std::byte> out);
  void flush();
  size_t poll(std::span<Completion> out);
  size_t wait(std::span<Completion> out);  // blocks for at least one; 0 if nothing is pending
  size_t pending() const { return inflight_user_ + ready_.size(); }
  size_t in_flight() const { return inflight_user_; }  // submitted, not yet reaped

  // --- contexts ---
  // Streams a context in: append() chunks, then commit() publishes the
  // manifest. Until commit nothing is visible; a writer destroyed without
  // commit removes what it wrote.
  std::unique_ptr<ContextWriter> begin_context(ContextMeta meta);
  // The whole context from memory, cut into chunk_bytes pieces (0: max_io_bytes).
  Status put_context(ContextMeta meta, std::span<const std::byte> data, uint64_t chunk_bytes = 0);
  // Reads the manifest from disk (the current publication).
  Status read_manifest(std::string_view ns, std::string_view name, Manifest* out);
  // Streams the chunks to sink in order (pipelined, every chunk verified
  // against its header and the manifest). A sink error stops the read and is
  // returned. Records the access.
  // A chunk that is gone because the context was replaced (or removed) while
  // it was read is kAgain; a chunk missing from the current publication is
  // kNotFound (the context is incomplete). With begin, a replaced context is
  // read again from its start, up to kContextReadAttempts times in all (a
  // context removed meanwhile then ends kNotFound, as a missing one does):
  // begin(manifest) is called before each attempt's first chunk and must drop
  // what sink got before (a status other than kOk ends the read with it).
  static constexpr int kContextReadAttempts = 3;
  Status get_context(std::string_view ns, std::string_view name,
                     const std::function<Status(uint64_t index, std::span<const std::byte>)>& sink,
                     Manifest* manifest = nullptr, const std::function<Status(const Manifest&)>& begin = {});
  Status get_context(std::string_view ns, std::string_view name, std::vector<std::byte>* out);
  Status remove_context(std::string_view ns, std::string_view name);
  Status set_pinned(std::string_view ns, std::string_view name, bool pinned);
  Status set_ttl(std::string_view ns, std::string_view name, uint64_t ttl_ns);
  // Every context (the contexts directory is re-read first).
  std::vector<ContextEntry> list_contexts();
  // Drops unpinned contexts idle longer than their TTL. Returns how many.
  size_t expire();
  // Makes room for `bytes` more under the capacity: drops expired, then least
  // recently used unpinned contexts. kNoSpace if it cannot.
  Status make_room(uint64_t bytes);

  // Verifies every manifest and every object's checksum; repair removes bad
  // objects, manifests that name missing or bad objects, old orphans and dead
  // writers' leftovers (FsckReport::problems). Young orphans and entries the
  // store did not make are only listed (FsckReport::left_alone).
  FsckReport fsck(bool repair, const std::function<void(uint64_t done, uint64_t total)>& progress = {});

  // Writes total_bytes in block_bytes private objects at the queue depth,
  // writes the same keys again, reads them, and removes them.
  Status bench(const BenchOptions& opt, BenchResult* out);

  StoreStats stats() const;
  const StoreOptions& options() const { return opt_; }
  const std::string& dir() const { return opt_.dir; }
  std::string writer_id() const { return writer_id_; }
  // Bytes one object of `payload` bytes takes on disk here.
  uint64_t file_bytes(uint64_t payload) const;
  // After ENOSPC: allow puts again (also happens when bytes are freed).
  void clear_nospace() { nospace_ = false; }

 private:
  friend class ContextWriter;
  enum class Area : uint8_t { kPrivate, kShared, kAny };  // kAny: private first, then published
  enum class Sink : uint8_t { kUser, kInternal, kWriter };  // where a finished job reports
  enum class DropReason : uint8_t { kRemove, kEvict, kExpire };
  struct Job;
  struct ObjInfo {
    uint64_t payload = 0;
    uint32_t refs = 0;     // manifests naming it
    uint32_t pending = 0;  // context writers of this handle that will name it
    bool on_disk = false;  // seen by the scan or written by this handle
  };
  struct CtxInfo {
    Manifest manifest;
    uint64_t last_access_ns = 0;
    uint64_t ino = 0;  // a new publication is a new inode
  };
  struct ReadSpec {
    ObjectKey key;
    uint64_t expect_len = 0;
    std::optional<uint64_t> expect_sum;
    bool verify_only = false;
  };

  void log(std::string_view msg) const;
  void open_dirs();
  void probe_alignment();
  void fall_back_to_buffered(std::string_view why);
  bool ensure_io();
  // kOk once I/O can go (ring and buffers made); kNoMemory if the buffers
  // cannot be allocated; kIoError once every buffer is retired (fail_lost_io).
  Status io_status();
  Status no_slot_status();  // why wait_slot() found no slot: kBusy, or io_status()
  bool fail_lost_io();
  Status ensure_writer();
  void scan();
  // Live writers' journalled keys into protect; dead writers (their lock now
  // held by us) into dead, or nullptr to leave them alone. clean: also
  // remove half-made lock files and directories whose lock is gone.
  void walk_writers(uint64_t now, std::unordered_set<ObjectKey, ObjectKeyHash>* protect,
                    std::vector<std::pair<std::string, int>>* dead, bool clean);
  void cleanup_dead_writer(const std::string& id, int lock_fd);
  void refresh_contexts();
  Status load_manifest_file(const std::string& file, Manifest* out, uint64_t* ino, uint64_t* mtime_ns);
  void add_manifest(const std::string& file, Manifest m, uint64_t ino, uint64_t mtime_ns);
  void drop_manifest_refs(const std::string& file, std::vector<ObjectKey>* unreferenced);
  void forget_if_unreferenced(const ObjectKey& key);
  void unlink_shared(const ObjectKey& key);
  Status drop_context(const std::string& file, DropReason why);
  // One attempt of get_context; *loaded: the manifest was read.
  Status read_context_once(const std::string& file, std::string_view ns, std::string_view name,
                           const std::function<Status(const Manifest&)>& begin,
                           const std::function<Status(uint64_t, std::span<const std::byte>)>& sink, Manifest* m,
                           bool* loaded);
  Status republish(std::string_view ns, std::string_view name, const std::function<void(ContextMeta&)>& edit);
  Status errno_status(int e);
  Status note_nospace();
  void bytes_freed();
  std::string object_path(const ObjectKey& key) const;  // relative to objects/

  // The job machine: one job per buffer slot.
  int take_slot();
  int wait_slot();  // reaps until a slot is free; -1 if every buffer is lent out
  void release_slot(int slot);
  bool lent(const Buffer& b) const;
  Status open_object(Area area, const ObjectKey& key, int* fd, bool* from_private);
  int open_data(int dirfd, const char* path, int flags, mode_t mode = 0);
  bool take_spare(uint64_t file_len, std::string* name, int* fd);
  void recycle(std::string name, uint64_t size, const ObjectKey* key);
  bool drop_spares(uint64_t bytes);
  Status start_put(Sink sink, uint64_t tag, ContextWriter* owner, Area area, const ObjectKey& key,
                   std::span<const std::byte> bytes, int slot, bool zero_copy, uint64_t len,
                   std::optional<uint64_t> checksum);
  Status start_get(Sink sink, uint64_t tag, Area area, const ObjectKey& key, std::span<std::byte> out,
                   bool verify_only, int slot, bool zero_copy, uint64_t expect_len,
                   std::optional<uint64_t> expect_sum, Status size_mismatch);
  void fill_put_segment(Job& j);
  bool issue(Job& j);
  bool reap(bool wait);
  void advance(Job& j, int32_t res);
  void corrupt(Job& j, std::string_view why);
  Status publish_put(Job& j);
  void finish(Job& j, Status s);
  Status run_sync(int slot);
  // Reads n published objects at the queue depth; done() sees them in order.
  Status read_pipelined(
      size_t n, const std::function<ReadSpec(size_t)>& spec,
      const std::function<Status(size_t, Status, std::span<const std::byte>, const ObjectHeader&)>& done);

  StoreOptions opt_;
  int root_fd_ = -1, objects_fd_ = -1, contexts_fd_ = -1, writers_fd_ = -1;
  std::string writer_id_;
  int writer_lock_fd_ = -1, writer_fd_ = -1;
  uint64_t temp_seq_ = 0;

  bool direct_ = true;
  bool fallocate_ = true;
  bool exchange_ = true;  // renameat2(RENAME_EXCHANGE) works here
  uint64_t mem_align_ = 4096, off_align_ = 4096, header_block_ = 4096;
  std::unique_ptr<IoEngine> engine_;  // with the buffers, made by the first I/O
  bool io_broken_ = false;            // the buffers could not be allocated
  bool registered_ = false;
  std::byte* pool_ = nullptr;
  size_t pool_bytes_ = 0;
  uint64_t buf_bytes_ = 0;  // header block + max_io_bytes, aligned
  std::vector<std::unique_ptr<Job>> jobs_;  // by slot (= buffer index)
  std::vector<int> free_slots_;
  std::vector<bool> lent_;  // buffer is the caller's (acquired, or a zero-copy get's result)
  std::vector<bool> retired_;  // buffer of an I/O the engine lost: never used again (fail_lost_io)
  size_t retired_count_ = 0;
  size_t inflight_user_ = 0;
  std::deque<Completion> ready_;

  std::unordered_map<ObjectKey, uint64_t, ObjectKeyHash> private_;  // own private objects -> payload
  std::unordered_map<ObjectKey, ObjInfo, ObjectKeyHash> shared_;
  std::unordered_map<std::string, CtxInfo> contexts_;                // by manifest file name
  std::unordered_map<std::string, uint64_t> bad_manifests_;          // file -> inode, reported once
  // Files of this writer that hold no object any more, kept for reuse.
  struct Spare {
    std::string name;
    uint64_t size;
  };
  std::vector<Spare> spares_;
  std::unordered_map<ObjectKey, uint32_t, ObjectKeyHash> reading_;  // own private objects being read
  uint64_t used_ = 0;  // includes spares
  uint64_t reserved_ = 0;  // growth of the puts in flight (Job::reserved), checked with used_ against the capacity
  uint64_t others_private_ = 0;  // other live writers' private bytes at the scan
  bool nospace_ = false;             // ENOSPC seen and not yet freed (said once)
  uint64_t nospace_since_ns_ = 0;    // the last ENOSPC: puts are refused at once for kNoSpaceRetryNs
  static constexpr uint64_t kNoSpaceRetryNs = 5'000'000'000;
  StoreStats st_;
};

class ContextWriter {
 public:
  ~ContextWriter();
  ContextWriter(const ContextWriter&) = delete;
  ContextWriter& operator=(const ContextWriter&) = delete;
  // Queues one chunk and returns before it is on disk. A chunk up to
  // max_io_bytes is copied at once; a larger one is written before append()
  // returns. Either way the caller may reuse its memory. key: a content
  // key supplied by the engine; without one the chunk is named
  // context_chunk_key(ns, name, generation, index). The first failure sticks.
  Status append(std::span<const std::byte> chunk, const ObjectKey* key = nullptr);
  // Waits for every chunk, then publishes the manifest (replacing an older
  // publication of the name, whose objects are then dropped).
  Status commit();
  // Removes what was written; nothing becomes visible.
  void abort();
  uint64_t chunks() const { return chunks_.size(); }
  uint64_t bytes() const { return bytes_; }
  // What the manifest will say (generation, owner, created: set by begin_context).
  const ContextMeta& meta() const { return meta_; }

 private:
  friend class TokenStore;
  ContextWriter(TokenStore& s, ContextMeta meta) : s_(s), meta_(std::move(meta)) {}
  void on_done(size_t index, Status st);

  TokenStore& s_;
  ContextMeta meta_;
  std::vector<ManifestChunk> chunks_;
  std::vector<uint8_t> state_;  // per chunk: 0 in flight or deduplicated, 1 written, 2 failed
  uint64_t bytes_ = 0;
  size_t inflight_ = 0;
  Status status_ = Status::kOk;
  int journal_fd_ = -1;
  std::string journal_;
  bool done_ = false;
};

}  // namespace kvpager::store
