// Live control end to end: real `kvpager demo --serve` processes driven by
// the real CLI (`status`, `tune`, `hint`, `top`, `run`), as a user would.
//
// KVPAGER_BIN and KVPAGER_TEST_PRELOAD (a stand-in libkvpager.so that only
// announces itself) come from CMake. Each test uses its own runtime
// directory through KVPAGER_RUNTIME_DIR.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "run_process.h"
#include "temp_dir.h"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

#ifdef KVPAGER_SANITIZED
constexpr auto kSlack = 4;  // ASan/UBSan: everything runs slower; deadlines stretch
#else
constexpr auto kSlack = 1;
#endif

using Result = kvpager::testing::ProcessResult;

Result run(const std::vector<std::string>& argv) {
  return kvpager::testing::run_process(argv, {}, 30.0 * kSlack);
}

Result kvpager(std::vector<std::string> args) {
  args.insert(args.begin(), KVPAGER_BIN);
  return run(args);
}

std::string show(const Result& r) {
  return "exit " + std::to_string(r.exit_code) + " signal " + std::to_string(r.signal) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

using kvpager::testing::TempDir;

struct DemoShape {
  uint32_t sessions = 4;
  uint32_t layers = 2;
  std::string budget = "16M";
  std::string program = KVPAGER_BIN;  // what argv[0] says (a link to kvpager, say)
  bool wait_prefill = true;  // ready() once every session is built (the socket answers from the start)
};

// A `kvpager demo --serve` process with a small simulated card.
class Demo {
 public:
  using Shape = DemoShape;

  Demo(const std::string& workdir, const std::string& runtime_dir, Shape shape = DemoShape{}) : shape_(shape) {
    static int serial = 0;
    log_ = workdir + "/demo-" + std::to_string(++serial) + ".log";
    std::string store = workdir + "/store";
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      std::vector<std::string> a = {shape.program,      "demo",          "--serve",
                                    "--sessions",       std::to_string(shape.sessions),
                                    "--layers",         std::to_string(shape.layers),
                                    "--sim-hbm-capacity", "16M",
                                    "--hbm-budget",     shape.budget,
                                    "--chunk-size",     "256K",
                                    "--store-dir",      store,
                                    "--pace",           "20"};
      std::vector<char*> args;
      for (auto& s : a) args.push_back(s.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(126);
    }
    socket_ = runtime_dir + "/" + std::to_string(pid_) + ".sock";
    const auto deadline = Clock::now() + 20s * kSlack;
    while (!fs::exists(socket_) && Clock::now() < deadline) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    ready_ = fs::exists(socket_);
    // Tests name sessions and count them: wait until the prefill built all.
    while (ready_ && shape.wait_prefill) {
      Result r = kvpager({"status", "--pid", pid_text(), "--json"});
      json j = json::parse(r.out, nullptr, false);
      if (j.is_object() && j["stats"]["contexts"] == shape.sessions) break;
      ready_ = Clock::now() < deadline;
      std::this_thread::sleep_for(20ms);
    }
  }
  ~Demo() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  Demo(const Demo&) = delete;
  Demo& operator=(const Demo&) = delete;

  bool ready() const { return ready_; }
  pid_t pid() const { return pid_; }
  std::string pid_text() const { return std::to_string(pid_); }
  const std::string& socket() const { return socket_; }
  const Shape& shape() const { return shape_; }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // Sends sig and waits for the exit status (-1: did not exit in time).
  int stop(int sig) {
    kill(pid_, sig);
    const auto deadline = Clock::now() + 20s * kSlack;
    int st = 0;
    while (Clock::now() < deadline) {
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }
  void crash() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  Shape shape_;
  pid_t pid_ = -1;
  std::string log_, socket_;
  bool ready_ = false;
};

class ControlCli : public ::testing::Test {
 protected:
  void SetUp() override {
    // ctest sets KVPAGER_SRC for the tests; kvpager warns about unknown
    // KVPAGER_* variables, which the processes started here need not see.
    unsetenv("KVPAGER_SRC");
    runtime_ = tmp_.path() + "/run";
    setenv("KVPAGER_RUNTIME_DIR", runtime_.c_str(), 1);  // inherited by every child
  }
  void TearDown() override { unsetenv("KVPAGER_RUNTIME_DIR"); }

  // `kvpager status --json` once every pager shows some accesses.
  json status_json_when_busy(size_t expect_pagers) {
    json last;
    const auto deadline = Clock::now() + 20s * kSlack;
    while (Clock::now() < deadline) {
      Result r = kvpager({"status", "--json"});
      EXPECT_EQ(r.exit_code, 0) << show(r);
      last = json::parse(r.out);
      bool busy = last.size() == expect_pagers;
      for (const auto& p : last) busy = busy && p["stats"]["accesses"].get<uint64_t>() > 0;
      if (busy) return last;
      std::this_thread::sleep_for(50ms);
    }
    ADD_FAILURE() << "pagers never got busy: " << last.dump(2);
    return last;
  }
  json status_of(const Demo& d) {
    Result r = kvpager({"status", "--pid", d.pid_text(), "--json"});
    EXPECT_EQ(r.exit_code, 0) << show(r);
    return json::parse(r.out);
  }

  TempDir tmp_;
  std::string runtime_;
};

// Bytes of KV a demo allocates (demo_workload.cpp): kv_factor 4 x budget,
// split into sessions x layers regions of whole 256 KiB chunks.
uint64_t demo_kv_bytes(const Demo::Shape& s, uint64_t budget) {
  const uint64_t chunk = 256 * 1024;
  uint64_t per_region = 4 * budget / (uint64_t{s.sessions} * s.layers) / chunk * chunk;
  return per_region * s.sessions * s.layers;
}

TEST_F(ControlCli, StatusShowsEveryLivePagerConsistentWithItsWorkload) {
  Demo a(tmp_.path(), runtime_, {4, 2, "16M"});
  Demo b(tmp_.path(), runtime_, {6, 1, "8M"});
  ASSERT_TRUE(a.ready()) << a.log();
  ASSERT_TRUE(b.ready()) << b.log();
  EXPECT_EQ(fs::status(runtime_).permissions() & fs::perms::all, fs::perms::owner_all);

  json all = status_json_when_busy(2);
  ASSERT_EQ(all.size(), 2u);
  for (const auto& p : all) {
    const Demo& d = p["pid"].get<pid_t>() == a.pid() ? a : b;
    ASSERT_EQ(p["pid"].get<pid_t>(), d.pid());
    const uint64_t budget = d.pid() == a.pid() ? 16ull << 20 : 8ull << 20;
    const json& s = p["stats"];
    EXPECT_TRUE(contains(p["command"].get<std::string>(), "demo --serve")) << p["command"];
    EXPECT_EQ(p["device"], "simulated device");
    EXPECT_EQ(s["contexts"].get<uint32_t>(), d.shape().sessions);
    EXPECT_EQ(s["regions"].get<uint32_t>(), d.shape().sessions * d.shape().layers);
    EXPECT_EQ(s["tiers"]["hbm"]["capacity_bytes"].get<uint64_t>(), budget);
    EXPECT_LE(s["tiers"]["hbm"]["resident_bytes"].get<uint64_t>(), budget);
    EXPECT_EQ(s["hits"].get<uint64_t>() + s["faults"].get<uint64_t>(), s["accesses"].get<uint64_t>());
    // The prefill wrote every chunk: all of the workload's KV lives in some tier.
    uint64_t placed = s["tiers"]["hbm"]["resident_bytes"].get<uint64_t>() +
                      s["tiers"]["host"]["resident_bytes"].get<uint64_t>() +
                      s["tiers"]["nvme"]["resident_bytes"].get<uint64_t>();
    EXPECT_EQ(placed, demo_kv_bytes(d.shape(), budget));
    double acc = s["prefetch_accuracy"].get<double>();
    EXPECT_TRUE(acc >= 0.0 && acc <= 1.0) << acc;
  }

  Result text = kvpager({"status"});
  ASSERT_EQ(text.exit_code, 0) << show(text);
  EXPECT_TRUE(contains(text.out, "PID")) << text.out;
  EXPECT_TRUE(contains(text.out, "HIT%")) << text.out;
  for (const Demo* d : {&a, &b}) {
    bool row = false;
    std::istringstream lines(text.out);
    for (std::string line; std::getline(lines, line);)
      row = row || (contains(line, " " + d->pid_text() + " ") && contains(line, "kvpager demo"));
    EXPECT_TRUE(row) << "no row for pid " << d->pid() << ":\n" << text.out;
  }

  json one = status_of(a);
  EXPECT_EQ(one["config"]["hbm_budget"]["value"], "16M");
  EXPECT_TRUE(one["config"]["hbm_budget"]["live"].get<bool>());
  EXPECT_FALSE(one["config"]["chunk_size"]["live"].get<bool>());
  ASSERT_EQ(one["contexts"].size(), 4u);
  for (const auto& c : one["contexts"]) {
    EXPECT_TRUE(contains(c["name"].get<std::string>(), "session-"));
    uint64_t sum = 0;
    for (const auto& [tier, bytes] : c["tier_bytes"].items()) sum += bytes.get<uint64_t>();
    EXPECT_EQ(sum, c["size_bytes"].get<uint64_t>());
    EXPECT_EQ(c["size_bytes"].get<uint64_t>(), demo_kv_bytes(a.shape(), 16ull << 20) / 4);
  }
  Result details = kvpager({"status", "--pid", a.pid_text()});
  EXPECT_EQ(details.exit_code, 0) << show(details);
  EXPECT_TRUE(contains(details.out, "Contexts (4)")) << details.out;
  EXPECT_TRUE(contains(details.out, "session-3")) << details.out;
  EXPECT_TRUE(contains(details.out, "hbm_budget")) << details.out;

  Result missing = kvpager({"status", "--pid", "999999999"});
  EXPECT_EQ(missing.exit_code, 1) << show(missing);
  EXPECT_TRUE(contains(missing.err, "no pager with pid 999999999")) << show(missing);
}

TEST_F(ControlCli, NoPagersIsNotAnError) {
  Result r = kvpager({"status"});
  EXPECT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(contains(r.out, "no live pagers in " + runtime_)) << show(r);
  // A mistyped --runtime-dir reads differently from a machine where nothing runs.
  Result typo = kvpager({"status", "--runtime-dir", runtime_ + "-typo"});
  EXPECT_EQ(typo.exit_code, 0) << show(typo);
  EXPECT_TRUE(contains(typo.out, "no live pagers in " + runtime_ + "-typo (it does not exist)")) << show(typo);
  Result j = kvpager({"status", "--json"});
  EXPECT_EQ(j.exit_code, 0) << show(j);
  EXPECT_EQ(json::parse(j.out), json::array());
  Result t = kvpager({"tune", "hbm_budget=4M"});
  EXPECT_EQ(t.exit_code, 1) << show(t);
  // A bad request is bad usage whether or not a pager runs: checked first.
  for (const char* bad : {"bogus=1", "chunk_size=4M", "hbm_budget=12XB"}) {
    Result u = kvpager({"tune", bad});
    EXPECT_EQ(u.exit_code, 2) << show(u);
    EXPECT_TRUE(contains(u.err, bad)) << show(u);
  }
}

TEST_F(ControlCli, BudgetCutShowsHbmFallingBelowItWithinASecond) {
  Demo d(tmp_.path(), runtime_);
  ASSERT_TRUE(d.ready()) << d.log();
  status_json_when_busy(1);
  Result t = kvpager({"tune", "hbm_budget=4M"});
  const auto tuned = Clock::now();
  ASSERT_EQ(t.exit_code, 0) << show(t);
  EXPECT_EQ(t.out, "pid " + d.pid_text() + ": hbm_budget 16M \u2192 4M\n");
  uint64_t hbm = UINT64_MAX;
  double waited = 0;
  while (waited < 1.0 * kSlack) {
    json s = status_of(d);
    hbm = s["stats"]["tiers"]["hbm"]["resident_bytes"].get<uint64_t>();
    waited = std::chrono::duration<double>(Clock::now() - tuned).count();
    if (hbm <= (4u << 20)) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_LE(hbm, 4u << 20) << "HBM still holds " << hbm << " bytes " << waited << " s after the cut";
  json s = status_of(d);
  EXPECT_EQ(s["config"]["hbm_budget"]["value"], "4M");
  EXPECT_EQ(s["stats"]["tiers"]["hbm"]["capacity_bytes"].get<uint64_t>(), 4u << 20);
  // And it keeps running within the new budget.
  std::this_thread::sleep_for(200ms);
  EXPECT_LE(status_of(d)["stats"]["tiers"]["hbm"]["resident_bytes"].get<uint64_t>(), 4u << 20);
  EXPECT_EQ(d.stop(SIGTERM), 0) << d.log();
  EXPECT_TRUE(contains(d.log(), "0 corrupted chunk(s), 0 failed access(es)")) << d.log();
}

TEST_F(ControlCli, TuneSeveralKnobsOnEveryPager) {
  Demo a(tmp_.path(), runtime_);
  Demo b(tmp_.path(), runtime_);
  ASSERT_TRUE(a.ready() && b.ready()) << a.log() << b.log();
  Result pick = kvpager({"tune", "prefetch_depth=8"});
  EXPECT_EQ(pick.exit_code, 2) << show(pick);
  EXPECT_TRUE(contains(pick.err, "choose one with --pid")) << show(pick);

  Result r = kvpager({"tune", "--all", "prefetch_depth=8", "eviction_policy=clock", "spill_idle=5s"});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  for (const Demo* d : {&a, &b}) {
    EXPECT_TRUE(contains(r.out, "pid " + d->pid_text() + ": prefetch_depth 4 \u2192 8")) << r.out;
    EXPECT_TRUE(contains(r.out, "pid " + d->pid_text() + ": eviction_policy lru \u2192 clock")) << r.out;
    EXPECT_TRUE(contains(r.out, "pid " + d->pid_text() + ": spill_idle 30s \u2192 5s")) << r.out;
    json s = status_of(*d);
    EXPECT_EQ(s["config"]["prefetch_depth"]["value"], "8");
    EXPECT_EQ(s["config"]["eviction_policy"]["value"], "clock");
  }
  EXPECT_TRUE(contains(r.out, "applied on 2 of 2 pager(s)\n")) << r.out;
  Result one = kvpager({"tune", "--pid", b.pid_text(), "prefetchers=sequential"});
  ASSERT_EQ(one.exit_code, 0) << show(one);
  EXPECT_EQ(status_of(b)["config"]["prefetchers"]["value"], "sequential");
  EXPECT_EQ(status_of(a)["config"]["prefetchers"]["value"], "sequential,correlation,hint");
}

// Each pager decides for itself: one with a pinned session refuses a budget
// below its pins while the other takes it. The output says so at the end
// (before, the refusal came first and the successes after, with no total).
TEST_F(ControlCli, TuneAllSaysOnHowManyPagersItTookEffect) {
  Demo a(tmp_.path(), runtime_);
  Demo b(tmp_.path(), runtime_, {8, 1, "16M"});  // a session is 8M
  ASSERT_TRUE(a.ready() && b.ready()) << a.log() << b.log();
  ASSERT_EQ(kvpager({"hint", "--pid", b.pid_text(), "pin", "session-1"}).exit_code, 0);
  Result r = kvpager({"tune", "--all", "hbm_budget=8M"});
  EXPECT_EQ(r.exit_code, 2) << show(r);
  EXPECT_TRUE(contains(r.out, "pid " + a.pid_text() + ": hbm_budget 16M \u2192 8M")) << show(r);
  EXPECT_TRUE(contains(r.err, "pid " + b.pid_text() + ": hbm_budget = 8M, low_watermark = 0.85: pinned contexts hold "
                                  "8.00 MiB")) << show(r);
  EXPECT_TRUE(contains(r.err, "applied on 1 of 2 pager(s); the others did not take it (above)")) << show(r);
  EXPECT_EQ(status_of(b)["config"]["hbm_budget"]["value"], "16M");
}

// A live knob's flag was silently ignored by tune (it configured the client,
// which has no use for it); it now means what KEY=VALUE means.
TEST_F(ControlCli, TuneTakesALiveKnobsFlagAsASetting) {
  Demo d(tmp_.path(), runtime_);
  ASSERT_TRUE(d.ready()) << d.log();
  Result r = kvpager({"tune", "--pid", d.pid_text(), "--prefetch-depth", "6", "--set", "eviction_policy=clock"});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(contains(r.out, "prefetch_depth 4 \u2192 6")) << r.out;
  EXPECT_TRUE(contains(r.out, "eviction_policy lru \u2192 clock")) << r.out;
  json s = status_of(d);
  EXPECT_EQ(s["config"]["prefetch_depth"]["value"], "6");
  EXPECT_EQ(s["config"]["eviction_policy"]["value"], "clock");

  Result none = kvpager({"tune", "--pid", d.pid_text()});
  EXPECT_EQ(none.exit_code, 2) << show(none);
  EXPECT_TRUE(contains(none.err, "nothing to change")) << show(none);
  Result fixed = kvpager({"tune", "--pid", d.pid_text(), "--chunk-size", "4M"});
  EXPECT_EQ(fixed.exit_code, 2) << show(fixed);
  EXPECT_TRUE(contains(fixed.err, "chunk_size cannot change while a pager runs")) << show(fixed);
  EXPECT_EQ(status_of(d)["config"]["prefetch_depth"]["value"], "6") << "refusals changed nothing";

  // --config FILE: its live knobs are applied (the command line's win), its
  // start-up knobs named and left alone; before, the file was read and dropped.
  const std::string file = tmp_.path() + "/live.toml";
  std::ofstream(file) << "prefetch_depth = 11\neviction_policy = \"s3fifo\"\nchunk_size = \"2M\"\n";
  Result from_file = kvpager({"tune", "--pid", d.pid_text(), "--config", file, "eviction_policy=cost"});
  ASSERT_EQ(from_file.exit_code, 0) << show(from_file);
  EXPECT_TRUE(contains(from_file.out, "prefetch_depth 6 \u2192 11")) << from_file.out;
  EXPECT_TRUE(contains(from_file.out, "eviction_policy clock \u2192 cost")) << from_file.out;
  EXPECT_TRUE(contains(from_file.err, file + ": not changed in running pagers (start-up knobs): chunk_size"))
      << show(from_file);
  EXPECT_EQ(status_of(d)["config"]["prefetch_depth"]["value"], "11");
  EXPECT_EQ(status_of(d)["config"]["eviction_policy"]["value"], "cost");

  // A hint changes no knob: a setting given to it is refused, not ignored.
  Result hint = kvpager({"hint", "--prefetch-depth", "3", "park", "session-1"});
  EXPECT_EQ(hint.exit_code, 2) << show(hint);
  EXPECT_TRUE(contains(hint.err, "hint changes no setting (prefetch_depth=3): use kvpager tune")) << show(hint);
  EXPECT_EQ(status_of(d)["config"]["prefetch_depth"]["value"], "11");
  // Nor do status and top, which showed the pagers as if it had been taken.
  for (const std::vector<std::string>& look : {std::vector<std::string>{"status", "--hbm-budget", "1G"},
                                               {"top", "--iterations", "1", "--set", "prefetch_depth=3"}}) {
    Result looked = kvpager(look);
    EXPECT_EQ(looked.exit_code, 2) << show(looked);
    EXPECT_TRUE(contains(looked.err, look[0] + " changes no setting (")) << show(looked);
    EXPECT_EQ(looked.out, "") << show(looked);
  }
  // A file that only says where the pagers are is fine for both.
  const std::string where = tmp_.path() + "/where.toml";
  std::ofstream(where) << "runtime_dir = \"" << runtime_ << "\"\n";
  Result located = kvpager({"tune", "--pid", d.pid_text(), "--config", where, "prefetch_depth=12"});
  EXPECT_EQ(located.exit_code, 0) << show(located);
  EXPECT_EQ(located.err, "") << show(located);
  Result hinted = kvpager({"hint", "--pid", d.pid_text(), "--config", where, "unpin", "session-1"});
  EXPECT_EQ(hinted.exit_code, 0) << show(hinted);
}

TEST_F(ControlCli, InvalidValuesAreRefusedNamingTheKnobAndChangeNothing) {
  Demo d(tmp_.path(), runtime_);
  ASSERT_TRUE(d.ready()) << d.log();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"hbm_budget=banana"}, "hbm_budget"},
      {{"prefetch_depth=8", "high_watermark=2"}, "high_watermark"},
      {{"prefetch_depth=8", "low_watermark=0.99"}, "low_watermark"},
      {{"prefetch_depth=8", "hbm_budget=1T"}, "hbm_budget"},
      {{"prefetch_depth=8", "chunk_size=1M"}, "chunk_size"},
      {{"prefetch_depth=8", "eviction_policy=random"}, "eviction_policy"},
      {{"prefetch_depth=8", "no_such_knob=1"}, "no_such_knob"},
  };
  for (const auto& [sets, knob] : cases) {
    std::vector<std::string> args = {"tune", "--pid", d.pid_text()};
    args.insert(args.end(), sets.begin(), sets.end());
    Result r = kvpager(args);
    EXPECT_EQ(r.exit_code, 2) << show(r);
    EXPECT_TRUE(contains(r.err, knob)) << show(r);
    EXPECT_TRUE(r.out.empty()) << show(r);
  }
  Result not_kv = kvpager({"tune", "--pid", d.pid_text(), "prefetch_depth"});
  EXPECT_EQ(not_kv.exit_code, 2) << show(not_kv);
  // An unknown name lists what tune can change, not every knob.
  Result unknown = kvpager({"tune", "--pid", d.pid_text(), "foo=1"});
  EXPECT_EQ(unknown.exit_code, 2) << show(unknown);
  EXPECT_TRUE(contains(unknown.err, "unknown knob 'foo' (live knobs: ")) << show(unknown);
  EXPECT_FALSE(contains(unknown.err, "chunk_size")) << "not live: " << show(unknown);
  Result nameless = kvpager({"hint", "--pid", d.pid_text(), "park", ""});
  EXPECT_EQ(nameless.exit_code, 2) << "bad usage: " << show(nameless);
  json s = status_of(d);
  EXPECT_EQ(s["config"]["prefetch_depth"]["value"], "4");
  EXPECT_EQ(s["config"]["hbm_budget"]["value"], "16M");
  EXPECT_EQ(s["config"]["high_watermark"]["value"], "0.95");
}

