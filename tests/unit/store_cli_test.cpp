// `kvpager store ...` end to end: the binary, its output and exit codes
// (0 ok, 1 runtime failure, 2 bad usage).
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <string_view>

#include "kvpager/store/format.h"
#include "store_test_util.h"

using namespace kvpager::store;
using namespace kvpager::store::testing;

namespace {

struct CliRun {
  int code = -1;
  std::string out;  // stdout and stderr
};

// wrapper: a command line the binary runs under (setpriv ... --).
CliRun run_cli(const std::string& args, const std::string& wrapper = "") {
  CliRun r;
  // ctest sets KVPAGER_SRC for the tests; kvpager rejects unknown KVPAGER_*
  // variables (a typo must not pass silently), so it is not handed on.
  std::string cmd = wrapper + "env -u KVPAGER_SRC " + std::string(KVPAGER_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) r.out.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

void write_file(const std::string& path, const std::vector<std::byte>& data) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_TRUE(f) << path;
  EXPECT_EQ(std::fwrite(data.data(), 1, data.size(), f), data.size());
  std::fclose(f);
}

std::vector<std::byte> bytes_of(std::string_view t) {
  auto b = std::as_bytes(std::span(t.data(), t.size()));
  return {b.begin(), b.end()};
}

// Every name in dir (not recursive; links, FIFOs and devices too), sorted.
std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::byte> read_file(const std::string& path) {
  std::vector<std::byte> out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return out;
  std::byte buf[65536];
  while (size_t n = std::fread(buf, 1, sizeof buf, f)) out.insert(out.end(), buf, buf + n);
  std::fclose(f);
  return out;
}

}  // namespace

TEST(StoreCli, PutGetLsRmRoundTripAFileAcrossStores) {
  TempDir d;
  const std::string a = d.sub("store-a"), b = d.sub("store-b");
  auto data = pattern(5, 5 * 1024 * 1024 + 77);
  write_file(d.sub("in.bin"), data);

  CliRun r = run_cli("store put " + d.sub("in.bin") + " --context 'chat 1' --tokens 900 --ttl 2h --store " + a);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("store --store " + a + " ls --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["name"], "chat 1");
  EXPECT_EQ(j[0]["bytes"], data.size());
  EXPECT_EQ(j[0]["token_count"], 900);
  EXPECT_EQ(j[0]["ttl_ns"], 7200ull * 1'000'000'000);
  EXPECT_EQ(j[0]["chunks"], 3);

  // Export from one store, import into another: the bytes travel intact.
  r = run_cli("store get 'chat 1' " + d.sub("out.bin") + " --store " + a);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_file(d.sub("out.bin")), data);
  r = run_cli("store put " + d.sub("out.bin") + " --context 'chat 1' --store " + b);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("store get 'chat 1' - --store " + b + " > " + d.sub("again.bin"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_file(d.sub("again.bin")), data);

  r = run_cli("store ls --store " + b);
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("chat 1"), std::string::npos) << r.out;
  // The `store put` that published it has exited: said, not a pid that looks alive.
  EXPECT_TRUE(std::regex_search(r.out, std::regex("uid [0-9]+ pid [0-9]+ \\(exited\\)\n"))) << r.out;
  r = run_cli("store fsck --store " + a);
  EXPECT_EQ(r.code, 0) << r.out;
  r = run_cli("store rm 'chat 1' --store " + a);
  EXPECT_EQ(r.code, 0) << r.out;
  r = run_cli("store rm 'chat 1' --store " + a);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("no context 'chat 1'"), std::string::npos) << r.out;
}

