// The one configuration struct. Every tunable of kvpager lives here, is
// described once in the knob table (config.cpp), is validated once by
// validate(), and is settable from a TOML file, KVPAGER_* environment
// variables and the command line (config_loader.h). The same validation runs
// at start-up and for every live change.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace kvpager {

inline constexpr uint64_t KiB = 1024;
inline constexpr uint64_t MiB = 1024 * KiB;
inline constexpr uint64_t GiB = 1024 * MiB;
inline constexpr uint64_t TiB = 1024 * GiB;

// kPrefix and kS3Fifo: added by the replay issue (prefix-aware, S3-FIFO).
enum class PolicyKind : uint8_t { kLru, kClock, kCost, kPrefix, kS3Fifo };
std::string_view to_string(PolicyKind p);

// Prefetchers are a set; each bit enables one.
enum PrefetcherBits : uint8_t {
  kPrefetchSequential = 1u << 0,   // sequential / density across chunks
  kPrefetchCorrelation = 1u << 1,  // launch correlation
  kPrefetchHint = 1u << 2,         // context hints
};
inline constexpr uint8_t kAllPrefetchers = kPrefetchSequential | kPrefetchCorrelation | kPrefetchHint;

// cuda: what the interposer does with cuMemAllocAsync / cuMemAllocFromPoolAsync.
enum class AsyncAlloc : uint8_t {
  kManaged,      // at or above the threshold: a managed region, freed in stream order
  kPassthrough,  // always the driver's own stream-ordered allocator
};

// An inclusive range of allocation sizes ("4M-64M", "1G-", "-8M").
struct SizeRange {
  uint64_t lo = 0;
  uint64_t hi = UINT64_MAX;
  bool contains(uint64_t v) const { return v >= lo && v <= hi; }
  friend bool operator==(const SizeRange&, const SizeRange&) = default;
};

struct Config {
  // --- geometry (fixed at start) ---
  uint64_t chunk_size = 2 * MiB;  // paging unit: power of two, 64 KiB..64 MiB

  // --- tier capacities (live) ---
  uint64_t hbm_budget = 0;     // bytes of HBM the pager may keep resident; 0 = auto
  uint64_t host_capacity = 0;  // bytes of host RAM for demoted chunks; 0 = auto (half of RAM)
  uint64_t nvme_capacity = 0;  // bytes in the NVMe tier; 0 = unlimited
  double high_watermark = 0.95;  // fraction of a tier's capacity that starts eviction
  double low_watermark = 0.85;   // ... and where eviction stops

  // --- decisions (live) ---
  PolicyKind eviction_policy = PolicyKind::kLru;
  uint32_t cost_sample = 8;  // candidates the cost-aware policy compares per victim
  uint8_t prefetchers = kAllPrefetchers;
  uint32_t prefetch_depth = 4;          // chunks ahead (sequential), launches ahead (correlation)
  double prefetch_waste_ceiling = 0.5;  // a prefetcher whose wasted/(used+wasted) passes this is throttled
  uint64_t spill_idle_ns = 30'000'000'000;  // a context idle this long may spill HOST -> NVME

  // --- paths (fixed at start) ---
  std::string store_dir;    // NVMe tier directory; "" = $XDG_CACHE_HOME/kvpager or /var/tmp/kvpager
  std::string log_level = "info";
  // Live control (tools/control): where each process's control socket lives.
  // "" = $XDG_RUNTIME_DIR/kvpager, else /run/kvpager (/tmp/kvpager-<uid> when not writable).
  std::string runtime_dir;

  // --- token store (fixed at start) ---
  uint32_t store_queue_depth = 32;  // I/Os in flight per store handle (and registered buffers)

  // --- simulated device (the host mover's cost model; fixed at start) ---
  uint64_t sim_hbm_capacity = 256 * MiB;  // size of the simulated card
  double sim_pcie_gbps = 25.0;            // HBM <-> host, each direction, GB/s
  uint64_t sim_pcie_latency_ns = 10'000;
  double sim_nvme_read_gbps = 3.0;
  double sim_nvme_write_gbps = 2.0;
  uint64_t sim_nvme_latency_ns = 80'000;
  uint64_t sim_fault_ns = 30'000;  // extra cost of a demand fault over a prefetch

