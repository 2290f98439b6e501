// kvpager-fs mounted for real: the real daemon (KVPAGER_FS_BIN) on a store
// filled by the real CLI (KVPAGER_BIN), used through the kernel with the
// tools a user has: ls (readdir), cat, cp, rm, shell redirection.
//
// Needs /dev/fuse and the right to mount (CI runs as root with /dev/fuse).
// Where either is missing each test skips and says which.
//
// Sizes: the largest round trip is 1 GiB + 12345 B in the default build and
// 64 MiB + 12345 B under the sanitizers (KVPAGER_SANITIZED), where every byte
// costs ~10x; the other contexts are odd sizes around the 2 MiB chunk.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvpager/store/token_store.h"
#include "run_process.h"
#include "temp_dir.h"

extern char** environ;

namespace {

namespace fsys = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using kvpager::testing::ProcessResult;
using kvpager::testing::TempDir;

#ifdef KVPAGER_SANITIZED
constexpr int kSlack = 4;
constexpr uint64_t kLargest = (uint64_t{64} << 20) + 12345;
#else
constexpr int kSlack = 1;
constexpr uint64_t kLargest = (uint64_t{1} << 30) + 12345;
#endif
constexpr uint64_t kMiB = 1 << 20;

std::string show(const ProcessResult& r) {
  return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// The children get a private runtime directory, and no other KVPAGER_*
// variable of ours (kvpager warns about unknown ones).
std::vector<std::string> child_env(const std::string& runtime_dir) {
  return {"-KVPAGER_*", "KVPAGER_RUNTIME_DIR=" + runtime_dir};
}

ProcessResult run(std::vector<std::string> argv, const std::string& runtime_dir, double timeout_s = 120) {
  return kvpager::testing::run_process(argv, child_env(runtime_dir), timeout_s * kSlack);
}

// A deterministic byte pattern, written to a file in 8 MiB blocks.
void write_pattern(const std::string& path, uint64_t size, uint64_t seed) {
  std::ofstream out(path, std::ios::binary);
  std::vector<uint64_t> block(1 << 20);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (uint64_t done = 0; done < size;) {
    for (auto& w : block) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      w = x;
    }
    const uint64_t n = std::min<uint64_t>(size - done, block.size() * 8);
    out.write(reinterpret_cast<const char*>(block.data()), static_cast<std::streamsize>(n));
    done += n;
  }
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Byte-exact comparison of two files, streamed (1 GiB files do not fit a test's memory budget twice).
::testing::AssertionResult same_bytes(const std::string& a, const std::string& b) {
  int fa = open(a.c_str(), O_RDONLY), fb = open(b.c_str(), O_RDONLY);
  if (fa < 0 || fb < 0) {
    if (fa >= 0) close(fa);
    if (fb >= 0) close(fb);
    return ::testing::AssertionFailure() << "cannot open " << (fa < 0 ? a : b) << ": " << std::strerror(errno);
  }
  std::vector<char> ba(8 * kMiB), bb(8 * kMiB);
  uint64_t off = 0;
  for (;;) {
    ssize_t na = 0, nb = 0;
    while (na < static_cast<ssize_t>(ba.size())) {
      ssize_t r = read(fa, ba.data() + na, ba.size() - static_cast<size_t>(na));
      if (r <= 0) break;
      na += r;
    }
    while (nb < static_cast<ssize_t>(bb.size())) {
      ssize_t r = read(fb, bb.data() + nb, bb.size() - static_cast<size_t>(nb));
      if (r <= 0) break;
      nb += r;
    }
    if (na != nb || std::memcmp(ba.data(), bb.data(), static_cast<size_t>(na)) != 0) {
      close(fa);
      close(fb);
      return ::testing::AssertionFailure() << a << " and " << b << " differ in the 8 MiB block at " << off;
    }
    if (na == 0) break;
    off += static_cast<uint64_t>(na);
  }
  close(fa);
  close(fb);
  return ::testing::AssertionSuccess();
}

std::set<std::string> list(const std::string& dir) {
  std::set<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.insert(n);
  }
  closedir(d);
  return out;
}

// Mounts at dir now (2 or more: stacked).
int mount_count(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string x[5];
    for (auto& s : x) f >> s;
    if (x[4] == dir) ++n;
  }
  return n;
}
bool is_mounted(const std::string& dir) { return mount_count(dir) > 0; }

// Waits for cond, up to `limit` (stretched under the sanitizers).
template <typename F>
bool eventually(F cond, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit * kSlack;
  while (!cond()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// A background process with the test's environment rules; killed on scope exit.
class Child {
 public:
  Child(std::vector<std::string> argv, const std::string& runtime_dir, const std::string& log) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e)
      if (!std::string_view(*e).starts_with("KVPAGER_")) env.emplace_back(*e);
    env.push_back("KVPAGER_RUNTIME_DIR=" + runtime_dir);
    std::vector<char*> args, envp;
    for (auto& s : argv) args.push_back(s.data());
    args.push_back(nullptr);
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      int null = open("/dev/null", O_RDONLY);
      dup2(null, 0);
      execve(args[0], args.data(), envp.data());
      _exit(127);
    }
  }
  ~Child() { kill_now(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  pid_t pid() const { return pid_; }
  // The exit status if it ended (-2: still running).
  int poll() {
    if (pid_ <= 0) return status_;
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return status_;
    }
    return -2;
  }
  int wait_exit(std::chrono::milliseconds limit) {
    eventually([&] { return poll() != -2; }, limit);
    return poll();
  }
  void kill_now() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

class FsMount : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/dev/fuse", R_OK | W_OK) != 0)
      GTEST_SKIP() << "/dev/fuse is absent or not usable here (" << std::strerror(errno)
                   << "): kvpager-fs cannot be mounted";
    ASSERT_FALSE(tmp_.path().empty());
    store_ = tmp_.path() + "/store";
    mnt_ = tmp_.path() + "/mnt";
    runtime_ = tmp_.path() + "/run";
    fsys::create_directories(mnt_);
    fsys::create_directories(runtime_);
  }
  void TearDown() override {
    unmount();
    demos_.clear();
    // Whatever else a failed test left mounted there (background daemons end with their mount).
    for (int i = 0; i < 4 && !mnt_.empty() && is_mounted(mnt_); ++i)
      kvpager::testing::run_process({"/bin/fusermount3", "-u", "-z", mnt_}, {}, 20);
  }

  ProcessResult kvpager(std::vector<std::string> args, double timeout_s = 120) {
    args.insert(args.begin(), KVPAGER_BIN);
    return run(args, runtime_, timeout_s);
  }
  void put(const std::string& file, const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> a{"store", "put", file, "--context", name, "--store", store_};
    a.insert(a.end(), extra.begin(), extra.end());
    ProcessResult r = kvpager(a);
    ASSERT_EQ(r.exit_code, 0) << show(r);
  }
  json store_ls() {
    ProcessResult r = kvpager({"store", "ls", "--json", "--store", store_});
    EXPECT_EQ(r.exit_code, 0) << show(r);
    return json::parse(r.out, nullptr, false);
  }
  std::string path(const std::string& p) const { return mnt_ + p; }

  // Starts kvpager-fs in the foreground and waits for the mount. Skips the
  // test, with kvpager-fs's own words, if mounting is not permitted here.
  void mount(std::vector<std::string> extra = {}) {
    std::vector<std::string> a{KVPAGER_FS_BIN, store_, mnt_, "-f"};
    a.insert(a.end(), extra.begin(), extra.end());
    fs_log_ = tmp_.path() + "/fs-" + std::to_string(++mounts_) + ".log";
    daemon_ = std::make_unique<Child>(a, runtime_, fs_log_);
    const bool up = eventually([&] { return is_mounted(mnt_) || daemon_->poll() != -2; }, 10s);
    if (!up || !is_mounted(mnt_)) {
      const int status = daemon_->poll();
      const std::string log = slurp(fs_log_);
      daemon_.reset();
      // Exit 1 with "cannot mount": the kernel refused (no FUSE here, or no
      // right to mount). Anything else is a failure of kvpager-fs.
      if (status == 1 && log.find("cannot mount") != std::string::npos)
        GTEST_SKIP() << "mounting is not permitted here: " << log;
      FAIL() << "kvpager-fs did not mount (exit " << status << "): " << log;
    }
  }
  void unmount() {
    if (!daemon_) return;
    if (is_mounted(mnt_)) {
      ProcessResult r = kvpager::testing::run_process({"/bin/fusermount3", "-u", "-z", mnt_}, {}, 20);
      if (r.exit_code != 0) kill(daemon_->pid(), SIGTERM);
    }
    EXPECT_EQ(daemon_->wait_exit(10s), 0) << slurp(fs_log_);
    daemon_.reset();
  }

