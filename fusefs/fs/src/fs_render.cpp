// The generated files: /contexts/<name>/info, /stats (Prometheus text),
// /processes/<pid>/{stats,config}, and the knob files under /control and
// /processes/<pid>/control (read: the current value; write: apply it).
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <map>
#include <set>

#include "control/client.h"
#include "prometheus.h"
#include "token_fs.h"

namespace kvpager::fs {

namespace {

using nlohmann::json;

std::string iso_time(uint64_t wall_ns) {
  if (wall_ns == 0) return "";
  std::time_t t = static_cast<std::time_t>(wall_ns / 1'000'000'000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

const json& field(const json& j, const char* key) {
  static const json null;
  return j.is_object() && j.contains(key) ? j[key] : null;
}

uint64_t num(const json& j, const char* key) {
  const json& v = field(j, key);
  return v.is_number_unsigned() ? v.get<uint64_t>() : v.is_number() ? static_cast<uint64_t>(std::max(0.0, v.get<double>())) : 0;
}

int errno_of(const control::Reply& r) {
  switch (r.code) {
    case control::Errc::kOk: return 0;
    case control::Errc::kGone: return ENOENT;
    case control::Errc::kDenied: return EACCES;
    case control::Errc::kTimeout: return ETIMEDOUT;
    case control::Errc::kRefused:
    case control::Errc::kBadRequest: return EINVAL;
    case control::Errc::kNotFound: return ENOENT;
    case control::Errc::kBusy: return EBUSY;
    case control::Errc::kIo:
    case control::Errc::kFailed: return EIO;
  }
  return EIO;
}

std::string trimmed(std::string_view v) {
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r' || v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  return std::string(v);
}

}  // namespace

int TokenFs::render(const Node& n, std::string* out) {
  switch (n.ref.kind) {
    case NodeKind::kContextInfo:
      *out = render_info(n.ctx);
      return 0;
    case NodeKind::kStats:
      *out = render_stats();
      return 0;
    case NodeKind::kProcessStats:
    case NodeKind::kProcessConfig: {
      const std::string op = n.ref.kind == NodeKind::kProcessStats ? "stats" : "config";
      control::Reply r = pagers_.call(pager(n.ref.pid), {{"op", op}});
      if (!r.ok()) {
        if (r.code != control::Errc::kGone) log(fmt::format("pid {} {}: {}", n.ref.pid, op, r.error));
        return errno_of(r);
      }
      *out = r.body.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
      return 0;
    }
    case NodeKind::kControlKnob:
    case NodeKind::kProcessKnob: {
      // The value each pager has: one line if they agree, "PID VALUE" lines if not.
      const std::vector<control::Endpoint> pagers = pagers_of(n.ref.pid);
      auto replies = pagers_.call_all(pagers, {{"op", "config"}});
      std::map<int32_t, std::string> values;
      int unanswered = 0;  // why a live pager did not say
      for (size_t i = 0; i < pagers.size(); ++i) {
        const json& v = field(field(field(replies[i].body, "config"), n.ref.knob.c_str()), "value");
        if (replies[i].ok() && v.is_string()) values[pagers[i].pid] = v.get<std::string>();
        else if (n.ref.pid != 0) return replies[i].ok() ? ENOENT : errno_of(replies[i]);
        else if (!replies[i].ok() && replies[i].code != control::Errc::kGone && unanswered == 0)
          unanswered = errno_of(replies[i]);
      }
      // Empty means "no pager runs", never "none of them answered".
      if (values.empty() && unanswered != 0) return unanswered;
      out->clear();
      std::set<std::string> distinct;
      for (const auto& [pid, v] : values) distinct.insert(v);
      if (distinct.size() == 1) *out = *distinct.begin() + "\n";
      else
        for (const auto& [pid, v] : values) *out += fmt::format("{} {}\n", pid, v);
      return 0;
    }
    default:
      return EISDIR;
  }
}

std::string TokenFs::render_info(const std::shared_ptr<CtxPub>& pub) {
  store::ContextMeta meta;
  uint64_t last_access = 0;
  {
    std::shared_lock lock(mu_);
    meta = pub->meta;
    last_access = pub->last_access_ns;
  }
  const uint64_t size = pub->size();
  json j = {{"name", pub->name},
            {"namespace", meta.ns},
            {"size_bytes", size},
            {"chunks", pub->chunks.size()},
            {"token_count", meta.token_count},
            {"created_ns", meta.created_ns},
            {"created", iso_time(meta.created_ns)},
            {"last_access_ns", last_access},
            {"last_access", iso_time(last_access)},
            {"owner_uid", meta.owner_uid},
            {"owner_pid", meta.owner_pid},
            {"pinned", meta.pinned},
            {"ttl_ns", meta.ttl_ns},
            {"expires_ns", meta.ttl_ns && !meta.pinned ? json(last_access + meta.ttl_ns) : json(nullptr)},
            {"generation", fmt::format("{:016x}", pub->generation)}};
  // Where the bytes are: the live owner knows its tiers; without one the
  // whole context is in the store (the NVMe tier).
  json live = nullptr;
  if (meta.owner_pid != 0 && pager_live(static_cast<int32_t>(meta.owner_pid))) {
    control::Reply r = pagers_.call(pager(static_cast<int32_t>(meta.owner_pid)), {{"op", "contexts"}});
    for (const json& c : r.ok() ? field(r.body, "contexts") : json::array()) {
      if (c.is_object() && c.value("name", std::string()) == pub->name) live = c;
    }
  }
  if (live.is_object()) {
    j["tier_bytes"] = field(live, "tier_bytes");
    j["tier_source"] = fmt::format("pid {}", meta.owner_pid);
    j["hits"] = num(live, "hits");
    j["live"] = {{"pid", meta.owner_pid},
                 {"pinned", live.value("pinned", false)},
                 {"parked", live.value("parked", false)},
                 {"regions", num(live, "regions")}};
  } else {
    j["tier_bytes"] = {{"hbm", 0}, {"host", 0}, {"nvme", size}};
    j["tier_source"] = "store";
    j["hits"] = nullptr;  // counted by a live owner only
    j["live"] = nullptr;
  }
  {
    std::lock_guard lock(pub->check_mu);
    std::string state = pub->corrupt   ? "corrupt"
                        : pub->missing ? "incomplete"
                        : pub->verified_count == pub->chunks.size() ? "verified"
                                                                     : "unverified";
    // The note explains the state it stands beside.
    const char* note = state == "verified"     ? "every chunk was read through this mount and matched its checksum"
                       : state == "unverified" ? "not every chunk has been read through this mount yet; each is "
                                                 "checked against its checksum as it is read"
                       : state == "corrupt"    ? "a chunk failed its checksum; its bytes are never served"
                                               : "a chunk is missing from the store; reading it fails";
    j["checksum"] = {{"algorithm", "xxh3-64 per chunk"},
                     {"state", state},
                     {"chunks_verified", pub->verified_count},
                     {"note", note}};
  }
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

std::string TokenFs::render_stats() {
  Prometheus p;
  StoreTotals totals;
  uint64_t used = 0;
  store::StoreStats own;
  size_t shown = 0;
  {
    std::shared_lock lock(mu_);
    totals = totals_;
    used = used_bytes_;
    own = store_stats_;
    shown = by_name_.size();
  }
  const store::StoreStats rd = reader_->stats();
  p.family("kvpager_store_contexts", "gauge", "Contexts in the store (every namespace)").sample({}, totals.contexts);
  p.family("kvpager_store_context_bytes", "gauge", "Payload bytes of the store's contexts").sample({}, totals.bytes);
  p.family("kvpager_store_pinned_contexts", "gauge", "Contexts pinned in the store (never dropped for capacity or TTL)")
      .sample({}, totals.pinned);
  p.family("kvpager_store_used_bytes", "gauge", "Bytes the store's files take on disk").sample({}, used);
  p.family("kvpager_store_capacity_bytes", "gauge", "nvme_capacity (0: unlimited)").sample({}, opt_.capacity);
  p.family("kvpager_fs_store_dir_lost", "gauge",
           "Whether the store directory was removed or replaced while mounted (then unmount and mount again)")
      .sample({}, uint64_t{store_lost_.load() ? 1u : 0u});
  p.family("kvpager_fs_contexts", "gauge", "Contexts this mount shows (its namespace)").sample({}, shown);
  p.family("kvpager_fs_hidden_contexts", "gauge", "Contexts of this namespace whose names cannot be file names")
      .sample({}, totals.hidden);
  p.family("kvpager_store_corruption_events_total", "counter",
           "Checksum, header or manifest mismatches this mount met (never served)")
      .sample({}, own.corruption_events + rd.corruption_events);
  p.family("kvpager_store_io_errors_total", "counter", "I/O errors this mount met in the store")
      .sample({}, own.io_errors + rd.io_errors);
  p.family("kvpager_fs_read_bytes_total", "counter", "Context bytes read from the store through this mount")
      .sample({}, reader_->bytes_read());
  p.family("kvpager_fs_read_errors_total", "counter", "Reads through this mount that failed with EIO")
      .sample({}, reads_failed.load());
  auto& imports = p.family("kvpager_fs_imports_total", "counter", "Files copied into /import, by outcome");
  imports.sample({{"result", "imported"}}, imports_ok.load());
  imports.sample({{"result", "rejected"}}, imports_rejected.load());
  imports.sample({{"result", "failed"}}, imports_failed.load());
  p.family("kvpager_fs_contexts_removed_total", "counter", "Contexts removed through this mount")
      .sample({}, contexts_removed.load());

  // Every live pager, from its control socket (all asked at once).
  auto pagers = live_pagers();
  auto replies = pagers_.call_all(pagers, {{"op", "stats"}});
  size_t failed = 0;
  std::vector<std::pair<std::string, const json*>> up;  // pid label, stats
  auto& info = p.family("kvpager_pager_info", "gauge", "One per live pager: its command and device");
  for (size_t i = 0; i < pagers.size(); ++i) {
    if (!replies[i].ok()) {
      if (replies[i].code != control::Errc::kGone) ++failed;
      continue;
    }
    const std::string pid = std::to_string(pagers[i].pid);
    info.sample({{"pid", pid},
                 {"command", field(replies[i].body, "command").is_string() ? replies[i].body["command"].get<std::string>() : ""},
                 {"device", field(replies[i].body, "device").is_string() ? replies[i].body["device"].get<std::string>() : ""}},
                uint64_t{1});
    up.emplace_back(pid, &field(replies[i].body, "stats"));
  }
  p.family("kvpager_pagers", "gauge", "Live pagers that answered").sample({}, up.size());
  p.family("kvpager_pager_scrape_errors", "gauge", "Live pagers that did not answer this read").sample({}, failed);

  auto per_tier = [&](const char* name, const char* help, const char* key) {
    auto& f = p.family(name, "gauge", help);
    for (const auto& [pid, s] : up)
      for (const char* tier : {"hbm", "host", "nvme"}) f.sample({{"pid", pid}, {"tier", tier}}, num(field(field(*s, "tiers"), tier), key));
  };
  per_tier("kvpager_tier_bytes", "Bytes resident per tier (whole chunks)", "resident_bytes");
  per_tier("kvpager_tier_capacity_bytes", "Budget or capacity per tier (0: unlimited)", "capacity_bytes");
  auto counter = [&](const char* name, const char* help, const char* key) {
    auto& f = p.family(name, "counter", help);
    for (const auto& [pid, s] : up) f.sample({{"pid", pid}}, num(*s, key));
  };
  counter("kvpager_accesses_total", "Chunk accesses", "accesses");
  counter("kvpager_hits_total", "Accesses that found the chunk resting in HBM", "hits");
  {
    auto& f = p.family("kvpager_misses_total", "counter", "Accesses that did not find the chunk in HBM");
    for (const auto& [pid, s] : up) f.sample({{"pid", pid}}, num(*s, "accesses") - std::min(num(*s, "accesses"), num(*s, "hits")));
  }
  {
    auto& f = p.family("kvpager_faults_total", "counter", "Accesses that waited for their chunk, by where it came from");
    for (const auto& [pid, s] : up)
      for (const auto& [from, v] : field(*s, "faults_from").items()) f.sample({{"pid", pid}, {"from", from}}, v.is_number() ? v.get<uint64_t>() : 0);
  }
  {
    auto& moves = p.family("kvpager_moves_total", "counter", "Completed chunk moves, by kind");
    auto& bytes = p.family("kvpager_moved_bytes_total", "counter", "Bytes moved, by kind (= link and direction)");
    for (const auto& [pid, s] : up)
      for (const auto& [kind, v] : field(*s, "moves").items()) {
        moves.sample({{"pid", pid}, {"kind", kind}}, num(v, "count"));
        bytes.sample({{"pid", pid}, {"kind", kind}}, num(v, "bytes"));
      }
  }
  {
    auto& issued = p.family("kvpager_prefetch_issued_bytes_total", "counter", "Bytes prefetched into HBM, by prefetcher");
    auto& used_b = p.family("kvpager_prefetch_used_bytes_total", "counter", "Prefetched bytes used before they left HBM");
    auto& wasted = p.family("kvpager_prefetch_wasted_bytes_total", "counter", "Prefetched bytes that left HBM unused");
    for (const auto& [pid, s] : up)
      for (const json& pf : field(*s, "prefetchers")) {
        const std::string name = pf.is_object() ? pf.value("name", std::string("?")) : "?";
        issued.sample({{"pid", pid}, {"prefetcher", name}}, num(pf, "issued_bytes"));
        used_b.sample({{"pid", pid}, {"prefetcher", name}}, num(pf, "used_bytes"));
        wasted.sample({{"pid", pid}, {"prefetcher", name}}, num(pf, "wasted_bytes"));
      }
  }
  {
    auto& f = p.family("kvpager_stall_seconds_total", "counter", "Time accesses spent waiting for chunks");
    for (const auto& [pid, s] : up) f.sample({{"pid", pid}}, static_cast<double>(num(*s, "stall_ns")) / 1e9);
  }
  counter("kvpager_evictions_total", "Demotes and spills the budget controller chose", "evictions");
  counter("kvpager_move_failures_total", "Moves that failed", "move_failures");
  counter("kvpager_prefetch_dropped_total", "Prefetch requests dropped (no room, queue full)", "prefetch_dropped");
  {
    auto& f = p.family("kvpager_contexts", "gauge", "Contexts the pager knows");
    for (const auto& [pid, s] : up) f.sample({{"pid", pid}}, num(*s, "contexts"));
  }
  return p.text();
}

int TokenFs::write_knob(const std::string& knob, std::string_view raw, int32_t pid) {
  const Knob* k = find_knob(knob);
  if (!k || k->name != knob) return ENOENT;
  if (!k->live) return EPERM;
  const std::string value = trimmed(raw);
  // Checked here first, as at start-up, so a bad value reaches no pager.
  Config probe;
  if (auto why = k->set(probe, value)) {
    log(fmt::format("{} = '{}' refused: {}", knob, value, *why));
    return EINVAL;
  }
  const std::vector<control::Endpoint> pagers = pagers_of(pid);
  const json set = {{"op", "set"}, {"set", json::array({knob + "=" + value})}};
  auto replies = pagers_.call_all(pagers, set);
  int err = 0;
  std::vector<std::pair<control::Endpoint, std::string>> changed;  // to undo: pager, old value
  size_t applied = 0;
  for (size_t i = 0; i < pagers.size(); ++i) {
    const control::Reply& r = replies[i];
    if (r.ok()) {
      ++applied;
      for (const json& c : field(r.body, "changes"))
        if (c.is_object() && c.value("knob", std::string()) == knob)
          changed.emplace_back(pagers[i], c.value("old", std::string()));
      continue;
    }
    if (r.code == control::Errc::kGone && pid == 0) continue;  // exited meanwhile: not a pager any more
    log(fmt::format("{} = '{}' on pid {}: {}", knob, value, pagers[i].pid, r.error));
    if (err == 0 || r.code == control::Errc::kRefused) err = errno_of(r);
  }
  if (err == 0 && applied == 0) return ENXIO;  // no pager to apply it to
  if (err != 0) {
    // All or nothing: pagers that took the value get their old one back.
    for (const auto& [e, old] : changed) {
      control::Reply r = pagers_.call(e, {{"op", "set"}, {"set", json::array({knob + "=" + old})}});
      if (!r.ok()) log(fmt::format("could not restore {} = '{}' on pid {}: {}", knob, old, e.pid, r.error));
    }
  }
  return err;
}

}  // namespace kvpager::fs
