// kvpager status [--pid N] [--json]: every live pager, one line each, or the
// details of one. kvpager top: the same, refreshing, sorted by HBM use.
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include "common/printable.h"
#include "common/stats_json.h"
#include "live.h"

namespace kvpager::cli {

namespace {

using nlohmann::json;
using std::chrono::milliseconds;

std::string bytes(uint64_t b) { return human_bytes(static_cast<double>(b)); }
std::string clip(std::string s, size_t width) {
  if (s.size() > width) s = s.substr(0, width > 1 ? width - 1 : 0) + "~";
  return s;
}

// "/usr/local/bin/kvpager demo --serve" -> "kvpager demo --serve"
// A command line inside key="value" output: one line, its quotes escaped.
std::string quoted_value(const std::string& cmd) {
  std::string out;
  for (char ch : tools::printable(cmd)) {
    if (ch == '"') out += '\\';
    out += ch;
  }
  return out;
}

std::string short_command(const std::string& cmd) {
  size_t end = cmd.find(' ');
  size_t slash = cmd.rfind('/', end);
  return slash == std::string::npos ? cmd : cmd.substr(slash + 1);
}

constexpr const char* kHeader = "{:>7}  {:<24}  {:>10}  {:>10}  {:>10}  {:>10}  {:>6}  {:>6}  {:>9}";
std::string header() {
  return fmt::format(kHeader, "PID", "COMMAND", "BUDGET", "HBM", "HOST", "NVME", "HIT%", "PF-ACC", "STALL");
}
std::string row_text(const PagerRow& r) {
  return fmt::format(kHeader, r.pid, clip(tools::printable(short_command(r.command)), 24), bytes(r.budget), bytes(r.hbm), bytes(r.host), bytes(r.nvme),
                     percent(r.hit_rate), percent(r.prefetch_accuracy), duration_text_ns(r.stall_ns));
}

json strip(json body) {
  body.erase("ok");
  return body;
}

// ------------------------------------------------------------------ status

void status_all(const Globals& g, bool as_json) {
  LivePagers live = find_live_pagers(g);
  print_notes(live);
  auto replies = control::call_all(live.pagers, {{"op", "stats"}}, control::kDefaultTimeout);
  size_t failed = report_failures(live.pagers, replies);
  if (as_json) {
    json out = json::array();
    for (auto& r : replies)
      if (r.ok()) out.push_back(strip(std::move(r.body)));
    fmt::print("{}\n", out.dump(2));
  } else {
    std::vector<PagerRow> rows;
    for (const auto& r : replies)
      if (r.ok()) rows.push_back(row_from(r.body));
    if (rows.empty()) {
      fmt::print("{}\n", nobody_text(live));
    } else {
      fmt::print("{}\n", header());
      for (const auto& row : rows) fmt::print("{}\n", row_text(row));
    }
  }
  if (failed) throw RuntimeError(fmt::format("{} of {} pager(s) did not answer", failed, live.pagers.size()));
}

// What libkvpager.so itself counts, and plain words for the counters that
// mean the pager is missing something.
void print_interposer(const json& in, const json& stats) {
  auto n = [&](const char* key) { return in.value(key, uint64_t{0}); };
  fmt::print("\nInterposer (libkvpager.so)\n");
  fmt::print("  managed {} allocations, {} of limit {}; {} refused at the limit\n", n("managed_allocs"),
             bytes(n("managed_bytes")), bytes(n("managed_limit")), n("limit_refusals"));
  fmt::print("  launches scanned {}, unscannable {}; restores before a launch {}\n", n("launches_scanned"),
             n("launches_unscannable"), n("restores"));
  fmt::print("  store queue: at most {} in flight, {} times full\n", n("mover.store_peak"), n("mover.store_full"));
  if (const std::string speed = mover_speed(stats, in); !speed.empty()) fmt::print("  mover: {}\n", speed);
  if (n("events_dropped"))
    fmt::print("  warning: {} launch events dropped (event ring full): the pager did not see those accesses\n",
               n("events_dropped"));
  if (n("refs_dropped"))
    fmt::print("  warning: {} references did not fit in their launch's events: their regions looked idle\n",
               n("refs_dropped"));
  if (n("mover.driver_errors"))
    fmt::print("  warning: {} driver errors while moving chunks (last CUresult {})\n", n("mover.driver_errors"),
               n("mover.last_driver_error"));
  if (n("mover.failed_ranges"))
    fmt::print("  warning: the driver refused {} move ranges: their chunks stayed where they were\n",
               n("mover.failed_ranges"));
}

void print_details(const json& stats_reply, const json& config, const json& contexts) {
  PagerRow row = row_from(stats_reply);
  const json& s = field(stats_reply, "stats");
  fmt::print("pid {}  {}\n", row.pid, tools::printable(row.command));
  fmt::print("  uid {}, up {:.1f} s, device: {}, snapshot {:.0f} ms old\n", stats_reply.value("uid", 0),
             stats_reply.value("uptime_s", 0.0), text(stats_reply, "device"),
             stats_reply.value("snapshot_age_ms", 0.0));
  fmt::print("\nTiers\n");
  for (const char* t : {"hbm", "host", "nvme"}) {
    const json& ts = field(field(s, "tiers"), t);
    uint64_t cap = ts.value("capacity_bytes", uint64_t{0});
    fmt::print("  {:<5} {:>12}  of {:>12}  ({} chunks, {} inbound)\n", t, bytes(ts.value("resident_bytes", uint64_t{0})),
               cap ? bytes(cap) : std::string("unlimited"), ts.value("chunks", uint64_t{0}),
               bytes(ts.value("inbound_bytes", uint64_t{0})));
  }
  const json& ff = field(s, "faults_from");
  fmt::print("\nAccesses {}  hits {}  faults {}  hit rate {}\n", row.accesses, s.value("hits", uint64_t{0}), row.faults,
             percent(row.hit_rate));
  fmt::print("  faults served from: host {}, nvme {}, first touch {}, in flight {}\n", ff.value("host", uint64_t{0}),
             ff.value("nvme", uint64_t{0}), ff.value("unpopulated", uint64_t{0}), ff.value("hbm", uint64_t{0}));
  std::string failed_kinds = failed_moves_by_kind(s);
  if (!failed_kinds.empty()) failed_kinds = " (" + failed_kinds + ")";
  fmt::print("  stall {}, evictions {}, move failures {}{}{}\n", duration_text_ns(row.stall_ns), s.value("evictions", uint64_t{0}),
             s.value("move_failures", uint64_t{0}), failed_kinds,
             s.value("spill_disabled", false) ? ", spills paused (NVMe full)" : "");
  fmt::print("\nPrefetch accuracy {}\n", percent(row.prefetch_accuracy));
  for (const auto& p : field(s, "prefetchers")) {
    fmt::print("  {:<12} issued {:>12}  used {:>12}  wasted {:>12}  accuracy {}{}\n", text(p, "name"),
               bytes(p.value("issued_bytes", uint64_t{0})), bytes(p.value("used_bytes", uint64_t{0})),
               bytes(p.value("wasted_bytes", uint64_t{0})),
               accuracy_text(p.value("used_bytes", uint64_t{0}), p.value("wasted_bytes", uint64_t{0})),
               p.value("throttled", false) ? "  (throttled)" : "");
  }
  if (stats_reply.contains("interposer")) print_interposer(field(stats_reply, "interposer"), s);
  fmt::print("\nLive knobs (kvpager tune --pid {} KEY=VALUE)\n", row.pid);
  for (const Knob& k : knobs()) {  // in the knob table's order
    const json& entry = field(config, std::string(k.name).c_str());
    if (entry.value("live", false)) fmt::print("  {:<24} {}\n", k.name, text(entry, "value"));
  }
  fmt::print("\nContexts ({})\n", contexts.size());
  if (!contexts.empty())
    fmt::print("  {:<24} {:>12} {:>12} {:>12} {:>12}  flags\n", "NAME", "SIZE", "HBM", "HOST", "NVME");
  for (const auto& c : contexts) {
    const json& tb = field(c, "tier_bytes");
    std::string flags = std::string(c.value("parked", false) ? "parked " : "") + (c.value("pinned", false) ? "pinned" : "");
    fmt::print("  {:<24} {:>12} {:>12} {:>12} {:>12}  {}\n", clip(tools::printable(text(c, "name")), 24),
               bytes(c.value("size_bytes", uint64_t{0})), bytes(tb.value("hbm", uint64_t{0})),
               bytes(tb.value("host", uint64_t{0})), bytes(tb.value("nvme", uint64_t{0})), flags);
  }
}

void status_one(const Globals& g, pid_t pid, bool as_json) {
  LivePagers live = find_live_pagers(g);
  print_notes(live);
  control::Endpoint e = choose_one(live, pid, "");
  control::Exchange ex{e.socket, {{{"op", "stats"}}, {{"op", "config"}}, {{"op", "contexts"}}}, {}};
  control::exchange_all(std::span(&ex, 1), control::kDefaultTimeout);
  for (size_t i = 0; i < 2; ++i)
    if (!ex.replies[i].ok()) throw RuntimeError(fmt::format("pid {}: {}", e.pid, ex.replies[i].error));
  // The context list needs the pager's own thread; if it is busy, show the
  // rest and say so.
  const control::Reply& ctx = ex.replies[2];
  if (!ctx.ok()) fmt::print(stderr, "kvpager: pid {}: no context list: {}\n", e.pid, ctx.error);
  const json& contexts = ctx.ok() ? field(ctx.body, "contexts") : json::array();
  if (as_json) {
    json out = strip(ex.replies[0].body);
    out["config"] = field(ex.replies[1].body, "config");
    out["contexts"] = contexts;
    if (!ctx.ok()) out["contexts_error"] = ctx.error;
    fmt::print("{}\n", out.dump(2));
  } else {
    print_details(ex.replies[0].body, field(ex.replies[1].body, "config"), contexts);
  }
}

// ------------------------------------------------------------------ top

// Whether we are the foreground job of the terminal on fd. A background job
// (`kvpager top > log &`) that changes or reads its terminal is stopped by
// SIGTTOU / SIGTTIN and never prints a line.
bool in_foreground(int fd) { return tcgetpgrp(fd) == getpgrp(); }

// Raw keys from a terminal on stdin (when top is its foreground job), and the
// alternate screen on stdout, both restored however top ends.
class Terminal {
 public:
  explicit Terminal(bool screen) : screen_(screen) {
    if (isatty(STDIN_FILENO) && in_foreground(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved_) == 0) {
      termios raw = saved_;
      raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
      raw.c_cc[VMIN] = 0;
      raw.c_cc[VTIME] = 0;
      raw_ = keys_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    if (screen_) fmt::print("\x1b[?1049h\x1b[?25l");
  }
  ~Terminal() {
    if (screen_) {
      fmt::print("\x1b[?25h\x1b[?1049l");
      std::fflush(stdout);
    }
    if (raw_) {
      // Restored even if top was sent to the background meanwhile (Ctrl-Z,
      // bg): without SIGTTOU stopping it there.
      sigset_t ttou, old;
      sigemptyset(&ttou);
      sigaddset(&ttou, SIGTTOU);
      pthread_sigmask(SIG_BLOCK, &ttou, &old);
      tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }
  }
  Terminal(const Terminal&) = delete;
  Terminal& operator=(const Terminal&) = delete;

  // Waits up to `wait` for a key; true if it was q (or Q).
  bool quit_pressed(milliseconds wait) const {
    const auto until = std::chrono::steady_clock::now() + wait;
    while (!stop_requested()) {
      auto left = std::chrono::duration_cast<milliseconds>(until - std::chrono::steady_clock::now()).count();
      if (left <= 0) return false;
      if (!keys_ || !in_foreground(STDIN_FILENO)) {  // in the background now: reading would stop us
        std::this_thread::sleep_for(milliseconds(std::min<int64_t>(left, 50)));
        continue;
      }
      pollfd p{STDIN_FILENO, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 50))) <= 0) continue;
      char c = 0;
      ssize_t n = read(STDIN_FILENO, &c, 1);
      if (n == 0) keys_ = false;  // the terminal hung up: keep refreshing until interrupted
      if (n == 1 && (c == 'q' || c == 'Q')) return true;
    }
    return true;
  }
  static int columns() {
    winsize ws{};
    return ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 80;
  }
  static int lines() {
    winsize ws{};
    return ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 ? ws.ws_row : 24;
  }