TEST_F(ControlCli, HintsReachANamedContext) {
  Demo d(tmp_.path(), runtime_, {8, 1, "16M"});  // a session is 8M: half the budget
  ASSERT_TRUE(d.ready()) << d.log();
  Result pin = kvpager({"hint", "pin", "session-1"});
  ASSERT_EQ(pin.exit_code, 0) << show(pin);
  EXPECT_EQ(pin.out, "pid " + d.pid_text() + ": pin session-1\n");
  bool pinned = false;
  json s = status_of(d);
  for (const auto& c : s["contexts"])
    if (c["name"] == "session-1") pinned = c["pinned"].get<bool>();
  EXPECT_TRUE(pinned);
  Result drop = kvpager({"hint", "drop", "session-1"});
  EXPECT_EQ(drop.exit_code, 1) << show(drop);
  EXPECT_TRUE(contains(drop.err, "pinned")) << show(drop);
  EXPECT_EQ(kvpager({"hint", "unpin", "session-1"}).exit_code, 0);
  Result none = kvpager({"hint", "park", "session-99"});
  EXPECT_EQ(none.exit_code, 1) << show(none);
  EXPECT_TRUE(contains(none.err, "no context named 'session-99'")) << show(none);
  Result bad = kvpager({"hint", "explode", "session-1"});
  EXPECT_EQ(bad.exit_code, 2) << show(bad);
  // A drop discards the session's bytes; the demo finds zeros on its next turn
  // and recomputes them (as a server re-prefills) instead of calling it
  // corruption: it ends with exit 0 and says so.
  Result dropped = kvpager({"hint", "drop", "session-1"});
  ASSERT_EQ(dropped.exit_code, 0) << show(dropped);
  const auto deadline = Clock::now() + 20s * kSlack;
  while (!contains(d.log(), "dropped by a hint: recomputed them") && Clock::now() < deadline)
    std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(contains(d.log(), "dropped by a hint: recomputed them")) << "the demo came back to session-1: " << d.log();
  EXPECT_EQ(d.stop(SIGINT), 0) << d.log();
  EXPECT_TRUE(contains(d.log(), "dropped by a hint and recomputed")) << d.log();
  EXPECT_TRUE(contains(d.log(), " 0 corrupted chunk(s)")) << d.log();
}

