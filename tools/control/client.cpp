#include "control/client.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace kvpager::control {

namespace {

using Clock = std::chrono::steady_clock;

Reply failure(Errc code, std::string message) { return Reply{code, std::move(message), {}}; }

// One connection's progress.
struct Conn {
  Exchange* ex = nullptr;
  std::chrono::milliseconds timeout{0};
  Clock::time_point deadline;
  int fd = -1;
  std::string out, in;
  bool done = false;

  void fail_rest(const Reply& r) {
    while (ex->replies.size() < ex->requests.size()) ex->replies.push_back(r);
    done = true;
  }
};

Reply connect_failure(const std::string& socket, int err) {
  switch (err) {
    case ENOENT:
    case ECONNREFUSED:
      return failure(Errc::kGone, fmt::format("no pager serves {} (it has exited)", socket));
    case EACCES:
    case EPERM:
      return failure(Errc::kDenied, fmt::format("permission denied: {} (only the pager's owner or root may connect)", socket));
    case EAGAIN:
      return failure(Errc::kBusy, fmt::format("{}: the pager has too many pending connections; try again", socket));
    default:
      return failure(Errc::kIo, fmt::format("cannot connect to {}: {}", socket, std::strerror(err)));
  }
}

// deadline_unix_ms: stamped on every request that has none.
void open_conn(Conn& c, int64_t deadline_unix_ms) {
  const std::string& path = c.ex->socket;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return c.fail_rest(failure(Errc::kIo, fmt::format("{}: path too long", path)));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  c.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (c.fd < 0) return c.fail_rest(failure(Errc::kIo, fmt::format("socket: {}", std::strerror(errno))));
  if (connect(c.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
    return c.fail_rest(connect_failure(path, errno));
  for (const auto& r : c.ex->requests) {
    if (!r.is_object() || r.contains("deadline_unix_ms")) {
      c.out += to_line(r);
      continue;
    }
    nlohmann::json stamped = r;
    stamped["deadline_unix_ms"] = deadline_unix_ms;
    c.out += to_line(stamped);
  }
}

Reply parse_reply(const std::string& line) {
  auto body = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object() || !body.contains("ok") || !body["ok"].is_boolean())
    return failure(Errc::kIo, "malformed reply from the pager");
  Reply r;
  if (!body["ok"].get<bool>()) {
    r.code = body.contains("code") && body["code"].is_string() ? errc_from(body["code"].get<std::string>()) : Errc::kIo;
    r.error = body.contains("error") && body["error"].is_string() ? body["error"].get<std::string>() : "refused";
  }
  r.body = std::move(body);
  return r;
}

void on_readable(Conn& c) {
  char buf[16384];
  for (;;) {
    ssize_t n = recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      c.in.append(buf, static_cast<size_t>(n));
      // A pager's reply is one line of JSON; a peer that streams without end
      // is not one (and must not exhaust our memory).
      if (c.in.size() > kMaxReplyBytes && c.in.find('\n') == std::string::npos)
        return c.fail_rest(failure(Errc::kIo, fmt::format("{}: a reply over {} MiB without a line end: not a kvpager pager",
                                                          c.ex->socket, kMaxReplyBytes >> 20)));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    // EOF or error: what is buffered is all we get.
    size_t nl;
    while ((nl = c.in.find('\n')) != std::string::npos && c.ex->replies.size() < c.ex->requests.size()) {
      c.ex->replies.push_back(parse_reply(c.in.substr(0, nl)));
      c.in.erase(0, nl + 1);
    }
    // A refusal before closing (peer check, too many clients) answers every request.
    Reply rest = !c.ex->replies.empty() && !c.ex->replies.back().ok()
                     ? c.ex->replies.back()
                     : failure(Errc::kIo, fmt::format("{}: the pager closed the connection", c.ex->socket));
    return c.fail_rest(rest);
  }
  size_t nl;
  while ((nl = c.in.find('\n')) != std::string::npos && c.ex->replies.size() < c.ex->requests.size()) {
    c.ex->replies.push_back(parse_reply(c.in.substr(0, nl)));
    c.in.erase(0, nl + 1);
  }
  if (c.ex->replies.size() == c.ex->requests.size()) c.done = true;
}

void on_writable(Conn& c) {
  while (!c.out.empty()) {
    ssize_t n = send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    // The peer closed early (e.g. it refused us): read what it said.
    c.out.clear();
    return;
  }
}

}  // namespace

void exchange_all(std::span<Exchange> exchanges, std::chrono::milliseconds timeout) {
  const Clock::time_point start = Clock::now();
  const int64_t start_unix_ms = unix_ms_now();
  std::vector<Conn> conns(exchanges.size());
  for (size_t i = 0; i < exchanges.size(); ++i) {
    Conn& c = conns[i];
    exchanges[i].replies.clear();
    c.ex = &exchanges[i];
    c.timeout = exchanges[i].timeout.count() > 0 ? exchanges[i].timeout : timeout;
    c.deadline = start + c.timeout;
    if (exchanges[i].requests.empty()) {
      c.done = true;
      continue;
    }
    // The pager must not carry out a request after we have given up on it: it
    // gets a deadline a little before ours, so that its "withdrawn, nothing
    // changed" (or a reply it was already working on) still reaches us.
    const auto margin = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(250), c.timeout / 4);
    open_conn(c, start_unix_ms + (c.timeout - margin).count());
  }
  auto give_up = [](Conn& c) {
    Reply r = failure(Errc::kTimeout, fmt::format("{}: no reply within {} ms (the process is stopped or busy; a "
                                                  "request it had not taken by then is dropped unapplied)",
                                                  c.ex->socket, c.timeout.count()));
    r.unanswered = true;
    c.fail_rest(r);
  };
  std::vector<pollfd> fds;
  std::vector<Conn*> polled;
  for (;;) {
    fds.clear();
    polled.clear();
    const Clock::time_point now = Clock::now();
    Clock::time_point next = Clock::time_point::max();
    for (Conn& c : conns) {
      if (c.done) continue;
      if (now >= c.deadline) {
        give_up(c);
        continue;
      }
      next = std::min(next, c.deadline);
      fds.push_back({c.fd, static_cast<short>(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
      polled.push_back(&c);
    }
    if (fds.empty()) break;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(next - now).count();
    int n = poll(fds.data(), fds.size(), static_cast<int>(std::clamp<int64_t>(left, 1, 60'000)));
    if (n < 0 && errno != EINTR) {
      const Reply r = failure(Errc::kIo, fmt::format("poll: {}", std::strerror(errno)));
      for (Conn* c : polled) c->fail_rest(r);
      break;
    }
    for (size_t i = 0; i < polled.size(); ++i) {
      if (fds[i].revents & POLLOUT) on_writable(*polled[i]);
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) on_readable(*polled[i]);
    }
  }
  for (Conn& c : conns)
    if (c.fd >= 0) close(c.fd);
}

Reply call(const std::string& socket, const nlohmann::json& request, std::chrono::milliseconds timeout) {
  Exchange ex{socket, {request}, {}};
  exchange_all(std::span<Exchange>(&ex, 1), timeout);
  return std::move(ex.replies.front());
}

std::vector<Reply> call_all(std::span<const Endpoint> pagers, const nlohmann::json& request,
                            std::chrono::milliseconds timeout) {
  std::vector<Exchange> exs;
  exs.reserve(pagers.size());
  for (const Endpoint& e : pagers) exs.push_back(Exchange{e.socket, {request}, {}});
  exchange_all(exs, timeout);
  std::vector<Reply> out;
  out.reserve(exs.size());
  for (auto& ex : exs) out.push_back(std::move(ex.replies.front()));
  return out;
}

bool Caller::quiet(const std::string& socket) {
  std::lock_guard lock(mu_);
  auto it = silent_since_.find(socket);
  return it != silent_since_.end() && Clock::now() - it->second < opt_.quiet_for;
}

std::vector<Reply> Caller::call_all(std::span<const Endpoint> pagers, const nlohmann::json& request) {
  std::vector<Exchange> exs;
  exs.reserve(pagers.size());
  for (const Endpoint& e : pagers)
    exs.push_back(Exchange{e.socket, {request}, {}, quiet(e.socket) ? opt_.retry_timeout : opt_.timeout});
  exchange_all(exs, opt_.timeout);
  std::vector<Reply> out;
  out.reserve(exs.size());
  const Clock::time_point now = Clock::now();
  std::lock_guard lock(mu_);
  // Windows that have passed end here (also those of pagers nobody asks any more).
  std::erase_if(silent_since_, [&](const auto& e) { return now - e.second >= opt_.quiet_for; });
  for (auto& ex : exs) {
    Reply& r = ex.replies.front();
    if (r.unanswered) {
      // The window starts at the first silence and is not prolonged by retries:
      // a stopped pager is given the whole timeout again every quiet_for.
      silent_since_.try_emplace(ex.socket, now);
    } else {
      silent_since_.erase(ex.socket);
    }
    out.push_back(std::move(r));
  }
  return out;
}

Reply Caller::call(const Endpoint& pager, const nlohmann::json& request) {
  return std::move(call_all(std::span<const Endpoint>(&pager, 1), request).front());
}

}  // namespace kvpager::control
