#include "control/runtime_dir.h"

#include <dirent.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace kvpager::control {

namespace {

constexpr size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;
constexpr std::string_view kSuffix = ".sock";
constexpr std::string_view kNewSuffix = ".sock.new";  // bound, not yet listening (control_server.cpp)

std::string errno_text(int err) { return std::strerror(err); }

// mkdir -p for the parents of path (0755), then path itself; *created says
// whether path is new.
int make_dirs(const std::string& path, mode_t leaf_mode, bool* created) {
  *created = false;
  for (size_t pos = path.find('/', 1); pos != std::string::npos; pos = path.find('/', pos + 1)) {
    std::string parent = path.substr(0, pos);
    if (mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) return errno;
  }
  if (mkdir(path.c_str(), leaf_mode) == 0) *created = true;
  else if (errno != EEXIST) return errno;
  return 0;
}

bool process_gone(pid_t pid) { return kill(pid, 0) != 0 && errno == ESRCH; }

// "<digits><suffix>" -> pid, else 0.
pid_t parse_name(std::string_view name, std::string_view suffix) {
  if (!name.ends_with(suffix)) return 0;
  std::string_view digits = name.substr(0, name.size() - suffix.size());
  long pid = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
  if (ec != std::errc{} || p != digits.data() + digits.size() || pid <= 0 || pid > INT32_MAX) return 0;
  return static_cast<pid_t>(pid);
}

// Why an existing path cannot be our directory, "" when it can. The mode of
// a directory that was there before is never changed (`--runtime-dir /tmp`
// or `~` made them 0700): one that others may write to is refused, since
// anyone could put a socket there in a pager's place. Sockets themselves are
// 0600 and check their peer's uid, so one others may only read is used.
std::string own_dir_problem(const std::string& path, const struct stat& st) {
  if (!S_ISDIR(st.st_mode)) return "it exists and is not a directory (or is a symbolic link)";
  if (st.st_uid != geteuid())
    return fmt::format("it is owned by uid {}, not by this user (uid {})", st.st_uid, geteuid());
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return fmt::format("others may write to it (mode {:04o}); give a directory of your own (a missing one is "
                       "created with mode 0700)",
                       st.st_mode & 07777);
  if (access(path.c_str(), W_OK | X_OK) != 0) return fmt::format("it is not writable: {}", errno_text(errno));
  return "";
}

// What prepare_private_dir would say, without creating or changing
// anything: a missing directory is fine where its nearest existing parent
// lets us create it.
std::string private_dir_problem(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) return own_dir_problem(path, st);
  if (errno != ENOENT) return fmt::format("cannot stat it: {}", errno_text(errno));
  std::string parent = path;
  while (true) {
    const size_t slash = parent.find_last_of('/');
    parent = slash == std::string::npos ? "." : slash == 0 ? "/" : parent.substr(0, slash);
    if (stat(parent.c_str(), &st) == 0) break;
    if (errno != ENOENT || parent == "/" || parent == ".") return fmt::format("cannot create it: {}", errno_text(errno));
  }
  if (!S_ISDIR(st.st_mode)) return fmt::format("cannot create it: {}", errno_text(ENOTDIR));
  if (access(parent.c_str(), W_OK | X_OK) != 0) return fmt::format("cannot create it: {}", errno_text(errno));
  return "";
}

}  // namespace

std::string prepare_private_dir(const std::string& given) {
  // "run/" names run: without the slash, make_dirs' parent loop would make
  // it 0755 and the leaf mkdir would find it there.
  std::string path = given;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  if (path.empty()) return "empty path";
  bool created = false;
  if (int err = make_dirs(path, 0700, &created); err != 0) return fmt::format("cannot create it: {}", errno_text(err));
  // Ours: exactly 0700 whatever the umask took away.
  if (created && chmod(path.c_str(), 0700) != 0) return fmt::format("cannot make it private: {}", errno_text(errno));
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return fmt::format("cannot stat it: {}", errno_text(errno));
  return own_dir_problem(path, st);
}

