// The control protocol: one JSON object per line each way over a Unix stream
// socket. A connection may carry several requests; each gets one reply, in
// order.
//
// Requests ("op"):
//   {"op":"stats"}                        -> identity + stats snapshot (served from the last published
//                                            snapshot: never waits for the pager's owner)
//   {"op":"config"}                       -> every knob's effective value and whether it is live
//   {"op":"contexts"}                     -> every context, bytes per tier            (owner)
//   {"op":"set","set":["KEY=VALUE",...]}  -> applied all or none, validated as at start-up;
//                                            "changes": [{"knob","old","new"}]      (owner)
//   {"op":"hint","context":NAME,"hint":"prefetch|park|drop|pin|unpin"}             (owner)
//   {"op":"hint","context":NAME,"hint":"publish"}  -> writes the context's current bytes into the
//                                            token store under its name: "bytes", "chunks",
//                                            "generation", "store"; refused where the process
//                                            has no store, or for a context dropped and not
//                                            used since (its bytes are gone)         (owner)
// Any request may carry "deadline_unix_ms" (ms since the epoch): the client
// stops waiting for the reply then. kvpager's client sets it a little before
// it gives up.
// Replies: {"ok":true, ...} or {"ok":false,"code":CODE,"error":TEXT}. Every
// reply carries "pid". Requests marked (owner) are carried out by the thread
// that drives the pager, from its loop (ControlServer::service); if it does
// not come round within the server's owner timeout, or before the request's
// deadline, the reply is a "timeout" and nothing was changed. A request read
// after its deadline (the process was stopped, its socket thread starved) is
// never carried out: the client has already reported a failure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kvpager/pager.h"

namespace kvpager::control {

inline constexpr int kProtocolVersion = 1;
inline constexpr size_t kMaxRequestBytes = 64 * 1024;
inline constexpr size_t kMaxReplyBytes = 64 * 1024 * 1024;  // a client gives up on a longer line

// Why a request failed, as the reply's "code" and for clients' own failures.
enum class Errc : uint8_t {
  kOk,
  kGone,        // no process serves that socket (any more)
  kDenied,      // the peer check (SO_PEERCRED) or the socket's permissions refused us
  kTimeout,     // no reply in time (for owner requests: nothing was changed)
  kRefused,     // the pager refused the request: bad knob or value; nothing changed
  kNotFound,    // no such context
  kBadRequest,  // malformed request
  kBusy,        // too many clients, or the context is pinned
  kIo,          // the connection failed
  kFailed,      // the pager tried and failed (a publish the store could not take)
};
std::string_view to_string(Errc e);
Errc errc_from(std::string_view code);

nlohmann::json error_reply(Errc code, std::string_view message);

// The wall clock in ms since the epoch (deadline_unix_ms): client and
// server are on one machine.
int64_t unix_ms_now();

// One message as a line. Never throws: bytes that are not UTF-8 (a command
// line, a context name, a value the user typed) are replaced, not refused.
std::string to_line(const nlohmann::json& message);

// The owner-side operations, run on the thread that drives the pager.
// "prefetch_depth, hbm_budget, ...": the knobs a running pager takes.
std::string live_knob_names();
nlohmann::json apply_settings(Pager& pager, const nlohmann::json& assignments);
nlohmann::json apply_hint(Pager& pager, std::string_view context, std::string_view hint);
nlohmann::json contexts_json(const Pager& pager);

// Every knob: {"name": {"value": "...", "live": bool}}.
nlohmann::json config_json(const Config& cfg);

}  // namespace kvpager::control
