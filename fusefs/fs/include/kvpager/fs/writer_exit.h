// Whether the task that closes an import is closing it because it is dying.
//
// A FUSE flush runs while the closing task waits for the reply, so the
// daemon can look at that task. When a process ends with files still open
// the kernel closes them in do_exit, after it has set PF_EXITING and the
// exit code -- both visible in /proc/<tid>/stat (fields 9 and 52). A raw
// import has no length of its own: if its writer was killed (Ctrl-C on cp,
// kill -9) or exited with a failure status while the file was open, what
// arrived may be only part of it and must not be published as a context.
// A writer that exits with status 0 without closing (cat > file, a shell
// redirection) is an ordinary end. A writer that closes the file in its own
// signal cleanup (dd, Python unwinding a `with` block) is not seen dying:
// only the export format can tell a short file then.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace kvpager::fs {

// From the text of /proc/<tid>/stat: why the task's end means its open
// files are incomplete ("was killed by signal 9", "exited with status 3"),
// or nothing when the task is not exiting, exits with status 0, or the text
// cannot be read as a stat line. Pure (fuzzed with the other parsers).
std::optional<std::string> failed_exit_in_stat(std::string_view stat);

// Reads /proc/<tid>/stat of the task that made a FUSE request (its pid in
// fuse_ctx): failed_exit_in_stat of it, or nothing when it cannot be read
// (tid 0: a task in another pid namespace; exit code hidden from a daemon
// that may not ptrace the writer) or not within `patience`: the read blocks
// while the task holds its exec lock, and a task in execve that closes an
// O_CLOEXEC import waits for this very flush -- it is not dying.
std::optional<std::string> failed_exit_of(pid_t tid,
                                          std::chrono::milliseconds patience = std::chrono::milliseconds(500));

}  // namespace kvpager::fs
