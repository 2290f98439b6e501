// The live-control library in one process: runtime directory rules, the
// ControlServer's mailbox and snapshot (answers while the owner is busy,
// applies settings all-or-none on the owner's thread, withdraws what the
// owner never took), the peer check, stale-socket cleanup and the client.
#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "control/client.h"
#include "control/protocol.h"
#include "control/runtime_dir.h"
#include "control/server.h"
#include "common/stats_json.h"
#include "kvpager/sim/file_store.h"
#include "kvpager/sim/sim_device.h"
#include "kvpager/sim/sim_mover.h"
#include "temp_dir.h"

namespace kvpager::control {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

using kvpager::testing::TempDir;

// The address of the Unix socket at `path` (for bind/connect).
sockaddr_un unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  return a;
}

mode_t mode_of(const std::string& p) {
  struct stat st {};
  EXPECT_EQ(stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

// A socket file nobody listens on (bound, then closed).
void make_dead_socket(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a = unix_address(path);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  close(fd);
}

pid_t dead_pid() {
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  int st = 0;
  waitpid(pid, &st, 0);
  return pid;
}

// ------------------------------------------------------------ runtime dir

// kvpager status names the kinds of moves that failed, from the stats JSON.
TEST(StatsJson, FailedMovesAreNamedByKindInMoveKindOrder) {
  StatsSnapshot st;
  EXPECT_EQ(failed_moves_by_kind(to_json(st)), "") << "nothing failed: nothing to say";
  st.move_failures_by_kind[static_cast<size_t>(MoveKind::kSpill)] = 1;
  st.move_failures_by_kind[static_cast<size_t>(MoveKind::kDemote)] = 3;
  st.move_failures = 4;
  EXPECT_EQ(failed_moves_by_kind(to_json(st)), "demote 3, spill 1");
  EXPECT_EQ(failed_moves_by_kind(nlohmann::json::object()), "") << "an older pager's JSON without counts";
  EXPECT_EQ(failed_moves_by_kind(nlohmann::json{{"moves", {{"demote", {{"failed", "x"}}}}}}), "");
}

// kvpager status turns the mover's timing counters into GB/s per direction.
TEST(StatsJson, MoverSpeedIsBytesOverTheTimeBatchesWereInFlight) {
  StatsSnapshot st;
  st.move_bytes[static_cast<size_t>(MoveKind::kPromote)] = 40'000'000'000;
  const nlohmann::json interposer = {{"mover.promote_ns", 2'000'000'000ull}, {"mover.promote_batches", 300},
                                     {"mover.demote_ns", 0},  {"mover.demote_batches", 0},
                                     {"mover.issue_ns", 500'000'000ull}};
  EXPECT_EQ(mover_speed(to_json(st), interposer),
            "promotes 37.25 GiB at 20.0 GB/s in flight (300 batches); pager thread inside advise/prefetch calls 0.50 s");
  EXPECT_EQ(mover_speed(to_json(st), nlohmann::json::object()), "") << "no libkvpager.so counters (simulated device)";
  EXPECT_EQ(mover_speed(to_json(StatsSnapshot{}), interposer), "") << "nothing moved";
}

TEST(RuntimeDir, ServerCreatesItPrivate) {
  TempDir t;
  Config cfg;
  cfg.runtime_dir = t.path() + "/a/b/run";
  RuntimeDir rd = resolve_runtime_dir(cfg, DirUse::kServe);
  EXPECT_EQ(rd.path, cfg.runtime_dir);
  EXPECT_TRUE(rd.note.empty());
  EXPECT_EQ(mode_of(rd.path), 0700u);
}

// A directory that was there before keeps its mode: `--runtime-dir /tmp`
// (1777) or `~` used to be made 0700. One that others may write to is
// refused (anyone could put a socket there); one they may only read is used.
TEST(RuntimeDir, AnExistingDirectoryIsNeverChangedAndASharedOneIsRefused) {
  TempDir t;
  for (mode_t shared : {mode_t{01777}, mode_t{0777}, mode_t{0770}}) {
    std::string dir = t.path() + fmt::format("/shared-{:o}", shared);
    ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
    ASSERT_EQ(chmod(dir.c_str(), shared), 0);
    Config cfg;
    cfg.runtime_dir = dir;
    try {
      resolve_runtime_dir(cfg, DirUse::kServe);
      ADD_FAILURE() << fmt::format("mode {:o} was accepted", shared);
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(fmt::format("others may write to it (mode {:04o})", shared)),
                std::string::npos)
          << e.what();
    }
    EXPECT_EQ(mode_of(dir), shared) << "left as it was";
  }
  std::string readable = t.path() + "/readable";
  ASSERT_EQ(mkdir(readable.c_str(), 0700), 0);
  ASSERT_EQ(chmod(readable.c_str(), 0755), 0);
  Config cfg;
  cfg.runtime_dir = readable;
  EXPECT_EQ(resolve_runtime_dir(cfg, DirUse::kServe).path, readable);
  EXPECT_EQ(mode_of(readable), 0755u);
}

// One it creates is exactly 0700, whatever the umask.
TEST(RuntimeDir, ACreatedDirectoryIs0700WhateverTheUmask) {
  TempDir t;
  struct Umask {
    mode_t old = umask(0277);  // would leave 0500: not even writable
    ~Umask() { umask(old); }
  };
  for (const char* name : {"/run", "/run2/"}) {  // a trailing slash too (its parent loop made it 0755)
    Umask guard;
    Config cfg;
    cfg.runtime_dir = t.path() + name;
    resolve_runtime_dir(cfg, DirUse::kServe);
    EXPECT_EQ(mode_of(cfg.runtime_dir), 0700u) << name;
  }
}

TEST(RuntimeDir, DirectoryOfAnotherUserIsRefusedNamingTheKnob) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to make a directory owned by another uid";
  TempDir t;
  std::string dir = t.path() + "/run";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(chown(dir.c_str(), 65534, 65534), 0);
  Config cfg;
  cfg.runtime_dir = dir;
  try {
    resolve_runtime_dir(cfg, DirUse::kServe);
    FAIL() << "a directory owned by uid 65534 was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("runtime_dir"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("65534"), std::string::npos) << e.what();
  }
}

TEST(RuntimeDir, PathTooLongForASocketIsRefused) {
  Config cfg;
  cfg.runtime_dir = "/tmp/" + std::string(110, 'x');
  EXPECT_THROW(resolve_runtime_dir(cfg, DirUse::kServe), ConfigError);
}

TEST(RuntimeDir, FallsBackAndSaysSoWhenTheDefaultIsUnusable) {
  TempDir t;
  std::string file = t.path() + "/not-a-dir";
  { std::FILE* f = std::fopen(file.c_str(), "w"); std::fclose(f); }
  const char* old = std::getenv("XDG_RUNTIME_DIR");
  std::string saved = old ? old : "";
  setenv("XDG_RUNTIME_DIR", file.c_str(), 1);  // $XDG_RUNTIME_DIR/kvpager cannot be made
  Config cfg;  // runtime_dir unset: the default rule applies
  RuntimeDir rd = resolve_runtime_dir(cfg, DirUse::kServe);
  if (old) setenv("XDG_RUNTIME_DIR", saved.c_str(), 1);
  else unsetenv("XDG_RUNTIME_DIR");
  EXPECT_EQ(rd.path, "/tmp/kvpager-" + std::to_string(geteuid()));
  EXPECT_NE(rd.note.find(file + "/kvpager"), std::string::npos) << rd.note;
  EXPECT_EQ(mode_of(rd.path), 0700u);
}

// `kvpager status` and `config show` only look: they name the directory a
// server would make, and make nothing.
TEST(RuntimeDir, AClientNamesTheServersDirectoryWithoutCreatingIt) {
  TempDir t;
  const char* old = std::getenv("XDG_RUNTIME_DIR");
  std::string saved = old ? old : "";
  setenv("XDG_RUNTIME_DIR", t.path().c_str(), 1);
  Config cfg;
  RuntimeDir client = resolve_runtime_dir(cfg, DirUse::kClient);
  const bool made_by_client = fs::exists(t.path() + "/kvpager");
  RuntimeDir server = resolve_runtime_dir(cfg, DirUse::kServe);
  if (old) setenv("XDG_RUNTIME_DIR", saved.c_str(), 1);
  else unsetenv("XDG_RUNTIME_DIR");
  EXPECT_EQ(client.path, t.path() + "/kvpager");
  EXPECT_TRUE(client.note.empty()) << client.note;
  EXPECT_FALSE(made_by_client);
  EXPECT_EQ(server.path, client.path);
  EXPECT_EQ(mode_of(server.path), 0700u);
}

TEST(RuntimeDir, ListingRemovesSocketsOfDeadProcessesOnly) {
  TempDir t;
  pid_t gone = dead_pid();
  pid_t gone2 = dead_pid();
  make_dead_socket(socket_path(t.path(), gone));
  make_dead_socket(socket_path(t.path(), gone2) + ".new");  // died before publishing
  make_dead_socket(socket_path(t.path(), getpid()));        // alive: kept
  std::FILE* f = std::fopen((t.path() + "/notes.txt").c_str(), "w");  // not ours: ignored
  std::fclose(f);
  // Named like a socket, of a dead and of a live pid, but plain files: never
  // listed, never removed.
  for (pid_t p : {gone2, getppid()}) std::fclose(std::fopen(socket_path(t.path(), p).c_str(), "w"));
  Listing l = list_pagers(t.path());
  EXPECT_TRUE(l.error.empty()) << l.error;
  ASSERT_EQ(l.cleaned.size(), 1u);
  EXPECT_EQ(l.cleaned[0], gone);
  ASSERT_EQ(l.live.size(), 1u);
  EXPECT_EQ(l.live[0].pid, getpid());
  EXPECT_FALSE(fs::exists(socket_path(t.path(), gone)));
  EXPECT_FALSE(fs::exists(socket_path(t.path(), gone2) + ".new"));
  EXPECT_TRUE(fs::exists(t.path() + "/notes.txt"));
  EXPECT_TRUE(fs::exists(socket_path(t.path(), gone2)));
  EXPECT_TRUE(fs::exists(socket_path(t.path(), getppid())));
}

TEST(RuntimeDir, SocketOfAReusedPidThatRefusesConnectionsIsStale) {
  TempDir t;
  // Our pid is alive, but nobody listens on this socket: the pid was reused.
  Endpoint e{getpid(), socket_path(t.path(), getpid())};
  make_dead_socket(e.socket);
  EXPECT_TRUE(remove_if_stale(e));
  EXPECT_FALSE(fs::exists(e.socket));
  // A plain file of that name refuses connections as well: left alone.
  std::fclose(std::fopen(e.socket.c_str(), "w"));
  EXPECT_FALSE(remove_if_stale(e));
  EXPECT_TRUE(fs::exists(e.socket));
}

TEST(RuntimeDir, MissingDirectoryListsNobody) {
  Listing l = list_pagers("/tmp/kvpager-control-test-does-not-exist");
  EXPECT_TRUE(l.error.empty());
  EXPECT_TRUE(l.live.empty());
}

// A peer that streams bytes without a line end is not a pager: the client
// gives up at kMaxReplyBytes instead of buffering until memory runs out.
TEST(Client, AnEndlessReplyIsRefusedNotBuffered) {
  TempDir dir;
  const std::string path = dir.path() + "/endless.sock";
  int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a = unix_address(path);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  ASSERT_EQ(listen(lfd, 1), 0);
  std::atomic<uint64_t> sent{0};
  std::thread peer([&] {
    int fd = accept(lfd, nullptr, nullptr);
    std::string junk(1 << 16, 'x');
    for (;;) {
      ssize_t n = send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<uint64_t>(n);
    }
    close(fd);
  });
  Reply r = call(path, {{"op", "stats"}}, 20s);
  close(lfd);
  peer.join();
  EXPECT_EQ(r.code, Errc::kIo) << r.error;
  EXPECT_NE(r.error.find("without a line end"), std::string::npos) << r.error;
  EXPECT_LT(sent.load(), 2 * kMaxReplyBytes) << "the client stopped reading soon after the limit";
}

// ------------------------------------------------------------ server

// A pager on the simulated device, driven by its own owner thread as in a
// real process. Tests run code on the owner with on_owner(); the owner calls
// service() between tasks unless paused.
class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override { start({}); }
  void TearDown() override { stop(); }

  void start(ControlServer::Options opt) {
    server_.reset();
    dev_.reset();
    pager_.reset();
    mover_.reset();
    store_.reset();
    regions_.clear();
    cfg_.chunk_size = 256 * KiB;
    cfg_.sim_hbm_capacity = 16 * MiB;
    cfg_.hbm_budget = 16 * MiB;
    cfg_.host_capacity = 64 * MiB;
    cfg_.runtime_dir = dir_.path() + "/run";
    store_ = std::make_unique<FileStore>(dir_.path(), cfg_.chunk_size);
    mover_ = std::make_unique<SimMover>(cfg_, store_.get());
    pager_ = std::make_unique<Pager>(cfg_, *mover_);
    dev_ = std::make_unique<SimDevice>(*pager_, *mover_);
    for (int s = 0; s < 3; ++s) regions_.push_back(dev_->alloc(8 * MiB, "session-" + std::to_string(s)));
    opt.runtime_dir = resolve_runtime_dir(cfg_, DirUse::kServe).path;
    opt.device = "simulated device";
    if (opt.publish_interval == ControlServer::Options{}.publish_interval) opt.publish_interval = 5ms;
    server_ = std::make_unique<ControlServer>(opt, *pager_);
    running_ = true;
    owner_ = std::thread([this] { owner_loop(); });
  }

  void stop() {
    if (!owner_.joinable()) return;
    {
      std::lock_guard g(mu_);
      running_ = false;
    }
    cv_.notify_all();
    owner_.join();
    server_.reset();
  }

  void owner_loop() {
    std::unique_lock lock(mu_);
    while (running_) {
      while (!tasks_.empty()) {
        auto task = std::move(tasks_.front());
        tasks_.pop_front();
        lock.unlock();
        task();
        lock.lock();
      }
      if (!paused_) {
        lock.unlock();
        dev_->compute(1'000'000);  // 1 ms of virtual time: moves finish
        server_->service(*pager_);
        lock.lock();
      }
      cv_.wait_for(lock, 1ms);
    }
  }

  template <typename Fn>
  auto on_owner(Fn fn) {
    std::packaged_task<decltype(fn())()> task(std::move(fn));
    auto result = task.get_future();
    {
      std::lock_guard g(mu_);
      tasks_.emplace_back([&task] { task(); });
    }
    cv_.notify_all();
    return result.get();
  }
  void pause_service(bool p) {
    std::lock_guard g(mu_);
    paused_ = p;
  }

  Reply call(const json& req, std::chrono::milliseconds timeout = 5s) {
    return control::call(server_->socket_path(), req, timeout);
  }
  // Waits until the published snapshot shows `accesses`.
  json stats_after(uint64_t accesses) {
    for (int i = 0; i < 500; ++i) {
      Reply r = call({{"op", "stats"}});
      if (r.ok() && r.body["stats"]["accesses"].get<uint64_t>() == accesses) return r.body;
      std::this_thread::sleep_for(2ms);
    }
    ADD_FAILURE() << "the snapshot never showed " << accesses << " accesses";
    return {};
  }

  TempDir dir_;
  Config cfg_;
  std::unique_ptr<FileStore> store_;
  std::unique_ptr<SimMover> mover_;
  std::unique_ptr<Pager> pager_;
  std::unique_ptr<SimDevice> dev_;
  std::vector<RegionId> regions_;
  std::unique_ptr<ControlServer> server_;

  std::thread owner_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool running_ = false;
  bool paused_ = false;
};

