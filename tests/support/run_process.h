// Runs a program for a test and captures what it printed and how it ended.
#pragma once

#include <string>
#include <vector>

namespace kvpager::testing {

struct ProcessResult {
  int exit_code = -1;  // -1: did not exit normally (signal)
  int signal = 0;
  std::string out;
  std::string err;
};

// argv[0] is the program path. env: extra NAME=VALUE entries added to (or
// replacing in) the current environment; an entry "-NAME" removes NAME, and
// "-PREFIX*" every variable whose name starts with PREFIX. stdin is
// /dev/null. Kills it after timeout_s seconds (then exit_code is -1 and signal
// SIGKILL).
ProcessResult run_process(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                          double timeout_s = 120.0);

// Whether every thread of `pid` is stopped (state T in /proc/PID/task/*/stat).
// kill(SIGSTOP) returns before they are: a test that needs a process that
// answers nothing waits for this.
bool all_threads_stopped(int pid);

}  // namespace kvpager::testing
