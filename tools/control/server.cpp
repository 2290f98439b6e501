#include "control/server.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/stats_json.h"
#include "control/protocol.h"
#include "control/runtime_dir.h"

namespace kvpager::control {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

std::string own_command_line() {
  std::string raw;
  int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) raw.append(buf, static_cast<size_t>(n));
    close(fd);
  }
  while (!raw.empty() && raw.back() == '\0') raw.pop_back();
  for (char& c : raw)
    if (c == '\0') c = ' ';
  constexpr size_t kMax = 512;
  if (raw.size() > kMax) raw = raw.substr(0, kMax - 3) + "...";
  return raw;
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), std::min(path.size() + 1, sizeof addr.sun_path));
  return addr;
}

bool someone_serves(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr = unix_address(path);
  bool served = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return served;
}

}  // namespace

struct ControlServer::Impl {
  // A request that needs the owner thread. Guarded by mu.
  struct Job {
    json request;
    json reply;
    enum class State : uint8_t { kQueued, kTaken, kDone } state = State::kQueued;
  };
  struct Published {
    StatsSnapshot stats;
    Config config;
    Clock::time_point at;
    json interposer;  // null: none
  };
  struct Client {
    int fd = -1;
    std::string in, out;
    std::shared_ptr<Job> job;  // an owner request in progress
    Clock::time_point deadline;
    bool reading = true;   // false after EOF or a fatal request error
    bool broken = false;   // the connection failed: drop it
  };

  Options opt;
  std::string path;
  ino_t inode = 0;
  pid_t pid = getpid();
  uid_t uid = geteuid();
  std::string command;
  int64_t started_unix_ms = unix_ms_now();
  Clock::time_point started = Clock::now();
  int listen_fd = -1;
  int wake_fd = -1;
  std::thread thread;
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> served{0};

  // Mailbox: socket thread -> owner.
  std::mutex mu;
  std::deque<std::shared_ptr<Job>> queue;
  std::atomic<bool> has_jobs{false};

  // Snapshot: owner -> socket thread.
  std::mutex pub_mu;
  std::shared_ptr<const Published> published;
  std::atomic<int64_t> last_service{0};  // steady clock, ns since epoch

  // Owner thread only.
  Clock::time_point next_publish{};

  // Socket thread only.
  std::list<Client> clients;

