// The client side of live control: talk to the pagers serving in a runtime
// directory (runtime_dir.h finds them). Used by `kvpager status/top/tune/hint`
// and by kvpager-fs. Never throws on I/O: every failure is a Reply with a code
// and a message fit for the user.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
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
  bool unanswered = false;  // no reply came in time: the client gave up (not a pager's own kTimeout reply)
  bool ok() const { return code == Errc::kOk; }
};

// One connection carrying `requests` in order (pipelined).
struct Exchange {
  std::string socket;
  std::vector<nlohmann::json> requests;
  std::vector<Reply> replies;  // filled by exchange_all(), one per request
  std::chrono::milliseconds timeout{0};  // this exchange's own limit (0: exchange_all's)
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

// For callers that ask the same pagers again and again (kvpager-fs on every
// read of a generated file, `kvpager top` every frame). A pager that did not
// answer in time is most likely stopped (SIGSTOP, a debugger) and will not
// answer the next request either: for `quiet_for` after it failed to answer it
// is given only `retry_timeout`, so that one stopped process does not make
// every read wait the whole `timeout`. It gets the whole timeout again as soon
// as it answers, or once `quiet_for` has passed. A pager that answered "timed
// out" itself (its program thread did not take a `set` in time) did answer:
// only silence counts. Thread-safe.
class Caller {
 public:
  struct Options {
    std::chrono::milliseconds timeout{3000};
    std::chrono::milliseconds retry_timeout{200};
    std::chrono::milliseconds quiet_for{10'000};
  };
  explicit Caller(Options o) : opt_(o) {}

  std::vector<Reply> call_all(std::span<const Endpoint> pagers, const nlohmann::json& request);
  Reply call(const Endpoint& pager, const nlohmann::json& request);

  // Whether `socket` is being given only the retry timeout now.
  bool quiet(const std::string& socket);

 private:
  using Clock = std::chrono::steady_clock;
  Options opt_;
  std::mutex mu_;
  std::map<std::string, Clock::time_point> silent_since_;  // socket -> when it last failed to answer
};

}  // namespace kvpager::control
