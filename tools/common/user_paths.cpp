#include "common/user_paths.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace kvpager::tools {

namespace {

// Mount points in mountinfo escape space, tab, newline and backslash as \ooo.
std::string unescape_octal(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3') {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace

std::vector<std::string> mount_types_at(const std::string& dir) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::weakly_canonical(dir, ec);
  // A dead FUSE mount cannot even be stat()ed (ENOTCONN): its path as written.
  if (ec || p.empty()) p = std::filesystem::absolute(dir, ec).lexically_normal();
  std::string want = p.string();
  while (want.size() > 1 && want.back() == '/') want.pop_back();
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  std::vector<std::string> types;
  // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string f[5];
    for (auto& x : f) fields >> x;
    if (unescape_octal(f[4]) != want) continue;
    std::string tok;
    while (fields >> tok && tok != "-") {
    }
    std::string type;
    fields >> type;
    types.push_back(unescape_octal(type));
  }
  return types;
}

std::optional<std::string> missing_store(const std::string& dir, std::string_view hint) {
  struct stat st{};
  if (stat(dir.c_str(), &st) == 0 || errno != ENOENT) return std::nullopt;  // other problems: the store says which
  return fmt::format("no store at {}: it does not exist ({})", dir, hint);
}

std::optional<std::string> mount_point_problem(const std::string& dir) {
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) {
    if (errno == ENOTCONN) return fmt::format("{} is a mount whose daemon has ended: kvpager umount {} first", dir, dir);
    return fmt::format("{}: {}", dir, std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) return fmt::format("{}: not a directory", dir);
  return std::nullopt;
}

}  // namespace kvpager::tools
