#include "kvpager/config.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <variant>

namespace kvpager {

uint64_t physical_ram() {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 8 * GiB;
}

std::string_view to_string(PolicyKind p) {
  switch (p) {
    case PolicyKind::kLru: return "lru";
    case PolicyKind::kClock: return "clock";
    case PolicyKind::kCost: return "cost";
    case PolicyKind::kPrefix: return "prefix";
    case PolicyKind::kS3Fifo: return "s3fifo";
  }
  return "?";
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// Parses a non-negative decimal number (optionally with a fraction) and
// returns it with the unparsed suffix.
std::optional<std::pair<double, std::string_view>> parse_number(std::string_view s) {
  s = trim(s);
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || !std::isfinite(v) || v < 0) return std::nullopt;
  return std::pair{v, trim(std::string_view(p, static_cast<size_t>(s.data() + s.size() - p)))};
}

std::optional<uint64_t> exact_u64(std::string_view s) {
  s = trim(s);
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

namespace {

// The value of a byte size, or why it is not one.
std::variant<uint64_t, BytesError> read_bytes(std::string_view s) {
  if (auto exact = exact_u64(s)) return *exact;
  auto num = parse_number(s);
  if (!num) {
    double v = 0;
    s = trim(s);
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    // A number past what a double holds ("1e400") is too large; a negative
    // one ("-1", "-2M"; not "-nan" or "-inf") is negative.
    if (ec == std::errc::result_out_of_range && s.front() != '-') return BytesError::kTooLarge;
    if (ec == std::errc{} && std::isfinite(v) && std::signbit(v) && v != 0) return BytesError::kNegative;
    return BytesError::kSyntax;
  }
  std::string unit = lower(num->second);
  if (unit.ends_with("ib")) unit.resize(unit.size() - 2);
  else if (unit.ends_with("b")) unit.resize(unit.size() - 1);
  double mult = 0;
  if (unit.empty()) mult = 1;
  else if (unit == "k") mult = static_cast<double>(KiB);
  else if (unit == "m") mult = static_cast<double>(MiB);
  else if (unit == "g") mult = static_cast<double>(GiB);
  else if (unit == "t") mult = static_cast<double>(TiB);
  else if (unit == "p") mult = static_cast<double>(TiB) * 1024.0;
  else return BytesError::kSyntax;
  double v = num->first * mult;
  if (v >= 0x1p64) return BytesError::kTooLarge;  // 2^64: what a byte count holds
  if (v != std::floor(v)) return BytesError::kFraction;
  return static_cast<uint64_t>(v);
}

}  // namespace

std::optional<uint64_t> parse_bytes(std::string_view s) {
  auto r = read_bytes(s);
  if (const auto* v = std::get_if<uint64_t>(&r)) return *v;
  return std::nullopt;
}

std::optional<BytesError> bytes_error(std::string_view s) {
  auto r = read_bytes(s);
  if (const auto* e = std::get_if<BytesError>(&r)) return *e;
  return std::nullopt;
}

std::string_view describe(BytesError e) {
  switch (e) {
    case BytesError::kNegative: return "negative";
    case BytesError::kTooLarge: return "too large (16 EiB or more)";
    case BytesError::kFraction: return "not a whole number of bytes";
    case BytesError::kSyntax: break;
  }
  return "not a byte size: allowed forms 4096, 64K, 2M, 8G, 1.5T";
}

std::optional<uint64_t> parse_duration_ns(std::string_view s) {
  auto num = parse_number(s);
  if (!num) return std::nullopt;
  std::string unit = lower(num->second);
  double mult = 0;
  if (unit.empty() || unit == "s") mult = 1e9;
  else if (unit == "ms") mult = 1e6;
  else if (unit == "us") mult = 1e3;
  else if (unit == "ns") mult = 1;
  else if (unit == "min" || unit == "m") mult = 60e9;
  else if (unit == "h") mult = 3600e9;
  else return std::nullopt;
  double v = std::round(num->first * mult);
  if (v >= 1.8e19) return std::nullopt;
  return static_cast<uint64_t>(v);
}

std::string format_bytes(uint64_t b) {
  static constexpr std::pair<uint64_t, const char*> units[] = {
      {TiB * 1024, "P"}, {TiB, "T"}, {GiB, "G"}, {MiB, "M"}, {KiB, "K"}};
  if (b == 0) return "0";
  for (auto [mult, name] : units) {
    if (b % mult == 0) return fmt::format("{}{}", b / mult, name);
  }
  return fmt::format("{}", b);
}

std::string human_bytes(double b) {
  static constexpr const char* names[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (b >= 1024.0 && i < 5) {
    b /= 1024.0;
    ++i;
  }
  return i == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.2f} {}", b, names[i]);
}

std::string format_duration(uint64_t ns) {
  if (ns == 0) return "0s";
  if (ns % 1'000'000'000 == 0) return fmt::format("{}s", ns / 1'000'000'000);
  if (ns % 1'000'000 == 0) return fmt::format("{}ms", ns / 1'000'000);
  if (ns % 1'000 == 0) return fmt::format("{}us", ns / 1'000);
  return fmt::format("{}ns", ns);
}

std::optional<std::vector<SizeRange>> parse_size_ranges(std::string_view s, std::string* why) {
  auto fail = [&](std::string msg) -> std::optional<std::vector<SizeRange>> {
    if (why) *why = std::move(msg);
    return std::nullopt;
  };
  std::vector<SizeRange> out;
  s = trim(s);
  while (!s.empty()) {
    size_t comma = s.find(',');
    std::string_view item = trim(s.substr(0, comma));
    s = comma == std::string_view::npos ? std::string_view{} : trim(s.substr(comma + 1));
    size_t dash = item.find('-');
    if (dash == std::string_view::npos) return fail(fmt::format("'{}' is not a range LO-HI", item));
    std::string_view lo = trim(item.substr(0, dash)), hi = trim(item.substr(dash + 1));
    SizeRange r;
    if (!lo.empty()) {
      auto v = parse_bytes(lo);
      if (!v) return fail(fmt::format("'{}': {}", lo, describe(*bytes_error(lo))));
      r.lo = *v;
    }
    if (!hi.empty()) {
      auto v = parse_bytes(hi);
      if (!v) return fail(fmt::format("'{}': {}", hi, describe(*bytes_error(hi))));
      r.hi = *v;
    }
    if (lo.empty() && hi.empty()) return fail("'-' bounds nothing");
    if (r.lo > r.hi) return fail(fmt::format("'{}' is empty (low end above high end)", item));
    out.push_back(r);
  }
  return out;
}

std::string Knob::env_name() const {
  std::string out = "KVPAGER_";
  for (char c : name) out += (c == '.') ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string Knob::cli_name() const {
  std::string out;
  for (char c : name) out += (c == '.' || c == '_') ? '-' : c;
  return out;
}

namespace {

// Each knob type is a template over the member it sets, so the table below
// stays one line of facts per knob. parse() and check() return only the
// reason; the caller (Knob::set / validate) names the knob and its value, so
// every message has the same shape: "<knob> = <value>: <reason>".
// Range checks are separate from parsing: a value can be well-formed and still
// out of range, and validate() must also catch bad values set in code.

// Byte sizes, Lo..Hi inclusive; ZeroOk: 0 is allowed (auto / unlimited).
template <auto M, uint64_t Lo, uint64_t Hi, bool ZeroOk, bool Pow2>
struct BytesKnob {
  static std::optional<std::string> parse(Config& c, std::string_view v) {
    auto b = parse_bytes(v);
    if (!b) {
      switch (const BytesError e = bytes_error(v).value_or(BytesError::kSyntax)) {
        case BytesError::kSyntax: return std::string(describe(e));
        case BytesError::kTooLarge: return "out of range: " + allowed();  // past every knob's range
        default: return fmt::format("{}: {}", describe(e), allowed());
      }
    }
    c.*M = *b;
    return check(c);
  }
  static std::string format(const Config& c) { return format_bytes(c.*M); }
  static std::optional<std::string> check(const Config& c) {
    uint64_t v = c.*M;
    if (ZeroOk && v == 0) return std::nullopt;
    if (v < Lo || v > Hi || (Pow2 && (v & (v - 1)) != 0)) return "out of range: " + allowed();
    return std::nullopt;
  }
  static std::string allowed() {
    return fmt::format("allowed {}{}..{}{}", Pow2 ? "a power of two, " : "", format_bytes(Lo), format_bytes(Hi),
                       ZeroOk ? " (or 0)" : "");
  }
};

template <auto M, uint64_t Lo, uint64_t Hi>
struct UintKnob {
  static std::optional<std::string> parse(Config& c, std::string_view v) {
    auto n = exact_u64(v);
    if (!n || *n > UINT32_MAX) return fmt::format("not an integer: allowed {}..{}", Lo, Hi);
    c.*M = static_cast<uint32_t>(*n);
    return check(c);
  }
  static std::string format(const Config& c) { return fmt::format("{}", c.*M); }
  static std::optional<std::string> check(const Config& c) {
    if (c.*M < Lo || c.*M > Hi) return fmt::format("out of range: allowed {}..{}", Lo, Hi);
    return std::nullopt;
  }
};

// Doubles in [Lo/1000, Hi]; LoOpen excludes the low bound. The bounds are
// integers (template arguments of type double need clang >= 18; clang 14
// builds the fuzz targets), the low one in thousandths.
template <auto M, int LoMilli, int Hi, bool LoOpen>
struct DoubleKnob {
  static std::optional<std::string> parse(Config& c, std::string_view v) {
    auto n = parse_number(v);
    if (!n || !n->second.empty()) return fmt::format("not a number: allowed {}", range());
    c.*M = n->first + 0.0;  // -0 is 0 (it printed as "-0")
    return check(c);
  }
  static std::string range() { return fmt::format("{}{}..{}", LoOpen ? "> " : "", LoMilli / 1000.0, Hi); }
  static std::string format(const Config& c) { return fmt::format("{}", c.*M); }
  static std::optional<std::string> check(const Config& c) {
    const double v = c.*M, lo = LoMilli / 1000.0, hi = Hi;
    if (!(v <= hi) || (LoOpen ? !(v > lo) : !(v >= lo))) return fmt::format("out of range: allowed {}", range());
    return std::nullopt;
  }
};

template <auto M, uint64_t Lo, uint64_t Hi>
struct DurationKnob {
  static std::optional<std::string> parse(Config& c, std::string_view v) {
    auto n = parse_duration_ns(v);
    if (!n) return "not a duration: allowed forms 30s, 250ms, 10us, 2min (a bare number is seconds)";
    c.*M = *n;
    return check(c);
  }
  static std::string format(const Config& c) { return format_duration(c.*M); }
  static std::optional<std::string> check(const Config& c) {
    if (c.*M < Lo || c.*M > Hi)
      return fmt::format("out of range: allowed {}..{}", format_duration(Lo), format_duration(Hi));
    return std::nullopt;
  }
};

// An enumeration: Names lists (value, name) pairs.
template <auto M, const auto& Names>
struct EnumKnob {
  static std::string allowed() {
    std::string out;
    for (auto [v, n] : Names) out += (out.empty() ? "" : ", ") + std::string(n);
    return out;
  }
  static std::optional<std::string> parse(Config& c, std::string_view v) {
    std::string s = lower(trim(v));
    for (auto [value, name] : Names) {
      if (s == name) {
        c.*M = value;
        return std::nullopt;
      }
    }
    return "unknown value: allowed " + allowed();
  }
  static std::string format(const Config& c) {
    for (auto [value, name] : Names)
      if (c.*M == value) return std::string(name);
    return "?";
  }
  static std::optional<std::string> check(const Config& c) {
    for (auto [value, name] : Names)
      if (c.*M == value) return std::nullopt;
    return "unknown value: allowed " + allowed();
  }
};

constexpr std::array<std::pair<PolicyKind, std::string_view>, 5> kPolicyNames{
    {{PolicyKind::kLru, "lru"}, {PolicyKind::kClock, "clock"}, {PolicyKind::kCost, "cost"},
     // replay issue: prefix-aware (chain tails first) and S3-FIFO (frequency)
     {PolicyKind::kPrefix, "prefix"}, {PolicyKind::kS3Fifo, "s3fifo"}}};
constexpr std::array<std::pair<std::string_view, std::string_view>, 6> kLogLevels{
    {{"trace", "trace"}, {"debug", "debug"}, {"info", "info"}, {"warn", "warn"}, {"error", "error"}, {"off", "off"}}};

struct PrefetchersKnob {
  static constexpr std::pair<uint8_t, std::string_view> kNames[] = {
      {kPrefetchSequential, "sequential"}, {kPrefetchCorrelation, "correlation"}, {kPrefetchHint, "hint"}};
  static std::optional<std::string> parse(Config& c, std::string_view v) {
    std::string s = lower(trim(v));
    if (s == "none" || s.empty()) {
      c.prefetchers = 0;
      return std::nullopt;
    }
    if (s == "all") {
      c.prefetchers = kAllPrefetchers;
      return std::nullopt;
    }
    uint8_t bits = 0;
    std::string_view rest = s;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view item = trim(rest.substr(0, comma));
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      auto it = std::find_if(std::begin(kNames), std::end(kNames), [&](auto& p) { return p.second == item; });
      if (it == std::end(kNames)) return "unknown prefetcher: allowed a comma list of sequential, correlation, hint; or all, none";
      bits = static_cast<uint8_t>(bits | it->first);
    }
    c.prefetchers = bits;
    return std::nullopt;
  }
  static std::string format(const Config& c) {
    if (c.prefetchers == 0) return "none";
    std::string out;
    for (auto [bit, name] : kNames) {
      if (c.prefetchers & bit) out += (out.empty() ? "" : ",") + std::string(name);
    }
    return out;
  }
  static std::optional<std::string> check(const Config& c) {
    if (c.prefetchers & ~kAllPrefetchers) return "unknown prefetcher bits";
    return std::nullopt;
  }
};

template <auto M>
struct StringKnob {
  static std::optional<std::string> parse(Config& c, std::string_view v) {
    c.*M = std::string(v);
    return check(c);
  }
  static std::string format(const Config& c) { return c.*M; }
  static std::optional<std::string> check(const Config& c) {
    if ((c.*M).find('\0') != std::string::npos) return "contains a NUL byte: allowed any text without one";
    return std::nullopt;
  }
};

// A comma list of size ranges, kept as text in the Config and parsed by its user.
template <auto M>
struct SizeRangesKnob {
  static std::optional<std::string> parse(Config& c, std::string_view v) {
    c.*M = std::string(trim(v));
    return check(c);
  }
  static std::string format(const Config& c) { return c.*M; }
  static std::optional<std::string> check(const Config& c) {
    std::string why;
    if (!parse_size_ranges(c.*M, &why)) return why + ": allowed a comma list of LO-HI byte ranges (4M-64M,1G-)";
    return std::nullopt;
  }
};

constexpr std::array<std::pair<AsyncAlloc, std::string_view>, 2> kAsyncAllocNames{
    {{AsyncAlloc::kManaged, "managed"}, {AsyncAlloc::kPassthrough, "passthrough"}}};

template <typename K>
constexpr Knob make(std::string_view name, KnobType t, bool live, std::string_view range, std::string_view help) {
  return Knob{name, t, live, range, help, &K::parse, &K::format, &K::check};
}

constexpr uint64_t kMaxBytes = TiB * 1024 * 64;  // 64 PiB: a sanity bound, not a policy
constexpr uint64_t kHour = 3600ull * 1'000'000'000;

// constexpr: constant-initialised, so it can be read from any constructor
// (libkvpager.so is called from other libraries' constructors before its own run).
constexpr Knob kKnobs[] = {
    make<BytesKnob<&Config::chunk_size, 64 * KiB, 64 * MiB, false, true>>(
        "chunk_size", KnobType::kBytes, false, "a power of two, 64K..64M",
        "Paging unit. 2M matches the UVM driver's VA block."),
    make<BytesKnob<&Config::hbm_budget, 64 * KiB, kMaxBytes, true, false>>(
        "hbm_budget", KnobType::kBytes, true, "0 (auto) or chunk_size..64P",
        "HBM the pager keeps resident. auto: the simulated card's size, or 90% of the GPU's free memory."),
    make<BytesKnob<&Config::host_capacity, 64 * KiB, kMaxBytes, true, false>>(
        "host_capacity", KnobType::kBytes, true, "0 (auto) or chunk_size..64P",
        "Host RAM the pager aims to keep demoted chunks within: above it, contexts that may spill (parked, "
        "or idle for spill_idle) go to NVMe; chunks of active contexts stay, so it is a target, not a cap. "
        "auto: half of physical RAM."),
    make<BytesKnob<&Config::nvme_capacity, 64 * KiB, kMaxBytes, true, false>>(
        "nvme_capacity", KnobType::kBytes, true, "0 (unlimited) or chunk_size..64P",
        "Bytes the NVMe tier may hold; when full, chunks stay in host RAM until it has room. With a "
        "capacity, a chunk read back gives its NVMe copy up; unlimited, the copy stays, so that the chunk "
        "spills again without a write while it is clean."),
    make<DoubleKnob<&Config::high_watermark, 0, 1, true>>(
        "high_watermark", KnobType::kFraction, true, "a fraction > 0..1, above low_watermark",
        "Occupancy of a tier (fraction of its capacity) that starts eviction from it."),
    make<DoubleKnob<&Config::low_watermark, 0, 1, false>>(
        "low_watermark", KnobType::kFraction, true, "a fraction 0..1, below high_watermark",
        "Occupancy at which eviction stops."),
    make<EnumKnob<&Config::eviction_policy, kPolicyNames>>("eviction_policy", KnobType::kPolicy, true, "lru, clock, cost, prefix, s3fifo",
                     "Victim choice: LRU, CLOCK (second chance), cost-aware (lowest heat x restore cost), "
                     "prefix-aware (sequence tails first, chunks used 3+ times protected) or S3-FIFO (small/main FIFOs + ghost)."),
    make<UintKnob<&Config::cost_sample, 1, 1024>>(
        "cost_sample", KnobType::kUint, true, "1..1024",
        "Candidates from the cold end the cost-aware policy compares per victim."),
    make<PrefetchersKnob>("prefetchers", KnobType::kPrefetchers, true,
                          "comma list of sequential, correlation, hint; all; none",
                          "Enabled prefetchers."),
    make<UintKnob<&Config::prefetch_depth, 1, 256>>(
        "prefetch_depth", KnobType::kUint, true, "1..256",
        "How far ahead: chunks for sequential, launches for correlation."),
    make<DoubleKnob<&Config::prefetch_waste_ceiling, 0, 1, true>>(
        "prefetch_waste_ceiling", KnobType::kFraction, true, "a fraction > 0..1",
        "A prefetcher whose wasted/(used+wasted) bytes exceed this is throttled (not the hint prefetcher: it carries out explicit hints)."),
    make<DurationKnob<&Config::spill_idle_ns, 0, 24 * kHour>>(
        "spill_idle", KnobType::kDuration, true, "0..24h",
        "Idle time after which a context may spill from host RAM to NVMe."),
    make<StringKnob<&Config::store_dir>>(
        "store_dir", KnobType::kString, false, "a directory path",
        "NVMe tier directory. Empty: $XDG_CACHE_HOME/kvpager, else /var/tmp/kvpager."),
    make<EnumKnob<&Config::log_level, kLogLevels>>("log_level", KnobType::kString, true, "trace, debug, info, warn, error, off",
                       "Logging threshold."),
    // --- token store (fusefs/store) ---
    make<UintKnob<&Config::store_queue_depth, 1, 4096>>(
        "store.queue_depth", KnobType::kUint, false, "1..4096",
        "Token store: I/Os in flight per handle (io_uring queue depth and registered buffers of chunk_size)."),
    make<BytesKnob<&Config::sim_hbm_capacity, 64 * KiB, 1024 * GiB, false, false>>(
        "sim.hbm_capacity", KnobType::kBytes, false, "64K..1T",
        "Simulated device: size of its HBM (the budget cannot exceed it)."),
    make<DoubleKnob<&Config::sim_pcie_gbps, 1, 10000, false>>(
        "sim.pcie_gbps", KnobType::kDouble, false, "0.001..10000",
        "Simulated device: HBM<->host bandwidth per direction, GB/s."),
    make<DurationKnob<&Config::sim_pcie_latency_ns, 0, 1'000'000'000>>(
        "sim.pcie_latency", KnobType::kDuration, false, "0..1s", "Simulated device: HBM<->host latency per move."),
    make<DoubleKnob<&Config::sim_nvme_read_gbps, 1, 10000, false>>(
        "sim.nvme_read_gbps", KnobType::kDouble, false, "0.001..10000", "Simulated device: NVMe read bandwidth, GB/s."),
    make<DoubleKnob<&Config::sim_nvme_write_gbps, 1, 10000, false>>(
        "sim.nvme_write_gbps", KnobType::kDouble, false, "0.001..10000", "Simulated device: NVMe write bandwidth, GB/s."),
    make<DurationKnob<&Config::sim_nvme_latency_ns, 0, 1'000'000'000>>(
        "sim.nvme_latency", KnobType::kDuration, false, "0..1s", "Simulated device: NVMe latency per move."),
    make<DurationKnob<&Config::sim_fault_ns, 0, 1'000'000'000>>(
        "sim.fault_cost", KnobType::kDuration, false, "0..1s",
        "Simulated device: extra time a demand fault costs over a prefetch."),
    // --- live control (issue 4: tools/control, kvpager status/top/tune) ---
    make<StringKnob<&Config::runtime_dir>>(
        "runtime_dir", KnobType::kString, false, "a directory path",
        "Where each pager's control socket lives (one per process, named by pid; created with mode 0700, an "
        "existing one others may write to is refused). Empty: "
        "$XDG_RUNTIME_DIR/kvpager, else /run/kvpager; /tmp/kvpager-<uid> when that is not writable."),