TEST_F(ControlCli, ClientOfAnotherUidIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid (CI runs as root)";
  if (!fs::exists("/usr/bin/setpriv")) GTEST_SKIP() << "setpriv (util-linux) is not installed";
  Demo d(tmp_.path(), runtime_);
  ASSERT_TRUE(d.ready()) << d.log();
  const std::vector<std::string> as_nobody = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                              KVPAGER_BIN};
  auto nobody = [&](std::vector<std::string> args) {
    args.insert(args.begin(), as_nobody.begin(), as_nobody.end());
    return run(args);
  };
  // The 0700 runtime directory keeps other users out.
  Result r = nobody({"status", "--pid", d.pid_text()});
  EXPECT_EQ(r.exit_code, 1) << show(r);
  EXPECT_TRUE(contains(r.err, "Permission denied")) << show(r);
  // With the filesystem opened up, the server's SO_PEERCRED check refuses.
  ASSERT_EQ(chmod(tmp_.path().c_str(), 0755), 0);
  ASSERT_EQ(chmod(runtime_.c_str(), 0755), 0);
  ASSERT_EQ(chmod(d.socket().c_str(), 0666), 0);
  r = nobody({"tune", "--pid", d.pid_text(), "hbm_budget=4M"});
  EXPECT_EQ(r.exit_code, 1) << show(r);
  EXPECT_TRUE(contains(r.err, "permission denied: uid 65534")) << show(r);
  r = nobody({"status", "--json"});
  EXPECT_EQ(r.exit_code, 1) << show(r);
  EXPECT_TRUE(contains(r.err, "permission denied: uid 65534")) << show(r);
  EXPECT_EQ(status_of(d)["config"]["hbm_budget"]["value"], "16M");
}

