#include "control/protocol.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <vector>

#include "common/stats_json.h"

namespace kvpager::control {

namespace {

constexpr std::array<std::pair<Errc, std::string_view>, 10> kCodes{{
    {Errc::kOk, "ok"},
    {Errc::kGone, "gone"},
    {Errc::kDenied, "denied"},
    {Errc::kTimeout, "timeout"},
    {Errc::kRefused, "refused"},
    {Errc::kNotFound, "not_found"},
    {Errc::kBadRequest, "bad_request"},
    {Errc::kBusy, "busy"},
    {Errc::kIo, "io"},
    {Errc::kFailed, "failed"},
}};

constexpr std::array<HintKind, 5> kHints{HintKind::kPrefetch, HintKind::kPark, HintKind::kDrop, HintKind::kPin,
                                         HintKind::kUnpin};

}  // namespace

std::string live_knob_names() {
  std::string out;
  for (const Knob& k : knobs())
    if (k.live) out += (out.empty() ? "" : ", ") + std::string(k.name);
  return out;
}

std::string_view to_string(Errc e) {
  for (auto [code, name] : kCodes)
    if (code == e) return name;
  return "?";
}

Errc errc_from(std::string_view code) {
  for (auto [e, name] : kCodes)
    if (name == code) return e;
  return Errc::kIo;
}

int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

nlohmann::json error_reply(Errc code, std::string_view message) {
  return {{"ok", false}, {"code", std::string(to_string(code))}, {"error", std::string(message)}};
}

std::string to_line(const nlohmann::json& message) {
  std::string line = message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line += '\n';
  return line;
}

nlohmann::json apply_settings(Pager& pager, const nlohmann::json& assignments) {
  if (!assignments.is_array() || assignments.empty())
    return error_reply(Errc::kBadRequest, "\"set\" must be a non-empty list of \"KEY=VALUE\" strings");
  const Config before = pager.config();
  Config next = before;
  std::vector<const Knob*> touched;
  for (const auto& item : assignments) {
    if (!item.is_string()) return error_reply(Errc::kBadRequest, "\"set\" items must be \"KEY=VALUE\" strings");
    const std::string& text = item.get_ref<const std::string&>();
    size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0)
      return error_reply(Errc::kRefused, fmt::format("'{}' is not KEY=VALUE", text));
    std::string_view key = std::string_view(text).substr(0, eq);
    const Knob* k = find_knob(key);
    if (!k) return error_reply(Errc::kRefused, fmt::format("unknown knob '{}' (live knobs: {})", key, live_knob_names()));
    if (!k->live)
      return error_reply(Errc::kRefused, fmt::format("{} cannot change while the pager runs (it is {}); set it at start",
                                                     k->name, k->format(before)));
    if (auto err = k->set(next, std::string_view(text).substr(eq + 1))) return error_reply(Errc::kRefused, *err);
    if (std::find(touched.begin(), touched.end(), k) == touched.end()) touched.push_back(k);
  }
  std::string why;
  if (!ok(pager.apply(next, &why))) return error_reply(Errc::kRefused, why);
  nlohmann::json changes = nlohmann::json::array();
  for (const Knob* k : touched) {
    changes.push_back({{"knob", std::string(k->name)}, {"old", k->format(before)}, {"new", k->format(pager.config())}});
  }
  return {{"ok", true}, {"changes", std::move(changes)}};
}

nlohmann::json apply_hint(Pager& pager, std::string_view context, std::string_view hint) {
  auto kind = std::find_if(kHints.begin(), kHints.end(), [&](HintKind h) { return to_string(h) == hint; });
  if (kind == kHints.end())
    return error_reply(Errc::kBadRequest,
                       fmt::format("unknown hint '{}': allowed prefetch, park, drop, pin, unpin, publish", hint));
  ContextId id = pager.find_context(context);
  if (id == kNoContext) return error_reply(Errc::kNotFound, fmt::format("no context named '{}'", context));
  Status s = pager.hint(id, *kind);
  if (s == Status::kBusy)
    return error_reply(Errc::kBusy, fmt::format("context '{}' is pinned: unpin it first", context));
  if (*kind == HintKind::kPin && s == Status::kNoSpace) {
    const Config& c = pager.config();
    return error_reply(Errc::kRefused,
                       fmt::format("pin '{}': pinned contexts may hold at most low_watermark ({}) of hbm_budget ({}), "
                                   "{}, so that every other access finds room; {} pinned already: unpin another "
                                   "context or raise hbm_budget",
                                   context, c.low_watermark, format_bytes(c.hbm_budget),
                                   human_bytes(static_cast<double>(Pager::pin_limit(c))),
                                   human_bytes(static_cast<double>(pager.pinned_bytes()))));
  }
  if (!ok(s)) return error_reply(Errc::kRefused, fmt::format("{} '{}': {}", hint, context, to_string(s)));
  nlohmann::json reply = {{"ok", true}, {"context", std::string(context)}, {"hint", std::string(hint)}};
  // It still ends a park, but what the user asked for, staging, will not happen.
  if (*kind == HintKind::kPrefetch && !(pager.config().prefetchers & kPrefetchHint))
    reply["note"] = fmt::format("no longer parked, but nothing is staged ahead: the hint prefetcher is off "
                                "(prefetchers = {}; kvpager tune prefetchers=...,hint)",
                                find_knob("prefetchers")->format(pager.config()));
  return reply;
}

nlohmann::json contexts_json(const Pager& pager) {
  nlohmann::json list = nlohmann::json::array();
  for (const ContextInfo& c : pager.contexts()) list.push_back(to_json(c));
  return {{"ok", true}, {"contexts", std::move(list)}};
}

nlohmann::json config_json(const Config& cfg) {
  nlohmann::json out = nlohmann::json::object();
  for (const Knob& k : knobs()) out[std::string(k.name)] = {{"value", k.format(cfg)}, {"live", k.live}};
  return out;
}

}  // namespace kvpager::control