  // A `kvpager demo --serve` on a small simulated card, serving in runtime_.
  // Its NVMe tier (where it spills and publishes) is store_dir, by default a
  // store of its own.
  pid_t start_demo(std::string store_dir = {}) {
    const std::string log = tmp_.path() + "/demo-" + std::to_string(demos_.size()) + ".log";
    if (store_dir.empty()) store_dir = tmp_.path() + "/demo-store";
    demos_.push_back(std::make_unique<Child>(
        std::vector<std::string>{KVPAGER_BIN, "demo", "--serve", "--sessions", "8", "--layers", "2",
                                 "--sim-hbm-capacity", "16M", "--hbm-budget", "8M", "--chunk-size", "256K",
                                 "--store-dir", store_dir, "--pace", "20"},
        runtime_, log));
    const pid_t pid = demos_.back()->pid();
    const std::string sock = runtime_ + "/" + std::to_string(pid) + ".sock";
    EXPECT_TRUE(eventually([&] { return fsys::exists(sock); }, 20s)) << slurp(log);
    // The socket answers during the prefill; tests name its sessions.
    EXPECT_TRUE(eventually(
        [&] {
          json j = json::parse(kvpager({"status", "--pid", std::to_string(pid), "--json"}).out, nullptr, false);
          return j.is_object() && j["stats"]["contexts"] == 8;
        },
        20s))
        << slurp(log);
    return pid;
  }

  TempDir tmp_;
  std::string store_, mnt_, runtime_, fs_log_;
  std::unique_ptr<Child> daemon_;
  std::vector<std::unique_ptr<Child>> demos_;
  int mounts_ = 0;
};

int errno_of(int rc) { return rc == 0 ? 0 : errno; }

// ---------------------------------------------------------------- round trips