TEST_F(ControlServerTest, SocketIsPrivateAndNamedByPid) {
  EXPECT_EQ(server_->socket_path(), socket_path(dir_.path() + "/run", getpid()));
  EXPECT_EQ(mode_of(server_->socket_path()), 0600u);
  EXPECT_EQ(mode_of(dir_.path() + "/run"), 0700u);
}

TEST_F(ControlServerTest, StatsReplyIsThePagersSnapshot) {
  uint64_t n = on_owner([&] {
    for (RegionId r : regions_)
      for (uint32_t i = 0; i < 32; ++i) EXPECT_EQ(dev_->touch(r, i, i % 2 == 0), Status::kOk);
    return pager_->stats().accesses;
  });
  ASSERT_EQ(n, 96u);
  json body = stats_after(n);
  StatsSnapshot s = on_owner([&] { return pager_->stats(); });
  EXPECT_EQ(body["pid"].get<pid_t>(), getpid());
  EXPECT_EQ(body["device"], "simulated device");
  EXPECT_FALSE(body["command"].get<std::string>().empty());
  const json& st = body["stats"];
  EXPECT_EQ(st["hits"].get<uint64_t>(), s.hits);
  EXPECT_EQ(st["faults"].get<uint64_t>(), s.faults);
  EXPECT_EQ(st["hits"].get<uint64_t>() + st["faults"].get<uint64_t>(), 96u);
  EXPECT_EQ(st["tiers"]["hbm"]["capacity_bytes"].get<uint64_t>(), 16 * MiB);
  EXPECT_EQ(st["contexts"].get<uint32_t>(), 3u);
  EXPECT_EQ(st["regions"].get<uint32_t>(), 3u);
  // 96 chunks of 256K were touched: 24 MiB, more than the 16 MiB budget.
  uint64_t hbm = st["tiers"]["hbm"]["resident_bytes"].get<uint64_t>();
  uint64_t host = st["tiers"]["host"]["resident_bytes"].get<uint64_t>();
  EXPECT_LE(hbm, 16 * MiB);
  EXPECT_EQ(hbm + host + st["tiers"]["nvme"]["resident_bytes"].get<uint64_t>(), 24 * MiB);
  EXPECT_FALSE(body.contains("interposer")) << "no interposer counters were given";
}

