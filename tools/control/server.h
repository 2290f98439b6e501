// ControlServer: the control socket of one process that runs a pager.
//
// Threads. The pager is single-threaded: one owner thread drives it. The
// server runs its own thread for the socket (accept, peer check, reading and
// answering requests) and never touches the pager from it. The owner calls
// service(pager) from its loop (wherever it calls Pager::tick()); service()
// does two things, both cheap when there is nothing to do:
//  - every publish_interval it copies a snapshot (stats + config, and the
//    interposer's counters where there are some) and swaps
//    it in under a short lock. Stats and config requests are answered from
//    the last snapshot by the socket thread alone, so they never wait for the
//    owner and never run on its thread.
//  - it carries out queued requests that need the pager itself (set, hint,
//    contexts) through Pager::apply / Pager::hint / Pager::contexts, and hands
//    each reply back to the socket thread. If the owner does not come round
//    within owner_timeout, or before the deadline the request carries, it is
//    withdrawn and the client told so: nothing was changed. One read after
//    its deadline is refused at once.
// Pager::access is untouched: no lock, no atomic, nothing on the hot path.
//
// The socket: <runtime_dir>/<pid>.sock, mode 0600, in a 0700 directory; a
// peer whose uid (SO_PEERCRED) is neither ours nor root is refused. It is
// made visible (renamed into place) only once it listens, and removed when
// the server is destroyed (not by a forked child that inherited it).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kvpager/pager.h"

namespace kvpager::control {

// The socket could not be set up (start-up only).
class ControlError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ControlServer {
 public:
  struct Options {
    std::string runtime_dir;  // an existing private directory: resolve_runtime_dir(cfg, DirUse::kServe)
    std::string device;       // what carries the bytes, for status ("simulated device", "NVIDIA H100 ...")
    std::string command;      // "" = this process's command line
    std::chrono::milliseconds owner_timeout{2000};     // how long set/hint/contexts wait for service()
    std::chrono::milliseconds publish_interval{100};   // how often service() refreshes the snapshot
    size_t max_clients = 64;  // connections served at once; more are answered "busy"
    // Carries out the "publish" hint on the owner thread (publish/publisher.h:
    // control_handler). Unset: the hint is refused (nothing to publish into).
    std::function<nlohmann::json(Pager&, std::string_view context)> publish;
    // The interposer's own counters (libkvpager.so: launches scanned, events
    // dropped, the store queue's depth...), a JSON object taken with every
    // snapshot on the owner thread and answered as the stats reply's
    // "interposer". Unset: no such field (a pager on the simulated device).
    std::function<nlohmann::json()> interposer_stats;
    // Called on the owner thread after a "set" changed the pager's
    // configuration, before the client is answered: for settings the
    // pager's owner keeps a copy of (libkvpager.so's log level).
    std::function<void(const Config&)> applied;
  };

  // Binds, publishes a first snapshot of `pager` and starts the socket
  // thread. Call it on the owner thread (or before the owner starts). Throws
  // ControlError.
  ControlServer(Options opt, const Pager& pager);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Owner thread only (the thread that drives `pager`). Publishes a snapshot
  // when due and carries out queued requests. Call it at least every
  // publish_interval; it never blocks on clients.
  void service(Pager& pager);

  const std::string& socket_path() const;
  // Requests answered so far (all kinds), for tests and benchmarks.
  uint64_t requests_served() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvpager::control