TEST_F(ControlCli, StaleSocketsOfCrashedPagersAreCleaned) {
  Demo gone(tmp_.path(), runtime_);
  Demo alive(tmp_.path(), runtime_);
  ASSERT_TRUE(gone.ready() && alive.ready()) << gone.log() << alive.log();
  const std::string stale = gone.socket();
  const std::string gone_pid = gone.pid_text();
  gone.crash();  // SIGKILL: no chance to remove its socket
  ASSERT_TRUE(fs::exists(stale));
  Result r = kvpager({"status"});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_TRUE(contains(r.err, "removed the stale control socket of pid " + gone_pid)) << show(r);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_FALSE(contains(r.out, " " + gone_pid + " ")) << r.out;
  EXPECT_TRUE(contains(r.out, " " + alive.pid_text() + " ")) << r.out;

  // A live pid whose socket nobody listens on (the pid was reused): removed
  // too, and said (it went silently).
  const std::string reused = runtime_ + "/" + std::to_string(getpid()) + ".sock";
  {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", reused.c_str());
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
    close(fd);  // bound, never listening: connect() is refused
  }
  r = kvpager({"status"});
  EXPECT_TRUE(contains(r.err, "removed the control socket of pid " + std::to_string(getpid()) +
                                  ": nothing listens on it"))
      << show(r);
  EXPECT_FALSE(fs::exists(reused));
}