// The interposer's counters travel with the snapshot: taken on the owner
// thread (never the socket thread), answered as they were at the snapshot.
TEST_F(ControlServerTest, InterposerCountersAreTakenOnTheOwnerAndAnsweredWithTheStats) {
  stop();
  std::atomic<uint64_t> launches{0};
  std::mutex mu;
  std::vector<std::thread::id> callers;  // under mu
  ControlServer::Options opt;
  opt.interposer_stats = [&] {
    std::lock_guard g(mu);
    callers.push_back(std::this_thread::get_id());
    return json{{"launches_scanned", launches.load()}};
  };
  start(opt);
  const std::thread::id owner = on_owner([] { return std::this_thread::get_id(); });
  launches = 41;
  on_owner([&] { launches = 42; });
  json body;
  for (int i = 0; i < 500; ++i) {
    Reply r = call({{"op", "stats"}});
    ASSERT_TRUE(r.ok()) << r.error;
    body = r.body;
    if (body["interposer"]["launches_scanned"] == 42) break;
    std::this_thread::sleep_for(2ms);
  }
  EXPECT_EQ(body["interposer"]["launches_scanned"], 42) << body.dump();
  EXPECT_TRUE(body["stats"].contains("accesses")) << "the pager's own stats are still there";
  stop();
  std::lock_guard g(mu);
  ASSERT_GE(callers.size(), 2u);
  EXPECT_EQ(callers.front(), std::this_thread::get_id()) << "the constructor's first snapshot";
  for (size_t i = 1; i < callers.size(); ++i) EXPECT_EQ(callers[i], owner) << "call " << i << " was off the owner thread";
}

