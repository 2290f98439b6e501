// Configuration: every knob is settable from the TOML file, the environment
// and the command line; later sources override earlier ones; every bad value
// is refused with a message naming the knob.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "kvpager/config.h"
#include "kvpager/config_loader.h"

namespace kvpager {
namespace {

// A valid value for each knob that differs from its default, and a bad one.
struct Sample {
  std::string good;
  std::string bad;
};
const std::map<std::string, Sample> kSamples = {
    {"chunk_size", {"4M", "3M"}},
    {"hbm_budget", {"8G", "12"}},
    {"host_capacity", {"64G", "lots"}},
    {"nvme_capacity", {"2T", "-1G"}},
    {"high_watermark", {"0.9", "1.5"}},
    {"low_watermark", {"0.5", "abc"}},
    {"eviction_policy", {"clock", "fifo"}},
    {"cost_sample", {"16", "0"}},
    {"prefetchers", {"sequential,hint", "psychic"}},
    {"prefetch_depth", {"8", "1000"}},
    {"prefetch_waste_ceiling", {"0.25", "0"}},
    {"spill_idle", {"90s", "2days"}},
    {"store_dir", {"/mnt/nvme/kv", std::string("a\0b", 3)}},
    {"log_level", {"debug", "loud"}},
    {"sim.hbm_capacity", {"1G", "2T"}},
    {"sim.pcie_gbps", {"50", "0"}},
    {"sim.pcie_latency", {"5us", "2s"}},
    {"sim.nvme_read_gbps", {"6.5", "-3"}},
    {"sim.nvme_write_gbps", {"4", "x"}},
    {"sim.nvme_latency", {"100us", "forever"}},
    {"sim.fault_cost", {"50us", "5"}},
    {"store.queue_depth", {"64", "0"}},
    {"runtime_dir", {"/run/user/1000/kvpager", std::string("a\0b", 3)}},
    {"cuda.min_size", {"4M", "big"}},
    {"cuda.allow_sizes", {"1M-2M", "2M-1M"}},
    {"cuda.deny_sizes", {"64M-128M,1G-", "64M"}},
    {"cuda.managed_limit", {"40G", "1K"}},
    {"cuda.virtual_capacity", {"320G", "-5"}},
    {"cuda.async_alloc", {"passthrough", "sometimes"}},
    {"cuda.tick_interval", {"1ms", "1ns"}},
    {"cuda.move_streams", {"1", "3"}},
};

TEST(Config, EveryKnobHasASampleInThisTest) {
  for (const Knob& k : knobs()) EXPECT_TRUE(kSamples.count(std::string(k.name))) << "add a sample for " << k.name;
  EXPECT_EQ(kSamples.size(), knobs().size());
}

TEST(Config, DefaultsAreValid) { EXPECT_TRUE(validate(Config{}).empty()); }

TEST(Config, EveryKnobFromTheCommandLine) {
  for (const auto& [name, sample] : kSamples) {
    ConfigLoader loader;
    loader.set_assignment(name + "=" + sample.good, ConfigSource::kCli, "--set");
    const Knob& k = *find_knob(name);
    EXPECT_NE(k.format(loader.config()), k.format(Config{})) << name << " did not change";
    EXPECT_EQ(loader.origin(k).source, ConfigSource::kCli);
  }
}

TEST(Config, EveryKnobFromTheEnvironment) {
  for (const auto& [name, sample] : kSamples) {
    const Knob& k = *find_knob(name);
    std::string var = k.env_name() + "=" + sample.good;
    char* env[] = {var.data(), nullptr};
    ConfigLoader loader;
    loader.load_env(env);
    EXPECT_NE(k.format(loader.config()), k.format(Config{})) << name << " did not change";
    EXPECT_EQ(loader.origin(k).source, ConfigSource::kEnv);
    EXPECT_EQ(loader.origin(k).detail, k.env_name());
  }
}

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    path_ = std::filesystem::temp_directory_path() / ("kvpager-config-" + std::to_string(getpid()) + "-" +
                                                      std::to_string(counter_++) + ".toml");
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  std::string path() const { return path_.string(); }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

// What loading the file says: the ConfigError's text, "" if it was taken.
std::string load_error(const TempFile& f) {
  ConfigLoader loader;
  try {
    loader.load_file(f.path());
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string toml_line(const std::string& name, const std::string& value) {
  // Dotted names go into their table; values as TOML strings.
  size_t dot = name.find('.');
  if (dot == std::string::npos) return name + " = \"" + value + "\"\n";
  return "[" + name.substr(0, dot) + "]\n" + name.substr(dot + 1) + " = \"" + value + "\"\n";
}

TEST(Config, EveryKnobFromTheFile) {
  for (const auto& [name, sample] : kSamples) {
    TempFile f(toml_line(name, sample.good));
    ConfigLoader loader;
    loader.load_file(f.path());
    const Knob& k = *find_knob(name);
    EXPECT_NE(k.format(loader.config()), k.format(Config{})) << name << " did not change";
    EXPECT_EQ(loader.origin(k).source, ConfigSource::kFile);
    EXPECT_NE(loader.origin(k).detail.find(f.path()), std::string::npos);
  }
}

TEST(Config, FileTakesNativeTomlTypes) {
  TempFile f(
      "chunk_size = 1048576\nhigh_watermark = 0.9\nprefetchers = [\"sequential\", \"hint\"]\n"
      "[sim]\npcie_gbps = 12\n");
  ConfigLoader loader;
  loader.load_file(f.path());
  Config c = loader.finish();
  EXPECT_EQ(c.chunk_size, 1 * MiB);
  EXPECT_DOUBLE_EQ(c.high_watermark, 0.9);
  EXPECT_EQ(c.prefetchers, kPrefetchSequential | kPrefetchHint);
  EXPECT_DOUBLE_EQ(c.sim_pcie_gbps, 12.0);
}

TEST(Config, MinusZeroIsZero) {
  Config c;
  ASSERT_FALSE(find_knob("low_watermark")->set(c, "-0.0"));
  EXPECT_EQ(find_knob("low_watermark")->format(c), "0");
}

// Only prefetchers is a list; a list elsewhere was joined and taken
// (prefetch_depth = [8] as 8, hbm_budget = ["1G"] as 1G).
TEST(Config, AListInTheFileIsOnlyForPrefetchers) {
  for (const char* line : {"prefetch_depth = [8]\n", "hbm_budget = [\"1G\"]\n"}) {
    TempFile f(line);
    const std::string err = load_error(f);
    EXPECT_NE(err, "") << "accepted " << line;
    EXPECT_NE(err.find("one value is expected, not a list"), std::string::npos) << err;
  }
  TempFile ok("prefetchers = [\"sequential\", \"hint\"]\n");
  ConfigLoader loader;
  loader.load_file(ok.path());
  EXPECT_EQ(loader.finish().prefetchers, kPrefetchSequential | kPrefetchHint);
}

// A path written as a number is a mistake, not the directory "5".
TEST(Config, AStringKnobInTheFileMustBeAString) {
  for (const char* line : {"store_dir = 5\n", "runtime_dir = true\n"}) {
    TempFile f(line);
    const std::string err = load_error(f);
    EXPECT_NE(err, "") << "accepted " << line;
    EXPECT_NE(err.find("a string is expected"), std::string::npos) << err;
    EXPECT_NE(err.find(f.path() + ":1"), std::string::npos) << err;
  }
  TempFile ok("store_dir = \"5\"\n");
  ConfigLoader loader;
  loader.load_file(ok.path());
  EXPECT_EQ(loader.finish().store_dir, "5");
}

TEST(Config, EveryBadValueIsRefusedNamingTheKnob) {
  for (const auto& [name, sample] : kSamples) {
    ConfigLoader loader;
    try {
      loader.set(name, sample.bad, ConfigSource::kCli, "--set");
      ADD_FAILURE() << name << " accepted '" << sample.bad << "'";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("allowed"), std::string::npos) << name << ": " << e.what();
    }
    // ...and nothing changed.
    const Knob& k = *find_knob(name);
    EXPECT_EQ(k.format(loader.config()), k.format(Config{}));
  }
}

// "1e30" is a number of bytes, only too many: the message says the range, as
// for any value above it, and a negative or fractional size says so.
TEST(Config, AByteSizeOutOfRangeIsNotCalledMalformed) {
  auto message = [](const char* value) {
    ConfigLoader loader;
    try {
      loader.set("hbm_budget", value, ConfigSource::kCli, "--set");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message("1e30").find("hbm_budget = '1e30': out of range: allowed 64K..64P (or 0)"), std::string::npos)
      << message("1e30");
  EXPECT_EQ(message("1e30"), message("128P").replace(message("128P").find("128P"), 4, "1e30"));
  EXPECT_NE(message("-1G").find("'-1G': negative: allowed 64K..64P (or 0)"), std::string::npos) << message("-1G");
  EXPECT_NE(message("0.5").find("'0.5': not a whole number of bytes: allowed"), std::string::npos) << message("0.5");
  EXPECT_NE(message("12Q").find("'12Q': not a byte size: allowed forms"), std::string::npos) << message("12Q");
}

TEST(Config, BadValuesInEnvAndFileNameTheirSource) {
  std::string var = "KVPAGER_CHUNK_SIZE=3M";
  char* env[] = {var.data(), nullptr};
  ConfigLoader loader;
  try {
    loader.load_env(env);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("KVPAGER_CHUNK_SIZE"), std::string::npos) << e.what();
  }
  TempFile f("\n\nhbm_budget = \"huge\"\n");
  try {
    loader.load_file(f.path());
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(f.path() + ":3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("hbm_budget"), std::string::npos) << e.what();
  }
}

// A file that is not a configuration is an error, never silent defaults:
// a directory (KVPAGER_CONFIG is not checked by the CLI), a missing file, and
// a section (table) no knob lives in, even an empty one.
TEST(Config, ADirectoryMissingFileOrUnknownEmptySectionIsRefused) {
  ConfigLoader loader;
  const std::string dir = std::filesystem::temp_directory_path().string();
  EXPECT_THROW(loader.load_file(dir), ConfigError);
  try {
    loader.load_file(dir + "/no-such-kvpager-config.toml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-kvpager-config.toml"), std::string::npos) << e.what();
  }
  for (const char* text : {"[bogus]\n", "[sim]\n[t.t]\n"}) {
    TempFile f(text);
    try {
      ConfigLoader l;
      l.load_file(f.path());
      ADD_FAILURE() << "accepted " << text;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("unknown setting"), std::string::npos) << e.what();
    }
  }
  for (const char* text : {"[sim]\npcie_gbps = 12\n", "[sim]\n"}) {  // an empty known section is fine
    TempFile known(text);
    ConfigLoader ok;
    EXPECT_NO_THROW(ok.load_file(known.path())) << text;
  }
  std::string var = "KVPAGER_CONFIG=" + dir;
  char* env[] = {var.data(), nullptr};
  EXPECT_THROW(ConfigLoader::standard("", {}, env), ConfigError);
}

TEST(Config, UnknownNamesAreErrorsNotSilence) {
  ConfigLoader loader;
  EXPECT_THROW(loader.set("hbm_budgte", "1G", ConfigSource::kCli, "--set"), ConfigError);
  std::string var = "KVPAGER_HBM_BUDGTE=1G";
  char* env[] = {var.data(), nullptr};
  loader.load_env(env);  // the environment is shared: reported, not fatal
  ASSERT_EQ(loader.warnings().size(), 1u);
  EXPECT_NE(loader.warnings()[0].find("KVPAGER_HBM_BUDGTE"), std::string::npos);
  EXPECT_EQ(loader.config().hbm_budget, Config{}.hbm_budget);
  TempFile f("hbm_budgte = \"1G\"\n");
  EXPECT_THROW(loader.load_file(f.path()), ConfigError);
  TempFile syntax("hbm_budget = \n");
  EXPECT_THROW(loader.load_file(syntax.path()), ConfigError);
  EXPECT_THROW(loader.set_assignment("no-equals-sign", ConfigSource::kCli, "--set"), ConfigError);
}

TEST(Config, LaterSourcesOverrideEarlierOnes) {
  TempFile f("hbm_budget = \"1G\"\nhost_capacity = \"2G\"\nnvme_capacity = \"3G\"\n");
  std::string file_var = "KVPAGER_CONFIG=" + f.path();
  std::string a = "KVPAGER_HOST_CAPACITY=20G";
  std::string b = "KVPAGER_NVME_CAPACITY=30G";
  char* env[] = {file_var.data(), a.data(), b.data(), nullptr};
  ConfigLoader loader = ConfigLoader::standard("", {"nvme_capacity=300G"}, env);
  Config c = loader.finish();
  EXPECT_EQ(c.hbm_budget, 1 * GiB);      // file
  EXPECT_EQ(c.host_capacity, 20 * GiB);  // env over file
  EXPECT_EQ(c.nvme_capacity, 300 * GiB); // cli over env over file
  EXPECT_EQ(loader.origin(*find_knob("hbm_budget")).source, ConfigSource::kFile);
  EXPECT_EQ(loader.origin(*find_knob("host_capacity")).source, ConfigSource::kEnv);
  EXPECT_EQ(loader.origin(*find_knob("nvme_capacity")).source, ConfigSource::kCli);
  EXPECT_EQ(loader.origin(*find_knob("chunk_size")).source, ConfigSource::kDefault);
}

TEST(Config, CrossKnobRulesAreChecked) {
  Config c;
  c.low_watermark = 0.96;
  auto errors = validate(c);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("low_watermark"), std::string::npos);