// A stopped pager (SIGSTOP) is found but does not answer: status says so
// without claiming there is no pager, and a tune that timed out is not
// carried out when the pager continues.
TEST_F(ControlCli, AStoppedPagerIsNotAnsweringAndATuneThatTimedOutNeverHappens) {
  Demo d(tmp_.path(), runtime_);
  ASSERT_TRUE(d.ready()) << d.log();
  const std::string before = status_of(d)["config"]["prefetch_depth"]["value"].get<std::string>();
  ASSERT_NE(before, "7");
  ASSERT_EQ(kill(d.pid(), SIGSTOP), 0);
  for (int i = 0; i < 1000 && !kvpager::testing::all_threads_stopped(d.pid()); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(kvpager::testing::all_threads_stopped(d.pid())) << "kill() returns before every thread has stopped";
  Result r = kvpager({"status"});
  EXPECT_EQ(r.exit_code, 1) << show(r);
  EXPECT_TRUE(contains(r.out, "none of the 1 pager(s) in " + runtime_ + " answered")) << show(r);
  EXPECT_FALSE(contains(r.out, "no live pagers")) << show(r);
  EXPECT_TRUE(contains(r.err, "1 of 1 pager(s) did not answer")) << show(r);
  Result t = kvpager({"tune", "prefetch_depth=7"});
  EXPECT_EQ(t.exit_code, 1) << show(t);
  ASSERT_EQ(kill(d.pid(), SIGCONT), 0);
  // The socket thread now reads the buffered request; the owner serves
  // every pace (20 ms): give it plenty of turns to (wrongly) carry it out.
  std::this_thread::sleep_for(500ms * kSlack);
  EXPECT_EQ(status_of(d)["config"]["prefetch_depth"]["value"], before);
}

// A pager's command line is any bytes: status and top show control
// characters escaped, so a name cannot move the cursor or fake a line.
TEST_F(ControlCli, ControlCharactersInAPagersCommandAreShownEscaped) {
  const std::string link = tmp_.path() + "/evil\x1b[31mRED\nFAKE";
  ASSERT_EQ(symlink(KVPAGER_BIN, link.c_str()), 0) << std::strerror(errno);
  DemoShape shape;
  shape.program = link;
  Demo d(tmp_.path(), runtime_, shape);
  ASSERT_TRUE(d.ready()) << d.log();
  for (std::vector<std::string> args : {std::vector<std::string>{"status", "--pid", d.pid_text()},
                                        {"status"}, {"top", "--iterations", "1", "--interval", "0.1"}}) {
    Result r = kvpager(args);
    EXPECT_EQ(r.exit_code, 0) << show(r);
    EXPECT_FALSE(contains(r.out, "\x1b[31m")) << "raw escape sequence: " << show(r);
    EXPECT_FALSE(contains(r.out, "\nFAKE")) << "raw newline: " << show(r);
    if (args[0] == "top" || args.size() > 1) {  // the list view clips the command to 24 characters
      EXPECT_TRUE(contains(r.out, "\\x1b[31mRED\\nFAKE")) << show(r);
    }
  }
}

TEST_F(ControlCli, StopSignalsRemoveTheSocketAndPrintTheSummary) {
  for (int sig : {SIGTERM, SIGINT}) {
    Demo d(tmp_.path(), runtime_);
    ASSERT_TRUE(d.ready()) << d.log();
    std::string sock = d.socket();
    EXPECT_EQ(d.stop(sig), 0) << strsignal(sig) << "\n" << d.log();
    EXPECT_FALSE(fs::exists(sock)) << strsignal(sig);
    EXPECT_TRUE(contains(d.log(), "Integrity:")) << d.log();
  }
}

// A large demo's prefill takes seconds (here 4096 sessions); a stop signal
// used to wait for all of it before the summary.
TEST_F(ControlCli, AStopSignalEndsTheDemoDuringItsPrefill) {
  DemoShape big{4096, 1, "16M"};
  big.wait_prefill = false;
  Demo d(tmp_.path(), runtime_, big);
  ASSERT_TRUE(d.ready()) << d.log();  // the socket is there before the prefill starts
  // Served during the prefill too (tune timed out until the first turn).
  Result t = kvpager({"tune", "--pid", d.pid_text(), "prefetch_depth=6"});
  EXPECT_EQ(t.exit_code, 0) << show(t);
  EXPECT_EQ(d.stop(SIGINT), 0) << d.log();
  EXPECT_TRUE(contains(d.log(), "stopped during the prefill")) << d.log();
  EXPECT_FALSE(contains(d.log(), "(4096 of 4096 sessions built)")) << d.log();
  EXPECT_TRUE(contains(d.log(), "Integrity:")) << d.log();
}

TEST_F(ControlCli, TopDrawsAFrameOnATerminalAndQuitsOnQ) {
  Demo d(tmp_.path(), runtime_);
  ASSERT_TRUE(d.ready()) << d.log();
  int master = -1;
  winsize ws{};
  ws.ws_row = 30;
  ws.ws_col = 160;
  pid_t pid = forkpty(&master, nullptr, nullptr, &ws);
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(KVPAGER_BIN, KVPAGER_BIN, "top", "--interval", "0.2", static_cast<char*>(nullptr));
    _exit(126);
  }
  std::string screen;
  auto read_for = [&](std::chrono::milliseconds d_max, auto done) {
    const auto deadline = Clock::now() + d_max;
    while (!done() && Clock::now() < deadline) {
      pollfd p{master, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      char buf[4096];
      ssize_t n = read(master, buf, sizeof buf);
      if (n <= 0) break;
      screen.append(buf, static_cast<size_t>(n));
    }
  };
  // One frame with the header, the column titles and the demo's row.
  read_for(15s * kSlack, [&] {
    return contains(screen, "kvpager top") && contains(screen, "ACCESS/S") && contains(screen, " " + d.pid_text() + " ");
  });
  EXPECT_TRUE(contains(screen, "\x1b[?1049h")) << "no alternate screen";
  EXPECT_TRUE(contains(screen, " " + d.pid_text() + " ")) << screen;
  ASSERT_EQ(write(master, "q", 1), 1);
  int st = -1;
  const auto deadline = Clock::now() + 5s * kSlack;
  while (Clock::now() < deadline && waitpid(pid, &st, WNOHANG) != pid) {
    read_for(50ms, [] { return false; });
  }
  if (Clock::now() >= deadline) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    FAIL() << "top did not quit on q:\n" << screen;
  }
  read_for(200ms, [] { return false; });
  close(master);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "status " << st;
  EXPECT_TRUE(contains(screen, "\x1b[?1049l")) << "the terminal was not restored";
}