TEST_F(FsMount, LsCatCpRmAndImportRoundTripByteExactAtOddSizes) {
  const std::vector<uint64_t> sizes{0, 1, 4095, 2 * kMiB - 1, 2 * kMiB, 2 * kMiB + 1, 7 * kMiB + 3, kLargest};
  for (size_t i = 0; i < sizes.size(); ++i) {
    write_pattern(tmp_.path() + "/in-" + std::to_string(i), sizes[i], i + 1);
    put(tmp_.path() + "/in-" + std::to_string(i), "ctx-" + std::to_string(i));
  }
  mount();
  std::set<std::string> names;
  for (size_t i = 0; i < sizes.size(); ++i) names.insert("ctx-" + std::to_string(i));
  EXPECT_EQ(list(path("/contexts")), names);
  EXPECT_EQ(list(path("/")), (std::set<std::string>{"contexts", "import", "processes", "control", "stats"}));

  for (size_t i = 0; i < sizes.size(); ++i) {
    SCOPED_TRACE("size " + std::to_string(sizes[i]));
    const std::string in = tmp_.path() + "/in-" + std::to_string(i);
    const std::string ctx = path("/contexts/ctx-" + std::to_string(i));
    EXPECT_EQ(list(ctx), (std::set<std::string>{"kv", "info", "chunks"}));
    struct stat st {};
    ASSERT_EQ(stat((ctx + "/kv").c_str(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), sizes[i]);
    EXPECT_EQ(st.st_mode & 07777, 0400u);
    EXPECT_EQ(st.st_uid, getuid());

    json before = json::parse(slurp(ctx + "/info"), nullptr, false);
    ASSERT_TRUE(before.is_object());
    if (sizes[i] > 0) {  // (an empty context has nothing to verify)
      // Nothing read yet: the note must not claim a verification that has not happened.
      EXPECT_EQ(before["checksum"]["state"], "unverified");
      EXPECT_NE(before["checksum"]["note"].get<std::string>().find("not every chunk has been read"), std::string::npos)
          << before.dump();
    }

    // cp exports it, byte for byte.
    const std::string out = tmp_.path() + "/out";
    ProcessResult r = run({"/bin/cp", ctx + "/kv", out}, runtime_);
    ASSERT_EQ(r.exit_code, 0) << show(r);
    EXPECT_TRUE(same_bytes(in, out));

    json info = json::parse(slurp(ctx + "/info"), nullptr, false);
    ASSERT_TRUE(info.is_object()) << slurp(ctx + "/info");
    EXPECT_EQ(info["size_bytes"], sizes[i]);
    EXPECT_EQ(info["tier_bytes"]["nvme"], sizes[i]);
    EXPECT_EQ(info["owner_uid"], getuid());
    EXPECT_EQ(info["checksum"]["state"], "verified");  // every chunk was just read and checked
    EXPECT_NE(info["checksum"]["note"].get<std::string>().find("every chunk was read"), std::string::npos);

    const auto chunks = list(ctx + "/chunks");  // generated as readdir goes: 513 for the largest
    EXPECT_EQ(chunks.size(), info["chunks"].get<size_t>());
    EXPECT_EQ(chunks.size(), (sizes[i] + 2 * kMiB - 1) / (2 * kMiB));
    if (sizes[i] <= 8 * kMiB) {
      // The chunks, concatenated, are kv.
      std::string joined;
      for (size_t c = 0; c < chunks.size(); ++c) joined += slurp(ctx + "/chunks/" + std::to_string(c));
      EXPECT_EQ(joined, slurp(in));
      // cat through a pipe, as a user would.
      r = run({"/bin/sh", "-c", "cat '" + ctx + "/kv' > '" + out + ".cat'"}, runtime_);
      ASSERT_EQ(r.exit_code, 0) << show(r);
      EXPECT_TRUE(same_bytes(in, out + ".cat"));
    }

    // Import the exported bytes under a new name: cp into /import.
    const std::string copy = "copy-" + std::to_string(i);
    r = run({"/bin/cp", out, path("/import/" + copy)}, runtime_);
    ASSERT_EQ(r.exit_code, 0) << show(r);
    // Published before close() returned -- except an empty file, which is
    // published when the kernel releases it, just after (docs/fs.md).
    if (sizes[i] == 0) {
      EXPECT_TRUE(eventually([&] { return fsys::exists(path("/contexts/" + copy + "/kv")); }, 1s));
    }
    EXPECT_TRUE(same_bytes(in, path("/contexts/" + copy + "/kv")));
    EXPECT_TRUE(list(path("/import")).empty());
    fsys::remove(out);
    fsys::remove(out + ".cat");

    // rm -r drops it: from the mount and from the store.
    r = run({"/bin/rm", "-r", path("/contexts/" + copy)}, runtime_);
    ASSERT_EQ(r.exit_code, 0) << show(r);
    EXPECT_FALSE(fsys::exists(path("/contexts/" + copy)));
    for (const auto& c : store_ls()) EXPECT_NE(c["name"], copy);
    if (sizes[i] > 8 * kMiB) fsys::remove(in);
  }
}

TEST_F(FsMount, AnExportCarriesItsSettingsAndImportsVerified) {
  write_pattern(tmp_.path() + "/in", 5 * kMiB + 77, 9);
  put(tmp_.path() + "/in", "orig", {"--tokens", "1234", "--ttl", "2h", "--pin"});
  ProcessResult r = kvpager({"store", "get", "orig", tmp_.path() + "/orig.kvctx", "--export", "--store", store_});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  mount();
  // The file name (less .kvctx) names the new context; the settings come along.
  r = run({"/bin/cp", tmp_.path() + "/orig.kvctx", path("/import/moved.kvctx")}, runtime_);
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/moved/kv")));
  json info = json::parse(slurp(path("/contexts/moved/info")));
  EXPECT_EQ(info["token_count"], 1234);
  EXPECT_EQ(info["ttl_ns"], uint64_t{7200} * 1'000'000'000);
  EXPECT_EQ(info["pinned"], true);
  // Shell redirection works too (the shell closes a duplicate before cat writes).
  r = run({"/bin/sh", "-c", "cat '" + tmp_.path() + "/orig.kvctx' > '" + path("/import/piped.kvctx") + "'"}, runtime_);
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/piped/kv")));
}

// ---------------------------------------------------------------- refusals

// Every object file of the store, with its size: "nothing changed" means this is the same.
std::map<std::string, uintmax_t> store_files(const std::string& store) {
  std::map<std::string, uintmax_t> out;
  for (const auto& e : fsys::recursive_directory_iterator(store)) {
    const std::string rel = e.path().string().substr(store.size());
    if (rel.starts_with("/writers")) continue;  // live writers' scratch (the daemon's lock)
    if (e.is_regular_file()) out[rel] = e.file_size();
  }
  return out;
}

TEST_F(FsMount, EveryRefusedOperationReturnsItsErrnoAndChangesNothing) {
  write_pattern(tmp_.path() + "/in", 3 * kMiB + 5, 3);
  put(tmp_.path() + "/in", "a");
  put(tmp_.path() + "/in", "b");
  mount();
  const auto before = store_files(store_);
  const std::string a = path("/contexts/a");
  struct Case {
    const char* what;
    std::function<int()> op;
    int want;
  };
  const std::vector<Case> cases = {
      {"mkdir /contexts/x", [&] { return errno_of(mkdir(path("/contexts/x").c_str(), 0755)); }, EPERM},
      {"mkdir /x", [&] { return errno_of(mkdir(path("/x").c_str(), 0755)); }, EPERM},
      {"mkdir in a context", [&] { return errno_of(mkdir((a + "/x").c_str(), 0755)); }, EPERM},
      {"create /contexts/new", [&] { return errno_of(open(path("/contexts/new").c_str(), O_CREAT | O_WRONLY, 0644)); }, EPERM},
      {"create in a context", [&] { return errno_of(open((a + "/new").c_str(), O_CREAT | O_WRONLY, 0644)); }, EPERM},
      {"create /stats2", [&] { return errno_of(open(path("/stats2").c_str(), O_CREAT | O_WRONLY, 0644)); }, EPERM},
      {"write kv", [&] { return errno_of(open((a + "/kv").c_str(), O_WRONLY)); }, EROFS},
      {"write info", [&] { return errno_of(open((a + "/info").c_str(), O_RDWR)); }, EROFS},
      {"write a chunk", [&] { return errno_of(open((a + "/chunks/0").c_str(), O_WRONLY)); }, EROFS},
      {"write /stats", [&] { return errno_of(open(path("/stats").c_str(), O_WRONLY)); }, EROFS},
      {"truncate kv", [&] { return errno_of(truncate((a + "/kv").c_str(), 0)); }, EROFS},
      {"chmod kv", [&] { return errno_of(chmod((a + "/kv").c_str(), 0644)); }, EPERM},
      {"chown a context", [&] { return errno_of(chown(a.c_str(), 1234, 1234)); }, EPERM},
      {"utimes kv", [&] { return errno_of(utimes((a + "/kv").c_str(), nullptr)); }, EPERM},
      {"unlink info", [&] { return errno_of(unlink((a + "/info").c_str())); }, EPERM},
      {"unlink a chunk", [&] { return errno_of(unlink((a + "/chunks/1").c_str())); }, EPERM},
      {"rmdir chunks", [&] { return errno_of(rmdir((a + "/chunks").c_str())); }, EPERM},
      {"unlink /stats", [&] { return errno_of(unlink(path("/stats").c_str())); }, EPERM},
      {"rmdir /contexts", [&] { return errno_of(rmdir(path("/contexts").c_str())); }, EPERM},
      {"rename a context", [&] { return errno_of(rename(a.c_str(), path("/contexts/c").c_str())); }, EPERM},
      {"rename kv", [&] { return errno_of(rename((a + "/kv").c_str(), (a + "/kv2").c_str())); }, EPERM},
      {"link kv", [&] { return errno_of(link((a + "/kv").c_str(), path("/contexts/b/kv2").c_str())); }, EPERM},
      {"symlink in /contexts", [&] { return errno_of(symlink("/etc/passwd", path("/contexts/p").c_str())); }, EPERM},
      {"import a hidden name", [&] { return errno_of(open(path("/import/.x.tmp").c_str(), O_CREAT | O_WRONLY, 0644)); }, EINVAL},
      {"import a bare suffix", [&] { return errno_of(open(path("/import/.kvctx").c_str(), O_CREAT | O_WRONLY, 0644)); }, EINVAL},
      {"import an existing name", [&] { return errno_of(open(path("/import/a").c_str(), O_CREAT | O_WRONLY, 0644)); }, EEXIST},
      {"import an existing name (.kvctx)", [&] { return errno_of(open(path("/import/b.kvctx").c_str(), O_CREAT | O_WRONLY, 0644)); }, EEXIST},
      {"an over-long name", [&] { return errno_of(open(path("/import/" + std::string(256, 'n')).c_str(), O_CREAT | O_WRONLY, 0644)); }, ENAMETOOLONG},
      {"a path out of the tree", [&] { return errno_of(open(path("/contexts/a/../../../etc/passwd").c_str(), O_RDONLY)); }, ENOENT},
      {"a knob fixed at start", [&] { return errno_of(open(path("/control/chunk_size").c_str(), O_WRONLY)); }, EPERM},
      {"an unknown knob", [&] { return errno_of(open(path("/control/no_such_knob").c_str(), O_WRONLY)); }, ENOENT},
      {"a pid that serves nothing", [&] { return errno_of(open(path("/processes/2147483647/stats").c_str(), O_RDONLY)); }, ENOENT},
  };
  for (const Case& c : cases) {
    errno = 0;
    int got = c.op();
    EXPECT_EQ(got, c.want) << c.what << ": got " << std::strerror(got) << ", want " << std::strerror(c.want);
  }
  // A live knob with a bad value, and with no pager to take it.
  int fd = open(path("/control/prefetch_depth").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_EQ(write(fd, "lots\n", 5), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(write(fd, "4\n", 2), -1);
  EXPECT_EQ(errno, ENXIO);
  close(fd);
  EXPECT_EQ(store_files(store_), before);
  EXPECT_EQ(list(path("/contexts")), (std::set<std::string>{"a", "b"}));
  EXPECT_TRUE(list(path("/import")).empty());
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", a + "/kv"));
}

// Writes `bytes` into /import/<name> with write(2) calls of `piece` bytes;
// returns the errno of the first write or of close (0: imported).
int import_bytes(const std::string& file, const std::string& bytes, size_t piece = 128 * 1024) {
  int fd = open(file.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (fd < 0) return errno;
  for (size_t off = 0; off < bytes.size(); off += piece) {
    const size_t n = std::min(piece, bytes.size() - off);
    if (write(fd, bytes.data() + off, n) != static_cast<ssize_t>(n)) {
      int e = errno;
      close(fd);
      return e;
    }
  }
  return close(fd) == 0 ? 0 : errno;
}

TEST_F(FsMount, AMalformedOrTruncatedImportIsRefusedAndLeavesNothing) {
  write_pattern(tmp_.path() + "/in", 4 * kMiB + 9, 4);
  put(tmp_.path() + "/in", "src");
  ProcessResult r = kvpager({"store", "get", "src", tmp_.path() + "/src.kvctx", "--export", "--store", store_});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  const std::string good = slurp(tmp_.path() + "/src.kvctx");
  mount();
  const auto before = store_files(store_);
  std::string flipped = good;
  flipped[good.size() - 3 * kMiB] ^= 0x01;  // a payload byte of chunk 0
  std::string header_flip = good;
  header_flip[40] ^= 0x01;  // created_ns, covered by the header checksum
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"truncated in the payload", good.substr(0, good.size() - 1)},
      {"truncated in the header", good.substr(0, 100)},
      {"only the start of the magic", good.substr(0, 5)},
      {"a byte after the end", good + "x"},
      {"a flipped payload byte", flipped},
      {"a flipped header byte", header_flip},
  };
  int n = 0;
  for (const auto& [what, bytes] : bad) {
    const std::string name = "bad" + std::to_string(n++);
    EXPECT_EQ(import_bytes(path("/import/" + name + ".kvctx"), bytes), EINVAL) << what;
    EXPECT_FALSE(fsys::exists(path("/contexts/" + name))) << what;
    EXPECT_TRUE(list(path("/import")).empty()) << what;
  }
  // A rewrite of bytes already received is refused too.
  int fd = open(path("/import/again").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "abcd", 4, 0), 4);
  EXPECT_EQ(pwrite(fd, "ab", 2, 1), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(close(fd), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_FALSE(fsys::exists(path("/contexts/again")));
  // Nothing of any of them reached the store.
  EXPECT_TRUE(eventually([&] { return store_files(store_) == before; }, 2s));
  EXPECT_EQ(list(path("/contexts")), (std::set<std::string>{"src"}));
  // The same bytes, whole, import fine.
  EXPECT_EQ(import_bytes(path("/import/fine.kvctx"), good, 100000), 0);
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/fine/kv")));
}

// A writer that dies with the import still open -- killed (Ctrl-C on cp,
// kill -9) or exiting with a failure status without closing it -- leaves
// nothing behind: raw bytes carry no length, so publishing what arrived would
// publish a truncated context as if it were whole. A writer that exits
// successfully without closing (cat > file, a shell redirection) publishes.
TEST_F(FsMount, AnImportWhoseWriterDiesBeforeClosingItIsNotPublished) {
  fsys::create_directories(store_);  // an empty directory becomes the store
  mount();
  const auto before = store_files(store_);
  write_pattern(tmp_.path() + "/in", 3 * kMiB + 5, 7);
  const std::string data = slurp(tmp_.path() + "/in");
  enum class End { kKilled, kFailed, kExitsOk, kClosesThenKilled };
  // The child writes all of `data` (or half when it dies) and ends as told.
  auto writer = [&](const std::string& name, End end) {
    const std::string file = path("/import/" + name);
    const size_t n = end == End::kKilled || end == End::kFailed ? data.size() / 2 : data.size();
    const pid_t pid = fork();
    if (pid == 0) {
      int fd = open(file.c_str(), O_CREAT | O_WRONLY, 0644);
      if (fd < 0) _exit(100);
      for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, data.data() + off, std::min<size_t>(n - off, 1 << 20));
        if (w <= 0) _exit(101);
        off += static_cast<size_t>(w);
      }
      if (end == End::kClosesThenKilled && close(fd) != 0) _exit(102);
      if (end == End::kKilled || end == End::kClosesThenKilled) raise(SIGKILL);
      _exit(end == End::kFailed ? 3 : 0);  // the kernel closes what is still open
    }
    int status = 0;
    EXPECT_EQ(waitpid(pid, &status, 0), pid);
    return status;
  };
  int st = writer("killed", End::kKilled);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << st;
  st = writer("failed", End::kFailed);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 3) << st;
  for (const char* name : {"killed", "failed"}) {
    EXPECT_FALSE(fsys::exists(path(std::string("/contexts/") + name))) << name;
  }
  EXPECT_TRUE(eventually([&] { return list(path("/import")).empty(); }, 2s)) << "the half-written files are gone";
  EXPECT_TRUE(eventually([&] { return store_files(store_) == before; }, 2s)) << "and nothing of them is in the store";
  const std::string log = slurp(fs_log_);
  EXPECT_NE(log.find("import of 'killed' refused: its writer (pid"), std::string::npos) << log;
  EXPECT_NE(log.find("was killed by signal 9 with the file open"), std::string::npos) << log;
  EXPECT_NE(log.find("exited with status 3 with the file open"), std::string::npos) << log;

  st = writer("exits-ok", End::kExitsOk);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  st = writer("closed-first", End::kClosesThenKilled);
  EXPECT_TRUE(WIFSIGNALED(st)) << st;
  for (const char* name : {"exits-ok", "closed-first"}) {
    EXPECT_TRUE(eventually([&] { return fsys::exists(path(std::string("/contexts/") + name + "/kv")); }, 2s)) << name;
    EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path(std::string("/contexts/") + name + "/kv"))) << name;
  }
}

