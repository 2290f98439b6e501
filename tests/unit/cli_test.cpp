// The kvpager binary: configuration sources and provenance, exit codes,
// errors that name the knob, the demo as the main job, and the README
// documenting every knob.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kvpager/config.h"
#include "run_process.h"

namespace kvpager {
namespace {

using testing::run_process;

const std::string kBin = KVPAGER_BIN;

TEST(Cli, NoSubcommandIsBadUsage) {
  auto r = run_process({kBin});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_FALSE(r.err.empty());
}

TEST(Cli, HelpExitsZeroAndListsCommands) {
  auto r = run_process({kBin, "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("demo"), std::string::npos);
  EXPECT_NE(r.out.find("config"), std::string::npos);
  EXPECT_NE(r.out.find("--hbm-budget"), std::string::npos);
}

// CLI11 lists only a subcommand's own options; the footer names the global
// ones, and what it claims (accepted after a nested command word) holds.
TEST(Cli, SubcommandHelpNamesTheGlobalOptionsItAccepts) {
  for (std::vector<std::string> words : {std::vector<std::string>{"run"}, {"store", "get"}, {"config", "show"}}) {
    std::vector<std::string> argv{kBin};
    argv.insert(argv.end(), words.begin(), words.end());
    argv.push_back("--help");
    auto r = run_process(argv);
    EXPECT_EQ(r.exit_code, 0) << words.front();
    EXPECT_NE(r.out.find("--set KEY=VALUE"), std::string::npos) << words.front() << ": " << r.out;
    EXPECT_NE(r.out.find("--<knob> VALUE"), std::string::npos) << words.front() << ": " << r.out;
  }
  auto after = run_process({kBin, "config", "show", "--json", "--hbm-budget", "3G", "--set", "log_level=debug"});
  ASSERT_EQ(after.exit_code, 0) << after.err;
  const auto j = nlohmann::json::parse(after.out);
  EXPECT_EQ(j["hbm_budget"]["value"], "3G");
  EXPECT_EQ(j["hbm_budget"]["source"], "cli");
  EXPECT_EQ(j["log_level"]["value"], "debug");
  EXPECT_EQ(j["log_level"]["source"], "cli");
}

TEST(Cli, UnknownOptionIsBadUsage) {
  auto r = run_process({kBin, "config", "show", "--no-such-flag"});
  EXPECT_EQ(r.exit_code, 2);
}

// A mistyped command word is named, at any depth (CLI11 alone says "A
// subcommand is required").
TEST(Cli, UnknownCommandOrLeadingOptionIsNamed) {
  for (const char* word : {"bogus", "--bogus", "--bogus=1"}) {
    auto r = run_process({kBin, word});
    EXPECT_EQ(r.exit_code, 2) << word;
    EXPECT_NE(r.err.find(std::string("'") + word + "'"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("demo"), std::string::npos) << "lists the commands: " << r.err;
  }
  // After a command word or a setting too, and with what that command has.
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  for (const Case& c : {Case{{"store", "lst"}, "kvpager store: unknown command 'lst' (commands: put, get, ls,"},
                        Case{{"config", "shwo"}, "kvpager config: unknown command 'shwo' (commands: show, knobs;"},
                        Case{{"--hbm-budget", "1G", "stauts"}, "kvpager: unknown command 'stauts' (commands: config,"},
                        Case{{"store", "--store", "/tmp"}, "kvpager store: a command is required (commands: put,"}}) {
    std::vector<std::string> argv{kBin};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    auto r = run_process(argv);
    EXPECT_EQ(r.exit_code, 2) << c.args.back();
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
  }
  auto flag = run_process({kBin, "--hbm-budget", "12XB", "config", "show"});
  EXPECT_EQ(flag.exit_code, 2);
  EXPECT_NE(flag.err.find("--hbm-budget 12XB"), std::string::npos) << "names the flag as typed: " << flag.err;
}

// The parser's own errors read like every other: "kvpager: ..." and exit 2.
TEST(Cli, ParserErrorsNameKvpagerAndExitTwo) {
  for (std::vector<std::string> args : {std::vector<std::string>{"replay", "/nonexistent/trace.jsonl"},
                                        {"status", "--pid", "-5"},
                                        {"hint", "--pid", "0", "park", "c"},
                                        {"store", "get", "c", ""},
                                        {"store", "put", "/etc/hostname"}}) {
    args.insert(args.begin(), kBin);
    auto r = run_process(args);
    EXPECT_EQ(r.exit_code, 2) << args[1] << ": " << r.err;
    EXPECT_EQ(r.err.rfind("kvpager: ", 0), 0u) << r.err;
  }
}

// CLI11 alone converts "-1" for an unsigned option by wrapping it to 2^64-1.
TEST(Cli, NegativeOrOverflowingNumbersAreRefusedNotWrapped) {
  for (const char* v : {"-1", "99999999999999999999999", "12abc"}) {
    auto r = run_process({kBin, "demo", "--seed", v, "--turns", "1"});
    EXPECT_EQ(r.exit_code, 2) << v << ": " << r.out;
    EXPECT_NE(r.err.find("--seed"), std::string::npos) << r.err;
  }
  // A ranged whole number says what it wants: CLI11's Range called "abc",
  // "1.5" and "1e2" (100, in range) all "not in range 1 to 4096".
  for (const char* v : {"abc", "1.5", "1e2", "0", "5000"}) {
    auto r = run_process({kBin, "demo", "--sessions", v, "--turns", "1"});
    EXPECT_EQ(r.exit_code, 2) << v << ": " << r.out;
    EXPECT_NE(r.err.find(std::string("--sessions: '") + v + "' is not a whole number from 1 to 4096"), std::string::npos)
        << r.err;
  }
}

// CLI::Range lets NaN through (every comparison with it is false): `top
// --interval nan` refreshed flat out and `demo --kv-factor nan` failed later
// with a KV size of 8 EiB. Floating-point options take numbers in range only.
TEST(Cli, FloatingPointOptionsRefuseNanAndSayTheirRange) {
  const std::vector<std::vector<std::string>> cases = {
      {"demo", "--turns", "1", "--kv-factor"}, {"top", "--iterations", "1", "--interval"}};
  for (const auto& base : cases) {
    for (const char* v : {"nan", "-nan", "inf", "abc", "1s", "1e99"}) {
      std::vector<std::string> args{kBin};
      args.insert(args.end(), base.begin(), base.end());
      args.push_back(v);
      auto r = run_process(args, {}, 20.0);
      EXPECT_EQ(r.exit_code, 2) << base[0] << " " << v << ": " << r.out << r.err;
      EXPECT_NE(r.err.find(std::string("'") + v + "' is not a number from"), std::string::npos) << r.err;
    }
  }
  auto plus = run_process({kBin, "top", "--iterations", "1", "--interval", "+0.1"}, {}, 20.0);
  EXPECT_EQ(plus.exit_code, 0) << "a leading + is a number too: " << plus.err;
}

// ld.so only warns about a file it cannot preload and runs the command
// unpaged: `run --lib` checks it is libkvpager.so first.
TEST(Cli, RunRefusesALibThatIsNotLibkvpager) {
  const std::string text = std::filesystem::temp_directory_path() / ("kvpager-not-a-lib-" + std::to_string(getpid()));
  std::ofstream(text) << "not a library\n";
  for (const std::string& lib : {text, kBin, std::filesystem::temp_directory_path().string()}) {
    auto r = run_process({kBin, "run", "--lib", lib, "--", "/bin/true"});
    EXPECT_EQ(r.exit_code, 2) << lib << ": " << r.err;
    EXPECT_NE(r.err.find("--lib " + lib), std::string::npos) << r.err;
  }
  std::filesystem::remove(text);
}

// The simulated tiers live in the demo's own memory: a plan that cannot fit
// is refused up front (it used to end in std::bad_alloc halfway).
TEST(Cli, DemoRefusesAPlanLargerThanThisMachinesMemory) {
  auto r = run_process({kBin, "--sim-hbm-capacity", "1T", "demo", "--sessions", "1", "--turns", "1"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("lower hbm_budget"), std::string::npos) << r.err;
}

// Every region takes at least one chunk: 4096 sessions x 256 layers of 2M
// is 2 TiB of KV however small kv_factor x budget (1 GiB here) is. The check
// used to count only kv_factor x budget and started filling RAM and disk.
TEST(Cli, DemoCountsTheKvItReallyAllocatesAgainstMemory) {
  const std::string store = std::filesystem::temp_directory_path() / ("kvpager-cli-many-" + std::to_string(getpid()));
  auto r = run_process({kBin, "demo", "--sessions", "4096", "--layers", "256", "--turns", "1", "--store-dir", store},
                       {}, 20.0);
  std::filesystem::remove_all(store);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("2.00 TiB"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--sessions / --layers"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("warning: the KV built is 2.00 TiB (8192.00 x the HBM budget, not --kv-factor 4)"),
            std::string::npos) << r.err;
  // Smaller than asked, as well: 16 x 4 regions of one 2 MiB chunk each.
  auto small = run_process({kBin, "demo", "--kv-factor", "0.1", "--turns", "1", "--store-dir", store}, {}, 20.0);
  std::filesystem::remove_all(store);
  EXPECT_EQ(small.exit_code, 0) << small.err;
  EXPECT_NE(small.err.find("warning: the KV built is 128.00 MiB (0.50 x the HBM budget, not --kv-factor 0.1)"),
            std::string::npos) << small.err;
  auto asked = run_process({kBin, "demo", "--sessions", "2", "--layers", "2", "--hbm-budget", "16M", "--turns", "1",
                            "--store-dir", store},
                           {}, 20.0);
  std::filesystem::remove_all(store);
  EXPECT_EQ(asked.exit_code, 0) << asked.err;
  EXPECT_EQ(asked.err.find("warning"), std::string::npos) << "4 regions of 16 MiB are what was asked for: " << asked.err;
  // The budget is what the pager keeps, whole chunks: 3M is 2M, and the KV
  // is 4 x 2M, as asked (it built 16 MiB and warned "5.33 x the HBM budget",
  // against 3M, beside "HBM budget 2.00 MiB").
  auto odd = run_process({kBin, "demo", "--sessions", "2", "--layers", "2", "--hbm-budget", "3M", "--turns", "1",
                          "--store-dir", store},
                         {}, 20.0);
  std::filesystem::remove_all(store);
  EXPECT_EQ(odd.exit_code, 0) << odd.err;
  EXPECT_EQ(odd.err.find("warning"), std::string::npos) << odd.err;
  EXPECT_NE(odd.out.find("8.00 MiB of KV; HBM budget 2.00 MiB"), std::string::npos) << odd.out;
}

TEST(Cli, VersionExitsZero) {
  auto r = run_process({kBin, "--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.rfind("kvpager ", 0), 0u) << r.out;
}

TEST(Cli, ConfigShowTellsWhereEachValueCameFrom) {
  std::string file = std::filesystem::temp_directory_path() / ("kvpager-cli-" + std::to_string(getpid()) + ".toml");
  std::ofstream(file) << "hbm_budget = \"3G\"\nhost_capacity = \"5G\"\n";
  auto r = run_process({kBin, "--config", file, "--prefetch-depth", "9", "config", "show", "--json"},
                       {"KVPAGER_HOST_CAPACITY=7G", "KVPAGER_EVICTION_POLICY=clock"});
  std::filesystem::remove(file);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["hbm_budget"]["value"], "3G");
  EXPECT_EQ(j["hbm_budget"]["source"], "file");
  EXPECT_EQ(j["host_capacity"]["value"], "7G");
  EXPECT_EQ(j["host_capacity"]["source"], "env");
  EXPECT_EQ(j["eviction_policy"]["value"], "clock");
  EXPECT_EQ(j["prefetch_depth"]["value"], "9");
  EXPECT_EQ(j["prefetch_depth"]["source"], "cli");
  EXPECT_EQ(j["chunk_size"]["source"], "default");
  for (const Knob& k : knobs()) EXPECT_TRUE(j.contains(std::string(k.name))) << k.name;
}

// Values that mean "work it out" say what they stand for.
TEST(Cli, ConfigShowSaysWhatAutoValuesMean) {
  auto r = run_process({kBin, "config", "show", "--json", "--store-dir", "", "--host-capacity", "1G"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["hbm_budget"]["means"], "auto");
  EXPECT_EQ(j["nvme_capacity"]["means"], "unlimited");
  EXPECT_FALSE(j["host_capacity"].contains("means")) << "1G means 1G";
  EXPECT_EQ(j["store_dir"]["means"].get<std::string>().rfind("-> /", 0), 0u) << j["store_dir"];
  auto text = run_process({kBin, "config", "show"});
  EXPECT_NE(text.out.find("0 (unlimited)"), std::string::npos) << text.out;
  // The pager keeps the budget in whole chunks: 3M with 2M chunks is 2M
  // (tune printed 2M, config show said 3M without a word).
  auto odd = run_process({kBin, "config", "show", "--json", "--hbm-budget", "3M"});
  ASSERT_EQ(odd.exit_code, 0) << odd.err;
  EXPECT_EQ(nlohmann::json::parse(odd.out)["hbm_budget"]["means"], "-> 2M: whole chunks of chunk_size 2M");
}

// "--set config show": --set takes "config", which is not KEY=VALUE; that is
// the error (it used to be "unknown command 'show'").
TEST(Cli, ASetWithoutAnEqualsSignIsNamedBeforeTheCommandWords) {
  auto r = run_process({kBin, "--set", "config", "show"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--set: 'config' is not KEY=VALUE"), std::string::npos) << r.err;
}

TEST(Cli, SetOverridesFlagsAndEnv) {
  auto r = run_process({kBin, "--set", "hbm_budget=2G", "config", "show", "--json"}, {"KVPAGER_HBM_BUDGET=1G"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["hbm_budget"]["value"], "2G");
}

// However a knob is spelled on the command line (--set KEY=V, --<knob> V,
// run's --budget), the last one given wins.
TEST(Cli, TheLastSettingOfAKnobOnTheCommandLineWins) {
  auto value = [](std::vector<std::string> args, const char* knob) {
    args.insert(args.begin(), kBin);
    for (const char* w : {"config", "show", "--json"}) args.push_back(w);
    auto r = run_process(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.exit_code == 0 ? nlohmann::json::parse(r.out)[knob]["value"].get<std::string>() : "";
  };
  EXPECT_EQ(value({"--eviction-policy", "clock", "--set", "eviction_policy=cost"}, "eviction_policy"), "cost");
  EXPECT_EQ(value({"--set", "eviction_policy=cost", "--eviction-policy", "clock"}, "eviction_policy"), "clock");
  EXPECT_EQ(value({"--set", "hbm_budget=5G", "--hbm-budget", "4G"}, "hbm_budget"), "4G");
  EXPECT_EQ(value({"--hbm-budget", "4G", "--set", "hbm_budget=5G"}, "hbm_budget"), "5G");
  EXPECT_EQ(value({"--hbm-budget", "1G", "--hbm-budget", "2G"}, "hbm_budget"), "2G");
  EXPECT_EQ(value({"--set", "hbm_budget=1G", "--set", "hbm_budget=2G"}, "hbm_budget"), "2G");
  // Mixed with other settings, before and after the command words.
  auto r = run_process({kBin, "--hbm-budget", "1G", "--set", "prefetch_depth=3", "config", "show", "--json",
                        "--set", "hbm_budget=3G", "--prefetch-depth", "5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["hbm_budget"]["value"], "3G");
  EXPECT_EQ(j["prefetch_depth"]["value"], "5");
  // run's --budget: ControlCli.RunPreloadsTheLibraryPassesSettingsAndReturnsTheCommandsStatus
  // (it needs a stand-in preload library: the sanitized build's own cannot be preloaded).
}

TEST(Cli, BadValuesExitTwoNamingTheKnobAndSource) {
  auto flag = run_process({kBin, "--chunk-size", "3M", "config", "show"});
  EXPECT_EQ(flag.exit_code, 2);
  EXPECT_NE(flag.err.find("chunk_size"), std::string::npos) << flag.err;
  auto env = run_process({kBin, "config", "show"}, {"KVPAGER_LOW_WATERMARK=2"});
  EXPECT_EQ(env.exit_code, 2);
  EXPECT_NE(env.err.find("KVPAGER_LOW_WATERMARK"), std::string::npos) << env.err;
  auto typo = run_process({kBin, "--hbm-bugdet", "1G", "config", "show"});
  EXPECT_EQ(typo.exit_code, 2);
  auto env_typo = run_process({kBin, "config", "show"}, {"KVPAGER_HBM_BUGDET=1G"});
  EXPECT_EQ(env_typo.exit_code, 0) << "an unknown variable is a warning";
  EXPECT_NE(env_typo.err.find("KVPAGER_HBM_BUGDET is not a kvpager setting"), std::string::npos) << env_typo.err;
  auto cross = run_process({kBin, "--low-watermark", "0.99", "config", "show"});
  EXPECT_EQ(cross.exit_code, 2);
  EXPECT_NE(cross.err.find("high_watermark"), std::string::npos) << cross.err;
  auto missing = run_process({kBin, "--config", "/nonexistent/kvpager.toml", "config", "show"});
  EXPECT_EQ(missing.exit_code, 2);
}

// Output that cannot be written is a failure: `config show > /dev/full`
// used to exit 0 with nothing written.
TEST(Cli, OutputThatCannotBeWrittenFailsTheCommand) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full here";
  const std::string store = std::filesystem::temp_directory_path() / ("kvpager-full-" + std::to_string(getpid()));
  for (const std::string& cmd : {std::string(" config show"), " demo --turns 1 --json --sim-hbm-capacity 32M --store-dir " + store}) {
    auto r = run_process({"/bin/sh", "-c", std::string(kBin) + cmd + " > /dev/full"}, {}, 60.0);
    EXPECT_EQ(r.exit_code, 1) << cmd << ": " << r.err;
    EXPECT_NE(r.err.find("writing the output failed: No space left on device"), std::string::npos) << r.err;
  }
  std::filesystem::remove_all(store);
}

// A configuration file this user may not read is refused with the reason
// (toml++ alone said "File could not be opened for reading" at "0:0").
TEST(Cli, AnUnreadableConfigFileIsRefusedWithTheReason) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root, to read a file as another user (setpriv)";
  if (!std::filesystem::exists("/usr/bin/setpriv")) GTEST_SKIP() << "setpriv (util-linux) is not installed";
  const std::string file = std::filesystem::temp_directory_path() / ("kvpager-unreadable-" + std::to_string(getpid()) + ".toml");
  std::ofstream(file) << "hbm_budget = \"1G\"\n";
  std::filesystem::permissions(file, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  auto r = run_process({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", kBin, "--config",
                        file, "config", "show"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(file + ": configuration file: Permission denied"), std::string::npos) << r.err;
  std::filesystem::remove(file);
}

// Two configuration files are neither layered nor is one dropped: refused,
// naming the flag and what to use instead (CLI11 said "At Most 1 required").
// One file, given before or after the command word, still loads.
TEST(Cli, ASecondConfigFileIsRefusedByName) {
  const std::string a = std::filesystem::temp_directory_path() / ("kvpager-a-" + std::to_string(getpid()) + ".toml");
  const std::string b = std::filesystem::temp_directory_path() / ("kvpager-b-" + std::to_string(getpid()) + ".toml");
  std::ofstream(a) << "hbm_budget = \"8M\"\n";
  std::ofstream(b) << "chunk_size = \"4M\"\n";
  for (const auto& args : {std::vector<std::string>{kBin, "--config", a, "config", "show", "--config", b},
                           std::vector<std::string>{kBin, "config", "show", "--config", a, "--config", b}}) {
    auto r = run_process(args);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find("--config: given 2 times: one configuration file per run"), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
  }
  auto one = run_process({kBin, "config", "show", "--config", a});
  EXPECT_EQ(one.exit_code, 0) << one.err;
  EXPECT_NE(one.out.find("file (" + a + ":1)"), std::string::npos) << one.out;
  std::filesystem::remove(a);
  std::filesystem::remove(b);
}

TEST(Cli, DemoSaysItIsSimulatedAndReportsTheRun) {
  std::string store = std::filesystem::temp_directory_path() / ("kvpager-demo-" + std::to_string(getpid()));
  auto r = run_process({kBin, "demo", "--turns", "12", "--sessions", "8", "--store-dir", store,
                        "--sim-hbm-capacity", "64M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string first = r.out.substr(0, r.out.find('\n'));
  EXPECT_NE(first.find("simulated device"), std::string::npos) << first;
  for (const char* what : {"hbm", "host", "nvme", "hit rate", "Prefetch accuracy", "Stall time", "0 corrupted"})
    EXPECT_NE(r.out.find(what), std::string::npos) << what;

  auto j = run_process({kBin, "demo", "--turns", "12", "--sessions", "8", "--json", "--store-dir", store,
                        "--sim-hbm-capacity", "64M"});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  EXPECT_NE(j.err.find("simulated device"), std::string::npos);
  auto doc = nlohmann::json::parse(j.out);
  EXPECT_EQ(doc["turns"], 12);
  EXPECT_EQ(doc["simulated"], true);
  EXPECT_EQ(doc["device"].get<std::string>().rfind("kvpager demo:", 0), std::string::npos)
      << "what the device is, not the line printed about it: " << doc["device"];
  // --pace paces a --serve run; alone it would be ignored without a word.
  auto pace = run_process({kBin, "demo", "--turns", "1", "--pace", "5", "--store-dir", store});
  EXPECT_EQ(pace.exit_code, 2) << pace.out;
  EXPECT_NE(pace.err.find("--pace requires --serve"), std::string::npos) << pace.err;
  EXPECT_EQ(doc["corrupt_chunks"], 0);
  EXPECT_EQ(doc["hbm_budget"], 64 * MiB);
  EXPECT_EQ(doc["total_kv_bytes"], 4 * 64 * MiB) << "the demo's KV is 4x the budget";
  const auto& s = doc["stats"];
  EXPECT_EQ(s["accesses"].get<uint64_t>(), s["hits"].get<uint64_t>() + s["faults"].get<uint64_t>());
  EXPECT_LE(s["tiers"]["hbm"]["resident_bytes"].get<uint64_t>(), 64 * MiB);
  EXPECT_GT(s["tiers"]["nvme"]["resident_bytes"].get<uint64_t>(), 0u) << "host RAM is 2x budget: the rest spills";
  uint64_t failed = 0;  // failures per kind of move add up to the total
  for (const auto& [kind, m] : s["moves"].items()) failed += m.at("failed").get<uint64_t>();
  EXPECT_EQ(failed, s["move_failures"].get<uint64_t>());
  std::filesystem::remove_all(store);
}

// Host RAM capacity is a target: a context used within spill_idle stays in
// host RAM above it. The residency table says so rather than showing a tier
// over its size without a word.
TEST(Cli, DemoSaysWhenHostRamIsAboveItsTarget) {
  std::string store = std::filesystem::temp_directory_path() / ("kvpager-demo3-" + std::to_string(getpid()));
  std::vector<std::string> args = {kBin, "demo", "--turns", "12", "--sessions", "8", "--store-dir", store,
                                   "--sim-hbm-capacity", "64M", "--no-hints"};
  auto line_of = [](const std::string& out, const std::string& start) {
    size_t at = out.find(start);
    return at == std::string::npos ? std::string() : out.substr(at, out.find('\n', at) - at);
  };
  args.insert(args.end(), {"--host-capacity", "64M", "--spill-idle", "24h"});  // nothing may spill
  auto over = run_process(args);
  ASSERT_EQ(over.exit_code, 0) << over.err;
  EXPECT_NE(line_of(over.out, "  host ").find("above its target: contexts used within spill_idle stay"),
            std::string::npos)
      << over.out;
  // Spills may go, but the NVMe tier has no room: that is the reason given
  // (it used to blame spill_idle).
  args.resize(args.size() - 2);
  args.insert(args.end(), {"--spill-idle", "0", "--nvme-capacity", "8M"});
  auto full = run_process(args);
  ASSERT_EQ(full.exit_code, 0) << full.err;
  EXPECT_NE(line_of(full.out, "  host ").find("above its target: the NVMe tier"), std::string::npos) << full.out;
  args.resize(args.size() - 6);
  args.insert(args.end(), {"--host-capacity", "1G"});  // everything fits
  auto fits = run_process(args);
  ASSERT_EQ(fits.exit_code, 0) << fits.err;
  EXPECT_NE(line_of(fits.out, "  host "), "") << fits.out;
  EXPECT_EQ(line_of(fits.out, "  host ").find("above its target"), std::string::npos) << fits.out;
  std::filesystem::remove_all(store);
}

// A plain demo stopped by a signal ends after the current turn: the summary
// so far, an exit status that says it was cut short, and no spilled objects
// left in the store (they used to stay until the store was next opened).
TEST(Cli, ADemoStoppedBySignalPrintsItsSummaryAndLeavesNoSpills) {
  const std::string store = std::filesystem::temp_directory_path() / ("kvpager-demo4-" + std::to_string(getpid()));
  const std::string demo = std::string(kBin) + " demo --turns 100000000 --sessions 8 --sim-hbm-capacity 32M --store-dir " + store;
  auto r = run_process({"/bin/sh", "-c", demo + " & pid=$!; sleep 2; kill -TERM $pid; wait $pid; echo exit=$?"}, {}, 60.0);
  EXPECT_NE(r.out.find("exit=143"), std::string::npos) << r.out << r.err;
  EXPECT_NE(r.out.find("Integrity:"), std::string::npos) << "the summary: " << r.out;
  EXPECT_NE(r.err.find("stopped"), std::string::npos) << r.err;
  size_t left = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::recursive_directory_iterator(store + "/writers", ec))
    left += e.is_regular_file() ? 1u : 0u;
  EXPECT_EQ(left, 0u) << "spilled objects left in " << store << "/writers";
  std::filesystem::remove_all(store);
}

TEST(Cli, DemoIsDeterministic) {
  std::string store = std::filesystem::temp_directory_path() / ("kvpager-demo2-" + std::to_string(getpid()));
  std::vector<std::string> args = {kBin, "demo", "--turns", "10", "--sessions", "8", "--json",
                                   "--store-dir", store, "--sim-hbm-capacity", "32M"};
  auto a = run_process(args), b = run_process(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  auto ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
  ja.erase("wall_s");
  jb.erase("wall_s");
  EXPECT_EQ(ja, jb) << "same seed, same virtual clock: identical statistics";
  std::filesystem::remove_all(store);
}

TEST(Readme, KnobTableIsTheGeneratedOne) {
  std::ifstream in(std::string(KVPAGER_SRC_DIR) + "/README.md");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string readme = ss.str();
  const std::string begin = "<!-- knobs:begin (generated: kvpager config knobs --markdown) -->\n";
  const std::string end = "<!-- knobs:end -->";
  size_t b = readme.find(begin), e = readme.find(end);
  ASSERT_NE(b, std::string::npos);
  ASSERT_NE(e, std::string::npos);
  auto r = run_process({kBin, "config", "knobs", "--markdown"});
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(readme.substr(b + begin.size(), e - b - begin.size()), r.out)
      << "README's knob table is stale: run scripts/readme-knobs";
}

TEST(Readme, DocumentsEveryKnob) {
  std::ifstream in(std::string(KVPAGER_SRC_DIR) + "/README.md");
  ASSERT_TRUE(in) << "README.md missing";
  std::stringstream ss;
  ss << in.rdbuf();
  std::string readme = ss.str();
  for (const Knob& k : knobs()) {
    EXPECT_NE(readme.find("`" + std::string(k.name) + "`"), std::string::npos) << k.name;
    EXPECT_NE(readme.find(k.env_name()), std::string::npos) << k.env_name();
  }
}

}  // namespace
}  // namespace kvpager