  Config d;
  d.chunk_size = 4 * MiB;
  d.hbm_budget = 2 * MiB;
  errors = validate(d);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("hbm_budget"), std::string::npos);
  EXPECT_THROW(validate_or_throw(d), ConfigError);

  // 0 is unlimited; a capacity below one chunk would silently disable spilling.
  Config n;
  n.nvme_capacity = 64 * 1024;
  errors = validate(n);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("nvme_capacity = 64K: out of range: must hold at least one chunk"), std::string::npos)
      << errors[0];
  n.nvme_capacity = 0;
  EXPECT_TRUE(validate(n).empty());
}

// A rule between knobs names both; the one the user set is named with where
// it was set (a file's high_watermark = 0.5 was reported as a problem of
// low_watermark, which nobody had set, without the file).
TEST(Config, ACrossKnobProblemSaysWhereEachKnobCameFrom) {
  TempFile f("\nhigh_watermark = 0.5\n");
  ConfigLoader file;
  file.load_file(f.path());
  try {
    file.finish();
    FAIL() << "0.85 >= 0.5 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("must be below high_watermark = 0.5 (high_watermark from " + f.path() +
                                         ":2; low_watermark from the default)"),
              std::string::npos)
        << e.what();
  }
  std::string var = "KVPAGER_LOW_WATERMARK=0.9";
  char* env[] = {var.data(), nullptr};
  ConfigLoader both;
  both.load_env(env);
  both.set("high_watermark", "0.8", ConfigSource::kCli, "--high-watermark 0.8");
  try {
    both.finish();
    FAIL() << "0.9 >= 0.8 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("(high_watermark from --high-watermark 0.8; low_watermark from "
                                         "KVPAGER_LOW_WATERMARK)"),
              std::string::npos)
        << e.what();
  }
}

