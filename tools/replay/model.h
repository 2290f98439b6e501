// What a replay costs: the model's KV size per token, the GPU's prefill
// speed, and the links between the tiers.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "kvpager/types.h"

namespace kvpager::replay {

// A transformer's KV shape. KV bytes per token = 2 (K and V) x layers x
// kv_heads x head_dim x dtype_bytes. Prefill speed is an estimate for one
// H100-class GPU: 40 % of 989 dense BF16 TFLOP/s over 2 x params FLOP per
// token (attention's quadratic part left out); pass --prefill-tps to use
// your own measurement.
struct ModelPreset {
  std::string_view name;
  std::string_view description;
  uint32_t layers;
  uint32_t kv_heads;
  uint32_t head_dim;
  uint32_t dtype_bytes;
  double params;  // parameters, for the prefill estimate

  uint64_t kv_bytes_per_token() const { return 2ull * layers * kv_heads * head_dim * dtype_bytes; }
  double prefill_tokens_per_s() const { return 0.40 * 989e12 / (2.0 * params); }
};

std::span<const ModelPreset> model_presets();
const ModelPreset* find_model(std::string_view name);  // case-insensitive

// Seconds a hit costs to load and a miss to recompute. Loads from one tier in
// one request are one transfer: latency once, then bytes / bandwidth. NVMe
// loads cross both links (NVMe -> host -> HBM) at the slower one's speed.
struct CostModel {
  uint64_t kv_bytes_per_token = 131072;
  double prefill_tokens_per_s = 24'725;
  double pcie_gbps = 25.0;  // HBM <-> host, each direction, GB/s (1e9 B/s)
  uint64_t pcie_latency_ns = 10'000;
  double nvme_read_gbps = 3.0;
  double nvme_write_gbps = 2.0;
  uint64_t nvme_latency_ns = 80'000;

  // Transfer time of `bytes` from tier `from` into HBM, without the latency.
  double load_ns(Tier from, uint64_t bytes) const;
  double latency_ns(Tier from) const;
  double recompute_ns(uint64_t tokens) const { return static_cast<double>(tokens) / prefill_tokens_per_s * 1e9; }
};

// A capacity given in bytes ("60G", "1.5T", "4096") or tokens ("5Mtok",
// "500ktok", "2e6tok"; k/M/G are powers of 1000 for tokens, K/M/G/T powers of
// 1024 for bytes), converted to tokens. "inf"/"unlimited" = no limit
// (UINT64_MAX). nullopt with *why on a bad value.
std::optional<uint64_t> parse_capacity_tokens(std::string_view s, uint64_t kv_bytes_per_token, std::string* why);

}  // namespace kvpager::replay