  Impl(Options o, const Pager& pager) : opt(std::move(o)) {
    command = opt.command.empty() ? own_command_line() : opt.command;
    path = control::socket_path(opt.runtime_dir, pid);
    if (path.size() >= sizeof(sockaddr_un::sun_path))
      throw ControlError(fmt::format("control socket path {} is too long for a Unix socket", path));
    if (someone_serves(path)) throw ControlError(fmt::format("{} is already served: one control server per process", path));
    // Bind under a temporary name and rename into place once listening, so a
    // client that finds <pid>.sock refusing connections knows it is stale.
    const std::string tmp = path + ".new";
    unlink(tmp.c_str());
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listen_fd < 0) throw ControlError(fmt::format("control socket: {}", std::strerror(errno)));
    sockaddr_un addr = unix_address(tmp);
    if (bind(listen_fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || chmod(tmp.c_str(), 0600) != 0 ||
        listen(listen_fd, 128) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
      int err = errno;
      close(listen_fd);
      unlink(tmp.c_str());
      throw ControlError(fmt::format("cannot serve the control socket {}: {}", path, std::strerror(err)));
    }
    struct stat st {};
    if (stat(path.c_str(), &st) == 0) inode = st.st_ino;
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd < 0) {
      int err = errno;
      close(listen_fd);
      unlink(path.c_str());
      throw ControlError(fmt::format("control socket: eventfd: {}", std::strerror(err)));
    }
    try {
      last_service.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
      publish(pager, Clock::now());
      next_publish = Clock::now() + opt.publish_interval;
      thread = std::thread([this] { loop(); });
    } catch (const std::exception& e) {  // no thread (or no memory): leave nothing behind
      close(listen_fd);
      close(wake_fd);
      unlink(path.c_str());
      throw ControlError(fmt::format("cannot serve the control socket {}: {}", path, e.what()));
    }
  }

  ~Impl() {
    if (getpid() != pid) {
      // A forked child inherited the server but not its thread: leave the
      // parent's socket alone.
      if (thread.joinable()) thread.detach();
      close(listen_fd);
      close(wake_fd);
      return;
    }
    stopping.store(true);
    wake();
    thread.join();
    for (Client& c : clients) {
      if (c.job) send_now(c, error_reply(Errc::kGone, "the pager is shutting down"));
      close(c.fd);
    }
    close(listen_fd);
    close(wake_fd);
    struct stat st {};
    if (stat(path.c_str(), &st) == 0 && st.st_ino == inode) unlink(path.c_str());
  }

  void wake() const {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_fd, &one, sizeof one);
  }

  // ------------------------------------------------------------ owner side

  void service(Pager& pager) {
    const Clock::time_point now = Clock::now();
    last_service.store(now.time_since_epoch().count(), std::memory_order_relaxed);
    bool ran = has_jobs.load(std::memory_order_acquire) && run_jobs(pager);
    if (ran || now >= next_publish) {
      publish(pager, now);
      next_publish = now + opt.publish_interval;
    }
  }

  void publish(const Pager& pager, Clock::time_point now) {
    auto next = std::make_shared<const Published>(
        Published{pager.stats(), pager.config(), now, opt.interposer_stats ? opt.interposer_stats() : json()});
    std::lock_guard lock(pub_mu);
    published.swap(next);  // the old snapshot is freed after the lock is released
  }

  bool run_jobs(Pager& pager) {
    std::unique_lock lock(mu);
    bool ran = false;
    while (!queue.empty()) {
      std::shared_ptr<Job> job = std::move(queue.front());
      queue.pop_front();
      job->state = Job::State::kTaken;
      lock.unlock();
      json reply;
      try {
        reply = run_owner_request(pager, job->request, opt.publish);
        if (opt.applied && job->request.at("op") == "set" && reply.value("ok", false)) opt.applied(pager.config());
      } catch (const std::exception& e) {  // never let a request take the owner down
        reply = error_reply(Errc::kIo, fmt::format("request failed: {}", e.what()));
      }
      lock.lock();
      job->reply = std::move(reply);
      job->state = Job::State::kDone;
      ran = true;
    }
    has_jobs.store(false, std::memory_order_release);
    lock.unlock();
    wake();
    return ran;
  }

  static json run_owner_request(Pager& pager, const json& req,
                                const std::function<json(Pager&, std::string_view)>& publisher) {
    const std::string& op = req.at("op").get_ref<const std::string&>();
    if (op == "set") return apply_settings(pager, req.at("set"));
    if (op == "hint") {
      const std::string& context = req.at("context").get_ref<const std::string&>();
      const std::string& hint = req.at("hint").get_ref<const std::string&>();
      if (hint != "publish") return apply_hint(pager, context, hint);
      if (!publisher) return error_reply(Errc::kRefused, "publish: this pager has no token store to publish into");
      return publisher(pager, context);
    }
    return contexts_json(pager);
  }

  // ------------------------------------------------------------ socket side

  void loop() {
    std::vector<pollfd> fds;
    std::vector<Client*> polled;
    while (!stopping.load()) {
      fds.clear();
      polled.clear();
      fds.push_back({wake_fd, POLLIN, 0});
      fds.push_back({listen_fd, POLLIN, 0});
      int timeout_ms = -1;
      const Clock::time_point now = Clock::now();
      for (Client& c : clients) {
        short events = 0;
        if (c.reading && !c.job) events |= POLLIN;
        if (!c.out.empty()) events |= POLLOUT;
        // A client that hung up is polled only while we still write to it
        // (else POLLHUP would wake us in a loop).
        fds.push_back({events == 0 && !c.reading ? -1 : c.fd, events, 0});
        polled.push_back(&c);
        // A job past its deadline that step() left in place is being carried
        // out by the owner now: its completion wakes us, no timer needed.
        if (c.job && c.deadline > now) {
          auto left = std::chrono::ceil<std::chrono::milliseconds>(c.deadline - now).count();
          int ms = static_cast<int>(std::clamp<int64_t>(left, 1, 60'000));
          timeout_ms = timeout_ms < 0 ? ms : std::min(timeout_ms, ms);
        }
      }
      if (poll(fds.data(), fds.size(), timeout_ms) < 0 && errno != EINTR) continue;
      if (fds[0].revents & POLLIN) {
        uint64_t n = 0;
        [[maybe_unused]] ssize_t r = read(wake_fd, &n, sizeof n);
      }
      if (fds[1].revents & POLLIN) accept_all();
      for (size_t i = 0; i < polled.size(); ++i) {
        Client& c = *polled[i];
        short re = fds[i + 2].revents;
        if (re & (POLLIN | POLLHUP | POLLERR)) receive(c);
        if (re & POLLOUT) flush(c);
      }
      for (Client& c : clients) {
        try {
          step(c);
        } catch (const std::exception&) {  // e.g. out of memory: drop this client, keep serving
          c.broken = true;
        }
      }
      clients.remove_if([](const Client& c) {
        bool done = c.broken || (!c.reading && !c.job && c.out.empty());
        if (done) close(c.fd);
        return done;
      });
    }
  }

  void accept_all() {
    for (;;) {
      int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN, or a connection that went away
      ucred peer{};
      socklen_t len = sizeof peer;
      if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) {
        close(fd);
        continue;
      }
      Client c;
      c.fd = fd;
      if (peer.uid != uid && peer.uid != 0) {
        send_now(c, error_reply(Errc::kDenied,
                                fmt::format("permission denied: uid {} may not use the control socket of pid {} "
                                            "(only its owner, uid {}, or root)",
                                            peer.uid, pid, uid)));
        close(fd);
        continue;
      }
      if (clients.size() >= opt.max_clients) {
        send_now(c, error_reply(Errc::kBusy, fmt::format("too many control clients ({}); try again", clients.size())));
        close(fd);
        continue;
      }
      clients.push_back(std::move(c));
    }
  }

  // Best effort, for a reply before closing.
  void send_now(Client& c, json reply) {
    reply["pid"] = pid;
    std::string text = to_line(reply);
    [[maybe_unused]] ssize_t n = send(c.fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  }

  void receive(Client& c) {
    char buf[4096];
    for (;;) {
      ssize_t n = recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        c.in.append(buf, static_cast<size_t>(n));
        if (c.in.size() > kMaxRequestBytes + sizeof buf) break;  // step() refuses it
        continue;
      }
      if (n == 0) c.reading = false;
      else if (errno != EAGAIN && errno != EINTR) c.broken = true;
      return;
    }
  }

  void flush(Client& c) {
    while (!c.out.empty()) {
      ssize_t n = send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c.out.erase(0, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno != EAGAIN && errno != EINTR) c.broken = true;
      return;
    }
  }

  void reply(Client& c, json r) {
    r["pid"] = pid;
    c.out += to_line(r);
    served.fetch_add(1, std::memory_order_relaxed);
  }

  // Finish the owner request in progress, then take the next buffered line.
  void step(Client& c) {
    if (c.broken) return;
    if (c.job) {
      std::lock_guard lock(mu);
      if (c.job->state == Job::State::kDone) {
        reply(c, std::move(c.job->reply));
        c.job.reset();
      } else if (c.job->state == Job::State::kQueued && Clock::now() >= c.deadline) {
        std::erase(queue, c.job);
        if (queue.empty()) has_jobs.store(false, std::memory_order_release);
        reply(c, error_reply(Errc::kTimeout,
                             fmt::format("the pager's owner thread did not take the request in time (within {} "
                                         "ms, or by the client's deadline; it is busy or stopped); nothing was "
                                         "changed",
                                         opt.owner_timeout.count())));
        c.job.reset();
      }
      // kTaken: the owner is carrying it out now; its reply follows.
    }
    while (!c.job && !c.broken) {
      size_t nl = c.in.find('\n');
      if (nl == std::string::npos) {
        if (c.in.size() > kMaxRequestBytes) {
          reply(c, error_reply(Errc::kBadRequest, fmt::format("request longer than {} bytes", kMaxRequestBytes)));
          c.in.clear();
          c.reading = false;
        }
        break;
      }
      std::string line = c.in.substr(0, nl);
      c.in.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      handle(c, line);
    }
    flush(c);
  }

  void handle(Client& c, const std::string& line) {
    json req = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (req.is_discarded() || !req.is_object() || !req.contains("op") || !req["op"].is_string())
      return reply(c, error_reply(Errc::kBadRequest, "a request is one JSON object per line with a string \"op\""));
    const std::string& op = req["op"].get_ref<const std::string&>();
    if (op == "stats") return reply(c, stats_reply());
    if (op == "config") return reply(c, config_reply());
    if (op == "set" && !(req.contains("set") && req["set"].is_array()))
      return reply(c, error_reply(Errc::kBadRequest, "set: \"set\" must be a list of \"KEY=VALUE\" strings"));
    if (op == "hint" && !(req.contains("context") && req["context"].is_string() && req.contains("hint") &&
                          req["hint"].is_string()))
      return reply(c, error_reply(Errc::kBadRequest, "hint: needs string fields \"context\" and \"hint\""));
    if (op != "set" && op != "hint" && op != "contexts")
      return reply(c, error_reply(Errc::kBadRequest,
                                  fmt::format("unknown op '{}' (known: stats, config, contexts, set, hint)", op)));
    const Clock::time_point now = Clock::now();
    Clock::time_point deadline = now + opt.owner_timeout;
    if (auto it = req.find("deadline_unix_ms"); it != req.end()) {
      if (!it->is_number_integer())
        return reply(c, error_reply(Errc::kBadRequest,
                                    "\"deadline_unix_ms\" must be a whole number of ms since the epoch"));
      const int64_t left = it->get<int64_t>() - unix_ms_now();
      if (left <= 0)
        return reply(c, error_reply(Errc::kTimeout,
                                    fmt::format("the request was read {} ms after the client's deadline (this process "
                                                "was stopped or busy); nothing was changed",
                                                -left)));
      deadline = std::min(deadline, now + std::chrono::milliseconds(left));
    }
    auto job = std::make_shared<Job>();
    job->request = std::move(req);
    c.job = job;
    c.deadline = deadline;
    std::lock_guard lock(mu);
    queue.push_back(std::move(job));
    has_jobs.store(true, std::memory_order_release);
  }

  std::shared_ptr<const Published> snapshot() {
    std::lock_guard lock(pub_mu);
    return published;
  }

  json identity(Clock::time_point now) const {
    auto owner_seen = Clock::time_point(Clock::duration(last_service.load(std::memory_order_relaxed)));
    return {{"ok", true},
            {"v", kProtocolVersion},
            {"uid", uid},
            {"command", command},
            {"device", opt.device},
            {"started_unix_ms", started_unix_ms},
            {"uptime_s", ms_between(started, now) / 1000.0},
            {"owner_idle_ms", std::max(0.0, ms_between(owner_seen, now))}};
  }

  json stats_reply() {
    auto snap = snapshot();  // never null: the constructor published one
    const Clock::time_point now = Clock::now();
    json r = identity(now);
    r["snapshot_age_ms"] = ms_between(snap->at, now);
    r["stats"] = to_json(snap->stats);
    if (!snap->interposer.is_null()) r["interposer"] = snap->interposer;
    return r;
  }

  json config_reply() {
    auto snap = snapshot();
    return {{"ok", true}, {"config", config_json(snap->config)}};
  }
};

ControlServer::ControlServer(Options opt, const Pager& pager) : impl_(std::make_unique<Impl>(std::move(opt), pager)) {}
ControlServer::~ControlServer() = default;

void ControlServer::service(Pager& pager) { impl_->service(pager); }
const std::string& ControlServer::socket_path() const { return impl_->path; }
uint64_t ControlServer::requests_served() const { return impl_->served.load(std::memory_order_relaxed); }

}  // namespace kvpager::control
