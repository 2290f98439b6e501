#include "live.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

namespace kvpager::cli {

LivePagers find_live_pagers(const Globals& g) {
  Config cfg = g.config();
  control::RuntimeDir rd = control::resolve_runtime_dir(cfg, control::DirUse::kClient);
  control::Listing listing = control::list_pagers(rd.path);
  if (!listing.error.empty()) throw RuntimeError(fmt::format("runtime_dir: {}", listing.error));
  LivePagers out{rd.path, rd.note, std::move(listing.live), {}};
  for (pid_t pid : listing.cleaned)
    out.notes.push_back(fmt::format("removed the stale control socket of pid {} (the process is gone)", pid));
  for (auto& p : listing.problems) out.notes.push_back(std::move(p));
  return out;
}

void print_notes(const LivePagers& live) {
  for (const auto& n : live.notes) fmt::print(stderr, "kvpager: {}\n", n);
}

std::string nobody_text(const LivePagers& live) {
  // Found, but none answered (stopped, busy): their failures are reported
  // on their own; "no live pagers" would contradict them.
  if (!live.pagers.empty()) return fmt::format("none of the {} pager(s) in {} answered", live.pagers.size(), live.dir);
  // A directory that is not there is named as such: a mistyped
  // --runtime-dir reads differently from a machine where nothing runs.
  std::string why = live.note;
  if (struct stat st {}; stat(live.dir.c_str(), &st) != 0 && errno == ENOENT)
    why = why.empty() ? "it does not exist" : why + "; it does not exist";
  return why.empty() ? fmt::format("no live pagers in {}", live.dir)
                     : fmt::format("no live pagers in {} ({})", live.dir, why);
}

control::Endpoint choose_one(const LivePagers& live, std::optional<pid_t> pid, std::string_view what) {
  if (pid) {
    auto it = std::find_if(live.pagers.begin(), live.pagers.end(), [&](const auto& e) { return e.pid == *pid; });
    if (it == live.pagers.end()) throw RuntimeError(fmt::format("no pager with pid {} in {}", *pid, live.dir));
    return *it;
  }
  if (live.pagers.empty()) throw RuntimeError(nobody_text(live));
  if (live.pagers.size() > 1) {
    std::string pids;
    for (const auto& e : live.pagers) pids += (pids.empty() ? "" : ", ") + std::to_string(e.pid);
    throw CLI::ValidationError("--pid", fmt::format("{} live pagers ({}): choose one with --pid N{}", live.pagers.size(),
                                                    pids, what));
  }
  return live.pagers.front();
}

const std::string& text(const nlohmann::json& j, const char* key) {
  static const std::string kNone;
  if (!j.is_object()) return kNone;
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get_ref<const std::string&>() : kNone;
}

const nlohmann::json& field(const nlohmann::json& j, const char* key) {
  static const nlohmann::json kEmpty = nlohmann::json::object();
  if (!j.is_object()) return kEmpty;
  auto it = j.find(key);
  return it != j.end() && (it->is_object() || it->is_array()) ? *it : kEmpty;
}

PagerRow row_from(const nlohmann::json& r) {
  auto obj = field;
  const auto& stats = obj(r, "stats");
  const auto& tiers = obj(stats, "tiers");
  PagerRow row;
  row.pid = r.value("pid", pid_t{0});
  row.command = text(r, "command");
  row.budget = obj(tiers, "hbm").value("capacity_bytes", uint64_t{0});
  row.hbm = obj(tiers, "hbm").value("resident_bytes", uint64_t{0});
  row.host = obj(tiers, "host").value("resident_bytes", uint64_t{0});
  row.nvme = obj(tiers, "nvme").value("resident_bytes", uint64_t{0});
  row.hit_rate = stats.value("hit_rate", 0.0);
  row.prefetch_accuracy = stats.value("prefetch_accuracy", 0.0);
  row.stall_ns = stats.value("stall_ns", uint64_t{0});
  row.accesses = stats.value("accesses", uint64_t{0});
  row.faults = stats.value("faults", uint64_t{0});
  return row;
}

std::string forget_gone(const control::Endpoint& e) {
  if (!control::remove_if_stale(e)) return "";
  return fmt::format("removed the control socket of pid {}: nothing listens on it (the pager exited, or the pid "
                     "now belongs to another process)",
                     e.pid);
}

size_t report_failures(const std::vector<control::Endpoint>& pagers, const std::vector<control::Reply>& replies) {
  size_t failed = 0;
  for (size_t i = 0; i < replies.size(); ++i) {
    if (replies[i].ok()) continue;
    if (replies[i].code == control::Errc::kGone) {
      if (std::string note = forget_gone(pagers[i]); !note.empty()) fmt::print(stderr, "kvpager: {}\n", note);
      continue;
    }
    fmt::print(stderr, "kvpager: pid {}: {}\n", pagers[i].pid, replies[i].error);
    ++failed;
  }
  return failed;
}

}  // namespace kvpager::cli