// Two ordinary writers the dying-writer check must leave alone. (1) One that
// starts another program with the import open O_CLOEXEC: execve closes it and
// waits for the flush, while /proc/<tid>/stat of a task in exec blocks -- a
// daemon that read it inline deadlocked with the writer. (2) A shell whose
// failing child inherited the descriptor before any data was written:
// `exec 3>f; grep -q no /dev/null; cat x >&3` publishes.
TEST_F(FsMount, AWriterThatStartsAProgramOrHasAFailingChildStillImports) {
  fsys::create_directories(store_);
  mount();
  write_pattern(tmp_.path() + "/in", 1 * kMiB + 3, 5);
  const std::string data = slurp(tmp_.path() + "/in");
  const std::string file = path("/import/spawner");
  const pid_t pid = fork();
  if (pid == 0) {
    int fd = open(file.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) _exit(100);
    pid_t child = 0;
    char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
    if (posix_spawn(&child, "/bin/true", nullptr, nullptr, argv, environ) != 0) _exit(101);
    int st = 0;
    if (waitpid(child, &st, 0) != child) _exit(102);
    _exit(close(fd) == 0 ? 0 : 103);
  }
  int status = -1;
  const bool ended = eventually([&] { return waitpid(pid, &status, WNOHANG) == pid; }, 20s);
  if (!ended) {
    kill(daemon_->pid(), SIGKILL);  // frees the writer stuck in exec
    waitpid(pid, &status, 0);
    FAIL() << "the writer's exec and the daemon deadlocked";
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/spawner/kv")));

  ProcessResult r = run({"/bin/bash", "-c",
                         "exec 3>" + path("/import/shell") + "; grep -q nomatch /dev/null; cat " + tmp_.path() +
                             "/in >&3; exec 3>&-"},
                        runtime_);
  EXPECT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/shell/kv"))) << slurp(fs_log_);
}

// ---------------------------------------------------------------- live pagers

// A context a live pager publishes (kvpager hint publish) is in the mount
// within a second, its info comes from the live owner, `rm` is refused while
// the owner has it pinned, and it outlives the pager.
TEST_F(FsMount, AContextALivePagerPublishesAppearsAndRemovalIsRefusedWhilePinned) {
  const pid_t demo = start_demo(store_);  // spills and publishes into the mounted store
  const std::string pid = std::to_string(demo);
  mount();
  struct stat st {};
  EXPECT_NE(stat(path("/contexts/session-1").c_str(), &st), 0) << "a pager's private spills are not contexts";
  ProcessResult r = kvpager({"hint", "--pid", pid, "park", "session-1"});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  const auto t0 = Clock::now();
  r = kvpager({"hint", "--pid", pid, "publish", "session-1"});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_NE(r.out.find("published session-1"), std::string::npos) << show(r);
  EXPECT_TRUE(eventually([&] { return list(path("/contexts")).count("session-1") == 1; }, 1000ms));
  EXPECT_LT(Clock::now() - t0, 1000ms * kSlack) << "published contexts appear within a second";

  ASSERT_EQ(stat(path("/contexts/session-1/kv").c_str(), &st), 0);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  EXPECT_EQ(size, 2u * 2 * kMiB) << "two layers of 2 MiB (32 MiB of KV over 8 sessions)";
  r = kvpager({"hint", "--pid", pid, "pin", "session-1"});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  json info = json::parse(slurp(path("/contexts/session-1/info")), nullptr, false);
  ASSERT_TRUE(info.is_object());
  EXPECT_EQ(info["owner_pid"], demo) << info.dump(2);
  EXPECT_EQ(info["tier_source"], "pid " + pid) << info.dump(2);
  EXPECT_TRUE(info["hits"].is_number()) << info.dump(2);
  EXPECT_EQ(info["live"]["pinned"], true) << info.dump(2);
  uint64_t tiers = 0;
  for (const auto& [tier, bytes] : info["tier_bytes"].items()) tiers += bytes.get<uint64_t>();
  EXPECT_EQ(tiers, size) << "the live owner accounts for every byte: " << info.dump(2);

  // What the mount serves is the publication, byte for byte.
  r = kvpager({"store", "get", "session-1", tmp_.path() + "/got", "--store", store_});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(same_bytes(tmp_.path() + "/got", path("/contexts/session-1/kv")));

  const auto before = store_ls();
  EXPECT_EQ(errno_of(unlink(path("/contexts/session-1/kv").c_str())), EBUSY);
  EXPECT_EQ(errno_of(rmdir(path("/contexts/session-1").c_str())), EBUSY);
  r = run({"/bin/rm", "-r", path("/contexts/session-1")}, runtime_);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("busy"), std::string::npos) << show(r);
  EXPECT_EQ(store_ls(), before) << "a refused rm changes nothing";
  EXPECT_TRUE(same_bytes(tmp_.path() + "/got", path("/contexts/session-1/kv")));

  // The publication outlives its pager: then the store is the only tier.
  demos_.front()->kill_now();
  EXPECT_TRUE(eventually([&] {
    json i = json::parse(slurp(path("/contexts/session-1/info")), nullptr, false);
    return i.is_object() && i["live"].is_null();
  }, 2000ms));
  EXPECT_TRUE(same_bytes(tmp_.path() + "/got", path("/contexts/session-1/kv")));
  r = run({"/bin/rm", "-r", path("/contexts/session-1")}, runtime_);
  EXPECT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(store_ls().empty());
}

TEST_F(FsMount, AWriteToControlReachesALiveDemoAndABadValueChangesNothing) {
  const pid_t one = start_demo(), two = start_demo();
  fsys::create_directories(store_);  // no contexts: an empty directory becomes the store
  mount();
  const std::string p1 = std::to_string(one), p2 = std::to_string(two);
  EXPECT_TRUE(eventually([&] { return list(path("/processes")) == std::set<std::string>{p1, p2}; }, 5s));
  auto depth_of = [&](pid_t pid) {
    // Straight from the pager's control socket, not through the mount.
    ProcessResult r = kvpager({"status", "--pid", std::to_string(pid), "--json"});
    json j = json::parse(r.out, nullptr, false);
    return j.is_object() && j.contains("config") ? j["config"]["prefetch_depth"]["value"].get<std::string>() : r.out;
  };
  auto write_file = [](const std::string& file, const std::string& text) {
    int fd = open(file.c_str(), O_WRONLY | O_TRUNC);
    if (fd < 0) return errno;
    int e = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) ? 0 : errno;
    close(fd);
    return e;
  };
  EXPECT_EQ(write_file(path("/control/prefetch_depth"), "7\n"), 0);
  EXPECT_EQ(depth_of(one), "7");
  EXPECT_EQ(depth_of(two), "7");
  EXPECT_EQ(slurp(path("/control/prefetch_depth")), "7\n");
  // One pager only.
  EXPECT_EQ(write_file(path("/processes/" + p1 + "/control/prefetch_depth"), "3"), 0);
  EXPECT_EQ(depth_of(one), "3");
  EXPECT_EQ(depth_of(two), "7");
  EXPECT_EQ(slurp(path("/processes/" + p2 + "/control/prefetch_depth")), "7\n");
  const std::string both = slurp(path("/control/prefetch_depth"));
  EXPECT_NE(both.find(p1 + " 3\n"), std::string::npos) << both;
  EXPECT_NE(both.find(p2 + " 7\n"), std::string::npos) << both;
  // Refused values change no pager.
  EXPECT_EQ(write_file(path("/control/prefetch_depth"), "0"), EINVAL);  // below 1..256
  EXPECT_EQ(write_file(path("/control/low_watermark"), "0.99"), EINVAL);  // above high_watermark: the pager refuses
  EXPECT_EQ(depth_of(one), "3");
  EXPECT_EQ(depth_of(two), "7");
  // stats and config are the pagers' own JSON.
  json stats = json::parse(slurp(path("/processes/" + p1 + "/stats")), nullptr, false);
  ASSERT_TRUE(stats.is_object());
  EXPECT_EQ(stats["pid"], one);
  EXPECT_TRUE(stats["stats"].contains("tiers"));
  json config = json::parse(slurp(path("/processes/" + p2 + "/config")), nullptr, false);
  EXPECT_EQ(config["config"]["prefetch_depth"]["value"], "7");
  // A pager that exits leaves /processes.
  demos_.front()->kill_now();
  EXPECT_TRUE(eventually([&] { return list(path("/processes")) == std::set<std::string>{p2}; }, 5s));
}

// ---------------------------------------------------------------- /stats