// `kvpager top > log &` in an interactive shell: top is a background job of
// the terminal on its stdin. It used to put that terminal in raw mode, which
// stops a background job (SIGTTOU), and never printed a line.
TEST_F(ControlCli, TopAsABackgroundJobOfATerminalPrintsItsLines) {
  Demo d(tmp_.path(), runtime_);
  ASSERT_TRUE(d.ready()) << d.log();
  const std::string out = tmp_.path() + "/top.log";
  int master = -1;
  pid_t shell = forkpty(&master, nullptr, nullptr, nullptr);
  ASSERT_GE(shell, 0);
  if (shell == 0) {
    // This process plays the interactive shell (the terminal's foreground
    // group); top runs in a process group of its own, as `&` makes it.
    pid_t job = fork();
    if (job == 0) {
      setpgid(0, 0);
      signal(SIGTTOU, SIG_DFL);
      signal(SIGTTIN, SIG_DFL);
      int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, STDOUT_FILENO);
      execl(KVPAGER_BIN, KVPAGER_BIN, "top", "--iterations", "3", "--interval", "0.1", static_cast<char*>(nullptr));
      _exit(126);
    }
    setpgid(job, job);
    int st = 0;
    while (waitpid(job, &st, WUNTRACED) < 0 && errno == EINTR) {
    }
    if (WIFSTOPPED(st)) {  // what a shell shows as "Stopped (tty output)"
      kill(job, SIGKILL);
      waitpid(job, &st, 0);
      _exit(99);
    }
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 98);
  }
  int st = -1;
  const auto deadline = Clock::now() + 20s * kSlack;
  while (Clock::now() < deadline && waitpid(shell, &st, WNOHANG) != shell) {
    pollfd p{master, POLLIN, 0};
    char buf[4096];
    if (poll(&p, 1, 50) > 0 && read(master, buf, sizeof buf) <= 0) std::this_thread::sleep_for(50ms);
  }
  close(master);
  if (Clock::now() >= deadline) {
    kill(shell, SIGKILL);
    waitpid(shell, &st, 0);
    FAIL() << "top did not end";
  }
  ASSERT_TRUE(WIFEXITED(st)) << st;
  EXPECT_NE(WEXITSTATUS(st), 99) << "top was stopped by its terminal (SIGTTOU/SIGTTIN)";
  EXPECT_EQ(WEXITSTATUS(st), 0);
  std::ifstream in(out);
  size_t rows = 0;
  for (std::string line; std::getline(in, line);) {
    EXPECT_TRUE(contains(line, "pid=" + d.pid_text() + " ")) << line;
    ++rows;
  }
  EXPECT_EQ(rows, 3u);
}

