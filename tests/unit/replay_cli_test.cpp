// `kvpager replay` end to end: exit status 0 / 1 (the trace is bad) / 2 (bad
// usage), errors naming the file and line or the flag to fix, JSON that
// parses, and the sweep's plot.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "replay_test_util.h"

using namespace replay_test;

namespace {

struct Result {
  int status;
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string slurp(const std::string& path) { return read_file(path); }

// Files of one test (ctest runs tests in parallel).
std::string temp(const std::string& name) {
  return testing::TempDir() + "/replay_cli_" + testing::UnitTest::GetInstance()->current_test_info()->name() + "_" +
         name;
}

Result run_cli(const std::string& args) {
  const std::string out = temp("out.txt"), err = temp("err.txt");
  // KVPAGER_TEST_SCALE is not a knob: the CLI would warn about it.
  const std::string cmd = "env -u KVPAGER_TEST_SCALE " + std::string(KVPAGER_BIN) + " " + args + " >" + out + " 2>" + err + " </dev/null";
  const int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp(out), slurp(err)};
}

std::string write_trace(const std::string& name, const std::string& text) {
  const std::string path = temp(name);
  std::ofstream(path) << text;
  return path;
}

const std::string kGood = line(0, 1024, {1, 2}) + line(1000, 1536, {1, 2, 3}) + line(2000, 600, {1, 9}) +
                          line(3000, 2048, {1, 2, 3, 4});

}  // namespace

TEST(ReplayCli, HelpStatesTheSemantics) {
  const Result r = run_cli("replay --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("leading run of blocks resident in some tier"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[j*B, min((j+1)*B, input_length))"), std::string::npos);
  EXPECT_NE(r.out.find("Belady"), std::string::npos);
  EXPECT_NE(r.out.find("llama-3-70b"), std::string::npos);
}

TEST(ReplayCli, ReportsEveryPolicyBeladyAndInfinite) {
  const std::string t = write_trace("good.jsonl", kGood);
  const Result r = run_cli("replay " + t + " --hbm 2Mtok --host 1T --policy lru,prefix+tail");
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* s : {"lru ", "prefix+tail", "belady", "infinite", "misses (share of input tokens)", "bytes moved"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
}

TEST(ReplayCli, JsonHasEverything) {
  const std::string t = write_trace("good.jsonl", kGood);
  const Result r = run_cli("replay " + t + " --hbm 1024tok --policy lru --prestage hint:1s --json --model qwen2.5-32b");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["trace"]["requests"], 4);
  EXPECT_EQ(j["model"]["kv_bytes_per_token"], 262144);
  ASSERT_EQ(j["runs"].size(), 3u);  // lru, belady, infinite
  EXPECT_EQ(j["runs"][0]["policy"], "lru");
  EXPECT_EQ(j["runs"][1]["policy"], "belady");
  EXPECT_EQ(j["runs"][2]["policy"], "infinite");
  for (const auto& run : j["runs"]) {
    for (const char* k : {"hit_rate", "hit_rate_from", "miss_tokens", "prefill_tokens_saved", "bytes_moved", "ttft_s",
                          "prefetchers", "resumed_turns"})
      EXPECT_TRUE(run.contains(k)) << k;
    EXPECT_LE(run["hit_rate"].get<double>(), j["runs"][2]["hit_rate"].get<double>());
  }
  EXPECT_EQ(j["runs"][0]["prefetchers"][0]["name"], "hint");
  EXPECT_EQ(j["model"]["shape"], "Qwen2.5-32B: 64 layers, 8 KV heads (GQA) x 128, BF16") << j["model"];
  // The header says what is simulated where a capacity is not whole blocks
  // (it gave the tokens asked for, the JSON the tokens simulated).
  const Result text = run_cli("replay " + t + " --hbm 1000tok --policy lru");
  ASSERT_EQ(text.status, 0) << text.err;
  EXPECT_NE(text.out.find("= 1000 tokens (1 blocks: 512 tokens simulated)"), std::string::npos) << text.out;
  // A size given by hand is not described by the preset's shape.
  const Result bytes = run_cli("replay " + t + " --hbm 1024tok --json --kv-bytes-per-token 1000");
  ASSERT_EQ(bytes.status, 0) << bytes.err;
  EXPECT_EQ(nlohmann::json::parse(bytes.out)["model"]["shape"].get<std::string>().rfind("set by --kv-bytes-per-token", 0),
            0u)
      << bytes.out;
}