// A small parser of the Prometheus text exposition format (0.0.4): what
// the format requires, checked line by line.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
struct Exposition {
  std::map<std::string, std::string> types;
  std::vector<Sample> samples;
  std::string error;  // empty: it parsed
  const Sample* find(const std::string& name, const std::map<std::string, std::string>& labels = {}) const {
    for (const Sample& s : samples) {
      if (s.name != name) continue;
      bool match = true;
      for (const auto& [k, v] : labels) match = match && s.labels.count(k) && s.labels.at(k) == v;
      if (match) return &s;
    }
    return nullptr;
  }
};

Exposition parse_prometheus(const std::string& text) {
  Exposition e;
  static const std::regex name_re("[a-zA-Z_:][a-zA-Z0-9_:]*");
  static const std::regex label_re("[a-zA-Z_][a-zA-Z0-9_]*");
  std::set<std::string> finished;  // families whose samples are over
  std::string current;
  std::set<std::string> series;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  auto fail = [&](const std::string& why) {
    if (e.error.empty()) e.error = "line " + std::to_string(n) + ": " + why + ": " + line;
  };
  if (text.empty() || text.back() != '\n') fail("the text must end with a newline");
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream f(line);
      std::string hash, kind, name, rest;
      f >> hash >> kind >> name;
      if (kind == "TYPE") {
        f >> rest;
        if (!std::regex_match(name, name_re)) fail("bad metric name");
        if (e.types.count(name)) fail("TYPE given twice");
        if (rest != "counter" && rest != "gauge" && rest != "histogram" && rest != "summary" && rest != "untyped")
          fail("unknown type");
        if (rest == "counter" && !name.ends_with("_total")) fail("a counter's name should end in _total");
        e.types[name] = rest;
      }
      continue;
    }
    Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    if (!std::regex_match(s.name, name_re)) fail("bad metric name");
    if (!e.types.count(s.name)) fail("a sample before its TYPE");
    if (s.name != current) {
      if (finished.count(s.name)) fail("a family's samples are not together");
      if (!current.empty()) finished.insert(current);
      current = s.name;
    }
    std::string key = s.name;
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t eq = line.find('=', i);
        if (eq == std::string::npos) return fail("label without =") , e;
        std::string lname = line.substr(i, eq - i);
        if (!std::regex_match(lname, label_re)) fail("bad label name");
        if (eq + 1 >= line.size() || line[eq + 1] != '"') return fail("label value not quoted"), e;
        std::string v;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\') {
            if (++j >= line.size()) break;
            if (line[j] == 'n') v += '\n';
            else if (line[j] == '\\' || line[j] == '"') v += line[j];
            else fail("bad escape");
          } else {
            v += line[j];
          }
        }
        if (j >= line.size()) return fail("unterminated label value"), e;
        if (s.labels.count(lname)) fail("label given twice");
        s.labels[lname] = v;
        key += "|" + lname + "=" + v;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) return fail("unterminated labels"), e;
      ++i;
    }
    if (i >= line.size() || line[i] != ' ') return fail("no value"), e;
    const std::string value = line.substr(i + 1);
    char* end = nullptr;
    s.value = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0') fail("value is not a number");
    if (!series.insert(key).second) fail("the same series twice");
    e.samples.push_back(std::move(s));
  }
  return e;
}

TEST_F(FsMount, StatsIsPrometheusTextForTheStoreAndEveryLivePager) {
  write_pattern(tmp_.path() + "/in", 2 * kMiB + 1, 6);
  put(tmp_.path() + "/in", "s1");
  put(tmp_.path() + "/in", "s2", {"--pin"});
  const pid_t demo = start_demo();
  mount();
  // The demo's counters move; wait until it has done some work.
  Exposition e;
  ASSERT_TRUE(eventually(
      [&] {
        e = parse_prometheus(slurp(path("/stats")));
        const Sample* s = e.find("kvpager_accesses_total", {{"pid", std::to_string(demo)}});
        return !e.error.empty() || (s && s->value > 0);
      },
      10s));
  ASSERT_EQ(e.error, "");
  EXPECT_EQ(e.find("kvpager_store_contexts")->value, 2);
  EXPECT_EQ(e.find("kvpager_store_pinned_contexts")->value, 1);
  EXPECT_EQ(e.find("kvpager_store_context_bytes")->value, 2.0 * (2 * kMiB + 1));
  EXPECT_EQ(e.find("kvpager_pagers")->value, 1);
  const std::string pid = std::to_string(demo);
  for (const char* metric : {"kvpager_hits_total", "kvpager_misses_total", "kvpager_stall_seconds_total"})
    EXPECT_TRUE(e.find(metric, {{"pid", pid}})) << metric;
  for (const char* tier : {"hbm", "host", "nvme"})
    EXPECT_TRUE(e.find("kvpager_tier_bytes", {{"pid", pid}, {"tier", tier}})) << tier;
  EXPECT_TRUE(e.find("kvpager_faults_total", {{"pid", pid}, {"from", "host"}}));
  EXPECT_TRUE(e.find("kvpager_moved_bytes_total", {{"pid", pid}, {"kind", "promote"}}));
  EXPECT_TRUE(e.find("kvpager_prefetch_issued_bytes_total", {{"pid", pid}, {"prefetcher", "sequential"}}));
  EXPECT_TRUE(e.find("kvpager_prefetch_wasted_bytes_total", {{"pid", pid}}));
  EXPECT_TRUE(e.find("kvpager_store_corruption_events_total"));
  EXPECT_EQ(e.types["kvpager_hits_total"], "counter");
  EXPECT_EQ(e.types["kvpager_tier_bytes"], "gauge");
  // hits + misses = accesses, within one scrape.
  EXPECT_EQ(e.find("kvpager_hits_total", {{"pid", pid}})->value + e.find("kvpager_misses_total", {{"pid", pid}})->value,
            e.find("kvpager_accesses_total", {{"pid", pid}})->value);
  // The parser is not a rubber stamp.
  EXPECT_NE(parse_prometheus("kvpager_x 1\n").error, "");
  EXPECT_NE(parse_prometheus("# TYPE a gauge\na{b=\"c} 1\n").error, "");
  EXPECT_NE(parse_prometheus("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n").error, "");
}

// A stopped pager (SIGSTOP) answers nothing. Reads that ask it say so
// (ETIMEDOUT, a scrape error) instead of showing an empty value, and after it
// once failed to answer it is given a short timeout, so it does not make every
// read wait the whole control timeout; once it runs again it is heard again.
TEST_F(FsMount, AStoppedPagerIsNamedAndDoesNotSlowEveryReadDown) {
  const pid_t demo = start_demo();
  fsys::create_directories(store_);
  mount();
  const std::string pid = std::to_string(demo);
  ASSERT_TRUE(eventually([&] { return slurp(path("/control/prefetch_depth")) != ""; }, 5s));
  auto read_errno = [](const std::string& file) {
    int fd = open(file.c_str(), O_RDONLY);
    if (fd < 0) return errno;
    char buf[4096];
    int e = read(fd, buf, sizeof buf) >= 0 ? 0 : errno;
    close(fd);
    return e;
  };
  ASSERT_EQ(kill(demo, SIGSTOP), 0);
  // Else a loaded machine lets its socket thread answer once more.
  ASSERT_TRUE(eventually([&] { return kvpager::testing::all_threads_stopped(demo); }, 10s));
  EXPECT_EQ(read_errno(path("/control/prefetch_depth")), ETIMEDOUT) << "not an empty value, as with no pager at all";
  EXPECT_EQ(read_errno(path("/processes/" + pid + "/stats")), ETIMEDOUT);
  Exposition e = parse_prometheus(slurp(path("/stats")));
  ASSERT_EQ(e.error, "");
  EXPECT_EQ(e.find("kvpager_pager_scrape_errors")->value, 1);
  EXPECT_EQ(e.find("kvpager_pagers")->value, 0);
  // The per-process read came after the first silence: it waited the short
  // timeout only (the daemon logs the failure with the timeout it applied).
  const std::string log = slurp(fs_log_);
  EXPECT_NE(log.find("pid " + pid + " stats: "), std::string::npos) << log;
  EXPECT_NE(log.find("no reply within 200 ms"), std::string::npos) << log;
  EXPECT_EQ(log.find("pid " + pid + " stats: " + runtime_ + "/" + pid + ".sock: no reply within 3000 ms"), std::string::npos) << log;
  ASSERT_EQ(kill(demo, SIGCONT), 0);
  EXPECT_TRUE(eventually(
      [&] {
        Exposition now = parse_prometheus(slurp(path("/stats")));
        return now.error.empty() && now.find("kvpager_pagers")->value == 1 &&
               now.find("kvpager_pager_scrape_errors")->value == 0;
      },
      15s));  // it has 200 ms per question until it answers once, 3 s after the 10 s window
  EXPECT_EQ(read_errno(path("/processes/" + pid + "/stats")), 0);
}

// ---------------------------------------------------------------- freshness

