#include "model.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>

#include "kvpager/config.h"

namespace kvpager::replay {

namespace {
// Shapes from the models' published configs (config.json): layers,
// num_key_value_heads, head_dim = hidden / attention heads; BF16 KV.
constexpr std::array<ModelPreset, 3> kPresets{{
    {"llama-3-8b", "Llama-3-8B: 32 layers, 8 KV heads (GQA) x 128, BF16", 32, 8, 128, 2, 8.03e9},
    {"llama-3-70b", "Llama-3-70B: 80 layers, 8 KV heads (GQA) x 128, BF16", 80, 8, 128, 2, 70.6e9},
    {"qwen2.5-32b", "Qwen2.5-32B: 64 layers, 8 KV heads (GQA) x 128, BF16", 64, 8, 128, 2, 32.8e9},
}};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}
}  // namespace

std::span<const ModelPreset> model_presets() { return kPresets; }

const ModelPreset* find_model(std::string_view name) {
  std::string n = lower(name);
  for (const ModelPreset& m : kPresets)
    if (m.name == n) return &m;
  return nullptr;
}

double CostModel::load_ns(Tier from, uint64_t bytes) const {
  const double b = static_cast<double>(bytes);
  switch (from) {
    case Tier::kHbm: return 0.0;
    case Tier::kHost: return b / pcie_gbps;  // GB/s = bytes per ns
    case Tier::kNvme: return b / std::min(pcie_gbps, nvme_read_gbps);
    case Tier::kUnpopulated: break;
  }
  return 0.0;
}

double CostModel::latency_ns(Tier from) const {
  switch (from) {
    case Tier::kHbm: return 0.0;
    case Tier::kHost: return static_cast<double>(pcie_latency_ns);
    case Tier::kNvme: return static_cast<double>(pcie_latency_ns + nvme_latency_ns);
    case Tier::kUnpopulated: break;
  }
  return 0.0;
}

std::optional<uint64_t> parse_capacity_tokens(std::string_view s, uint64_t kv_bytes_per_token, std::string* why) {
  auto fail = [&](std::string msg) -> std::optional<uint64_t> {
    if (why) *why = std::move(msg);
    return std::nullopt;
  };
  std::string v = lower(s);
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.pop_back();
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.front()))) v.erase(v.begin());
  if (v == "inf" || v == "unlimited") return UINT64_MAX;
  for (std::string_view suffix : {"tokens", "token", "tok"}) {
    if (!v.ends_with(suffix)) continue;
    std::string num = v.substr(0, v.size() - suffix.size());
    while (!num.empty() && std::isspace(static_cast<unsigned char>(num.back()))) num.pop_back();
    double mult = 1;
    if (!num.empty()) {
      switch (num.back()) {
        case 'k': mult = 1e3; break;
        case 'm': mult = 1e6; break;
        case 'g': mult = 1e9; break;
        default: break;
      }
      if (mult != 1) num.pop_back();
    }
    double x = 0;
    auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), x);
    if (num.empty() || ec != std::errc{} || p != num.data() + num.size() || !std::isfinite(x) || x < 0 ||
        x * mult >= 1.8e19)
      return fail(fmt::format("'{}' is not a token count: allowed forms 5Mtok, 500ktok, 2e6tok", s));
    const auto tokens = static_cast<uint64_t>(x * mult);
    // Its bytes must be countable too (reports show both): no more than 16 EiB.
    if (kv_bytes_per_token > 0 && tokens > UINT64_MAX / kv_bytes_per_token)
      return fail(fmt::format("'{}' is more KV than 16 EiB at {} bytes per token", s, kv_bytes_per_token));
    return tokens;
  }
  auto bytes = parse_bytes(v);
  if (!bytes) {
    const BytesError e = bytes_error(v).value_or(BytesError::kSyntax);
    if (e != BytesError::kSyntax) return fail(fmt::format("'{}': {}", s, describe(e)));
    return fail(fmt::format("'{}' is not a capacity: give bytes (60G, 1.5T, 4096) or tokens (5Mtok)", s));
  }
  return *bytes / kv_bytes_per_token;
}

}  // namespace kvpager::replay
