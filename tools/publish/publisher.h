// Publishing a live pager context into the token store: the link between a
// running pager and the warehouse others see (kvpager-fs, `kvpager store`).
//
// A pager's own spills are private scratch of its process. Publishing writes
// a context's current bytes -- read back from HBM, host RAM or the NVMe tier
// by Pager::read_context, without moving anything -- as a store context of
// the same name: a new generation, visible only once complete (manifest
// rename), replacing an older publication of the name. The owner uid and pid
// in the manifest are this process's, so kvpager-fs asks it for the bytes
// per tier while it lives and refuses `rm` while it has the context pinned.
//
// Runs on the thread that drives the pager (its owner); the store handle may
// be the one the mover spills into (one thread drives both). The bytes are a
// snapshot: publish a context the program is not writing (parked or idle).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kvpager/pager.h"
#include "kvpager/status.h"

namespace kvpager::store {
class TokenStore;
}

namespace kvpager::publish {

struct PublishOptions {
  std::string ns;           // store namespace ("" = the default one kvpager-fs shows)
  uint64_t token_count = 0; // 0: unknown
  uint64_t ttl_ns = 0;      // 0: kept until removed or evicted for capacity
};

struct Published {
  uint64_t bytes = 0;
  uint64_t chunks = 0;
  uint64_t generation = 0;
};

// kNotFound: no live context of that name. kInvalid: it was dropped (hint)
// and not used since, its bytes are gone. kNoSpace: the store is full (the
// older publication, if any, is kept). Other failures as the mover or the
// store report them; nothing becomes visible unless everything was written.
// *why (optional) says what went wrong in words.
Status publish_context(Pager& pager, store::TokenStore& store, std::string_view name, const PublishOptions& opt,
                       Published* out = nullptr, std::string* why = nullptr);

// The control socket's "publish" hint for a ControlServer serving `pager`:
// a reply object as the protocol defines it.
std::function<nlohmann::json(Pager&, std::string_view)> control_handler(store::TokenStore& store);

}  // namespace kvpager::publish