TEST(Config, ValidateCatchesValuesSetInCode) {
  Config c;
  c.chunk_size = 3 * MiB;
  c.prefetch_depth = 0;
  c.eviction_policy = static_cast<PolicyKind>(9);
  auto errors = validate(c);
  EXPECT_EQ(errors.size(), 3u);
}

TEST(ConfigParse, Bytes) {
  EXPECT_EQ(parse_bytes("4096"), 4096u);
  EXPECT_EQ(parse_bytes("64K"), 64 * KiB);
  EXPECT_EQ(parse_bytes("2m"), 2 * MiB);
  EXPECT_EQ(parse_bytes("8GiB"), 8 * GiB);
  EXPECT_EQ(parse_bytes("1.5G"), 3 * GiB / 2);
  EXPECT_EQ(parse_bytes(" 1T "), 1 * TiB);
  EXPECT_FALSE(parse_bytes("1.5"));     // fractional bytes
  EXPECT_FALSE(parse_bytes("-1"));
  EXPECT_FALSE(parse_bytes("12Q"));
  EXPECT_FALSE(parse_bytes(""));
  EXPECT_FALSE(parse_bytes("99999999999P"));  // overflow
  // ...and why, for the message.
  EXPECT_EQ(bytes_error("4096"), std::nullopt);
  EXPECT_EQ(bytes_error("-0"), std::nullopt);
  EXPECT_EQ(bytes_error("1.5"), BytesError::kFraction);
  EXPECT_EQ(bytes_error("0.3K"), BytesError::kFraction);
  EXPECT_EQ(bytes_error("-1"), BytesError::kNegative);
  EXPECT_EQ(bytes_error("-2M"), BytesError::kNegative);
  EXPECT_EQ(bytes_error("1e30"), BytesError::kTooLarge);
  EXPECT_EQ(bytes_error("99999999999P"), BytesError::kTooLarge);
  EXPECT_EQ(bytes_error("12Q"), BytesError::kSyntax);
  EXPECT_EQ(bytes_error("-x"), BytesError::kSyntax);
  EXPECT_EQ(bytes_error("nan"), BytesError::kSyntax);
  EXPECT_EQ(bytes_error("-nan"), BytesError::kSyntax);
  EXPECT_EQ(bytes_error("-inf"), BytesError::kSyntax);
  EXPECT_EQ(bytes_error("1e400"), BytesError::kTooLarge);
  EXPECT_EQ(parse_bytes("16383P"), 16383 * TiB * 1024);  // below 2^64 (16 EiB): a byte count
  EXPECT_EQ(bytes_error("16384P"), BytesError::kTooLarge);
  EXPECT_EQ(bytes_error(""), BytesError::kSyntax);
  EXPECT_EQ(format_bytes(2 * MiB), "2M");
  EXPECT_EQ(format_bytes(1536 * KiB), "1536K");
  EXPECT_EQ(format_bytes(12345), "12345");
}