 private:
  bool screen_;
  bool raw_ = false;           // stdin's terminal settings to restore
  mutable bool keys_ = false;  // read keys from stdin
  termios saved_{};
};

struct TopArgs {
  double interval_s = 1.0;
  uint64_t iterations = 0;
};

// A rate needs two samples: "-" until a pager's second refresh.
std::string rate_text(std::optional<double> per_s) { return per_s ? fmt::format("{:.0f}", *per_s) : "-"; }

void top(const Globals& g, const TopArgs& a) {
  const bool tty = isatty(STDOUT_FILENO);
  stop_on_signals();
  Terminal term(tty);
  const auto interval = milliseconds(static_cast<int64_t>(a.interval_s * 1000.0));
  struct Seen {
    uint64_t accesses, faults;
    std::chrono::steady_clock::time_point at;
  };
  std::map<pid_t, Seen> previous;
  // A stopped pager must not slow every frame down to its timeout.
  control::Caller pagers({.timeout = std::max(interval, milliseconds(500))});
  for (uint64_t frame = 1; !stop_requested(); ++frame) {
    LivePagers live = find_live_pagers(g);
    auto replies = pagers.call_all(live.pagers, {{"op", "stats"}});
    const auto now = std::chrono::steady_clock::now();
    struct Line {
      PagerRow row;
      std::optional<double> acc_per_s, faults_per_s;  // none until a pager's second sample
    };
    std::vector<Line> lines;
    std::vector<std::string> failures;
    std::map<pid_t, Seen> seen;
    for (size_t i = 0; i < replies.size(); ++i) {
      if (!replies[i].ok()) {
        if (replies[i].code != control::Errc::kGone)
          failures.push_back(fmt::format("pid {}: {}", live.pagers[i].pid, replies[i].error));
        else if (std::string note = forget_gone(live.pagers[i]); !note.empty())
          failures.push_back(std::move(note));
        continue;
      }
      PagerRow row = row_from(replies[i].body);
      std::optional<double> acc, flt;
      if (auto it = previous.find(row.pid); it != previous.end()) {
        double dt = std::chrono::duration<double>(now - it->second.at).count();
        if (dt > 0) {
          acc = static_cast<double>(row.accesses - std::min(row.accesses, it->second.accesses)) / dt;
          flt = static_cast<double>(row.faults - std::min(row.faults, it->second.faults)) / dt;
        }
      }
      seen[row.pid] = Seen{row.accesses, row.faults, now};
      lines.push_back(Line{row, acc, flt});
    }
    previous = std::move(seen);
    std::sort(lines.begin(), lines.end(), [](const Line& x, const Line& y) {
      return x.row.hbm != y.row.hbm ? x.row.hbm > y.row.hbm : x.row.pid < y.row.pid;
    });

    if (tty) {
      const auto width = static_cast<size_t>(Terminal::columns());
      const auto height = static_cast<size_t>(Terminal::lines());
      std::string screen = "\x1b[H\x1b[2J";
      auto put = [&](const std::string& s) { screen += clip(s, width) + "\x1b[K\r\n"; };
      std::time_t t = std::time(nullptr);
      char clock[16];
      std::strftime(clock, sizeof clock, "%H:%M:%S", std::localtime(&t));
      put(fmt::format("kvpager top - {} - {} live pager(s) in {} - every {:.1f} s - q quits", clock, lines.size(),
                      live.dir, a.interval_s));
      put("");
      put(header() + fmt::format("  {:>10}  {:>9}", "ACCESS/S", "FAULTS/S"));
      size_t room = height > 4 ? height - 4 : 1;
      for (const auto& l : lines) {
        if (room-- == 0) break;
        put(row_text(l.row) + fmt::format("  {:>10}  {:>9}", rate_text(l.acc_per_s), rate_text(l.faults_per_s)));
      }
      if (lines.empty()) put(nobody_text(live));
      for (const auto& f : failures) put(f);
      fmt::print("{}", screen);
      std::fflush(stdout);
    } else {
      std::time_t t = std::time(nullptr);
      char clock[32];
      std::strftime(clock, sizeof clock, "%Y-%m-%dT%H:%M:%S", std::localtime(&t));
      if (lines.empty()) fmt::print("{} {}\n", clock, nobody_text(live));
      for (const auto& l : lines) {
        const PagerRow& r = l.row;
        fmt::print("{} pid={} budget={} hbm={} host={} nvme={} hit_rate={:.4f} prefetch_accuracy={:.4f} stall_s={:.3f} "
                   "accesses_per_s={} faults_per_s={} command=\"{}\"\n",
                   clock, r.pid, r.budget, r.hbm, r.host, r.nvme, r.hit_rate, r.prefetch_accuracy,
                   static_cast<double>(r.stall_ns) / 1e9, rate_text(l.acc_per_s), rate_text(l.faults_per_s),
                   quoted_value(r.command));
      }
      for (const auto& f : failures) fmt::print(stderr, "kvpager: {}\n", f);
      std::fflush(stdout);
    }
    if (a.iterations != 0 && frame >= a.iterations) break;
    if (term.quit_pressed(interval)) break;
  }
}

}  // namespace