TEST_F(ControlServerTest, StatsAreAnsweredWhileTheOwnerIsBusy) {
  stats_after(0);  // a snapshot exists
  std::promise<void> inside, release;
  std::thread t([&] {
    on_owner([&] {
      inside.set_value();
      release.get_future().wait();  // the owner is stuck in the engine until the test says
      return 0;
    });
  });
  inside.get_future().wait();
  // If these waited for the owner they would time out: it is blocked.
  Reply r = call({{"op", "stats"}}, 2s);
  Reply c = call({{"op", "config"}}, 2s);
  release.set_value();
  t.join();
  ASSERT_TRUE(r.ok()) << r.error;
  ASSERT_TRUE(c.ok()) << c.error;
  EXPECT_EQ(c.body["config"]["hbm_budget"]["value"], "16M");
  EXPECT_GT(r.body["owner_idle_ms"].get<double>(), 0.0);
}

TEST_F(ControlServerTest, SetAppliesOnTheOwnerAndReportsOldAndNew) {
  Reply r = call({{"op", "set"}, {"set", {"hbm_budget=8M", "prefetch_depth=8", "eviction_policy=clock"}}});
  ASSERT_TRUE(r.ok()) << r.error;
  const json& ch = r.body["changes"];
  ASSERT_EQ(ch.size(), 3u);
  EXPECT_EQ(ch[0], (json{{"knob", "hbm_budget"}, {"old", "16M"}, {"new", "8M"}}));
  EXPECT_EQ(ch[1], (json{{"knob", "prefetch_depth"}, {"old", "4"}, {"new", "8"}}));
  EXPECT_EQ(ch[2], (json{{"knob", "eviction_policy"}, {"old", "lru"}, {"new", "clock"}}));
  Config now = on_owner([&] { return pager_->config(); });
  EXPECT_EQ(now.hbm_budget, 8 * MiB);
  EXPECT_EQ(now.prefetch_depth, 8u);
  EXPECT_EQ(now.eviction_policy, PolicyKind::kClock);
  // The next snapshot shows the new budget.
  Reply c = call({{"op", "config"}});
  EXPECT_EQ(c.body["config"]["hbm_budget"]["value"], "8M");
}