std::string socket_path(const std::string& dir, pid_t pid) { return fmt::format("{}/{}{}", dir, pid, kSuffix); }

RuntimeDir resolve_runtime_dir(const Config& cfg, DirUse use) {
  // Room for "/<pid>.sock.new" with the largest pid.
  const size_t longest_name = 1 + 10 + kNewSuffix.size();
  if (!cfg.runtime_dir.empty()) {
    const std::string& dir = cfg.runtime_dir;
    if (use == DirUse::kServe) {
      if (dir.size() + longest_name > kMaxSocketPath)
        throw ConfigError(fmt::format("runtime_dir = {}: too long for a Unix socket path (at most {} bytes)", dir,
                                      kMaxSocketPath - longest_name));
      if (std::string why = prepare_private_dir(dir); !why.empty())
        throw ConfigError(fmt::format("runtime_dir = {}: cannot be used: {}", dir, why));
    }
    return {dir, ""};
  }
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  std::string primary = (xdg && *xdg) ? std::string(xdg) + "/kvpager" : std::string("/run/kvpager");
  // A client looks without creating anything: it meets a server where that
  // server could make its directory.
  auto usable = use == DirUse::kServe ? prepare_private_dir : private_dir_problem;
  std::string why = primary.size() + longest_name > kMaxSocketPath ? "path too long for a socket" : usable(primary);
  if (why.empty()) return {primary, ""};
  std::string fallback = fmt::format("/tmp/kvpager-{}", geteuid());
  if (use == DirUse::kClient) return {fallback, fmt::format("using {}: {} cannot be used ({})", fallback, primary, why)};
  std::string fallback_why = prepare_private_dir(fallback);
  if (!fallback_why.empty())
    throw ConfigError(fmt::format("runtime_dir: neither {} ({}) nor {} ({}) can be used; set runtime_dir "
                                  "(KVPAGER_RUNTIME_DIR) to a directory of yours",
                                  primary, why, fallback, fallback_why));
  return {fallback, fmt::format("using {}: {} cannot be used ({})", fallback, primary, why)};
}

namespace {
bool is_socket(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}
}  // namespace

Listing list_pagers(const std::string& dir) {
  Listing out;
  std::unique_ptr<DIR, int (*)(DIR*)> d(opendir(dir.c_str()), closedir);
  if (!d) {
    if (errno != ENOENT) out.error = fmt::format("cannot read {}: {}", dir, errno_text(errno));
    return out;
  }
  while (dirent* e = readdir(d.get())) {
    std::string_view name = e->d_name;
    pid_t pid = parse_name(name, kSuffix);
    const bool half_made = pid == 0 && (pid = parse_name(name, kNewSuffix)) != 0;
    if (pid == 0) continue;
    std::string path = fmt::format("{}/{}", dir, name);
    // Named like a pager's socket but something else (a file someone put
    // there): not a pager, and not ours to remove.
    if (!is_socket(path)) continue;
    if (process_gone(pid)) {
      if (unlink(path.c_str()) == 0 || errno == ENOENT) {
        if (!half_made) out.cleaned.push_back(pid);
      } else {
        out.problems.push_back(fmt::format("stale socket {} (pid {} is gone) cannot be removed: {}", path, pid,
                                           errno_text(errno)));
      }
      continue;
    }
    if (!half_made) out.live.push_back(Endpoint{pid, std::move(path)});
  }
  std::sort(out.live.begin(), out.live.end(), [](const Endpoint& a, const Endpoint& b) { return a.pid < b.pid; });
  std::sort(out.cleaned.begin(), out.cleaned.end());
  return out;
}

bool remove_if_stale(const Endpoint& e) {
  if (!is_socket(e.socket)) return false;  // connect() on a plain file is ECONNREFUSED too
  bool stale = process_gone(e.pid);
  if (!stale) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (e.socket.size() > kMaxSocketPath) return false;
    std::memcpy(addr.sun_path, e.socket.c_str(), e.socket.size() + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    stale = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 && errno == ECONNREFUSED;
    close(fd);
  }
  return stale && unlink(e.socket.c_str()) == 0;
}

}  // namespace kvpager::control