TEST(ConfigParse, Durations) {
  EXPECT_EQ(parse_duration_ns("30s"), 30'000'000'000u);
  EXPECT_EQ(parse_duration_ns("30"), 30'000'000'000u);
  EXPECT_EQ(parse_duration_ns("250ms"), 250'000'000u);
  EXPECT_EQ(parse_duration_ns("10us"), 10'000u);
  EXPECT_EQ(parse_duration_ns("2min"), 120'000'000'000u);
  EXPECT_FALSE(parse_duration_ns("soon"));
  EXPECT_EQ(format_duration(30'000'000'000u), "30s");
  EXPECT_EQ(format_duration(10'000u), "10us");
}

TEST(ConfigParse, SizeRanges) {
  auto r = parse_size_ranges(" 4M-64M, 1G- ,-8K");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0], (SizeRange{4 * MiB, 64 * MiB}));
  EXPECT_EQ((*r)[1], (SizeRange{1 * GiB, UINT64_MAX}));
  EXPECT_EQ((*r)[2], (SizeRange{0, 8 * KiB}));
  EXPECT_TRUE((*r)[0].contains(4 * MiB));
  EXPECT_TRUE((*r)[0].contains(64 * MiB)) << "ranges are inclusive";
  EXPECT_FALSE((*r)[0].contains(64 * MiB + 1));
  auto empty = parse_size_ranges("");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
  std::string why;
  EXPECT_FALSE(parse_size_ranges("8M-4M", &why));
  EXPECT_NE(why.find("empty"), std::string::npos) << why;
  EXPECT_FALSE(parse_size_ranges("-", &why));
  EXPECT_FALSE(parse_size_ranges("4M", &why));
  EXPECT_FALSE(parse_size_ranges("4Q-8M", &why));
}

TEST(Config, ResolvesAutoValues) {
  Config c;
  c.chunk_size = 2 * MiB;
  Config r = c.resolved(80 * GiB + 123, 512 * GiB);
  EXPECT_EQ(r.hbm_budget, 80 * GiB) << "auto budget: the device, in whole chunks";
  EXPECT_EQ(r.host_capacity, 256 * GiB);
}

// The simulated links' time per move is bytes / bandwidth in whole
// nanoseconds: below 1 MB/s a run's virtual clock overflowed and a slower
// link made the demo *faster*. NaN is no number in range either.
TEST(Config, SimulatedBandwidthsStartAtOneMegabytePerSecond) {
  for (const char* knob : {"sim.pcie_gbps", "sim.nvme_read_gbps", "sim.nvme_write_gbps"}) {
    const Knob& k = *find_knob(knob);
    Config c;
    EXPECT_EQ(k.set(c, "0.001"), std::nullopt) << knob;
    for (const char* bad : {"0.0009", "1e-15", "1e-300", "0", "nan", "-nan", "inf"}) {
      auto why = k.set(c, bad);
      ASSERT_TRUE(why.has_value()) << knob << " = " << bad;
      EXPECT_NE(why->find("0.001..10000"), std::string::npos) << *why;
    }
  }
  for (const char* knob : {"high_watermark", "low_watermark", "prefetch_waste_ceiling"}) {
    Config c;
    EXPECT_TRUE(find_knob(knob)->set(c, "nan").has_value()) << knob;
  }
}

TEST(Config, KnobNamesMapToEnvAndFlags) {
  const Knob* k = find_knob("sim.pcie_gbps");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->env_name(), "KVPAGER_SIM_PCIE_GBPS");
  EXPECT_EQ(k->cli_name(), "sim-pcie-gbps");
  EXPECT_EQ(find_knob("KVPAGER_SIM_PCIE_GBPS"), k);
  EXPECT_EQ(find_knob("sim-pcie-gbps"), k);
  EXPECT_EQ(find_knob("nope"), nullptr);
}

}  // namespace
}  // namespace kvpager