TEST_F(ControlServerTest, ARefusedValueLeavesEverythingAsItWas) {
  struct Case {
    std::vector<std::string> set;
    std::string knob_named;
  };
  const Case cases[] = {
      {{"prefetch_depth=16", "high_watermark=2"}, "high_watermark"},     // second one bad: none applied
      {{"prefetch_depth=16", "low_watermark=0.99"}, "low_watermark"},    // cross-knob rule
      {{"prefetch_depth=16", "hbm_budget=banana"}, "hbm_budget"},        // unparsable
      {{"prefetch_depth=16", "hbm_budget=1T"}, "hbm_budget"},            // more than the device
      {{"prefetch_depth=16", "chunk_size=1M"}, "chunk_size"},            // not live
      {{"prefetch_depth=16", "no_such_knob=1"}, "no_such_knob"},         // unknown
      {{"prefetch_depth=16", "prefetch_depth"}, "KEY=VALUE"},            // not an assignment
  };
  for (const Case& c : cases) {
    Reply r = call({{"op", "set"}, {"set", c.set}});
    EXPECT_EQ(r.code, Errc::kRefused) << c.knob_named;
    EXPECT_NE(r.error.find(c.knob_named), std::string::npos) << r.error;
  }
  Config now = on_owner([&] { return pager_->config(); });
  EXPECT_EQ(now.prefetch_depth, 4u);
  EXPECT_EQ(now.hbm_budget, 16 * MiB);
  EXPECT_EQ(now.high_watermark, 0.95);
}

TEST_F(ControlServerTest, BytesThatAreNotUtf8AreRefusedNotFatal) {
  // The client sends it (replacing what is not UTF-8); the pager refuses the
  // value and quotes it; both sides keep going.
  Reply r = call({{"op", "set"}, {"set", {std::string("hbm_budget=\xff\xfe")}}});
  EXPECT_EQ(r.code, Errc::kRefused) << r.error;
  EXPECT_NE(r.error.find("hbm_budget"), std::string::npos) << r.error;
  EXPECT_TRUE(call({{"op", "stats"}}).ok());
}

TEST_F(ControlServerTest, HintsReachTheNamedContext) {
  on_owner([&] {
    for (uint32_t i = 0; i < 8; ++i) dev_->touch(regions_[1], i, true);
    return 0;
  });
  Reply r = call({{"op", "hint"}, {"context", "session-1"}, {"hint", "park"}});
  ASSERT_TRUE(r.ok()) << r.error;
  Reply ctx = call({{"op", "contexts"}});
  ASSERT_TRUE(ctx.ok()) << ctx.error;
  bool found = false;
  for (const auto& c : ctx.body["contexts"]) {
    if (c["name"] != "session-1") continue;
    found = true;
    EXPECT_TRUE(c["parked"].get<bool>());
  }
  EXPECT_TRUE(found);
  EXPECT_TRUE(on_owner([&] { return pager_->contexts()[1].parked; }));

  EXPECT_EQ(call({{"op", "hint"}, {"context", "session-9"}, {"hint", "park"}}).code, Errc::kNotFound);
  EXPECT_EQ(call({{"op", "hint"}, {"context", "session-1"}, {"hint", "explode"}}).code, Errc::kBadRequest);
  ASSERT_TRUE(call({{"op", "hint"}, {"context", "session-2"}, {"hint", "pin"}}).ok());
  Reply drop = call({{"op", "hint"}, {"context", "session-2"}, {"hint", "drop"}});
  EXPECT_EQ(drop.code, Errc::kBusy) << drop.error;
  Reply park = call({{"op", "hint"}, {"context", "session-2"}, {"hint", "park"}});
  EXPECT_EQ(park.code, Errc::kBusy) << "a pinned context is not parked: " << park.error;
}

