#include "publish/publisher.h"

#include <fmt/format.h>

#include <memory>

#include "control/protocol.h"
#include "kvpager/store/token_store.h"

namespace kvpager::publish {

Status publish_context(Pager& pager, store::TokenStore& store, std::string_view name, const PublishOptions& opt,
                       Published* out, std::string* why) {
  auto fail = [&](Status s, std::string text) {
    if (why) *why = std::move(text);
    return s;
  };
  ContextId id = pager.find_context(name);
  if (id == kNoContext) return fail(Status::kNotFound, fmt::format("no context named '{}'", name));
  store::ContextMeta meta;
  meta.ns = opt.ns;
  meta.name = std::string(name);
  meta.token_count = opt.token_count;
  meta.ttl_ns = opt.ttl_ns;
  std::unique_ptr<store::ContextWriter> w = store.begin_context(std::move(meta));
  // The writer copies each chunk at append() (one chunk is at most
  // max_io_bytes = chunk_size), so the pager's read buffer is reused at once.
  bool store_failed = false;
  Status s = pager.read_context(id, [&](std::span<const std::byte> chunk) {
    Status a = w->append(chunk);
    store_failed = !ok(a);
    return a;
  });
  if (s == Status::kInvalid) {
    w->abort();
    return fail(s, fmt::format("'{}' was dropped (hint drop) and not used since: its bytes are gone; nothing "
                               "published (an earlier publication of the name stays)",
                               name));
  }
  if (!ok(s)) {
    w->abort();
    return fail(s, fmt::format("publishing '{}': {} {}", name, store_failed ? "writing to the store:" : "reading it back:",
                               to_string(s)));
  }
  const uint64_t bytes = w->bytes(), chunks = w->chunks(), generation = w->meta().generation;
  s = w->commit();
  if (!ok(s)) return fail(s, fmt::format("publishing '{}': committing it to the store: {}", name, to_string(s)));
  if (out) *out = Published{bytes, chunks, generation};
  return Status::kOk;
}

std::function<nlohmann::json(Pager&, std::string_view)> control_handler(store::TokenStore& store) {
  return [&store](Pager& pager, std::string_view name) -> nlohmann::json {
    Published p;
    std::string why;
    Status s = publish_context(pager, store, name, PublishOptions{}, &p, &why);
    if (s == Status::kNotFound) return control::error_reply(control::Errc::kNotFound, why);
    // Not the request's fault (exit 1, not 2): the store is full or failed,
    // or the program kept the bytes busy.
    if (s == Status::kBusy) return control::error_reply(control::Errc::kBusy, why);
    if (s == Status::kInvalid) return control::error_reply(control::Errc::kRefused, why);  // a dropped context
    if (!ok(s)) return control::error_reply(control::Errc::kFailed, why);
    return {{"ok", true},
            {"context", std::string(name)},
            {"hint", "publish"},
            {"bytes", p.bytes},
            {"chunks", p.chunks},
            {"generation", fmt::format("{:016x}", p.generation)},
            {"store", store.dir()}};
  };
}

}  // namespace kvpager::publish
