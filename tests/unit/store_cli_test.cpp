// `kvpager store ...` end to end: the binary, its output and exit codes
// (0 ok, 1 runtime failure, 2 bad usage).
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "kvpager/store/format.h"
#include "store_test_util.h"

using namespace kvpager::store;
using namespace kvpager::store::testing;

namespace {

struct CliRun {
  int code = -1;
  std::string out;  // stdout and stderr
};

CliRun run_cli(const std::string& args) {
  CliRun r;
  // ctest sets KVPAGER_SRC for the tests; kvpager rejects unknown KVPAGER_*
  // variables (a typo must not pass silently), so it is not handed on.
  std::string cmd = "env -u KVPAGER_SRC " + std::string(KVPAGER_BIN) + " " + args + " 2>&1";
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
  EXPECT_EQ(run_cli("store frobnicate --store " + s).code, 2);
  // A directory that is not a store: a configuration error naming store_dir.
  CliRun r = run_cli("store ls --store /etc");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("store_dir"), std::string::npos) << r.out;
  // Runtime failures: 1.
  EXPECT_EQ(run_cli("store get nope " + d.sub("o.bin") + " --store " + s).code, 1);
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