TEST_F(FsMount, NewContextsAppearWithinASecondAndRemovedOnesDisappear) {
  write_pattern(tmp_.path() + "/in", 3 * kMiB, 7);
  put(tmp_.path() + "/in", "first");
  mount();
  struct stat st {};
  ASSERT_EQ(stat(path("/contexts/first/kv").c_str(), &st), 0);  // now in the kernel's caches (10 s timeouts)
  EXPECT_NE(stat(path("/contexts/later").c_str(), &st), 0);
  put(tmp_.path() + "/in", "later");  // another process writes a context
  auto t0 = Clock::now();
  EXPECT_TRUE(eventually([&] { return list(path("/contexts")).count("later") == 1; }, 1000ms));
  EXPECT_TRUE(eventually([&] { return stat(path("/contexts/later/kv").c_str(), &st) == 0; }, 1000ms));
  const auto appeared = Clock::now() - t0;
  EXPECT_LT(appeared, 1000ms * kSlack);
  ProcessResult r = kvpager({"store", "rm", "first", "--store", store_});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  // Gone from the listing and from the kernel's dentry cache, well before its 10 s timeout.
  EXPECT_TRUE(eventually([&] { return stat(path("/contexts/first/kv").c_str(), &st) != 0; }, 1000ms));
  EXPECT_TRUE(eventually([&] { return list(path("/contexts")).count("first") == 0; }, 1000ms));
  // Republished under the same name: the new bytes, never the old ones from a cache.
  write_pattern(tmp_.path() + "/in2", 3 * kMiB, 8);
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/later/kv")));
  r = kvpager({"store", "put", tmp_.path() + "/in2", "--context", "later", "--store", store_});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(eventually([&] { return same_bytes(tmp_.path() + "/in2", path("/contexts/later/kv")); }, 1000ms));
}

// The store directory removed and made again under the mount: the mount
// kept serving the removed one, empty, and said nothing. It still cannot
// follow (its handles are the old directory's), but it says so: in its log
// and in /stats.
TEST_F(FsMount, AStoreDirectoryReplacedUnderTheMountIsSaidLoudly) {
  write_pattern(tmp_.path() + "/in", 1 * kMiB, 3);
  put(tmp_.path() + "/in", "first");
  mount();
  auto lost = [&] { return slurp(path("/stats")).find("\nkvpager_fs_store_dir_lost 1\n") != std::string::npos; };
  EXPECT_FALSE(lost()) << slurp(path("/stats"));
  const std::string moved = tmp_.path() + "/old-store";
  ASSERT_EQ(rename(store_.c_str(), moved.c_str()), 0);
  ASSERT_EQ(mkdir(store_.c_str(), 0755), 0);
  EXPECT_TRUE(eventually(lost, 2000ms)) << slurp(path("/stats"));
  // Removed, or already replaced, when the watcher looked.
  EXPECT_TRUE(std::regex_search(slurp(fs_log_), std::regex("the store directory .*/store was (removed|replaced by another) "
                                                           "while mounted: .*unmount it and mount again")))
      << slurp(fs_log_);
}

TEST_F(FsMount, ConcurrentReadersSeeWholePublicationsWhileContextsAreWritten) {
  const uint64_t size = 6 * kMiB + 333;
  write_pattern(tmp_.path() + "/v1", size, 11);
  write_pattern(tmp_.path() + "/v2", size, 12);
  const std::string v1 = slurp(tmp_.path() + "/v1"), v2 = slurp(tmp_.path() + "/v2");
  put(tmp_.path() + "/v1", "hot");
  mount();
  std::atomic<bool> stop{false};
  std::atomic<int> whole_v1{0}, whole_v2{0}, failed{0}, mixed{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      std::string buf(size + 1, '\0');
      while (!stop.load()) {
        int fd = open(path("/contexts/hot/kv").c_str(), O_RDONLY);
        if (fd < 0) {
          ++failed;
          continue;
        }
        size_t got = 0;
        ssize_t n = 0;
        while ((n = read(fd, buf.data() + got, buf.size() - got)) > 0) got += static_cast<size_t>(n);
        close(fd);
        if (n < 0) {
          ++failed;  // EIO: the publication it opened was replaced and its chunks removed
          continue;
        }
        std::string_view seen(buf.data(), got);
        if (seen == v1) ++whole_v1;
        else if (seen == v2) ++whole_v2;
        else ++mixed;
      }
    });
  }
  // Meanwhile: the context is republished again and again by another
  // process, and other contexts are imported through the mount.
  for (int round = 0; round < 6; ++round) {
    ProcessResult r = kvpager({"store", "put", tmp_.path() + (round % 2 ? "/v1" : "/v2"), "--context", "hot",
                               "--store", store_});
    ASSERT_EQ(r.exit_code, 0) << show(r);
    r = run({"/bin/cp", tmp_.path() + "/v2", path("/import/side-" + std::to_string(round))}, runtime_);
    ASSERT_EQ(r.exit_code, 0) << show(r);
    std::this_thread::sleep_for(100ms);
  }
  stop.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(mixed.load(), 0) << "a reader saw bytes of two publications, or wrong bytes";
  EXPECT_GT(whole_v1.load(), 0);
  EXPECT_GT(whole_v2.load(), 0);
  for (int round = 0; round < 6; ++round)
    EXPECT_TRUE(same_bytes(tmp_.path() + "/v2", path("/contexts/side-" + std::to_string(round) + "/kv")));
}

// ---------------------------------------------------------------- integrity and unmounting