TEST(StoreCli, FailuresExitWithTheRightCodeAndLeaveNoPartialFile) {
  TempDir d;
  const std::string s = d.sub("store");
  // Bad usage: 2.
  EXPECT_EQ(run_cli("store put " + d.sub("missing.bin") + " --context x --store " + s).code, 2);
  EXPECT_EQ(run_cli("store put /etc/hostname --store " + s).code, 2);
  EXPECT_EQ(run_cli("store put /etc/hostname --context x --ttl soon --store " + s).code, 2);
  // An empty TTL was "no TTL" without a word; too long a one "not a duration".
  CliRun empty_ttl = run_cli("store put /etc/hostname --context x --ttl '' --store " + s);
  EXPECT_EQ(empty_ttl.code, 2) << empty_ttl.out;
  EXPECT_NE(empty_ttl.out.find("--ttl: an empty TTL: give a duration, or 0 for none"), std::string::npos) << empty_ttl.out;
  CliRun long_ttl = run_cli("store put /etc/hostname --context x --ttl 99999999h --store " + s);
  EXPECT_EQ(long_ttl.code, 2) << long_ttl.out;
  EXPECT_NE(long_ttl.out.find("at most 500 years"), std::string::npos) << long_ttl.out;
  EXPECT_EQ(run_cli("store frobnicate --store " + s).code, 2);
  // A directory that is not a store: a configuration error naming store_dir.
  CliRun r = run_cli("store ls --store /etc");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("store_dir"), std::string::npos) << r.out;
  // Runtime failures: 1.
  EXPECT_EQ(run_cli("store get nope " + d.sub("o.bin") + " --store " + s).code, 1);
  // A directory for FILE is bad usage, said as such.
  std::filesystem::create_directory(d.sub("adir"));
  r = run_cli("store get c1 " + d.sub("adir") + " --store " + s);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("adir is a directory: name the file to write"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(d.sub("o.bin")));

  // A corrupted chunk: get fails, leaves no output file; fsck says so (1),
  // fsck --repair removes the context (0), and fsck is clean again.
  write_file(d.sub("in.bin"), pattern(1, 3 * 1024 * 1024));
  ASSERT_EQ(run_cli("store put " + d.sub("in.bin") + " --context c --store " + s).code, 0);
  auto objects = files_under(s + "/objects");
  ASSERT_EQ(objects.size(), 2u);
  ASSERT_TRUE(flip_byte(s + "/objects/" + objects[0], 5000));
  r = run_cli("store get c " + d.sub("o.bin") + " --store " + s);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("corrupt"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(d.sub("o.bin")));
  EXPECT_FALSE(std::filesystem::exists(d.sub("o.bin.kvpager-partial")));
  r = run_cli("store fsck --store " + s);
  EXPECT_EQ(r.code, 1) << r.out;
  r = run_cli("store fsck --repair --store " + s);
  EXPECT_EQ(r.code, 0) << r.out;
  r = run_cli("store fsck --json --store " + s);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(nlohmann::json::parse(r.out)["problems"].empty());
  EXPECT_EQ(run_cli("store get c " + d.sub("o.bin") + " --store " + s).code, 1);
}

TEST(StoreCli, BenchReportsThroughput) {
  TempDir d;
  CliRun r = run_cli("store bench --size 64M --json --store " + d.sub("s"));
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["bytes"], 64u << 20);
  EXPECT_GT(j["write_gbps"].get<double>(), 0.0);
  EXPECT_GT(j["rewrite_gbps"].get<double>(), 0.0);
  EXPECT_GT(j["read_gbps"].get<double>(), 0.0);
  EXPECT_TRUE(files_under(d.sub("s/objects")).empty()) << "the bench cleans up after itself";
}