    // --- cuda: the interposer (libkvpager.so), issue 6 ---
    make<BytesKnob<&Config::cuda_min_size, 1, kMaxBytes, true, false>>(
        "cuda.min_size", KnobType::kBytes, false, "0..64P",
        "Device allocations at or above this size become managed regions the pager moves; smaller ones pass "
        "through. 0: every allocation."),
    make<SizeRangesKnob<&Config::cuda_allow_sizes>>(
        "cuda.allow_sizes", KnobType::kString, false, "comma list of LO-HI byte ranges, either end optional",
        "Allocation sizes that become managed even below cuda.min_size."),
    make<SizeRangesKnob<&Config::cuda_deny_sizes>>(
        "cuda.deny_sizes", KnobType::kString, false, "comma list of LO-HI byte ranges, either end optional",
        "Allocation sizes that always pass through (wins over cuda.allow_sizes and cuda.min_size), e.g. "
        "buffers a program exports through CUDA IPC."),
    make<BytesKnob<&Config::cuda_managed_limit, 64 * KiB, kMaxBytes, true, false>>(
        "cuda.managed_limit", KnobType::kBytes, false, "0 (auto) or 64K..64P",
        "Hard ceiling on managed bytes: an allocation beyond it fails with CUDA_ERROR_OUT_OF_MEMORY. "
        "auto: cuda.virtual_capacity. On a shared GPU keep it below the card's free memory."),
    make<BytesKnob<&Config::cuda_virtual_capacity, 64 * KiB, kMaxBytes, true, false>>(
        "cuda.virtual_capacity", KnobType::kBytes, false, "0 (auto) or 64K..64P",
        "Total memory cuMemGetInfo/cudaMemGetInfo report; free falls as the program allocates. "
        "auto: the device's memory plus host_capacity."),
    make<EnumKnob<&Config::cuda_async_alloc, kAsyncAllocNames>>(
        "cuda.async_alloc", KnobType::kString, false, "managed, passthrough",
        "cuMemAllocAsync/cuMemAllocFromPoolAsync (default pools) at or above the threshold: managed regions "
        "freed in stream order, or the driver's pools untouched."),
    make<DurationKnob<&Config::cuda_tick_ns, 10'000, 1'000'000'000>>(
        "cuda.tick_interval", KnobType::kDuration, false, "10us..1s",
        "How often the pager thread collects launches, finished moves and keeps the watermarks."),
    make<UintKnob<&Config::cuda_move_streams, 1, 2>>(
        "cuda.move_streams", KnobType::kUint, false, "1..2",
        "Streams the CUDA mover moves on: 2, promotes (host to HBM) and demotes (HBM to host) on one each, so "
        "a swap uses both directions of PCIe at once; 1, both on one stream, one direction at a time."),
};

}  // namespace