TEST_F(FsMount, ACorruptChunkReadsAsEioNeverAsBadBytes) {
  write_pattern(tmp_.path() + "/in", 6 * kMiB, 13);
  put(tmp_.path() + "/in", "c");
  // Flip one payload byte of chunk 1 on disk.
  json ls = store_ls();
  ASSERT_EQ(ls.size(), 1u);
  std::vector<fsys::path> objects;
  for (const auto& e : fsys::recursive_directory_iterator(store_ + "/objects"))
    if (e.is_regular_file()) objects.push_back(e.path());
  ASSERT_EQ(objects.size(), 3u);
  mount();
  const std::string in = slurp(tmp_.path() + "/in");
  // Find chunk 1's object by its bytes, and damage it.
  bool damaged = false;
  for (const auto& o : objects) {
    std::string body = slurp(o.string());
    if (body.find(in.substr(2 * kMiB, 4096)) == std::string::npos) continue;
    std::fstream f(o, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(body.size() - kMiB));
    char c = body[body.size() - kMiB] ^ 0x40;
    f.write(&c, 1);
    damaged = true;
  }
  ASSERT_TRUE(damaged);
  int fd = open(path("/contexts/c/kv").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::string buf(kMiB, '\0');
  // Chunk 0 is intact and served; chunk 1 is not served at all.
  ASSERT_EQ(pread(fd, buf.data(), buf.size(), 0), static_cast<ssize_t>(kMiB));
  EXPECT_EQ(buf, in.substr(0, kMiB));
  errno = 0;
  EXPECT_EQ(pread(fd, buf.data(), buf.size(), static_cast<off_t>(2 * kMiB + 4096)), -1);
  EXPECT_EQ(errno, EIO);
  close(fd);
  ProcessResult r = run({"/bin/cp", path("/contexts/c/kv"), tmp_.path() + "/out"}, runtime_);
  EXPECT_NE(r.exit_code, 0) << "cp of a corrupt context must fail";
  json info = json::parse(slurp(path("/contexts/c/info")));
  EXPECT_EQ(info["checksum"]["state"], "corrupt");
  Exposition e = parse_prometheus(slurp(path("/stats")));
  ASSERT_EQ(e.error, "");
  EXPECT_GE(e.find("kvpager_store_corruption_events_total")->value, 1);
  EXPECT_GE(e.find("kvpager_fs_read_errors_total")->value, 1);
}

TEST_F(FsMount, UnmountWhileAReaderHoldsAFileOpen) {
  const uint64_t size = 64 * kMiB;
  write_pattern(tmp_.path() + "/in", size, 14);
  put(tmp_.path() + "/in", "big");
  mount();
  const std::string in = slurp(tmp_.path() + "/in");
  int fd = open(path("/contexts/big/kv").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::string buf(kMiB, '\0');
  ASSERT_EQ(read(fd, buf.data(), buf.size()), static_cast<ssize_t>(kMiB));
  EXPECT_EQ(buf, in.substr(0, kMiB));
  // A plain unmount is refused while the file is open; the mount stays and serves.
  ProcessResult r = kvpager::testing::run_process({"/bin/fusermount3", "-u", mnt_}, {}, 20);
  EXPECT_NE(r.exit_code, 0) << show(r);
  EXPECT_TRUE(is_mounted(mnt_));
  ASSERT_EQ(pread(fd, buf.data(), buf.size(), static_cast<off_t>(8 * kMiB)), static_cast<ssize_t>(kMiB));
  EXPECT_EQ(buf, in.substr(8 * kMiB, kMiB));
  // SIGTERM: the daemon detaches the mount and ends cleanly, reader or not.
  kill(daemon_->pid(), SIGTERM);
  EXPECT_EQ(daemon_->wait_exit(10s), 0) << slurp(fs_log_);
  daemon_.reset();
  EXPECT_FALSE(is_mounted(mnt_));
  // The reader gets an error (the connection is gone), or bytes the kernel
  // still had cached, which are right: never wrong bytes.
  errno = 0;
  ssize_t n = pread(fd, buf.data(), buf.size(), static_cast<off_t>(40 * kMiB));
  if (n < 0) EXPECT_TRUE(errno == ENOTCONN || errno == EIO) << std::strerror(errno);
  else EXPECT_EQ(buf.substr(0, static_cast<size_t>(n)), in.substr(40 * kMiB, static_cast<size_t>(n)));
  EXPECT_EQ(close(fd), 0);
}

// libfuse unmounts by the mount point's path when a signal ends the daemon,
// after the daemon changed to "/": a relative path must still name it. And
// a mount whose daemon was killed is named as such by kvpager mount, and
// kvpager umount clears it.
TEST_F(FsMount, ARelativeMountPointIsUnmountedBySignalsAndADeadMountIsNamed) {
  write_pattern(tmp_.path() + "/in", 1000, 17);
  put(tmp_.path() + "/in", "x");
  const fsys::path m(mnt_);
  auto start_relative = [&](const std::string& log) {
    fs_log_ = log;
    const std::string cmd = "cd '" + m.parent_path().string() + "' && exec '" + KVPAGER_FS_BIN + "' '" + store_ +
                            "' '" + m.filename().string() + "' -f";
    daemon_ = std::make_unique<Child>(std::vector<std::string>{"/bin/sh", "-c", cmd}, runtime_, fs_log_);
    eventually([&] { return is_mounted(mnt_) || daemon_->poll() != -2; }, 10s);
    return is_mounted(mnt_);
  };
  if (!start_relative(tmp_.path() + "/fs-rel1.log")) {
    const std::string log = slurp(fs_log_);
    daemon_.reset();
    if (log.find("cannot mount") != std::string::npos) GTEST_SKIP() << "mounting is not permitted here: " << log;
    FAIL() << log;
  }
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/x/kv")));
  kill(daemon_->pid(), SIGTERM);
  EXPECT_EQ(daemon_->wait_exit(10s), 0) << slurp(fs_log_);
  daemon_.reset();
  EXPECT_FALSE(is_mounted(mnt_)) << "a dead mount stayed behind: " << slurp(fs_log_);

  ASSERT_TRUE(start_relative(tmp_.path() + "/fs-rel2.log")) << slurp(fs_log_);
  kill(daemon_->pid(), SIGKILL);  // no chance to unmount: the mount stays, dead
  daemon_->wait_exit(10s);
  daemon_.reset();
  ASSERT_EQ(mount_count(mnt_), 1);
  ProcessResult r = kvpager({"mount", "--store", store_, mnt_});
  EXPECT_EQ(r.exit_code, 2) << show(r);
  EXPECT_NE(r.err.find(mnt_ + " is a mount whose daemon has ended: kvpager umount"), std::string::npos) << show(r);
  r = kvpager({"umount", mnt_});
  EXPECT_EQ(r.exit_code, 0) << show(r);
  EXPECT_FALSE(is_mounted(mnt_));
}

// A store on a read-only file system is shown read-only: imports and
// removals get EROFS at once, not EIO after trying (docs/fs.md, Importing).
// A writable directory that is not a store is refused for what it is.
TEST_F(FsMount, AStoreOnAReadOnlyFileSystemIsMountedReadOnly) {
  write_pattern(tmp_.path() + "/in", 300'000, 18);
  put(tmp_.path() + "/in", "x");
  const std::string ro = tmp_.path() + "/ro-store";
  fsys::create_directories(ro);
  ProcessResult r = kvpager::testing::run_process({"/bin/mount", "--bind", store_, ro}, {}, 20);
  if (r.exit_code != 0) GTEST_SKIP() << "cannot bind-mount here (not root?): " << show(r);
  r = kvpager::testing::run_process({"/bin/mount", "-o", "remount,ro,bind", ro}, {}, 20);
  if (r.exit_code != 0) {
    kvpager::testing::run_process({"/bin/umount", ro}, {}, 20);
    GTEST_SKIP() << "cannot remount read-only here: " << show(r);
  }
  const std::string writable = store_;
  store_ = ro;
  mount();
  store_ = writable;
  EXPECT_NE(slurp(fs_log_).find("not writable (Read-only file system): mounted read-only"), std::string::npos)
      << slurp(fs_log_);
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/x/kv")));
  const int fd = open(path("/import/y").c_str(), O_WRONLY | O_CREAT, 0644);
  EXPECT_EQ(fd < 0 ? errno : 0, EROFS);
  if (fd >= 0) close(fd);
  EXPECT_EQ(errno_of(unlink(path("/contexts/x/kv").c_str())), EROFS);
  unmount();
  kvpager::testing::run_process({"/bin/umount", ro}, {}, 20);

  const std::string junk = tmp_.path() + "/junk";
  fsys::create_directories(junk);
  std::ofstream(junk + "/notes.txt") << "not a store";
  r = run({KVPAGER_FS_BIN, junk, mnt_, "-f"}, runtime_);
  EXPECT_NE(r.exit_code, 0) << show(r);
  EXPECT_EQ(r.err.find("not writable"), std::string::npos) << "it is writable: " << show(r);
  EXPECT_FALSE(is_mounted(mnt_));
}

// With allow_other another user may enter the mount and read contexts it is
// allowed to, but not the pagers' state: /stats (metrics, command lines) and
// /processes are the mounting user's.
TEST_F(FsMount, WithAllowOtherOtherUsersSeeContextsButNotThePagersState) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root, to read the mount as another user (setpriv)";
  if (!fsys::exists("/usr/bin/setpriv")) GTEST_SKIP() << "setpriv (util-linux) is not installed";
  write_pattern(tmp_.path() + "/in", 1000, 19);
  put(tmp_.path() + "/in", "x");
  mount({"-o", "allow_other"});
  auto as_nobody = [&](const std::string& cmd) {
    return kvpager::testing::run_process(
        {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", cmd}, {}, 20);
  };
  // The test's own directory (mkdtemp: 0700) must let nobody through to the mount.
  ASSERT_EQ(chmod(tmp_.path().c_str(), 0711), 0) << std::strerror(errno);
  ProcessResult r = as_nobody("ls " + mnt_ + "/contexts");
  EXPECT_EQ(r.exit_code, 0) << show(r);
  EXPECT_NE(r.out.find("x"), std::string::npos) << show(r);
  r = as_nobody("cat " + mnt_ + "/stats");
  EXPECT_NE(r.exit_code, 0) << show(r);
  EXPECT_NE(r.err.find("Permission denied"), std::string::npos) << show(r);
  r = as_nobody("ls " + mnt_ + "/processes");
  EXPECT_NE(r.exit_code, 0) << show(r);
  EXPECT_NE(r.err.find("Permission denied"), std::string::npos) << show(r);
  EXPECT_FALSE(slurp(path("/stats")).empty()) << "the mounting user reads it";
}

TEST_F(FsMount, KvpagerMountAndUmountWrapTheDaemon) {
  write_pattern(tmp_.path() + "/in", 1000, 15);
  put(tmp_.path() + "/in", "x");
  ProcessResult r = kvpager({"mount", "--store", store_, mnt_});
  if (r.exit_code == 1 && r.err.find("cannot mount") != std::string::npos)
    GTEST_SKIP() << "mounting is not permitted here: " << r.err;
  ASSERT_EQ(r.exit_code, 0) << show(r);  // returns once mounted, the daemon in the background
  ASSERT_TRUE(is_mounted(mnt_));
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/x/kv")));
  r = kvpager({"umount", mnt_});
  EXPECT_EQ(r.exit_code, 0) << show(r);
  EXPECT_FALSE(is_mounted(mnt_));
  r = kvpager({"umount", mnt_});
  EXPECT_EQ(r.exit_code, 1) << show(r);
  EXPECT_NE(r.err.find("not mounted"), std::string::npos) << show(r);
  // Bad usage is exit 2, before anything is mounted.
  r = kvpager({"mount", "--store", store_, tmp_.path() + "/no-such-dir"});
  EXPECT_EQ(r.exit_code, 2) << show(r);
  r = run({KVPAGER_FS_BIN, store_, mnt_, "-o", "read_window=lots"}, runtime_);
  EXPECT_EQ(r.exit_code, 2) << show(r);
  EXPECT_FALSE(is_mounted(mnt_));
}

// A typo in the store directory must not mount a new, empty store.
TEST_F(FsMount, AStoreDirectoryThatDoesNotExistIsRefusedNotCreated) {
  const std::string typo = tmp_.path() + "/typo";
  ProcessResult r = run({KVPAGER_FS_BIN, typo, mnt_}, runtime_);
  EXPECT_EQ(r.exit_code, 2) << show(r);
  EXPECT_NE(r.err.find("no store at " + typo + ": it does not exist"), std::string::npos) << show(r);
  r = kvpager({"mount", "--store", typo, mnt_});
  EXPECT_EQ(r.exit_code, 2) << show(r);
  EXPECT_NE(r.err.find("no store at " + typo + ": it does not exist"), std::string::npos) << show(r);
  EXPECT_NE(r.err.find("store_dir / --store"), std::string::npos) << show(r);
  EXPECT_FALSE(is_mounted(mnt_));
  EXPECT_FALSE(fsys::exists(typo));
  // The built-in default store_dir is where pagers will put the warehouse:
  // `kvpager mount MNT` before the first pager ran creates it.
  auto env = child_env(runtime_);
  env.push_back("XDG_CACHE_HOME=" + tmp_.path() + "/cache");
  r = kvpager::testing::run_process({KVPAGER_BIN, "mount", mnt_}, env, 60 * kSlack);
  if (r.exit_code == 1 && r.err.find("cannot mount") != std::string::npos)
    GTEST_SKIP() << "mounting is not permitted here: " << r.err;
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(is_mounted(mnt_));
  EXPECT_TRUE(fsys::exists(tmp_.path() + "/cache/kvpager/objects"));
  r = kvpager({"umount", mnt_});
  EXPECT_EQ(r.exit_code, 0) << show(r);
  // store_dir = "" means that default too, however it was given (it was
  // refused as "does not exist").
  env.back() = "XDG_CACHE_HOME=" + tmp_.path() + "/cache2";
  r = kvpager::testing::run_process({KVPAGER_BIN, "mount", "--store-dir", "", mnt_}, env, 60 * kSlack);
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(fsys::exists(tmp_.path() + "/cache2/kvpager/objects"));
  r = kvpager({"umount", mnt_});
  EXPECT_EQ(r.exit_code, 0) << show(r);
  // An existing empty directory becomes a store.
  fsys::create_directories(store_);
  mount();
  EXPECT_TRUE(list(path("/contexts")).empty());
  EXPECT_TRUE(fsys::exists(store_ + "/objects"));
}

// A second mount on top would hide the first; umount would then remove
// one and report success with MNT still mounted. And umount runs
// fusermount3, which for root unmounts any file system: it must touch
// kvpager-fs mounts only.
TEST_F(FsMount, MountingTwiceIsRefusedAndUmountRemovesOnlyKvpagerFsAndNeverClaimsSuccessWhileMounted) {
  write_pattern(tmp_.path() + "/in", 5000, 16);
  put(tmp_.path() + "/in", "x");
  mount();
  ProcessResult r = kvpager({"mount", "--store", store_, mnt_});
  EXPECT_EQ(r.exit_code, 2) << show(r);
  EXPECT_NE(r.err.find(mnt_ + " is already a mount point"), std::string::npos) << show(r);
  r = run({KVPAGER_FS_BIN, store_, mnt_}, runtime_);
  EXPECT_EQ(r.exit_code, 2) << show(r);
  EXPECT_NE(r.err.find(mnt_ + " is already a mount point"), std::string::npos) << show(r);
  EXPECT_EQ(mount_count(mnt_), 1);
  EXPECT_TRUE(same_bytes(tmp_.path() + "/in", path("/contexts/x/kv"))) << "the first mount still serves";

  // Another file system on top (a bind mount of a plain directory; root
  // only): refused, both mounts stay.
  const std::string other = tmp_.path() + "/other";
  fsys::create_directories(other);
  r = kvpager::testing::run_process({"/bin/mount", "--bind", other, mnt_}, {}, 20);
  if (r.exit_code != 0) GTEST_SKIP() << "cannot stack a bind mount here (not root?): " << show(r);
  ASSERT_EQ(mount_count(mnt_), 2);
  r = kvpager({"umount", mnt_});
  EXPECT_EQ(r.exit_code, 1) << show(r);
  EXPECT_NE(r.err.find("not kvpager-fs (fuse.kvpager): left alone"), std::string::npos) << show(r);
  EXPECT_EQ(mount_count(mnt_), 2);
  r = kvpager::testing::run_process({"/bin/umount", mnt_}, {}, 20);
  ASSERT_EQ(r.exit_code, 0) << show(r);
  ASSERT_EQ(mount_count(mnt_), 1);

  // The kvpager-fs mount bound on top of itself: fusermount3 -u removes the
  // top one only, and success would be a lie.
  r = kvpager::testing::run_process({"/bin/mount", "--bind", mnt_, mnt_}, {}, 20);
  ASSERT_EQ(r.exit_code, 0) << show(r);
  ASSERT_EQ(mount_count(mnt_), 2);
  r = kvpager({"umount", mnt_});
  EXPECT_EQ(r.exit_code, 1) << show(r);
  EXPECT_NE(r.err.find(mnt_ + " is still mounted"), std::string::npos) << show(r);
  EXPECT_EQ(mount_count(mnt_), 1);
  r = kvpager({"umount", mnt_});
  EXPECT_EQ(r.exit_code, 0) << show(r);
  EXPECT_FALSE(is_mounted(mnt_));
}

// Not a mount of ours at all: a tmpfs (root only) is refused and stays.
TEST(FsUmount, LeavesAnotherFileSystemMounted) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/tiny";
  fsys::create_directories(dir);
  ProcessResult r = kvpager::testing::run_process({"/bin/mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir}, {}, 20);
  if (r.exit_code != 0) GTEST_SKIP() << "cannot mount a tmpfs here (not root?): " << show(r);
  r = run({KVPAGER_BIN, "umount", dir}, tmp.path());
  EXPECT_EQ(r.exit_code, 1) << show(r);
  EXPECT_NE(r.err.find(dir + " is a tmpfs mount, not kvpager-fs"), std::string::npos) << show(r);
  EXPECT_EQ(mount_count(dir), 1);
  kvpager::testing::run_process({"/bin/umount", dir}, {}, 20);
}

// Every -o option kvpager-fs takes is in its usage and in `kvpager mount --help`.
TEST(FsHelp, EveryMountOptionIsInBothHelps) {
  TempDir tmp;
  const ProcessResult fs = run({KVPAGER_FS_BIN, "--help"}, tmp.path());
  const ProcessResult cli = run({KVPAGER_BIN, "mount", "--help"}, tmp.path());
  ASSERT_EQ(fs.exit_code, 0) << show(fs);
  ASSERT_EQ(cli.exit_code, 0) << show(cli);
  // The keys kvpager_fs_main.cpp's take_mount_options() handles itself.
  for (const char* o : {"namespace=NS", "entry_timeout=S", "attr_timeout=S", "read_window=N", "allow_other", " ro,",
                        "any libfuse mount option"}) {
    EXPECT_NE(fs.out.find(o), std::string::npos) << o << " missing from kvpager-fs --help:\n" << fs.out;
    EXPECT_NE(cli.out.find(o), std::string::npos) << o << " missing from kvpager mount --help:\n" << cli.out;
  }
}

// kvpager-fs takes --config=FILE and --set=K=V as kvpager does (it said
// "unknown option --config=t.toml"), and says its version.
TEST(FsHelp, OptionsTakeBothFormsAndTheVersionIsPrinted) {
  TempDir tmp;
  const ProcessResult v = run({KVPAGER_FS_BIN, "--version"}, tmp.path());
  EXPECT_EQ(v.exit_code, 0) << show(v);
  EXPECT_EQ(v.out.rfind("kvpager-fs ", 0), 0u) << show(v);
  const std::string bad = tmp.path() + "/bad.toml";
  std::ofstream(bad) << "chunk_size = \"3M\"\n";
  for (const std::vector<std::string>& form : {std::vector<std::string>{"--config", bad}, {"--config=" + bad}}) {
    std::vector<std::string> args{KVPAGER_FS_BIN, tmp.path(), tmp.path() + "/mnt"};
    args.insert(args.end(), form.begin(), form.end());
    const ProcessResult r = run(args, tmp.path());
    EXPECT_EQ(r.exit_code, 2) << show(r);
    EXPECT_NE(r.err.find("chunk_size"), std::string::npos) << "the file was read: " << show(r);
  }
  const ProcessResult set = run({KVPAGER_FS_BIN, tmp.path(), tmp.path() + "/mnt", "--set=chunk_size=3M"}, tmp.path());
  EXPECT_EQ(set.exit_code, 2) << show(set);
  EXPECT_NE(set.err.find("chunk_size"), std::string::npos) << show(set);
}

// The export form through the CLI alone (no mount needed): what `store get
// --export` writes, `store put` takes back with its settings, and a damaged
// or truncated export stores nothing.
TEST(FsExportCli, StoreGetExportAndPutRoundTripAndRefuseDamage) {
  TempDir tmp;
  const std::string a = tmp.path() + "/a", b = tmp.path() + "/b", rt = tmp.path() + "/run";
  write_pattern(tmp.path() + "/in", 5 * kMiB + 3, 21);
  auto kv = [&](std::vector<std::string> args) {
    args.insert(args.begin(), KVPAGER_BIN);
    return run(args, rt);
  };
  ProcessResult r = kv({"store", "put", tmp.path() + "/in", "--context", "c1", "--tokens", "77", "--store", a});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  r = kv({"store", "get", "c1", tmp.path() + "/c1.kvctx", "--export", "--store", a});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  // No --context: the name comes from the export.
  r = kv({"store", "put", tmp.path() + "/c1.kvctx", "--store", b});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  r = kv({"store", "get", "c1", tmp.path() + "/back", "--store", b});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(same_bytes(tmp.path() + "/in", tmp.path() + "/back"));
  r = kv({"store", "ls", "--json", "--store", b});
  EXPECT_EQ(json::parse(r.out)[0]["token_count"], 77) << r.out;
  // Damaged and truncated exports: exit 1, nothing stored.
  std::string good = slurp(tmp.path() + "/c1.kvctx");
  std::string bad = good;
  bad[bad.size() / 2] ^= 1;
  std::ofstream(tmp.path() + "/bad.kvctx", std::ios::binary) << bad;
  std::ofstream(tmp.path() + "/cut.kvctx", std::ios::binary) << good.substr(0, good.size() - 10);
  for (const char* f : {"/bad.kvctx", "/cut.kvctx"}) {
    r = kv({"store", "put", tmp.path() + f, "--context", "x", "--store", b});
    EXPECT_EQ(r.exit_code, 1) << f << "\n" << show(r);
    EXPECT_NE(r.err.find("not a valid context export"), std::string::npos) << show(r);
  }
  r = kv({"store", "ls", "--json", "--store", b});
  EXPECT_EQ(json::parse(r.out).size(), 1u) << r.out;
}

}  // namespace