// `store get NAME FILE` writes FILE and nothing else: not a file that
// happens to carry the old temporary's name, not what a symlink there points
// to; a FIFO or device given as FILE is written into, never replaced.
TEST(StoreCli, GetNeverTouchesAFileThatIsNotOurs) {
  TempDir d;
  const std::string s = d.sub("store");
  auto data = pattern(7, 3 * 1024 * 1024 + 5);
  write_file(d.sub("in.bin"), data);
  // Context "bad": its chunks corrupted, so that its get fails.
  ASSERT_EQ(run_cli("store put " + d.sub("in.bin") + " --context bad --store " + s).code, 0);
  auto objects = files_under(s + "/objects");
  ASSERT_EQ(objects.size(), 2u);
  for (const auto& f : objects) ASSERT_TRUE(flip_byte(s + "/objects/" + f, 5000));
  ASSERT_EQ(run_cli("store put " + d.sub("in.bin") + " --context c --store " + s).code, 0);

  // A user's file named like the old temporary survives a failed get, and
  // so does FILE.
  write_file(d.sub("o.kvpager-partial"), bytes_of("important"));
  write_file(d.sub("o"), bytes_of("old"));
  CliRun r = run_cli("store get bad " + d.sub("o") + " --store " + s);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_EQ(read_file(d.sub("o.kvpager-partial")), bytes_of("important"));
  EXPECT_EQ(read_file(d.sub("o")), bytes_of("old")) << "a failed get leaves FILE as it was";

  // A symlink where the old temporary went: its target is not written.
  write_file(d.sub("victim"), bytes_of("victim"));
  ASSERT_EQ(symlink("victim", d.sub("o2.kvpager-partial").c_str()), 0);
  r = run_cli("store get c " + d.sub("o2") + " --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_file(d.sub("victim")), bytes_of("victim"));
  EXPECT_EQ(read_file(d.sub("o2")), data);

  // FILE a symlink: the target gets the bytes, the link stays.
  write_file(d.sub("target"), bytes_of("old"));
  ASSERT_EQ(symlink("target", d.sub("link").c_str()), 0);
  r = run_cli("store get c " + d.sub("link") + " --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(std::filesystem::is_symlink(d.sub("link")));
  EXPECT_EQ(read_file(d.sub("target")), data);

  // FILE a FIFO: written into (a reader gets the bytes), still a FIFO.
  ASSERT_EQ(mkfifo(d.sub("fifo").c_str(), 0600), 0);
  r = run_cli("store get c " + d.sub("fifo") + " --store " + s + " & timeout 60 cat " + d.sub("fifo") + " > " + d.sub("from-fifo") +
              "; wait $!");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_file(d.sub("from-fifo")), data);
  struct stat st{};
  ASSERT_EQ(lstat(d.sub("fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));

  // FILE a character device: a null device of our own where we may make
  // one (root), else /dev/null itself (then we cannot replace it anyway).
  std::string null_dev = d.sub("null");
  if (mknod(null_dev.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) null_dev = "/dev/null";
  r = run_cli("store get c " + null_dev + " --store " + s);
  EXPECT_EQ(r.code, 0) << r.out;
  ASSERT_EQ(lstat(null_dev.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << null_dev << " is still a device";

  // Nothing else appeared: no temporaries left behind.
  std::vector<std::string> want{"fifo",   "from-fifo", "in.bin", "link",   "o", "o.kvpager-partial", "o2",
                                "o2.kvpager-partial", "store", "target", "victim"};
  if (null_dev != "/dev/null") want.push_back("null");
  std::sort(want.begin(), want.end());
  EXPECT_EQ(names_in(d.path()), want);
}

TEST(StoreCli, GetToDevStdoutIsStandardOutput) {
  TempDir d;
  const std::string s = d.sub("store");
  auto data = pattern(8, 1024 * 1024 + 3);
  write_file(d.sub("in.bin"), data);
  ASSERT_EQ(run_cli("store put " + d.sub("in.bin") + " --context c --store " + s).code, 0);
  for (const char* out : {"-", "/dev/stdout"}) {
    CliRun r = run_cli("store get c " + std::string(out) + " --store " + s + " > " + d.sub("via-stdout"));
    EXPECT_EQ(r.code, 0) << out << ": " << r.out;
    EXPECT_EQ(read_file(d.sub("via-stdout")), data) << out;
  }
}

// A typo in --store must not pass for a new, empty store.
TEST(StoreCli, CommandsThatReadRefuseAStoreThatDoesNotExist) {
  TempDir d;
  const std::string typo = d.sub("typo");
  for (const std::string& cmd :
       std::vector<std::string>{"ls", "ls --json", "get c " + d.sub("out"), "rm c", "fsck", "fsck --repair"}) {
    CliRun r = run_cli("store --store " + typo + " " + cmd);
    EXPECT_EQ(r.code, 2) << cmd << ": " << r.out;
    EXPECT_NE(r.out.find("no store at " + typo + ": it does not exist (store_dir / --store)"), std::string::npos)
        << cmd << ": " << r.out;
    EXPECT_FALSE(std::filesystem::exists(typo)) << cmd << " created it";
  }
  EXPECT_FALSE(std::filesystem::exists(d.sub("out")));
  // Nor an empty directory: it is left empty (ls laid a store out in it).
  std::filesystem::create_directory(d.sub("empty"));
  for (const std::string& cmd : std::vector<std::string>{"ls", "rm c", "fsck --repair"}) {
    CliRun r = run_cli("store --store " + d.sub("empty") + " " + cmd);
    EXPECT_EQ(r.code, 2) << cmd << ": " << r.out;
    EXPECT_NE(r.out.find("no store at " + d.sub("empty") + ": it is an empty directory"), std::string::npos) << r.out;
    EXPECT_TRUE(std::filesystem::is_empty(d.sub("empty"))) << cmd;
  }
  // put makes one there, as where there is nothing.
  write_file(d.sub("in0.bin"), pattern(8, 100));
  EXPECT_EQ(run_cli("store put " + d.sub("in0.bin") + " --context c --store " + d.sub("empty")).code, 0);
  EXPECT_EQ(run_cli("store --store " + d.sub("empty") + " ls").code, 0);
  write_file(d.sub("in.bin"), pattern(9, 100));
  EXPECT_EQ(run_cli("store put " + d.sub("in.bin") + " --context c --store " + d.sub("new")).code, 0);
  EXPECT_EQ(run_cli("store --store " + d.sub("new") + " get c " + d.sub("out")).code, 0);
}

// A store's files are private to the user that made it (0600/0700); another
// user is told whose it is and what to do, not "not a kvpager store".
TEST(StoreCli, AnotherUsersStoreIsRefusedNamingItsOwner) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root, to run kvpager as another user (setpriv)";
  if (std::system("command -v setpriv >/dev/null 2>&1") != 0) GTEST_SKIP() << "setpriv (util-linux) not installed";
  const std::string nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups -- ";
  TempDir d;
  ASSERT_EQ(chmod(d.path().c_str(), 0755), 0);  // others may walk in; the store itself stays private
  write_file(d.sub("in.bin"), pattern(3, 4096));
  ASSERT_EQ(run_cli("store put " + d.sub("in.bin") + " --context c --store " + d.sub("s")).code, 0);
  for (const std::string& cmd : std::vector<std::string>{"ls", "get c -", "rm c", "put --context x /dev/null"}) {
    CliRun r = run_cli("store --store " + d.sub("s") + " " + cmd, nobody);
    EXPECT_EQ(r.code, 2) << cmd << ": " << r.out;
    EXPECT_NE(r.out.find("Permission denied: the store belongs to root (uid 0)"), std::string::npos) << cmd << ": " << r.out;
    EXPECT_EQ(r.out.find("not a kvpager store"), std::string::npos) << cmd << ": " << r.out;
  }
  EXPECT_EQ(run_cli("store --store " + d.sub("s") + " get c -").out.size(), 4096u) << "the owner still reads it";

  // A store below a directory the user cannot enter.
  std::filesystem::create_directory(d.sub("closed"));
  ASSERT_EQ(chmod(d.sub("closed").c_str(), 0700), 0);
  CliRun r = run_cli("store --store " + d.sub("closed/s") + " ls", nobody);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("a directory above it is closed to this user"), std::string::npos) << r.out;
}

TEST(StoreCli, PutOntoAnExistingNameSaysItReplacesIt) {
  TempDir d;
  const std::string s = d.sub("store");
  write_file(d.sub("a"), pattern(10, 3000));
  write_file(d.sub("b"), pattern(11, 5000));
  CliRun r = run_cli("store put " + d.sub("a") + " --context c --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("stored context 'c'"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("replaced"), std::string::npos) << r.out;
  r = run_cli("store put " + d.sub("b") + " --context c --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("replaced context 'c' (was 3000 bytes, generation "), std::string::npos) << r.out;
  r = run_cli("store get c " + d.sub("out") + " --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_file(d.sub("out")), pattern(11, 5000));
  r = run_cli("store put --help");
  EXPECT_NE(r.out.find("replaced"), std::string::npos) << r.out;
}

// A put that makes room under nvme_capacity by evicting other contexts says
// which ones went, and how many bytes, instead of letting them vanish.
TEST(StoreCli, PutSaysWhichContextsItEvictedToStayWithinTheCapacity) {
  TempDir d;
  const std::string s = d.sub("store");
  // 2 MiB: one object of 2 MiB + its 4 KiB header; four fit in 12M.
  write_file(d.sub("2m"), pattern(14, 2 * 1024 * 1024));
  const std::string put = "--nvme-capacity 12M store put " + d.sub("2m") + " --store " + s + " --context ";
  for (const char* name : {"x1", "x2"}) ASSERT_EQ(run_cli(put + name).code, 0) << name;
  ASSERT_EQ(run_cli(put + "keep --pin").code, 0);
  CliRun r = run_cli(put + "x3");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find("evicted"), std::string::npos) << "room without evicting: " << r.out;
  // A put of `mib` MiB of fresh bytes as `name` under the 12M capacity.
  auto put_mib = [&](int mib, const std::string& name) {
    const std::string file = d.sub(std::to_string(mib) + "m");
    write_file(file, pattern(static_cast<uint64_t>(100 + mib), static_cast<size_t>(mib) * 1024 * 1024));
    return run_cli("--nvme-capacity 12M store put " + file + " --context " + name + " --store " + s);
  };
  auto names = [&] {
    std::vector<std::string> left;
    for (const auto& e : nlohmann::json::parse(run_cli("store ls --json --store " + s).out)) left.push_back(e["name"]);
    return left;
  };
  // 6 MiB more: the two least recently used unpinned contexts go.
  r = put_mib(6, "big");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("evicted 2 least recently used context(s) (4.00 MiB) to stay within nvme_capacity = 12M: "
                       "'x1', 'x2'"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(names(), (std::vector<std::string>{"big", "keep", "x3"}));

  // Replacing x3 (the least recently used) by 4 MiB evicts x3's own old
  // version, and big: x3 is named as such (it was left out of the list).
  r = put_mib(4, "x3");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("to stay within nvme_capacity = 12M: 'big', 'x3' (the version this put replaces)\n"),
            std::string::npos)
      << r.out;
  // A put that fails for room still names what it evicted trying.
  r = put_mib(11, "huge");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("evicted 1 least recently used context(s) (4.00 MiB) to stay within nvme_capacity = 12M: "
                       "'x3'\nkvpager: storing context 'huge'"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(names(), (std::vector<std::string>{"keep"}));
}

// The store takes any name but NUL; a kvpager-fs mount shows only those that
// can be file names. put says so for one it will not show, and stores it.
TEST(StoreCli, PutSaysWhenAMountWillNotShowTheName) {
  TempDir d;
  write_file(d.sub("in.bin"), pattern(3, 100));
  for (const std::string& name : {std::string("a/b"), std::string(".."), std::string(300, 'x')}) {
    CliRun r = run_cli("store put " + d.sub("in.bin") + " --context '" + name + "' --store " + d.sub("s"));
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("a kvpager-fs mount does not show context"), std::string::npos) << name << ": " << r.out;
  }
  CliRun plain = run_cli("store put " + d.sub("in.bin") + " --context fine --store " + d.sub("s"));
  EXPECT_EQ(plain.code, 0) << plain.out;
  EXPECT_EQ(plain.out.find("does not show"), std::string::npos) << plain.out;
  EXPECT_NE(run_cli("store --store " + d.sub("s") + " ls").out.find("a/b"), std::string::npos);
}

// The flags define the replacing context; settings of the old one that it
// lacks are not kept, and the replaced line says which, and how to keep them.
TEST(StoreCli, PutSaysWhichSettingsOfTheReplacedContextItDrops) {
  TempDir d;
  const std::string s = d.sub("store");
  write_file(d.sub("a"), pattern(13, 10));
  ASSERT_EQ(run_cli("store put " + d.sub("a") + " --context pp --pin --ttl 1h --tokens 5 --store " + s).code, 0);
  CliRun r = run_cli("store put " + d.sub("a") + " --context pp --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("; the old one was pinned, TTL 1h, 5 tokens: give --pin/--ttl/--tokens to keep them"),
            std::string::npos)
      << r.out;
  auto j = nlohmann::json::parse(run_cli("store ls --json --store " + s).out);
  EXPECT_EQ(j[0]["pinned"], false) << "the flags define the new context";
  r = run_cli("store put " + d.sub("a") + " --context pp --ttl 2h --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find("the old one was"), std::string::npos) << "it had nothing the new one lacks: " << r.out;
  r = run_cli("store put " + d.sub("a") + " --context pp --store " + s);
  EXPECT_NE(r.out.find("; the old one was TTL 2h: give --ttl to keep it"), std::string::npos) << r.out;
}

// Names are any bytes but NUL; a terminal must not act on them.
TEST(StoreCli, HumanOutputEscapesControlCharactersAndJsonKeepsThem) {
  TempDir d;
  const std::string s = d.sub("store");
  write_file(d.sub("in"), pattern(12, 100));
  const std::string name = "a\x01" "b\nc\x1b[2J";
  const std::string shown = "a\\x01b\\nc\\x1b[2J";
  // printf in the shell makes the bytes (popen's /bin/sh has no $'...').
  const std::string arg = "\"$(printf 'a\\001b\\nc\\033[2J')\"";
  CliRun r = run_cli("store put " + d.sub("in") + " --context " + arg + " --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("stored context '" + shown + "'"), std::string::npos) << r.out;
  r = run_cli("store ls --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find(shown), std::string::npos) << r.out;
  for (const CliRun& out : {r, run_cli("store rm nothere" + arg + " --store " + s)}) {
    EXPECT_EQ(out.out.find('\x01'), std::string::npos) << out.out;
    EXPECT_EQ(out.out.find('\x1b'), std::string::npos) << out.out;
  }
  r = run_cli("store ls --json --store " + s);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)[0]["name"], name);
  r = run_cli("store rm " + arg + " --store " + s);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("removed context '" + shown + "'"), std::string::npos) << r.out;
}

TEST(StoreCli, BenchRefusesASizeThatIsNotWholeChunks) {
  TempDir d;
  CliRun r = run_cli("store bench --size 1 --store " + d.sub("s"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("at least one chunk (2M"), std::string::npos) << r.out;
  r = run_cli("store bench --size 3M --store " + d.sub("s"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("not a whole number of chunks (2M"), std::string::npos) << r.out;
  r = run_cli("store bench --size lots --store " + d.sub("s"));
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_FALSE(std::filesystem::exists(d.sub("s"))) << "refused before the store is touched";
}

// Starts `store bench --size 512M`, sends `sig` once its first object is on
// disk, and returns what it printed and "exit=STATUS".
std::string bench_stopped_by(const std::string& store, const char* sig) {
  const std::string cmd = "env -u KVPAGER_SRC " + std::string(KVPAGER_BIN) + " store bench --size 512M --store " + store +
                          " 2>&1 & pid=$!; while kill -0 $pid 2>/dev/null && [ -z \"$(find " + store +
                          " -type f -size +1M 2>/dev/null | head -1)\" ]; do sleep 0.01; done; kill -" + sig +
                          " $pid; wait $pid; echo exit=$?";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  return out;
}

// Whether the file system of `dir` has room for a 512M bench (and some).
bool room_for_bench(const std::string& dir) {
  struct statvfs fsv {};
  return statvfs(dir.c_str(), &fsv) == 0 && uint64_t{fsv.f_bavail} * fsv.f_frsize > uint64_t{1} << 30;
}

size_t objects_under(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    n += e.is_regular_file() && e.file_size() > 1024 * 1024 ? 1u : 0u;
  return n;
}

// A bench stopped by a signal (Ctrl-C; here SIGTERM once its first object
// is on disk) removes what it wrote and says so; it used to leave every
// object in the store until the store was next opened. A size the file
// system cannot hold is refused before anything is written.
TEST(StoreCli, AStoppedBenchRemovesWhatItWroteAndATooLargeOneIsRefused) {
  TempDir d;
  if (!room_for_bench(d.path())) GTEST_SKIP() << "less than 1 GiB free in " << d.path();
  const std::string store = d.sub("s");
  const std::string out = bench_stopped_by(store, "TERM");
  EXPECT_NE(out.find("exit=143"), std::string::npos) << out;
  EXPECT_NE(out.find("stopped by Terminated; the objects it wrote are removed"), std::string::npos) << out;
  EXPECT_EQ(objects_under(store), 0u) << "objects left in " << store;

  CliRun r = run_cli("store bench --size 64P --store " + store);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("free"), std::string::npos) << r.out;
}

// What a killed writer leaves is reclaimed by the next open of the store;
// fsck (which opens it) says that it did, instead of "0 dead writer(s)" for
// a store it has just cleaned.
TEST(StoreCli, FsckSaysWhatOpeningTheStoreReclaimed) {
  TempDir d;
  if (!room_for_bench(d.path())) GTEST_SKIP() << "less than 1 GiB free in " << d.path();
  const std::string store = d.sub("s");
  const std::string out = bench_stopped_by(store, "KILL");
  ASSERT_NE(out.find("exit=137"), std::string::npos) << out;
  ASSERT_GT(objects_under(store), 0u) << "the killed bench left its objects";
  CliRun r = run_cli("store fsck --store " + store);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("opening the store removed "), std::string::npos) << r.out;
  EXPECT_EQ(objects_under(store), 0u);
  r = run_cli("store fsck --json --store " + store);
  ASSERT_NE(r.out.find('{'), std::string::npos) << r.out;
  auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')), nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["removed_at_open"], 0) << "nothing left to reclaim the second time";
}

// A namespace is part of a context's identity: an export carries it to the
// next store (unless --namespace says otherwise), ls --namespace shows that
// namespace only, and a name looked up in the wrong one says where it is.
TEST(StoreCli, NamespacesTravelWithExportsAndScopeLsGetAndRm) {
  TempDir d;
  const std::string a = d.sub("store-a"), b = d.sub("store-b");
  write_file(d.sub("in.bin"), pattern(9, 100'000));
  ASSERT_EQ(run_cli("store put " + d.sub("in.bin") + " --context c --namespace tenantA --store " + a).code, 0);
  ASSERT_EQ(run_cli("store put " + d.sub("in.bin") + " --context c --store " + a).code, 0);
  ASSERT_EQ(run_cli("store put " + d.sub("in.bin") + " --context only-a --namespace tenantA --store " + a).code, 0);

  auto names = [](const std::string& ls_json) {
    std::vector<std::string> out;
    for (const auto& e : nlohmann::json::parse(ls_json))
      out.push_back(e["namespace"].get<std::string>() + "/" + e["name"].get<std::string>());
    std::sort(out.begin(), out.end());
    return out;
  };
  CliRun r = run_cli("store ls --json --store " + a);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(names(r.out), (std::vector<std::string>{"/c", "tenantA/c", "tenantA/only-a"}));
  r = run_cli("store ls --help");
  EXPECT_NE(r.out.find("--namespace"), std::string::npos) << "ls --help shows what docs/store.md shows: " << r.out;
  r = run_cli("store ls --json --namespace tenantA --store " + a);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(names(r.out), (std::vector<std::string>{"tenantA/c", "tenantA/only-a"}));
  r = run_cli("store ls --json --namespace '' --store " + a);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(names(r.out), (std::vector<std::string>{"/c"}));

  r = run_cli("store get only-a " + d.sub("x") + " --store " + a);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("no context 'only-a'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("namespace(s) 'tenantA' have one: give --namespace"), std::string::npos) << r.out;
  r = run_cli("store rm only-a --store " + a);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("'tenantA' have one"), std::string::npos) << r.out;

  r = run_cli("store get c " + d.sub("c.kvctx") + " --export --namespace tenantA --store " + a);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("store put " + d.sub("c.kvctx") + " --store " + b);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("store put " + d.sub("c.kvctx") + " --namespace tenantB --store " + b);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_cli("store ls --json --store " + b);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(names(r.out), (std::vector<std::string>{"tenantA/c", "tenantB/c"}))
      << "the export's namespace, or the one --namespace names";
}

namespace {
// The JSON document in a command's output (stderr, merged in, may carry
// log lines around it).
nlohmann::json json_in(const std::string& out) {
  const size_t b = out.find('{'), e = out.rfind('}');
  if (b == std::string::npos || e == std::string::npos || e < b) return nlohmann::json();
  return nlohmann::json::parse(out.substr(b, e - b + 1), nullptr, false);
}
}  // namespace

// fsck tells damage (what --repair removes; exit 1 while some remains) from
// what it leaves alone on purpose (exit 0): an orphan a writer may still be
// publishing (it says when it becomes removable), and entries the store did
// not make, which it names for a person to remove. Its totals count every
// object it read, bad ones too.
TEST(StoreCli, FsckTellsDamageFromWhatItLeavesAlone) {
  TempDir d;
  const std::string s = d.sub("store");
  const auto npos = std::string::npos;
  write_file(d.sub("big"), pattern(20, 3 * 1024 * 1024));
  write_file(d.sub("small"), pattern(21, 1000));
  ASSERT_EQ(run_cli("store put " + d.sub("big") + " --context c --store " + s).code, 0);
  ASSERT_EQ(run_cli("store put " + d.sub("small") + " --context o --store " + s).code, 0);
  // o's object is named by nothing now, as while a writer publishes: young.
  ASSERT_TRUE(std::filesystem::remove(s + "/contexts/" + key_hex(context_id("", "o")) + ".m"));
  std::filesystem::create_directories(s + "/objects/ab/sub");
  write_file(s + "/objects/zz", bytes_of("stray"));

  CliRun r = run_cli("store fsck --store " + s);
  EXPECT_EQ(r.code, 0) << "nothing here is damage: " << r.out;
  EXPECT_NE(r.out.find("objects/ab/sub: a directory the store did not make: left alone; remove it by hand"), npos)
      << r.out;
  EXPECT_NE(r.out.find("objects/zz: a file the store did not make: left alone; remove it by hand"), npos) << r.out;
  EXPECT_NE(r.out.find("younger than the orphan grace"), npos) << r.out;
  EXPECT_NE(r.out.find("--repair removes those still named by nothing from "), npos) << r.out;
  EXPECT_EQ(r.out.find("problem(s) remain"), npos) << "nothing --repair would remove: " << r.out;
  EXPECT_EQ(r.out.find("not an object name"), npos) << r.out;
  r = run_cli("store fsck --repair --json --store " + s);
  EXPECT_EQ(r.code, 0) << r.out;
  auto j = json_in(r.out);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_TRUE(j["problems"].empty()) << r.out;
  EXPECT_EQ(j["young_orphans"], 1);
  EXPECT_EQ(j["orphan_objects"], 0);
  EXPECT_EQ(j["foreign_entries"], 2);
  EXPECT_EQ(j["left_alone"].size(), 3u);
  EXPECT_EQ(j["removed"], 0) << "left alone means left alone";
  EXPECT_TRUE(std::filesystem::exists(s + "/objects/ab/sub"));
  EXPECT_TRUE(std::filesystem::exists(s + "/objects/zz"));
  EXPECT_EQ(j["objects_checked"], 3);
  EXPECT_EQ(j["bytes_checked"], 3 * 1024 * 1024 + 1000);

  // Damage: a flipped payload byte in one of c's objects, and a misnamed file
  // where objects live. Both are counted in the totals (the bad object with
  // its payload, the misnamed file with its size), and fsck exits 1 until
  // --repair removes them.
  bool flipped = false;
  for (const std::string& f : files_under(s + "/objects"))
    if (!flipped && std::filesystem::file_size(s + "/objects/" + f) > 1024 * 1024)
      flipped = flip_byte(s + "/objects/" + f, 5000);
  ASSERT_TRUE(flipped);
  write_file(s + "/objects/ab/junk", pattern(22, 100));
  r = run_cli("store fsck --json --store " + s);
  EXPECT_EQ(r.code, 1) << r.out;
  j = json_in(r.out);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["bad_objects"], 2) << r.out;
  EXPECT_EQ(j["objects_checked"], 4) << r.out;
  EXPECT_EQ(j["bytes_checked"], 3 * 1024 * 1024 + 1000 + 100) << r.out;
  r = run_cli("store fsck --store " + s);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("problem(s) remain (kvpager store fsck --repair removes them)"), npos) << r.out;
  r = run_cli("store fsck --repair --store " + s);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(std::filesystem::exists(s + "/objects/ab/junk"));
  EXPECT_EQ(run_cli("store fsck --store " + s).code, 0);
}