// What a hint cannot do is refused with the reason, never answered a bare
// "ok": a second 8 MiB pin under a 16 MiB budget would leave pins 16 of 16
// MiB; a prefetch hint with the hint prefetcher off stages nothing.
TEST_F(ControlServerTest, AHintThatCannotTakeEffectIsRefusedWithTheReason) {
  ASSERT_TRUE(call({{"op", "hint"}, {"context", "session-0"}, {"hint", "pin"}}).ok());
  Reply pin = call({{"op", "hint"}, {"context", "session-1"}, {"hint", "pin"}});
  EXPECT_EQ(pin.code, Errc::kRefused);
  EXPECT_NE(pin.error.find("at most low_watermark (0.85) of hbm_budget (16M), 13.60 MiB"), std::string::npos)
      << pin.error;
  EXPECT_NE(pin.error.find("8.00 MiB pinned already"), std::string::npos) << pin.error;
  EXPECT_FALSE(on_owner([&] { return pager_->contexts()[1].pinned; }));

  // A prefetch with the hint prefetcher off still ends a park, and says that
  // nothing will be staged (it answered a bare "ok").
  ASSERT_TRUE(call({{"op", "hint"}, {"context", "session-1"}, {"hint", "park"}}).ok());
  ASSERT_TRUE(call({{"op", "set"}, {"set", {"prefetchers=sequential"}}}).ok());
  Reply prefetch = call({{"op", "hint"}, {"context", "session-1"}, {"hint", "prefetch"}});
  ASSERT_TRUE(prefetch.ok()) << prefetch.error;
  EXPECT_NE(prefetch.body.value("note", std::string()).find("nothing is staged ahead: the hint prefetcher is off "
                                                            "(prefetchers = sequential"),
            std::string::npos)
      << prefetch.body.dump();
  EXPECT_FALSE(on_owner([&] { return pager_->contexts()[1].parked; }));
  ASSERT_TRUE(call({{"op", "set"}, {"set", {"prefetchers=sequential,hint"}}}).ok());
  Reply staged = call({{"op", "hint"}, {"context", "session-1"}, {"hint", "prefetch"}});
  ASSERT_TRUE(staged.ok()) << staged.error;
  EXPECT_FALSE(staged.body.contains("note")) << staged.body.dump();
}

// The publish hint needs somewhere to publish: refused without a publisher;
// with one, it runs on the owner thread (the publisher drives the pager).
TEST_F(ControlServerTest, PublishIsRefusedWithoutAStoreAndRunsOnTheOwnerWithOne) {
  Reply r = call({{"op", "hint"}, {"context", "session-1"}, {"hint", "publish"}});
  EXPECT_EQ(r.code, Errc::kRefused);
  EXPECT_NE(r.error.find("no token store"), std::string::npos) << r.error;

  std::atomic<bool> on_owner_thread{false};
  std::string asked;
  ControlServer::Options opt;
  opt.publish = [&](Pager& p, std::string_view name) -> json {
    on_owner_thread = std::this_thread::get_id() == owner_.get_id();
    asked = std::string(name);
    EXPECT_EQ(&p, pager_.get());
    return {{"ok", true}, {"bytes", 42}};
  };
  stop();
  start(opt);
  r = call({{"op", "hint"}, {"context", "session-1"}, {"hint", "publish"}});
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.body["bytes"], 42);
  EXPECT_EQ(asked, "session-1");
  EXPECT_TRUE(on_owner_thread.load());
}

TEST_F(ControlServerTest, PipelinedRequestsAreAnsweredInOrder) {
  Exchange ex{server_->socket_path(), {{{"op", "stats"}}, {{"op", "config"}}, {{"op", "contexts"}}}, {}};
  exchange_all(std::span(&ex, 1), 5s);
  ASSERT_EQ(ex.replies.size(), 3u);
  for (const auto& r : ex.replies) ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_TRUE(ex.replies[0].body.contains("stats"));
  EXPECT_TRUE(ex.replies[1].body.contains("config"));
  EXPECT_EQ(ex.replies[2].body["contexts"].size(), 3u);
}

TEST_F(ControlServerTest, ManyClientsAtOnce) {
  std::vector<Endpoint> many(40, Endpoint{getpid(), server_->socket_path()});
  auto replies = call_all(many, {{"op", "stats"}}, 5s);
  for (const auto& r : replies) EXPECT_TRUE(r.ok()) << r.error;
  EXPECT_GE(server_->requests_served(), 40u);
}

TEST_F(ControlServerTest, MalformedRequestsGetAnErrorAndTheConnectionSurvives) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a = unix_address(server_->socket_path());
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  std::string req = "this is not json\n{\"op\":42}\n{\"op\":\"fly\"}\n{\"op\":\"set\",\"set\":\"x\"}\n{\"op\":\"stats\"}\n";
  // Not UTF-8 inside a string: refused as malformed JSON.
  req += "{\"op\":\"hint\",\"context\":\"\xff\xfe\",\"hint\":\"park\"}\n";
  ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  std::string got;
  char buf[65536];
  while (std::count(got.begin(), got.end(), '\n') < 6) {
    ssize_t n = read(fd, buf, sizeof buf);
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<size_t>(n));
  }
  std::vector<json> lines;
  size_t pos = 0;
  for (size_t nl; (nl = got.find('\n', pos)) != std::string::npos; pos = nl + 1)
    lines.push_back(json::parse(got.substr(pos, nl - pos)));
  ASSERT_EQ(lines.size(), 6u);
  for (size_t i : {0u, 1u, 2u, 3u, 5u}) EXPECT_EQ(lines[i]["code"], "bad_request") << lines[i];
  EXPECT_TRUE(lines[4]["ok"].get<bool>());
  // A request that never ends is cut off.
  std::string huge(kMaxRequestBytes + 10, 'x');
  ASSERT_EQ(write(fd, huge.data(), huge.size()), static_cast<ssize_t>(huge.size()));
  got.clear();
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
  EXPECT_NE(got.find("longer than"), std::string::npos) << got;
  close(fd);
}