TEST(ReplayCli, AMalformedLineStopsWithFileAndLine) {
  const std::string t = write_trace("bad.jsonl", line(0, 512, {1}) + line(1, 512, {2}) +
                                                     R"({"timestamp": 2, "input_length": 1024, "hash_ids": [1, -2]})" "\n");
  const Result r = run_cli("replay " + t + " --hbm 1G");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(t + ":3: hash_ids[1]: must not be negative (got -2)"), std::string::npos) << r.err;
  const Result skipped = run_cli("replay " + t + " --hbm 1G --skip-bad");
  EXPECT_EQ(skipped.status, 0) << skipped.err;
  EXPECT_NE(skipped.err.find("skipped 1 bad line(s) of 3"), std::string::npos) << skipped.err;
  EXPECT_NE(skipped.err.find("line 3: hash_ids[1]"), std::string::npos);
}

TEST(ReplayCli, BadUsageNamesTheFlag) {
  const std::string t = write_trace("good.jsonl", kGood);
  struct Case {
    std::string args, message;
  } cases[] = {
      {"--hbm lots", "--hbm: 'lots' is not a capacity"},
      {"--hbm 1G --model gpt-9", "--model 'gpt-9': unknown model"},
      {"--hbm 1G --policy lru,fifo", "--policy: unknown policy 'fifo'"},
      {"--hbm 1G --policy lru+lottery", "--policy: unknown admission policy 'lottery'"},
      {"--hbm 1G --prestage soon", "--prestage 'soon'"},
      {"--hbm 1G --plot x.svg", "--plot draws a --sweep"},
      {"--hbm 100tok", "--hbm 100tok: holds 100 tokens, less than one 512-token block"},
      // A few bytes are 0 tokens: the tier used to be left out without a word.
      {"--hbm 1G --host 1", "--host 1: holds 0 tokens, less than one 512-token block"},
      {"--hbm 64K", "--hbm 64K: holds 0 tokens, less than one 512-token block"},
      // Found only after the whole sweep, with exit status 1, before.
      {"--sweep hbm=512tok..4096tok:4 --plot curves.pdf", "--plot curves.pdf: the plot must be a .svg or .png file"},
      {"--sweep hbm=1G..2G", "--sweep 'hbm=1G..2G'"},
      {"", "give at least one tier capacity"},
      // Both were silently ignored: the fixed capacity, the empty list (only Belady ran).
      {"--sweep hbm=512tok..4096tok:4 --hbm 5G", "--hbm 5G and --sweep 'hbm=512tok..4096tok:4': the sweep sets"},
      {"--hbm 1G --policy ,", "--policy ',': an empty name"},
      // Its bytes overflowed 64 bits and printed as a few PiB.
      {"--hbm 1e19tok", "--hbm: '1e19tok' is more KV than 16 EiB"},
      // Each was taken without a word: 0 left the only tier out, the share
      // needs staging, an empty lead was 2s, a policy ran twice.
      {"--hbm 0", "give at least one tier capacity: --hbm, --host, --nvme (bytes like 60G or tokens like 5Mtok), or "
                  "--sweep (a capacity of 0 leaves its tier out)"},
      {"--hbm 1G --prestage-share 0.3", "--prestage-share shares the top tier with staged blocks"},
      {"--hbm 1G --prestage hint:", "--prestage 'hint:': bad lead time"},
      {"--hbm 1G --policy lru,lru", "--policy 'lru,lru': lru is named twice"},
  };
  for (const auto& c : cases) {
    const Result r = run_cli("replay " + t + " " + c.args);
    EXPECT_EQ(r.status, 2) << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << ": " << r.err;
  }
  EXPECT_EQ(run_cli("replay /nonexistent/trace.jsonl --hbm 1G").status, 2);
  EXPECT_EQ(run_cli("replay " + write_trace("empty.jsonl", "\n") + " --hbm 1G").status, 1);
}