TEST_F(ControlCli, TopPrintsPlainLinesWhenNotATerminal) {
  Demo d(tmp_.path(), runtime_);
  ASSERT_TRUE(d.ready()) << d.log();
  Result r = kvpager({"top", "--iterations", "3", "--interval", "0.1"});
  ASSERT_EQ(r.exit_code, 0) << show(r);
  EXPECT_FALSE(contains(r.out, "\x1b")) << "escape sequences on a pipe";
  size_t rows = 0;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    EXPECT_TRUE(contains(line, "pid=" + d.pid_text() + " ")) << line;
    EXPECT_TRUE(contains(line, "hbm=")) << line;
    // A rate needs a previous sample: none is shown, not a made-up 0.
    const bool first = rows == 0;
    EXPECT_EQ(contains(line, " accesses_per_s=- faults_per_s=- "), first) << line;
    if (!first) {
      EXPECT_TRUE(std::regex_search(line, std::regex(" accesses_per_s=[0-9]+ faults_per_s=[0-9]+ "))) << line;
    }
    ++rows;
  }
  EXPECT_EQ(rows, 3u) << r.out;
}

// `kvpager run` looks for libkvpager.so next to its binary: give it a copy
// of the binary with (or without) the stand-in library beside it.
std::string binary_in(const std::string& dir, bool with_preload) {
  fs::create_directories(dir);
  fs::copy_file(KVPAGER_BIN, dir + "/kvpager", fs::copy_options::overwrite_existing);
  if (with_preload) fs::copy_file(KVPAGER_TEST_PRELOAD, dir + "/libkvpager.so", fs::copy_options::overwrite_existing);
  return dir + "/kvpager";
}

