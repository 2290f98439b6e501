#include "kvpager/fs/writer_exit.h"

#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace kvpager::fs {

namespace {

constexpr uint64_t kPfExiting = 0x00000004;  // include/linux/sched.h: getting shut down
// Fields of /proc/<tid>/stat, counted from 1 as in proc(5).
constexpr size_t kFieldState = 3, kFieldFlags = 9, kFieldExitCode = 52;

std::optional<uint64_t> number(std::string_view s) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

std::optional<std::string> failed_exit_in_stat(std::string_view stat) {
  // "pid (comm) state ...": comm may hold spaces and parentheses, so the
  // fields start after the last ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string_view::npos) return std::nullopt;
  std::vector<std::string_view> fields;  // fields[0] is field 3 (state)
  for (size_t i = close + 1; i < stat.size();) {
    while (i < stat.size() && (stat[i] == ' ' || stat[i] == '\n')) ++i;
    size_t j = i;
    while (j < stat.size() && stat[j] != ' ' && stat[j] != '\n') ++j;
    if (j > i) fields.push_back(stat.substr(i, j - i));
    i = j;
  }
  auto field = [&](size_t n) -> std::optional<uint64_t> {
    return n - kFieldState < fields.size() ? number(fields[n - kFieldState]) : std::nullopt;
  };
  const std::optional<uint64_t> flags = field(kFieldFlags), code = field(kFieldExitCode);
  if (!flags || !code || !(*flags & kPfExiting)) return std::nullopt;
  // The code as waitpid reports it: a signal in the low 7 bits (0x80: core
  // dumped), else the exit status in bits 8-15.
  if (const uint64_t sig = *code & 0x7f) return "was killed by signal " + std::to_string(sig);
  if (const uint64_t status = (*code >> 8) & 0xff) return "exited with status " + std::to_string(status);
  return std::nullopt;
}

namespace {

std::optional<std::string> read_stat(pid_t tid) {
  const std::string path = "/proc/" + std::to_string(tid) + "/stat";
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[1024];  // a stat line is a few hundred bytes; comm is at most 64
  const ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n <= 0) return std::nullopt;
  return failed_exit_in_stat(std::string_view(buf, static_cast<size_t>(n)));
}

}  // namespace

std::optional<std::string> failed_exit_of(pid_t tid, std::chrono::milliseconds patience) {
  if (tid <= 0) return std::nullopt;
  // The read runs on a thread of its own: it blocks while the task holds its
  // exec lock, and a task in execve closing an O_CLOEXEC import waits for
  // this very flush. The thread outlives a timeout and ends once we reply.
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::optional<std::string> result;
  };
  auto shared = std::make_shared<Shared>();
  try {
    std::thread([shared, tid] {
      std::optional<std::string> r = read_stat(tid);
      std::lock_guard lock(shared->mu);
      shared->result = std::move(r);
      shared->done = true;
      shared->cv.notify_all();
    }).detach();
  } catch (const std::system_error&) {
    return std::nullopt;  // no thread to spare: as if it could not be read
  }
  std::unique_lock lock(shared->mu);
  if (!shared->cv.wait_for(lock, patience, [&] { return shared->done; })) return std::nullopt;  // in exec: not dying
  return std::move(shared->result);
}

}  // namespace kvpager::fs