// A plot that cannot be written fails before the trace is read or any run
// (a large sweep takes minutes), and leaves nothing behind.
TEST(ReplayCli, AnUnwritablePlotFailsBeforeTheWork) {
  const std::string t = write_trace("good.jsonl", kGood);
  const std::string dir = temp("no-such-dir");
  std::filesystem::remove_all(dir);
  const Result r = run_cli("replay " + t + " --sweep hbm=512tok..4096tok:4 --plot " + dir + "/curves.svg");
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_NE(r.err.find("--plot: "), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "") << "the replay ran before the plot was found unwritable";
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(ReplayCli, SweepDrawsTheCurves) {
  const std::string t = write_trace("good.jsonl", kGood);
  const std::string svg = temp("curves.svg");
  std::filesystem::remove(svg);
  const Result r = run_cli("replay " + t + " --sweep hbm=512tok..4096tok:4 --policy lru,s3fifo --plot " + svg);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("prefix hit rate by hbm capacity"), std::string::npos) << r.out;
  const std::string pic = slurp(svg);
  EXPECT_EQ(pic.rfind("<svg", 0), 0u);
  EXPECT_NE(pic.find(">s3fifo<"), std::string::npos);
  EXPECT_NE(pic.find(">belady<"), std::string::npos);
  // The extension in capitals is the same file type.
  const std::string upper = temp("CURVES.SVG");
  std::filesystem::remove(upper);
  const Result u = run_cli("replay " + t + " --sweep hbm=512tok..4096tok:2 --policy lru --plot " + upper);
  ASSERT_EQ(u.status, 0) << u.err;
  EXPECT_EQ(slurp(upper).rfind("<svg", 0), 0u);
  const Result j = run_cli("replay " + t + " --sweep hbm=512tok..4096tok:4 --policy lru --json");
  ASSERT_EQ(j.status, 0) << j.err;
  const auto doc = nlohmann::json::parse(j.out);
  ASSERT_EQ(doc["sweep"]["points"].size(), 4u);
  EXPECT_EQ(doc["sweep"]["points"][0]["tokens"], 512);
  EXPECT_EQ(doc["sweep"]["points"][3]["runs"].size(), 2u);  // lru, belady
}

// The PNG's title holds the trace's file name; gnuplot would run a system()
// call smuggled into it through a quote if the name were pasted in as is.
TEST(ReplayCli, APngPlotOfATraceNamedWithQuotesRunsNoGnuplotCommands) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot is not installed";
  // Relative (a file name holds no '/'): gnuplot runs in this test's directory.
  const std::string canary = "replay_cli_gnuplot_canary";
  std::filesystem::remove(canary);
  const std::string evil = "a\"; system(\"touch " + canary + "\"); x='; system('touch " + canary + "'); '.jsonl";
  const std::string t = write_trace(evil, kGood);
  const std::string png = temp("curves.png");
  std::filesystem::remove(png);
  std::string shell_quoted = "'";
  for (char c : t) shell_quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  shell_quoted += "'";
  const Result r = run_cli("replay " + shell_quoted + " --sweep hbm=512tok..4096tok:2 --policy lru --plot " + png);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(std::filesystem::exists(canary)) << "gnuplot ran a command from the file name";
  EXPECT_EQ(slurp(png).substr(1, 3), "PNG") << "the plot was still drawn";
}