TEST_F(ControlCli, RunPreloadsTheLibraryPassesSettingsAndReturnsTheCommandsStatus) {
  std::string bin = binary_in(tmp_.path() + "/bin", true);
  Result r = run({bin, "run", "--budget", "1G", "--set", "prefetch_depth=8", "--", "/bin/sh", "-c",
                  "echo \"$KVPAGER_HBM_BUDGET $KVPAGER_PREFETCH_DEPTH $KVPAGER_RUNTIME_DIR\"; exit 7"});
  EXPECT_EQ(r.exit_code, 7) << show(r);
  EXPECT_EQ(r.out, "1G 8 " + runtime_ + "\n") << show(r);
  EXPECT_TRUE(contains(r.err, "kvpager-test-preload: loaded in pid")) << show(r);
  if (!fs::exists("/dev/nvidia0")) {
    EXPECT_TRUE(contains(r.err, "will pass through")) << show(r);
  }

  // --budget is one more spelling of hbm_budget: the last one given wins.
  for (auto [first, second] : {std::pair{"--budget", "--hbm-budget"}, std::pair{"--hbm-budget", "--budget"}}) {
    Result order = run({bin, "run", first, "2G", second, "3G", "--", "/bin/sh", "-c", "echo $KVPAGER_HBM_BUDGET"});
    EXPECT_EQ(order.exit_code, 0) << show(order);
    EXPECT_EQ(order.out, "3G\n") << first << " then " << second << ": " << show(order);
  }

  Result cfg_err = run({bin, "run", "--budget", "lots", "--", "/bin/true"});
  EXPECT_EQ(cfg_err.exit_code, 2) << show(cfg_err);
  EXPECT_TRUE(contains(cfg_err.err, "hbm_budget")) << show(cfg_err);

  // A program that cannot run is named as such, with no word about how it
  // would have run (it used to be "will pass through and ... runs unchanged").
  Result missing = run({bin, "run", "--", "/no/such/program"});
  EXPECT_EQ(missing.exit_code, 127) << show(missing);
  EXPECT_TRUE(contains(missing.err, "cannot run /no/such/program: No such file or directory")) << show(missing);
  EXPECT_FALSE(contains(missing.err, "runs unchanged")) << show(missing);
  Result not_on_path = run({bin, "run", "--", "kvpager-no-such-program-on-path"});
  EXPECT_EQ(not_on_path.exit_code, 127) << show(not_on_path);
  Result directory = run({bin, "run", "--", tmp_.path()});
  EXPECT_EQ(directory.exit_code, 126) << show(directory);
  EXPECT_FALSE(contains(directory.err, "runs unchanged")) << show(directory);
  Result on_path = run({bin, "run", "--", "sh", "-c", "exit 5"});  // found through PATH
  EXPECT_EQ(on_path.exit_code, 5) << show(on_path);
}

// --config replaces $KVPAGER_CONFIG for the program too: the library read
// $KVPAGER_CONFIG again, so the replaced file's other settings reached it.
// The file that is used reaches it as KVPAGER_* variables.
TEST_F(ControlCli, RunWithConfigGivesTheProgramThatFileOnly) {
  std::string bin = binary_in(tmp_.path() + "/bin", true);
  const std::string replaced = tmp_.path() + "/replaced.toml", used = tmp_.path() + "/used.toml";
  std::ofstream(replaced) << "hbm_budget = \"1G\"\n";
  std::ofstream(used) << "prefetch_depth = 5\n";
  const std::string show_env = "echo \"[$KVPAGER_CONFIG] [$KVPAGER_HBM_BUDGET] [$KVPAGER_PREFETCH_DEPTH]\"";
  Result r = kvpager::testing::run_process({bin, "run", "--config", used, "--", "/bin/sh", "-c", show_env},
                                           {"KVPAGER_CONFIG=" + replaced}, 30.0 * kSlack);
  EXPECT_EQ(r.exit_code, 0) << show(r);
  EXPECT_EQ(r.out, "[] [] [5]\n") << show(r);
  // Without --config, $KVPAGER_CONFIG's file is the one, passed the same way.
  Result env_file = kvpager::testing::run_process({bin, "run", "--", "/bin/sh", "-c", show_env},
                                                  {"KVPAGER_CONFIG=" + replaced}, 30.0 * kSlack);
  EXPECT_EQ(env_file.exit_code, 0) << show(env_file);
  EXPECT_EQ(env_file.out, "[] [1G] []\n") << show(env_file);
}

TEST_F(ControlCli, RunWithoutTheLibrarySaysWhereItLooked) {
  std::string bin = binary_in(tmp_.path() + "/lonely/bin", false);
  Result r = run({bin, "run", "--", "/bin/true"});
  EXPECT_EQ(r.exit_code, 1) << show(r);
  EXPECT_TRUE(contains(r.err, "libkvpager.so not found")) << show(r);
  EXPECT_TRUE(contains(r.err, tmp_.path() + "/lonely/bin/libkvpager.so")) << show(r);
  EXPECT_TRUE(contains(r.err, "kvpager_preload")) << show(r);
}

}  // namespace
