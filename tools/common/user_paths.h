// Checks on directories a user names to the CLI and the daemons.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace kvpager::tools {

// How many mounts sit at `dir` now (/proc/self/mountinfo): 0 not a mount
// point, 2 or more stacked mounts.
int mounts_at(const std::string& dir);

// For commands that only read a store (store ls/get/rm/fsck, kvpager-fs):
// why `dir` cannot be one, when it does not exist ("no store at DIR: it does
// not exist (HINT)"), so a typo is not taken for a new, empty store.
// nullopt when it exists (an empty directory may still become a store).
std::optional<std::string> missing_store(const std::string& dir, std::string_view hint);

}  // namespace kvpager::tools
