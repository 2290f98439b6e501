// kvpager demo: the main job on a machine without a GPU. Agent sessions whose
// total KV is a multiple of the HBM budget run on the simulated device; the
// summary shows where the chunks live, the hit rate, prefetch accuracy and
// the time spent stalled. With --serve it keeps running, serving the control
// socket, so `kvpager status/top/tune/hint` can be tried on it.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <thread>

#include "cli.h"
#include "common/progress.h"
#include "common/stats_json.h"
#include "control/runtime_dir.h"
#include "control/server.h"
#include "demo/demo_workload.h"
#include "kvpager/store/token_store.h"
#include "publish/publisher.h"

namespace kvpager::cli {

namespace {

struct DemoArgs {
  demo::DemoOptions opt;
  bool json = false;
  bool no_hints = false;
  bool serve = false;
  uint32_t pace_ms = 250;
  CLI::Option* turns = nullptr;  // given on the command line?
};

// --serve: the control socket, and the pace that lets a human watch. Between
// turns virtual time keeps flowing with the wall clock, so the pager's
// background work (finishing moves, keeping the watermarks after a live
// budget cut, spilling idle contexts) goes on while the workload waits.
class Serving {
 public:
  Serving(const Config& cfg, Pager& pager, SimDevice& dev, store::TokenStore& store, uint32_t pace_ms)
      : pager_(pager), dev_(dev), pace_(pace_ms) {
    control::RuntimeDir rd = control::resolve_runtime_dir(cfg, control::DirUse::kServe);
    if (!rd.note.empty()) fmt::print(stderr, "kvpager demo: runtime_dir: {}\n", rd.note);
    // run_demo took SIGINT/SIGTERM before this: whoever finds the socket may
    // stop us at once, and the socket must still be removed.
    try {
      control::ControlServer::Options o;
      o.runtime_dir = rd.path;
      o.device = std::string(dev.mover().name());
      o.publish = publish::control_handler(store);  // `kvpager hint publish NAME`: the session appears in the store
      server_ = std::make_unique<control::ControlServer>(std::move(o), pager_);
    } catch (const control::ControlError& e) {
      throw RuntimeError(e.what());
    }
  }
  const std::string& socket() const { return server_->socket_path(); }
  // Between the prefill's sessions: tune and hints are answered from the
  // start, as the banner promises (they timed out for the whole prefill).
  void service() { server_->service(pager_); }
  // Waits out the rest of this turn's slot.
  void pace(std::chrono::steady_clock::time_point turn_start) {
    using namespace std::chrono;
    const auto until = turn_start + milliseconds(pace_);
    auto last = steady_clock::now();
    server_->service(pager_);
    while (!stop_requested()) {
      auto now = steady_clock::now();
      if (now >= until) break;
      std::this_thread::sleep_for(std::min<steady_clock::duration>(until - now, milliseconds(10)));
      now = steady_clock::now();
      dev_.compute(static_cast<uint64_t>(duration_cast<nanoseconds>(now - last).count()));
      last = now;
      server_->service(pager_);
    }
  }