std::span<const Knob> knobs() { return kKnobs; }

const Knob* find_knob(std::string_view name) {
  for (const Knob& k : kKnobs) {
    if (k.name == name || k.env_name() == name || k.cli_name() == name) return &k;
  }
  return nullptr;
}

namespace {
// Values go into messages escaped: a NUL or a control character must not cut
// or garble the line that explains the problem.
std::string printable(std::string_view v) {
  std::string out;
  for (char ch : v) {
    auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f) out += fmt::format("\\x{:02x}", u);
    else out += ch;
  }
  return out;
}
}  // namespace

std::optional<std::string> Knob::set(Config& cfg, std::string_view value) const {
  Config trial = cfg;
  if (auto reason = parse(trial, value)) return fmt::format("{} = '{}': {}", name, printable(value), *reason);
  cfg = trial;
  return std::nullopt;
}

std::vector<std::string> validate(const Config& cfg) {
  std::vector<std::string> errors;
  for (const Knob& k : kKnobs) {
    if (auto reason = k.check(cfg))
      errors.push_back(fmt::format("{} = {}: {}", k.name, printable(k.format(cfg)), *reason));
  }
  if (cfg.low_watermark >= cfg.high_watermark) {
    errors.push_back(fmt::format("low_watermark = {}: out of range: must be below high_watermark = {}",
                                 cfg.low_watermark, cfg.high_watermark));
  }
  auto at_least_a_chunk = [&](std::string_view name, uint64_t v, bool zero_ok) {
    if ((zero_ok && v == 0) || v >= cfg.chunk_size) return;
    errors.push_back(fmt::format("{} = {}: out of range: must hold at least one chunk (chunk_size = {})", name,
                                 format_bytes(v), format_bytes(cfg.chunk_size)));
  };
  at_least_a_chunk("hbm_budget", cfg.hbm_budget, true);
  at_least_a_chunk("host_capacity", cfg.host_capacity, true);
  at_least_a_chunk("nvme_capacity", cfg.nvme_capacity, true);  // below: no chunk could ever spill
  at_least_a_chunk("sim.hbm_capacity", cfg.sim_hbm_capacity, false);
  return errors;
}

void validate_or_throw(const Config& cfg) {
  auto errors = validate(cfg);
  if (errors.empty()) return;
  std::string msg = "invalid configuration:";
  for (const auto& e : errors) msg += "\n  " + e;
  throw ConfigError(msg);
}

Config Config::resolved(uint64_t hbm_device_bytes, uint64_t host_ram_bytes) const {
  Config c = *this;
  if (c.hbm_budget == 0) c.hbm_budget = hbm_device_bytes;
  if (c.host_capacity == 0) c.host_capacity = std::max<uint64_t>(host_ram_bytes / 2, c.chunk_size);
  // Budgets are kept in whole chunks.
  c.hbm_budget = std::max(c.chunk_size, c.hbm_budget / c.chunk_size * c.chunk_size);
  return c;
}

std::string Config::effective_store_dir() const {
  if (!store_dir.empty()) return store_dir;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/kvpager";
  return "/var/tmp/kvpager";
}

}  // namespace kvpager
