// kvpager replay: trace-driven capacity planning. Runs a request trace
// (Mooncake JSONL) through the pager core's own eviction/admission policies
// and prefetchers over hypothetical tier sizes, next to Belady's MIN (the
// block-hit optimum) and an infinite cache, and reports hit rates, where hits were
// served from, why misses missed, bytes per link, TTFT and prefill GPU time.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "cli.h"
#include "common/output_file.h"
#include "common/progress.h"
#include "replay/replay.h"
#include "replay/report.h"

namespace kvpager::cli {

namespace {

using namespace kvpager::replay;

constexpr const char* kTierNames[kTiers] = {"hbm", "host", "nvme"};

struct ReplayArgs {
  std::string trace;
  uint32_t block_tokens = 512;
  std::string model = "llama-3-8b";
  uint64_t kv_bytes_per_token = 0;  // 0: from the model
  double prefill_tps = 0;           // 0: from the model
  std::array<std::string, kTiers> capacity;
  std::string policies;  // empty: the configured eviction_policy
  std::string prestage = "none";
  double prestage_share = 0.5;
  std::string sweep;
  std::string plot;
  bool json = false;
  bool skip_bad = false;
  unsigned threads = 0;
  bool no_progress = false;
};

const char* kSemantics =
    "Semantics. Block j of a request covers tokens [j*B, min((j+1)*B, input_length)), B = --block-tokens, so\n"
    "a request has exactly ceil(input_length / B) hash ids; equal hash ids mean reusable KV. At arrival a\n"
    "request references its blocks in order; its hit tokens are the tokens of the\n"
    "leading run of blocks resident in some tier (prefix caching cannot use a block after a gap). Hit rate\n"
    "= hit tokens / input tokens, also split by the tier each block is in when it is referenced (its earlier blocks\n"
    "are promoted first and may push later ones down). After the request every referenced block is\n"
    "resident (unless admission control declines it or the request alone exceeds the cache: then its last\n"
    "blocks stay). Tiers are exclusive: a hit below the top tier is promoted to it, each full tier's victim\n"
    "moves one tier down, the bottom tier's victim is dropped. A block takes B tokens of KV.\n"
    "Cost model: the hits a request has from one tier are either all loaded (one latency, then bytes /\n"
    "bandwidth; from NVMe: NVMe + PCIe latency, at the slower link's speed) or all recomputed (tokens /\n"
    "prefill speed), whichever is cheaper; misses are recomputed; TTFT = loads + recompute, serial, without\n"
    "queueing or decode. Belady's MIN (offline, may decline to admit, evicts the block used farthest in the\n"
    "future) over the total capacity maximises block hits: with chained ids and full blocks it is the\n"
    "ceiling (partial blocks or ids shared by different prefixes can let a policy edge past it); its hits\n"
    "count as served from the top tier. Capacities: K/M/G/T bytes are powers of 1024; k/M/G tokens powers\n"
    "of 1000. Links: the simulated device's knobs --sim-pcie-gbps (1e9 B/s), --sim-pcie-latency,\n"
    "--sim-nvme-read-gbps, --sim-nvme-write-gbps, --sim-nvme-latency. Exit status: 0 ok, 2 bad usage\n"
    "(also a trace path that is not an existing file), 1 the trace could not be read or parsed (a\n"
    "malformed line stops the run with FILE:LINE unless --skip-bad).";

std::string hbytes(uint64_t b) { return human_bytes(static_cast<double>(b)); }
std::string tokens_str(uint64_t t) {
  if (t == kUnlimited) return "unlimited";
  if (t >= 1'000'000) return fmt::format("{:.1f}M", static_cast<double>(t) / 1e6);
  if (t >= 10'000) return fmt::format("{:.1f}k", static_cast<double>(t) / 1e3);
  return fmt::format("{}", t);
}

// Runs jobs on a few threads; draws a progress bar on a terminal.
class Runner {
 public:
  Runner(unsigned threads, bool bar) : threads_(std::max(1u, threads)), bar_(bar) {}

  std::vector<RunResult> run(const Prepared& p, std::vector<RunOptions> jobs) {
    const uint64_t per_job = p.trace->requests.size();
    total_ = per_job * jobs.size();
    std::vector<RunResult> out(jobs.size());
    std::atomic<size_t> next{0};
    std::atomic<uint64_t> done{0};
    for (auto& j : jobs) {
      auto last = std::make_shared<uint64_t>(0);
      j.progress = [&done, last](uint64_t d, uint64_t) {
        done += d - *last;
        *last = d;
      };
    }
    std::mutex m;
    std::condition_variable cv;
    bool finished = false;
    std::thread drawer;
    if (bar_) {
      drawer = std::thread([&] {
        tools::ProgressLine line("kvpager replay", tools::ProgressLine::Mode::kTerminal);
        std::unique_lock lk(m);
        while (!cv.wait_for(lk, tools::ProgressLine::kRedraw, [&] { return finished; })) {
          line.update([&] {
            const double f = total_ ? static_cast<double>(done.load()) / static_cast<double>(total_) : 1.0;
            const int w = 30, fill = static_cast<int>(f * w);
            return fmt::format("replay [{}{}] {:3.0f}%  {:.1f} s", std::string(static_cast<size_t>(fill), '#'),
                               std::string(static_cast<size_t>(w - fill), '.'), f * 100, line.elapsed_s());
          }, true);
        }
      });
    }
    auto worker = [&] {
      for (size_t i; (i = next++) < jobs.size();) out[i] = kvpager::replay::run(p, jobs[i]);
    };
    std::vector<std::thread> pool;
    const unsigned n = static_cast<unsigned>(std::min<size_t>(threads_, jobs.size()));
    for (unsigned k = 1; k < n; ++k) pool.emplace_back(worker);
    worker();
    for (auto& t : pool) t.join();
    if (drawer.joinable()) {
      {
        std::lock_guard lk(m);
        finished = true;
      }
      cv.notify_all();
      drawer.join();
    }
    return out;
  }

 private:
  unsigned threads_;
  bool bar_;
  uint64_t total_ = 0;
};

struct Plan {
  CostModel cost;
  const ModelPreset* model = nullptr;
  std::array<uint64_t, kTiers> cap_tokens{0, 0, 0};
  std::vector<PolicySpec> policies;
  Prestage prestage = Prestage::kOff;
  uint64_t hint_lead_ns = 2'000'000'000;
  std::optional<SweepSpec> sweep;
  Config cfg;
  // The preset's shape, unless --kv-bytes-per-token replaced what it implies.
  std::string shape() const {
    return cost.kv_bytes_per_token == model->kv_bytes_per_token()
               ? std::string(model->description)
               : fmt::format("set by --kv-bytes-per-token; the preset's shape, {}, has {}", model->description,
                             human_bytes(static_cast<double>(model->kv_bytes_per_token())));
  }
};

Plan make_plan(const Globals& g, const ReplayArgs& a) {
  Plan plan;
  plan.cfg = g.config();
  const Config& cfg = plan.cfg;
  plan.model = find_model(a.model);
  if (!plan.model) {
    std::string names;
    for (const auto& m : model_presets()) names += (names.empty() ? "" : ", ") + std::string(m.name);
    throw ConfigError(fmt::format("--model '{}': unknown model: allowed {} (--kv-bytes-per-token and --prefill-tps "
                                  "override a preset's shape and speed)",
                                  a.model, names));
  }
  CostModel& c = plan.cost;
  c.kv_bytes_per_token = a.kv_bytes_per_token ? a.kv_bytes_per_token : plan.model->kv_bytes_per_token();
  c.prefill_tokens_per_s = a.prefill_tps > 0 ? a.prefill_tps : plan.model->prefill_tokens_per_s();
  c.pcie_gbps = cfg.sim_pcie_gbps;
  c.pcie_latency_ns = cfg.sim_pcie_latency_ns;
  c.nvme_read_gbps = cfg.sim_nvme_read_gbps;
  c.nvme_write_gbps = cfg.sim_nvme_write_gbps;
  c.nvme_latency_ns = cfg.sim_nvme_latency_ns;

  bool any = false;
  for (size_t t = 0; t < kTiers; ++t) {
    if (a.capacity[t].empty()) continue;
    std::string why;
    auto tokens = parse_capacity_tokens(a.capacity[t], c.kv_bytes_per_token, &why);
    if (!tokens) throw ConfigError(fmt::format("--{}: {}", kTierNames[t], why));
    // 0 (in any unit) leaves the tier out; anything else must hold a block
    // (a few bytes are 0 tokens, and used to drop the tier without a word).
    const bool zero = parse_capacity_tokens(a.capacity[t], 1, nullptr) == uint64_t{0};
    if (!zero && *tokens < a.block_tokens)
      throw ConfigError(fmt::format("--{} {}: holds {} tokens, less than one {}-token block", kTierNames[t],
                                    a.capacity[t], *tokens, a.block_tokens));
    plan.cap_tokens[t] = *tokens;
    any = any || *tokens > 0;
  }
  if (!a.sweep.empty()) {
    std::string why;
    plan.sweep = parse_sweep(a.sweep, c.kv_bytes_per_token, &why);
    if (!plan.sweep) throw ConfigError(why);
    if (plan.sweep->lo_tokens < a.block_tokens)
      throw ConfigError(fmt::format("--sweep '{}': LO holds {} tokens, less than one {}-token block", a.sweep,
                                    plan.sweep->lo_tokens, a.block_tokens));
    // The sweep sets its tier's capacity at every point: a fixed one given
    // too would be silently ignored.
    const size_t swept = plan.sweep->tier;
    if (!a.capacity[swept].empty())
      throw ConfigError(fmt::format("--{} {} and --sweep '{}': the sweep sets {}'s capacity at each point; drop one",
                                    kTierNames[swept], a.capacity[swept], a.sweep, kTierNames[swept]));
    any = true;
  }
  if (!any) {
    const bool zeros = std::any_of(a.capacity.begin(), a.capacity.end(), [](const std::string& cap) { return !cap.empty(); });
    throw ConfigError(fmt::format("give at least one tier capacity: --hbm, --host, --nvme (bytes like 60G or tokens "
                                  "like 5Mtok), or --sweep{}",
                                  zeros ? " (a capacity of 0 leaves its tier out)" : ""));
  }

  std::string list = a.policies.empty() ? std::string(to_string(cfg.eviction_policy)) : a.policies;
  if (list == "all") {
    plan.policies = all_policy_specs();
  } else {
    for (size_t start = 0; start <= list.size();) {
      size_t comma = list.find(',', start);
      std::string item = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      start = comma == std::string::npos ? list.size() + 1 : comma + 1;
      if (item.empty())
        throw ConfigError(fmt::format("--policy '{}': an empty name (a comma list of policies, or 'all')", list));
      std::string why;
      auto spec = parse_policy_spec(item, &why);
      if (!spec) throw ConfigError("--policy: " + why);
      if (std::any_of(plan.policies.begin(), plan.policies.end(), [&](const PolicySpec& p) { return p.label() == spec->label(); }))
        throw ConfigError(fmt::format("--policy '{}': {} is named twice", list, item));
      if (!spec->belady) plan.policies.push_back(*spec);  // Belady always runs
    }
  }
  if (a.prestage == "none") {
    plan.prestage = Prestage::kOff;
  } else if (a.prestage == "predict") {
    plan.prestage = Prestage::kPredict;
  } else if (a.prestage == "hint" || a.prestage.starts_with("hint:")) {
    plan.prestage = Prestage::kHint;
    if (a.prestage.size() >= 5) {  // "hint:" with nothing after it is a bad lead time too
      auto lead = parse_duration_ns(a.prestage.substr(5));
      if (!lead) throw ConfigError(fmt::format("--prestage '{}': bad lead time: allowed forms hint:2s, hint:500ms", a.prestage));
      plan.hint_lead_ns = *lead;
    }
  } else {
    throw ConfigError(fmt::format("--prestage '{}': allowed none, predict, hint[:LEAD] (e.g. hint:2s)", a.prestage));
  }
  return plan;
}

RunOptions options_for(const Plan& plan, const PolicySpec& spec, const std::array<uint64_t, kTiers>& cap_tokens,
                       uint32_t block_tokens, double share) {
  RunOptions o;
  o.policy = spec;
  for (size_t t = 0; t < kTiers; ++t) o.capacity_blocks[t] = blocks_for_tokens(cap_tokens[t], block_tokens);
  o.cost = plan.cost;
  o.pager = plan.cfg;
  o.prestage = spec.belady ? Prestage::kOff : plan.prestage;
  o.hint_lead_ns = plan.hint_lead_ns;
  o.prestage_share = share;
  return o;
}

RunOptions infinite_options(const Plan& plan) {
  RunOptions o;
  o.capacity_blocks = {kUnlimited, 0, 0};
  o.cost = plan.cost;
  o.pager = plan.cfg;
  return o;
}

std::string tiers_line(const Plan& plan, const std::array<uint64_t, kTiers>& cap_tokens, uint32_t B) {
  std::string out;
  for (size_t t = 0; t < kTiers; ++t) {
    if (cap_tokens[t] == 0) continue;
    if (!out.empty()) out += ", ";
    if (cap_tokens[t] == kUnlimited) {
      out += fmt::format("{} unlimited", kTierNames[t]);
      continue;
    }
    // Whole blocks are simulated: say so when that is less than was given.
    const uint64_t blocks = cap_tokens[t] / B;
    out += fmt::format("{} {} = {} tokens ({} blocks{})", kTierNames[t],
                       hbytes(cap_tokens[t] * plan.cost.kv_bytes_per_token), tokens_str(cap_tokens[t]), blocks,
                       cap_tokens[t] % B ? fmt::format(": {} tokens simulated", tokens_str(blocks * B)) : "");
  }
  return out;
}

void print_header(const Trace& tr, const Prepared& p, const Plan& plan) {
  const CostModel& c = plan.cost;
  fmt::print("kvpager replay: {}\n", tr.name);
  fmt::print("  {} requests over {:.1f} min; {} input tokens; {} block references ({} distinct blocks of {} tokens); "
             "{} resumed turns in {} conversations\n",
             tr.requests.size(), static_cast<double>(tr.duration_ns()) / 60e9, tokens_str(tr.input_tokens),
             tr.refs.size(), tr.distinct_blocks, tr.block_tokens, p.turns.resumed, p.turns.contexts);
  fmt::print("  model {}: {} of KV per token ({}), {} per block; prefill {:.0f} tokens/s\n", plan.model->name,
             hbytes(c.kv_bytes_per_token), plan.shape(),
             hbytes(c.kv_bytes_per_token * tr.block_tokens), c.prefill_tokens_per_s);
  fmt::print("  links: HBM<->host {} GB/s + {}, NVMe read {} GB/s / write {} GB/s + {}\n", c.pcie_gbps,
             format_duration(c.pcie_latency_ns), c.nvme_read_gbps, c.nvme_write_gbps,
             format_duration(c.nvme_latency_ns));
}

void print_runs(const std::vector<RunResult>& runs, bool details) {
  fmt::print("\n{:<14} {:>8} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>9} {:>12}\n", "policy", "hit rate", "hbm", "host",
             "nvme", "saved", "TTFT p50", "p90", "p99", "GPU prefill");
  for (const RunResult& r : runs) {
    fmt::print("{:<14} {:>8} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10.2f} h\n", r.label, percent(r.hit_rate()),
               percent(r.tier_hit_rate(0)), percent(r.tier_hit_rate(1)), percent(r.tier_hit_rate(2)), percent(r.saved_rate()),
               duration_text(r.ttft_p50_s), duration_text(r.ttft_p90_s), duration_text(r.ttft_p99_s), r.prefill_gpu_s / 3600);
  }
  if (!runs.empty())
    fmt::print("(GPU prefill without any cache: {:.2f} h; saved = hit tokens loaded rather than recomputed)\n",
               runs.front().prefill_gpu_s_no_cache / 3600);
  if (!details) return;
  for (const RunResult& r : runs) {
    if (r.label == "infinite") continue;
    const double in = static_cast<double>(r.input_tokens);
    auto share = [&](uint64_t v) { return percent(in > 0 ? static_cast<double>(v) / in : 0.0); };
    fmt::print("\n{}:\n  misses (share of input tokens): never seen {}, evicted from hbm {} / host {} / nvme {}, "
               "not admitted {}, after a gap {}\n",
               r.label, share(r.miss_never_seen), share(r.miss_evicted_from[0]), share(r.miss_evicted_from[1]),
               share(r.miss_evicted_from[2]), share(r.miss_not_admitted), share(r.miss_after_gap));
    if (r.label == "belady") {
      fmt::print("  (offline bound: placement between tiers is not simulated, no bytes moved are counted)\n");
      continue;
    }
    fmt::print("  bytes moved: HBM->host {}, host->HBM {}, host->NVMe {}, NVMe->host {}\n", hbytes(r.moved.hbm_to_host),
               hbytes(r.moved.host_to_hbm), hbytes(r.moved.host_to_nvme), hbytes(r.moved.nvme_to_host));
    for (const auto& pf : r.prefetchers) {
      fmt::print("  {}: staged {}, used {}, wasted {}, accuracy {}{}\n", pf.name, hbytes(pf.issued_bytes),
                 hbytes(pf.used_bytes), hbytes(pf.wasted_bytes), accuracy_text(pf.used_bytes, pf.wasted_bytes),
                 pf.throttle_events ? fmt::format(" (throttled {}x)", pf.throttle_events) : "");
    }
    fmt::print("  resumed turns that found their whole prefix in the top tier on arrival: {} of {} ({})\n",
               r.resumed_prefix_in_top, r.resumed_turns, percent(RunResult::ratio(r.resumed_prefix_in_top, r.resumed_turns)));
  }
}

void run_replay(const Globals& g, const ReplayArgs& a) {
  const Plan plan = make_plan(g, a);
  // The plot file is opened before the trace is read: a path that cannot be
  // written fails at once, not after the whole sweep.
  tools::OutputFile plot_out;
  if (std::string err; !a.plot.empty() && !plot_out.open(a.plot, &err)) throw RuntimeError("--plot: " + err);
  TraceOptions topt;
  topt.block_tokens = a.block_tokens;
  topt.skip_bad = a.skip_bad;
  Trace trace;
  std::string error;
  if (!load_trace(a.trace, topt, trace, &error)) throw RuntimeError(error);
  if (trace.skipped_lines > 0) {
    fmt::print(stderr, "kvpager replay: {}: skipped {} bad line(s) of {}", a.trace, trace.skipped_lines, trace.lines);
    for (const auto& e : trace.skipped_examples) fmt::print(stderr, "\n  {}", e);
    fmt::print(stderr, "\n");
  }
  if (trace.requests.empty()) throw RuntimeError(fmt::format("{}: no requests in the trace", a.trace));
  const Prepared prep = prepare(trace);
  const uint32_t B = trace.block_tokens;
  const bool bar = !a.no_progress && isatty(STDERR_FILENO);
  Runner runner(a.threads ? a.threads : std::max(1u, std::thread::hardware_concurrency()), bar);

  std::vector<PolicySpec> specs = plan.policies;
  specs.push_back(*parse_policy_spec("belady", nullptr));

  nlohmann::json out;
  out["trace"] = {{"path", a.trace},
                  {"requests", trace.requests.size()},
                  {"lines", trace.lines},
                  {"skipped_lines", trace.skipped_lines},
                  {"input_tokens", trace.input_tokens},
                  {"block_refs", trace.refs.size()},
                  {"distinct_blocks", trace.distinct_blocks},
                  {"block_tokens", B},
                  {"duration_s", static_cast<double>(trace.duration_ns()) / 1e9},
                  {"resumed_turns", prep.turns.resumed},
                  {"conversations", prep.turns.contexts}};
  out["model"] = {{"name", plan.model->name},
                  {"shape", plan.shape()},
                  {"kv_bytes_per_token", plan.cost.kv_bytes_per_token},
                  {"prefill_tokens_per_s", plan.cost.prefill_tokens_per_s}};
  out["links"] = {{"pcie_gbps", plan.cost.pcie_gbps},
                  {"pcie_latency_ns", plan.cost.pcie_latency_ns},
                  {"nvme_read_gbps", plan.cost.nvme_read_gbps},
                  {"nvme_write_gbps", plan.cost.nvme_write_gbps},
                  {"nvme_latency_ns", plan.cost.nvme_latency_ns}};
  if (!a.json) print_header(trace, prep, plan);

  if (!plan.sweep) {
    std::vector<RunOptions> jobs;
    for (const auto& s : specs) jobs.push_back(options_for(plan, s, plan.cap_tokens, B, a.prestage_share));
    jobs.push_back(infinite_options(plan));
    std::vector<RunResult> res = runner.run(prep, jobs);
    res.back().label = "infinite";
    if (a.json) {
      out["runs"] = nlohmann::json::array();
      for (const auto& r : res) out["runs"].push_back(to_json(r, B));
      fmt::print("{}\n", out.dump(2));
    } else {
      fmt::print("  tiers: {}\n", tiers_line(plan, plan.cap_tokens, B));
      print_runs(res, true);
    }
    return;
  }

  // A sweep: every policy and Belady at each capacity of one tier.
  const SweepSpec& sw = *plan.sweep;
  const std::vector<uint64_t> points = sw.points_tokens(B);
  if (points.size() < sw.steps)
    fmt::print(stderr, "kvpager replay: --sweep: {} of the {} capacities are distinct in whole {}-token blocks\n",
               points.size(), sw.steps, B);
  std::vector<RunOptions> jobs;
  for (uint64_t tokens : points) {
    auto caps = plan.cap_tokens;
    caps[sw.tier] = tokens;
    for (const auto& s : specs) jobs.push_back(options_for(plan, s, caps, B, a.prestage_share));
  }
  jobs.push_back(infinite_options(plan));
  std::vector<RunResult> res = runner.run(prep, jobs);
  const RunResult infinite = res.back();
  res.pop_back();

  PlotSpec plot;
  plot.title = fmt::format("{}: prefix hit rate vs {} capacity ({}, {}-token blocks)",
                           trace.name.substr(trace.name.find_last_of('/') + 1), kTierNames[sw.tier], plan.model->name, B);
  auto fixed = plan.cap_tokens;
  fixed[sw.tier] = 0;
  const std::string others = tiers_line(plan, fixed, B);
  plot.x_label = fmt::format("{} capacity (tokens){}", kTierNames[sw.tier], others.empty() ? "" : "; also " + others);
  plot.infinite_rate = infinite.hit_rate();
  for (size_t s = 0; s < specs.size(); ++s) {
    Curve c{specs[s].label(), {}};
    for (size_t k = 0; k < points.size(); ++k)
      c.points.emplace_back(static_cast<double>(points[k]), res[k * specs.size() + s].hit_rate());
    plot.curves.push_back(std::move(c));
  }
  if (!a.plot.empty()) {
    if (auto e = write_plot(plot_out, a.plot, plot)) throw RuntimeError(*e);
  }
  if (a.json) {
    nlohmann::json pts = nlohmann::json::array();
    for (size_t k = 0; k < points.size(); ++k) {
      nlohmann::json runs = nlohmann::json::array();
      for (size_t s = 0; s < specs.size(); ++s) runs.push_back(to_json(res[k * specs.size() + s], B));
      pts.push_back({{"tokens", points[k]}, {"bytes", points[k] * plan.cost.kv_bytes_per_token}, {"runs", runs}});
    }
    out["sweep"] = {{"tier", kTierNames[sw.tier]}, {"points", pts}};
    out["infinite"] = to_json(infinite, B);
    if (!a.plot.empty()) out["plot"] = a.plot;
    fmt::print("{}\n", out.dump(2));
    return;
  }
  fmt::print("  sweep: {} from {} to {} tokens in {} steps{}\n", kTierNames[sw.tier], tokens_str(sw.lo_tokens),
             tokens_str(sw.hi_tokens), sw.steps, others.empty() ? "" : "; fixed: " + others);
  fmt::print("\nprefix hit rate by {} capacity\n{:>12} {:>10}", kTierNames[sw.tier], "tokens", "bytes");
  for (const auto& s : specs) fmt::print(" {:>12}", s.label());
  fmt::print("\n");
  for (size_t k = 0; k < points.size(); ++k) {
    fmt::print("{:>12} {:>10}", tokens_str(points[k]), hbytes(points[k] * plan.cost.kv_bytes_per_token));
    for (size_t s = 0; s < specs.size(); ++s) fmt::print(" {:>12}", percent(res[k * specs.size() + s].hit_rate()));
    fmt::print("\n");
  }
  fmt::print("infinite capacity: {}\n", percent(infinite.hit_rate()));
  if (!a.plot.empty()) fmt::print("plot: {}\n", a.plot);
}

}  // namespace

void add_replay_command(CLI::App& app, Globals& g) {
  static ReplayArgs a;
  auto* cmd = app.add_subcommand(
      "replay",
      std::string("Capacity planning: replay a request trace (Mooncake JSONL) through the pager's own policies\n"
                  "and prefetchers at given tier sizes, next to Belady's MIN and an infinite cache.\n"
                  "Example: kvpager replay trace.jsonl --hbm 60G --host 1T --nvme 30T --policy all\n"
                  "         kvpager replay trace.jsonl --sweep host=1Mtok..100Mtok:16 --policy all --plot curves.svg\n\n") +
          kSemantics);
  cmd->add_option("trace", a.trace, "Trace file: one JSON request per line (timestamp ms, input_length, "
                                    "output_length, hash_ids)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--block-tokens", a.block_tokens, "Tokens per hash id block (the trace's block size)")
      ->check(whole_range(1, 1u << 20))
      ->capture_default_str();
  std::string models;
  for (const auto& m : model_presets())
    models += fmt::format("\n  {}: {} = {} KV bytes/token", m.name, m.description, m.kv_bytes_per_token());
  cmd->add_option("--model", a.model, "Model preset (KV bytes per token, prefill speed):" + models)->capture_default_str();
  cmd->add_option("--kv-bytes-per-token", a.kv_bytes_per_token, "KV bytes per token (overrides the model's)")
      ->check(whole_range(1, uint64_t{1} << 40));
  cmd->add_option("--prefill-tps", a.prefill_tps,
                  "Prefill speed in tokens/s, the cost of recomputing (default: the model's estimate for one "
                  "H100-class GPU at 40% MFU)")
      ->check(number_range(1e-3, 1e12));
  cmd->add_option("--hbm", a.capacity[0], "HBM tier capacity: bytes (60G) or tokens (5Mtok); 'unlimited'; 0 leaves the tier out");
  cmd->add_option("--host", a.capacity[1], "Host RAM tier capacity: bytes (1T) or tokens; 0 leaves the tier out");
  cmd->add_option("--nvme", a.capacity[2], "NVMe tier capacity: bytes (30T) or tokens; 0 leaves the tier out");
  cmd->add_option("--policy", a.policies,
                  "Comma list of POLICY[+ADMISSION] (policies: lru, clock, cost, prefix, s3fifo; admission: tail, "
                  "tinylfu), or 'all'. Default: the configured eviction_policy. Belady always runs.");
  cmd->add_option("--prestage", a.prestage,
                  "none; predict (learn turn gaps, stage likely next turns into the top tier); hint[:LEAD] (an "
                  "oracle hints each resumed turn LEAD ahead, default 2s: the bound)")
      ->capture_default_str();
  auto* share = cmd->add_option("--prestage-share", a.prestage_share,
                                "With --prestage: share of the top tier that staged, unused blocks may take")
                    ->check(number_range(0.0, 1.0))
                    ->capture_default_str();
  cmd->add_option("--sweep", a.sweep,
                  "TIER=LO..HI:STEPS: hit rate vs capacity of one tier, geometric steps (e.g. hbm=1G..80G:12)");
  cmd->add_option("--plot", a.plot, "Draw the sweep's curves: FILE.svg (written directly) or FILE.png (gnuplot)");
  cmd->add_flag("--json", a.json, "Print everything as JSON");
  cmd->add_flag("--skip-bad", a.skip_bad, "Skip and count malformed lines instead of stopping at the first");
  cmd->add_option("--threads", a.threads, "Runs in parallel (default: the CPUs)")->check(whole_range(1, 256));
  cmd->add_flag("--no-progress", a.no_progress, "No progress bar (it is drawn only on a terminal anyway)");
  cmd->callback([&g, share] {
    if (!a.plot.empty() && a.sweep.empty()) throw ConfigError("--plot draws a --sweep: give --sweep TIER=LO..HI:STEPS");
    if (share->count() > 0 && a.prestage == "none")
      throw ConfigError("--prestage-share shares the top tier with staged blocks: give --prestage predict or hint");
    if (!a.plot.empty()) {
      if (auto e = plot_path_problem(a.plot)) throw ConfigError(*e);
    }
    run_replay(g, a);
  });
}

}  // namespace kvpager::cli