 private:
  Pager& pager_;
  SimDevice& dev_;
  uint32_t pace_;
  std::unique_ptr<control::ControlServer> server_;
};

// Why host RAM holds more than host_capacity (a target, not a cap): what
// kept chunks from going on to NVMe.
std::string_view host_over_target(const StatsSnapshot& s, uint64_t chunk_size) {
  const TierStats& nvme = s.tiers[index(Tier::kNvme)];
  if (s.spill_disabled)
    return "above its target: the NVMe tier refused a spill (no space: nvme_capacity or the disk); spills wait "
           "until it frees a chunk";
  if (nvme.capacity_bytes && nvme.resident_bytes + chunk_size > nvme.capacity_bytes)
    return "above its target: the NVMe tier is full (nvme_capacity)";
  return "above its target: contexts used within spill_idle stay (see host_capacity)";
}

void print_summary(const demo::DemoResult& r, uint64_t chunk_size, double wall_s) {
  const StatsSnapshot& s = r.stats;
  fmt::print("\nResidency (end of run)\n");
  for (Tier t : kStorageTiers) {
    const TierStats& ts = s.tiers[index(t)];
    std::string cap = ts.capacity_bytes ? human_bytes(static_cast<double>(ts.capacity_bytes)) : "unlimited";
    // Host capacity is a target: chunks of contexts that may not spill yet
    // (active ones) stay in host RAM above it.
    const bool over = t == Tier::kHost && ts.capacity_bytes && ts.resident_bytes > ts.capacity_bytes;
    fmt::print("  {:<5} {:>12}  of {:>12}  ({} chunks){}{}\n", to_string(t),
               human_bytes(static_cast<double>(ts.resident_bytes)), cap, ts.chunks, over ? "  " : "",
               over ? host_over_target(s, chunk_size) : "");
  }
  fmt::print("\nAccesses  {}  hits {}  faults {}  hit rate {}\n", s.accesses, s.hits, s.faults, percent(s.hit_rate()));
  fmt::print("  faults served from: host {}, nvme {}, first touch {}, late prefetch (still in flight) {}\n",
             s.faults_from[index(Tier::kHost)], s.faults_from[index(Tier::kNvme)],
             s.faults_from[index(Tier::kUnpopulated)], s.faults_from[index(Tier::kHbm)]);
  fmt::print("\nMoves\n");
  for (size_t k = 0; k < kNumMoveKinds; ++k) {
    fmt::print("  {:<8} {:>8} moves {:>12}\n", to_string(static_cast<MoveKind>(k)), s.moves[k],
               human_bytes(static_cast<double>(s.move_bytes[k])));
  }
  fmt::print("\nPrefetch accuracy {} (used / (used + wasted))\n", percent(s.prefetch_accuracy()));
  for (const auto& p : s.prefetchers) {
    fmt::print("  {:<12} issued {:>12}  used {:>12}  wasted {:>12}  accuracy {}{}\n", p.name,
               human_bytes(static_cast<double>(p.issued_bytes)), human_bytes(static_cast<double>(p.used_bytes)),
               human_bytes(static_cast<double>(p.wasted_bytes)), accuracy_text(p.used_bytes, p.wasted_bytes),
               p.throttle_events ? fmt::format("  (throttled {}x)", p.throttle_events) : "");
  }
  fmt::print("\nStall time {} over {} turns ({} per turn); virtual time {}; wall time {:.2f} s\n", duration_text_ns(s.stall_ns),
             r.turns, duration_text_ns(r.turns ? s.stall_ns / r.turns : 0), duration_text_ns(s.now_ns), wall_s);
  fmt::print("Integrity: {} verified, {} corrupted chunk(s), {} failed access(es)", human_bytes(static_cast<double>(r.verified_bytes)),
             r.corrupt_chunks, r.failed_accesses);
  if (r.recomputed_chunks) fmt::print(", {} chunk(s) dropped by a hint and recomputed", r.recomputed_chunks);
  fmt::print("\n");
}

void run_demo(Globals& g, const DemoArgs& a) {
  std::string why;
  bool gpu = gpu_available(&why);
  std::string device_line =
      gpu ? fmt::format("{} found; this demo runs the pager on its simulated device "
                        "(use `kvpager run` for the GPU)", why)
          : fmt::format("no GPU here ({}): running the pager on its simulated device "
                        "(real bytes, virtual clock)", why);
  fmt::print(a.json ? stderr : stdout, "kvpager demo: {}\n", device_line);
  std::fflush(stdout);

  ConfigLoader loader = g.loader();
  Config cfg = loader.finish();
  // The budget the pager will keep: whole chunks (Config::resolved).
  const uint64_t budget = cfg.resolved(cfg.sim_hbm_capacity, physical_ram()).hbm_budget;
  if (cfg.hbm_budget == 0) cfg.hbm_budget = budget;
  if (loader.origin(*find_knob("host_capacity")).source == ConfigSource::kDefault) {
    // Unless told otherwise, host RAM holds only part of the rest so the
    // NVMe tier is exercised too.
    cfg.host_capacity = 2 * budget;
  }
  validate_or_throw(cfg);
  {
    // The simulated device keeps its HBM and host tiers in this process's
    // memory, and host_capacity is a target, not a cap: in the worst case
    // (nothing may spill) all of the demo's KV is in RAM. Refuse a plan that
    // cannot fit instead of running out of memory halfway.
    // What the workload will allocate: every region takes at least one
    // chunk, so many sessions x layers can be far more than kv_factor x budget.
    const auto ram = static_cast<double>(physical_ram());
    const double kv = static_cast<double>(demo::region_bytes_for(a.opt, budget, cfg.chunk_size)) *
                      static_cast<double>(a.opt.sessions) * static_cast<double>(a.opt.layers);
    // Whole chunks per region: what is built can be far from the factor asked for.
    const double asked = static_cast<double>(budget) * a.opt.kv_factor;
    if (kv > 1.25 * asked || kv < 0.8 * asked)
      fmt::print(stderr,
                 "kvpager demo: warning: the KV built is {} ({:.2f} x the HBM budget, not --kv-factor {}): each of "
                 "the {} sessions x {} layers is a whole number of {} chunks, at least one\n",
                 human_bytes(kv), kv / static_cast<double>(budget), a.opt.kv_factor, a.opt.sessions, a.opt.layers,
                 human_bytes(static_cast<double>(cfg.chunk_size)));
    if (kv > 0.75 * ram)
      throw ConfigError(fmt::format(
          "the demo's KV ({}: --kv-factor {} x HBM budget {}, over {} sessions x {} layers of at least one {} chunk "
          "each) could all sit in this process's memory (the simulated HBM and host tiers), and this machine has {} "
          "of RAM: lower hbm_budget / sim.hbm_capacity or --kv-factor, or --sessions / --layers / chunk_size",
          human_bytes(kv), a.opt.kv_factor, human_bytes(static_cast<double>(budget)), a.opt.sessions, a.opt.layers,
          human_bytes(static_cast<double>(cfg.chunk_size)), human_bytes(ram)));
  }

  // The NVMe tier is the token store in store_dir; the pager's spills are
  // this process's private objects there, removed when it ends -- also when
  // Ctrl-C stops it (a turn ends first; the summary says how far it got).
  stop_on_signals(/*second_one_ends_it=*/true);
  store::TokenStore store(store::StoreOptions::from_config(cfg));
  SimMover mover(cfg, &store);
  Pager pager(cfg, mover);
  SimDevice dev(pager, mover);
  demo::DemoOptions opt = a.opt;
  opt.hints = !a.no_hints;
  if (a.serve && a.turns->count() == 0) opt.turns = 0;  // until stopped
  demo::DemoWorkload work(dev, opt);
  std::unique_ptr<Serving> serving;
  if (a.serve) {
    serving = std::make_unique<Serving>(cfg, pager, dev, store, a.pace_ms);
    fmt::print(a.json ? stderr : stdout,
               "kvpager demo: serving live control at {} (pid {}): try `kvpager status`, `kvpager top`, "
               "`kvpager tune hbm_budget=...`; Ctrl-C stops\n",
               serving->socket(), getpid());
  }

  if (!a.json) {
    fmt::print("  {} sessions x {} layers of {} = {} of KV; HBM budget {}, host RAM {}, NVMe {} ({})\n",
               opt.sessions, opt.layers, human_bytes(static_cast<double>(work.region_bytes())),
               human_bytes(static_cast<double>(work.region_bytes() * opt.sessions * opt.layers)),
               human_bytes(static_cast<double>(pager.config().hbm_budget)),
               human_bytes(static_cast<double>(pager.config().host_capacity)),
               cfg.nvme_capacity ? human_bytes(static_cast<double>(cfg.nvme_capacity)) : "unlimited",
               cfg.effective_store_dir());
    fmt::print("  policy {}, prefetchers {}, hints {}, {} turns, seed {}\n", to_string(cfg.eviction_policy),
               find_knob("prefetchers")->format(cfg), opt.hints ? "on" : "off",
               opt.turns ? std::to_string(opt.turns) : std::string("unlimited"), opt.seed);
  }
  std::fflush(stdout);
  auto t0 = std::chrono::steady_clock::now();
  // The prefill of a large demo takes a while: it shows progress, and a stop
  // signal (--serve) ends it there. The control socket is served between its
  // sessions (a hint names a session once it is built).
  uint32_t built = 0;
  tools::ProgressLine prefill_line("kvpager demo", tools::ProgressLine::for_stderr());
  const bool prefilled = work.prefill([&](uint32_t done) {
    built = done;
    if (serving) serving->service();
    prefill_line.update([&] { return fmt::format("prefill {}/{} sessions", done, opt.sessions); },
                        done == opt.sessions);
    return !stop_requested();
  });
  prefill_line.clear();
  if (!prefilled)
    fmt::print(stderr, "kvpager demo: stopped during the prefill ({} of {} sessions built)\n", built, opt.sessions);
  // A server's log gets no line per turn: `kvpager status` shows where it is.
  tools::ProgressLine turn_line("kvpager demo", tools::ProgressLine::for_stderr(!serving));
  uint64_t recomputed = 0;
  for (;;) {
    auto turn_start = std::chrono::steady_clock::now();
    if (stop_requested() || !work.run_turn()) break;
    if (work.recomputed_chunks() != recomputed) {
      turn_line.clear();
      fmt::print(stderr, "kvpager demo: turn {} found {} chunk(s) dropped by a hint: recomputed them\n",
                 work.result().turns, work.recomputed_chunks() - recomputed);
      recomputed = work.recomputed_chunks();
    }
    turn_line.update([&] {
      const uint64_t done = work.result().turns;
      return opt.turns ? fmt::format("turn {}/{}", done, opt.turns) : fmt::format("turn {}", done);
    });
    if (serving) serving->pace(turn_start);
  }
  turn_line.clear();
  // A run cut short by a signal says so, also in its exit status (a server
  // stopped by one has done its job: --serve ends with 0).
  if (stop_requested() && !serving) {
    if (prefilled)
      fmt::print(stderr, "kvpager demo: stopped by {} after {} of {} turns\n", strsignal(stop_signal()),
                 work.result().turns, opt.turns);
    g.exit_code = stopped_exit_code();
  }
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  pager.drain();
  demo::DemoResult r = work.result();
  if (std::string problem = pager.audit(); !problem.empty()) throw RuntimeError("pager audit failed: " + problem);

  if (a.json) {
    nlohmann::json out = {{"device", device_line},
                          {"simulated", true},
                          {"sessions", opt.sessions},
                          {"layers", opt.layers},
                          {"turns", r.turns},
                          {"seed", opt.seed},
                          {"total_kv_bytes", r.total_kv_bytes},
                          {"hbm_budget", pager.config().hbm_budget},
                          {"host_capacity", pager.config().host_capacity},
                          {"verified_bytes", r.verified_bytes},
                          {"corrupt_chunks", r.corrupt_chunks},
                          {"recomputed_chunks", r.recomputed_chunks},
                          {"failed_accesses", r.failed_accesses},
                          {"wall_s", wall},
                          {"stats", to_json(r.stats)}};
    fmt::print("{}\n", out.dump(2));
  } else {
    print_summary(r, cfg.chunk_size, wall);
  }
  if (r.corrupt_chunks || r.failed_accesses)
    throw RuntimeError(fmt::format("{} corrupted chunk(s), {} failed access(es)", r.corrupt_chunks, r.failed_accesses));
}

}  // namespace

void add_demo_command(CLI::App& app, Globals& g) {
  static DemoArgs a;
  auto* cmd = app.add_subcommand(
      "demo",
      "The main job without a GPU: agent sessions whose KV is 4x the HBM budget, on the simulated device.\n"
      "Prints per-tier residency, hit rate, prefetch accuracy and stall time. Ctrl-C (or SIGTERM) ends the run\n"
      "after the current turn with the summary so far and removes its spilled objects (exit 128 + the signal;\n"
      "with --serve, 0); a second one ends it at once.");
  cmd->add_option("--sessions", a.opt.sessions, "Agent sessions")->check(whole_range(1, 4096))->capture_default_str();
  cmd->add_option("--layers", a.opt.layers, "KV regions per session")->check(whole_range(1, 256))->capture_default_str();
  a.turns = cmd->add_option("--turns", a.opt.turns, "Turns to run (with --serve: until stopped unless given)")
                ->check(whole_range(1, 100000000))
                ->capture_default_str();
  cmd->add_option("--seed", a.opt.seed, "Schedule and data seed")->capture_default_str();
  cmd->add_option("--kv-factor", a.opt.kv_factor, "Total KV as a multiple of the HBM budget")
      ->check(number_range(0.1, 64.0))
      ->capture_default_str();
  cmd->add_flag("--no-hints", a.no_hints, "Do not prefetch the next session or park idle ones");
  cmd->add_flag("--json", a.json, "Print the results as JSON");
  auto* serve = cmd->add_flag("--serve", a.serve,
                              "Keep running and serve the control socket (kvpager status/top/tune/hint); SIGINT or "
                              "SIGTERM stops it, prints the summary and removes the socket");
  cmd->add_option("--pace", a.pace_ms, "With --serve: wall-clock milliseconds per turn")
      ->check(whole_range(1, 60000))
      ->needs(serve)  // without it the run goes as fast as it can: a pace would be ignored
      ->capture_default_str();
  cmd->callback([&g] { run_demo(g, a); });
}

}  // namespace kvpager::cli
