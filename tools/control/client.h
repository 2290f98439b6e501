// The client side of live control: talk to the pagers serving in a runtime
// directory (runtime_dir.h finds them). Used by `kvpager status/top/tune/hint`
// and by kvpager-fs. Never throws on I/O: every failure is a Reply with a code
// and a message fit for the user.
#pragma once

#include <chrono>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/protocol.h"
#include "control/runtime_dir.h"

namespace kvpager::control {

struct Reply {
  Errc code = Errc::kOk;
  std::string error;    // why, when !ok()
  nlohmann::json body;  // the pager's reply (also for refusals it explained)
  bool ok() const { return code == Errc::kOk; }
};

// One connection carrying `requests` in order (pipelined).
struct Exchange {
  std::string socket;
  std::vector<nlohmann::json> requests;
  std::vector<Reply> replies;  // filled by exchange_all(), one per request
};

// Runs every exchange at once (one connection each, multiplexed on this
// thread) and returns when all are answered or `timeout` has passed.
void exchange_all(std::span<Exchange> exchanges, std::chrono::milliseconds timeout);

// One request to one pager.
Reply call(const std::string& socket, const nlohmann::json& request, std::chrono::milliseconds timeout);

// The same request to each pager; replies in the same order.
std::vector<Reply> call_all(std::span<const Endpoint> pagers, const nlohmann::json& request,
                            std::chrono::milliseconds timeout);

inline constexpr std::chrono::milliseconds kDefaultTimeout{5000};

}  // namespace kvpager::control