// status and top only look: knobs given to them would be ignored.
constexpr const char* kLooksOnlyFooter =
    "\nThis command changes no setting: --set and --<knob> are refused here (kvpager tune changes knobs);\n"
    "--config FILE and --runtime-dir say where the pagers are (runtime_dir).";

void add_status_commands(CLI::App& app, Globals& g) {
  static std::optional<pid_t> pid;
  static bool as_json = false;
  auto* status = app.add_subcommand(
      "status",
      "Every live pager (one line each: pid, command, budget, bytes per tier, hit rate, prefetch accuracy,\n"
      "stall time), or the details of one (--pid): tiers, faults, prefetchers, live knobs, contexts.");
  status->add_option("--pid", pid, "Details of this pager")->check(kPidRange);
  status->add_flag("--json", as_json, "Print JSON");
  status->footer(kLooksOnlyFooter);
  status->callback([&g] {
    refuse_settings(g, "status", "it shows what the pagers run with; kvpager tune changes it");
    if (pid) status_one(g, *pid, as_json);
    else status_all(g, as_json);
  });

  static TopArgs top_args;
  auto* top_cmd = app.add_subcommand(
      "top",
      "Live pagers, refreshing, sorted by HBM use; q quits. When stdout is not a terminal, prints plain\n"
      "key=value lines each refresh instead. The rates (ACCESS/S, FAULTS/S) are - on a pager's first refresh.");
  top_cmd->add_option("--interval", top_args.interval_s, "Seconds between refreshes")
      ->check(number_range(0.05, 3600.0))
      ->capture_default_str();
  top_cmd->add_option("--iterations", top_args.iterations, "Stop after this many refreshes (0: until q or Ctrl-C)")
      ->capture_default_str();
  top_cmd->footer(kLooksOnlyFooter);
  top_cmd->callback([&g] {
    refuse_settings(g, "top", "it shows what the pagers run with; kvpager tune changes it");
    top(g, top_args);
  });
}

}  // namespace kvpager::cli