TEST_F(ControlServerTest, TooManyClientsAreToldSo) {
  stop();
  ControlServer::Options opt;
  opt.max_clients = 2;
  start(opt);
  std::vector<int> held;
  for (int i = 0; i < 2; ++i) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a = unix_address(server_->socket_path());
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    held.push_back(fd);
  }
  // Make sure both are accepted before the third arrives.
  for (int fd : held) {
    std::string q = "{\"op\":\"config\"}\n";
    ASSERT_EQ(write(fd, q.data(), q.size()), static_cast<ssize_t>(q.size()));
    char buf[65536];
    ASSERT_GT(read(fd, buf, sizeof buf), 0);
  }
  Reply r = call({{"op", "stats"}});
  EXPECT_EQ(r.code, Errc::kBusy) << r.error;
  for (int fd : held) close(fd);
}

TEST_F(ControlServerTest, AnOwnerThatNeverComesChangesNothing) {
  stop();
  ControlServer::Options opt;
  opt.owner_timeout = 200ms;
  start(opt);
  stats_after(0);
  pause_service(true);
  Reply r = call({{"op", "set"}, {"set", {"hbm_budget=4M"}}});
  EXPECT_EQ(r.code, Errc::kTimeout) << r.error;
  EXPECT_NE(r.error.find("nothing was changed"), std::string::npos) << r.error;
  pause_service(false);
  on_owner([&] {  // the owner comes round again: the withdrawn request is not there
    server_->service(*pager_);
    return 0;
  });
  EXPECT_EQ(on_owner([&] { return pager_->config().hbm_budget; }), 16 * MiB);
}

// The client gave up (its timeout) before the owner came round: the server's
// own, longer owner timeout must not let the request happen afterwards, when
// the client has already reported a failure.
TEST_F(ControlServerTest, ARequestIsNeverCarriedOutAfterTheClientGaveUp) {
  stop();
  ControlServer::Options opt;
  opt.owner_timeout = 10s;
  start(opt);
  stats_after(0);
  pause_service(true);
  Reply r = control::call(server_->socket_path(), {{"op", "set"}, {"set", {"hbm_budget=4M"}}}, 400ms);
  EXPECT_EQ(r.code, Errc::kTimeout) << r.error;
  EXPECT_NE(r.error.find("nothing was changed"), std::string::npos)
      << "the server's withdrawal, sent before the client's own deadline: " << r.error;
  pause_service(false);
  on_owner([&] {
    server_->service(*pager_);
    return 0;
  });
  EXPECT_EQ(on_owner([&] { return pager_->config().hbm_budget; }), 16 * MiB);
}