  // --- cuda: the interposer in libkvpager.so (fixed at start) ---
  uint64_t cuda_min_size = 2 * MiB;       // allocations at or above become managed regions
  std::string cuda_allow_sizes;           // size ranges that become managed even below min_size
  std::string cuda_deny_sizes;            // size ranges that always pass through (wins over allow)
  uint64_t cuda_managed_limit = 0;        // ceiling on managed bytes; 0 = auto (= virtual capacity)
  uint64_t cuda_virtual_capacity = 0;     // total memory cuMemGetInfo reports; 0 = auto (device + host_capacity)
  AsyncAlloc cuda_async_alloc = AsyncAlloc::kManaged;
  uint64_t cuda_tick_ns = 500'000;        // period of the pager thread's background work
  uint32_t cuda_move_streams = 2;         // 2: promotes and demotes on a stream each (full duplex); 1: one

  // Resolve the "auto" values against the device and the machine.
  // hbm_device_bytes: what the device offers; host_ram_bytes: physical RAM.
  Config resolved(uint64_t hbm_device_bytes, uint64_t host_ram_bytes) const;
  std::string effective_store_dir() const;
};

// This machine's physical RAM (8 GiB if the system will not say): what
// Config::resolved takes as host_ram_bytes.
uint64_t physical_ram();

// Thrown only at configuration edges (start-up, file/env/CLI parsing).
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class KnobType : uint8_t { kBytes, kUint, kFraction, kDouble, kDuration, kPolicy, kPrefetchers, kString };

// One tunable. The table of all knobs is the single source for parsing,
// printing, validation ranges, env/CLI names and the README.
struct Knob {
  std::string_view name;  // "hbm_budget", "sim.pcie_gbps": TOML key path and --set name
  KnobType type;
  bool live;                // may change while a pager runs
  std::string_view range;   // allowed values, human-readable
  std::string_view help;
  // Parse `value` into cfg; on failure returns the reason (without the knob's
  // name) and cfg may be partly written: use set() instead.
  std::optional<std::string> (*parse)(Config& cfg, std::string_view value);
  std::string (*format)(const Config& cfg);
  // Range check of this knob alone: the reason it is out of range, or nullopt.
  std::optional<std::string> (*check)(const Config& cfg);

  // Parses and range-checks `value` into cfg. On failure cfg is unchanged and
  // the message names the knob, the value and what is allowed.
  std::optional<std::string> set(Config& cfg, std::string_view value) const;

  std::string env_name() const;  // KVPAGER_HBM_BUDGET, KVPAGER_SIM_PCIE_GBPS
  std::string cli_name() const;  // hbm-budget, sim-pcie-gbps
};

std::span<const Knob> knobs();
const Knob* find_knob(std::string_view name);  // by name, env name or CLI name

// Every problem with cfg (per-knob ranges and cross-knob rules), each message
// naming the knob, its value and the allowed range. Empty: valid.
std::vector<std::string> validate(const Config& cfg);
// Throws ConfigError with all problems if cfg is not valid.
void validate_or_throw(const Config& cfg);

// Value parsers shared by the knob table and the tools.
std::optional<uint64_t> parse_bytes(std::string_view s);      // "2M", "8GiB", "4096", "1.5G"
// Why parse_bytes refuses s (nullopt: it does not), and that said in words:
// "negative", "too large (16 EiB or more)", "not a whole number of bytes",
// "not a byte size: allowed forms 4096, 64K, 2M, 8G, 1.5T".
enum class BytesError { kSyntax, kNegative, kTooLarge, kFraction };
std::optional<BytesError> bytes_error(std::string_view s);
std::string_view describe(BytesError e);
std::optional<uint64_t> parse_duration_ns(std::string_view s);  // "30s", "250ms", "10us", "5" (= seconds)
std::string format_bytes(uint64_t b);      // exact: "2M", "1536K", "12345"
std::string human_bytes(double b);         // rounded for display: "1.50 GiB"
std::string format_duration(uint64_t ns);  // "30s", "250ms"
// "4M-64M,1G-,-8K": a comma list of inclusive ranges, either side optional;
// "" is an empty list. nullopt (and *why says what is wrong) on bad input.
std::optional<std::vector<SizeRange>> parse_size_ranges(std::string_view s, std::string* why = nullptr);

}  // namespace kvpager
