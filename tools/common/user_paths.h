// Checks on directories a user names to the CLI and the daemons.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvpager::tools {

// The file system types of the mounts at `dir` now (/proc/self/mountinfo),
// bottom first: empty if it is not a mount point, two or more for stacked
// mounts. kvpager-fs mounts with -o subtype=kKvpagerFsSubtype, so its
// mounts' type is "fuse.kvpager" (is_kvpager_fs_type).
std::vector<std::string> mount_types_at(const std::string& dir);
inline int mounts_at(const std::string& dir) { return static_cast<int>(mount_types_at(dir).size()); }
inline constexpr std::string_view kKvpagerFsSubtype = "kvpager";
inline bool is_kvpager_fs_type(std::string_view type) {
  return type.starts_with("fuse.") && type.substr(5) == kKvpagerFsSubtype;
}

// For commands that only read a store (store ls/get/rm/fsck, kvpager-fs):
// why `dir` cannot be one, when it does not exist ("no store at DIR: it does
// not exist (HINT)"), so a typo is not taken for a new, empty store.
// nullopt when it exists (an empty directory may still become a store).
std::optional<std::string> missing_store(const std::string& dir, std::string_view hint);

// Why `dir` cannot be mounted on (it must be an existing directory): "DIR:
// not a directory", "DIR: <errno text>", or, for a mount whose daemon died
// (ENOTCONN), that it must be unmounted first. nullopt when it can.
std::optional<std::string> mount_point_problem(const std::string& dir);

}  // namespace kvpager::tools