// A request read only after its deadline (the process was stopped with the
// request in its socket buffer) is refused at once, whatever it asks.
TEST_F(ControlServerTest, ARequestReadAfterItsDeadlineIsRefused) {
  stats_after(0);
  json late = {{"op", "set"}, {"set", {"hbm_budget=4M"}}, {"deadline_unix_ms", control::unix_ms_now() - 1500}};
  Reply r = call(late);
  EXPECT_EQ(r.code, Errc::kTimeout) << r.error;
  EXPECT_NE(r.error.find("after the client's deadline"), std::string::npos) << r.error;
  on_owner([&] {
    server_->service(*pager_);
    return 0;
  });
  EXPECT_EQ(on_owner([&] { return pager_->config().hbm_budget; }), 16 * MiB);
  r = call({{"op", "set"}, {"set", {"hbm_budget=4M"}}, {"deadline_unix_ms", "soon"}});
  EXPECT_EQ(r.code, Errc::kBadRequest) << r.error;
  // In time: carried out as usual.
  r = call({{"op", "set"}, {"set", {"hbm_budget=4M"}}, {"deadline_unix_ms", control::unix_ms_now() + 30'000}});
  EXPECT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(on_owner([&] { return pager_->config().hbm_budget; }), 4 * MiB);
}

// A socket that takes connections and, while `mute`, never answers (as a
// stopped process's); otherwise answers each request line with a stats reply.
class MutePeer {
 public:
  explicit MutePeer(const std::string& path) {
    lfd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a = unix_address(path);
    ok_ = bind(lfd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && listen(lfd_, 16) == 0;
    thread_ = std::thread([this] { serve(); });
  }
  ~MutePeer() {
    shutdown(lfd_, SHUT_RDWR);
    thread_.join();
    close(lfd_);
    for (int fd : held_) close(fd);
  }
  bool ok() const { return ok_; }
  std::atomic<bool> mute{true};

 private:
  void serve() {
    for (;;) {
      int fd = accept(lfd_, nullptr, nullptr);
      if (fd < 0) return;
      if (mute) {
        held_.push_back(fd);  // read nothing, answer nothing
        continue;
      }
      char buf[4096];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      const std::string reply = "{\"ok\":true,\"stats\":{}}\n";
      if (n > 0) (void)!send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
      close(fd);
    }
  }
  int lfd_ = -1;
  bool ok_ = false;
  std::vector<int> held_;
  std::thread thread_;
};

// kvpager-fs and `kvpager top` ask the same pagers again and again: a pager
// that did not answer (a stopped process) gets only the short retry timeout
// until it answers or the quiet window passes; the others are not held up by
// it. The timeout that applied is in the error text, so nothing here depends
// on how fast the machine is.
TEST_F(ControlServerTest, APagerThatDidNotAnswerGetsTheShortTimeoutUntilItAnswersOrTheWindowPasses) {
  MutePeer peer(dir_.path() + "/silent.sock");
  ASSERT_TRUE(peer.ok()) << std::strerror(errno);
  stats_after(0);
  const Endpoint live{getpid(), server_->socket_path()};
  const Endpoint silent{getpid() + 1, dir_.path() + "/silent.sock"};
  const std::vector<Endpoint> both{live, silent};
  Caller c({.timeout = 500ms, .retry_timeout = 100ms, .quiet_for = 1s});

  auto replies = c.call_all(both, {{"op", "stats"}});
  EXPECT_TRUE(replies[0].ok()) << replies[0].error;
  EXPECT_EQ(replies[1].code, Errc::kTimeout) << replies[1].error;
  EXPECT_TRUE(replies[1].unanswered);
  EXPECT_NE(replies[1].error.find("within 500 ms"), std::string::npos) << replies[1].error;
  EXPECT_TRUE(c.quiet(silent.socket));
  EXPECT_FALSE(c.quiet(live.socket));

  replies = c.call_all(both, {{"op", "stats"}});
  EXPECT_TRUE(replies[0].ok()) << "the live pager keeps its whole timeout: " << replies[0].error;
  EXPECT_EQ(replies[1].code, Errc::kTimeout) << replies[1].error;
  EXPECT_NE(replies[1].error.find("within 100 ms"), std::string::npos) << replies[1].error;

  std::this_thread::sleep_for(1100ms);  // the window has passed: the whole timeout once more
  EXPECT_FALSE(c.quiet(silent.socket));
  Reply r = c.call(silent, {{"op", "stats"}});
  EXPECT_NE(r.error.find("within 500 ms"), std::string::npos) << r.error;
  EXPECT_TRUE(c.quiet(silent.socket));

  // It runs again: its first answer ends the short timeouts.
  peer.mute = false;
  EXPECT_TRUE(c.call(silent, {{"op", "stats"}}).ok());
  EXPECT_FALSE(c.quiet(silent.socket));

  // A pager that answers "timed out" itself (its owner did not take a `set`
  // in time) did answer: that is no reason to cut its next timeouts short.
  pause_service(true);
  r = c.call(live, {{"op", "set"}, {"set", {"hbm_budget=4M"}}});
  EXPECT_EQ(r.code, Errc::kTimeout) << r.error;
  EXPECT_FALSE(r.unanswered) << r.error;
  EXPECT_FALSE(c.quiet(live.socket));
  pause_service(false);
}

TEST_F(ControlServerTest, OneServerPerProcessAndTheSocketGoesWithIt) {
  ControlServer::Options opt;
  opt.runtime_dir = dir_.path() + "/run";
  EXPECT_THROW((ControlServer{opt, *pager_}), ControlError);
  std::string path = server_->socket_path();
  stop();
  EXPECT_FALSE(fs::exists(path));
  EXPECT_EQ(control::call(path, {{"op", "stats"}}, 1s).code, Errc::kGone);
}

TEST_F(ControlServerTest, AForkedChildLeavesTheParentsSocketAlone) {
  pid_t child = fork();
  if (child == 0) {
    server_.reset();  // what the child's exit would do to an inherited server
    _exit(0);
  }
  int st = 0;
  ASSERT_EQ(waitpid(child, &st, 0), child);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  EXPECT_TRUE(fs::exists(server_->socket_path()));
  EXPECT_TRUE(call({{"op", "stats"}}).ok());
}

// The child of a fork in a threaded process: only async-signal-safe calls.
// Connects as `uid` and writes what happened to `out` ("E<errno>" or the reply).
[[noreturn]] void connect_as(uid_t uid, const char* path, int out) {
  if (setgroups(0, nullptr) != 0 || setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0) _exit(3);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    char msg[16] = {'E', static_cast<char>('0' + errno / 10 % 10), static_cast<char>('0' + errno % 10), 0};
    [[maybe_unused]] ssize_t w = write(out, msg, 3);
    _exit(0);
  }
  const char req[] = "{\"op\":\"set\",\"set\":[\"hbm_budget=4M\"]}\n";
  // The server may already have refused and closed: no SIGPIPE, read its answer.
  [[maybe_unused]] ssize_t w = send(fd, req, sizeof req - 1, MSG_NOSIGNAL);
  char buf[1024];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) w = write(out, buf, static_cast<size_t>(n));
  _exit(0);
}

std::string run_as(uid_t uid, const std::string& path) {
  int p[2];
  EXPECT_EQ(pipe(p), 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    connect_as(uid, path.c_str(), p[1]);
  }
  close(p[1]);
  std::string got;
  char buf[1024];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "child status " << st;
  return got;
}

TEST_F(ControlServerTest, PeersOfAnotherUidAreRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to connect as another uid";
  // Layer 1: the 0700 directory keeps other users out.
  std::string got = run_as(65534, server_->socket_path());
  EXPECT_EQ(got, "E" + std::to_string(EACCES)) << got;
  // Layer 2: with the filesystem opened up, SO_PEERCRED still refuses.
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(chmod((dir_.path() + "/run").c_str(), 0755), 0);
  ASSERT_EQ(chmod(server_->socket_path().c_str(), 0666), 0);
  got = run_as(65534, server_->socket_path());
  EXPECT_NE(got.find("\"code\":\"denied\""), std::string::npos) << got;
  EXPECT_NE(got.find("uid 65534"), std::string::npos) << got;
  EXPECT_EQ(on_owner([&] { return pager_->config().hbm_budget; }), 16 * MiB);
  // Root may.
  EXPECT_TRUE(call({{"op", "stats"}}).ok());
}

}  // namespace
}  // namespace kvpager::control
