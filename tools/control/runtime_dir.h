// The runtime directory of live control: one Unix socket per process that
// runs a pager, named <pid>.sock, in a directory only its owner can enter.
//
// Which directory: the runtime_dir knob (KVPAGER_RUNTIME_DIR) when set; else
// $XDG_RUNTIME_DIR/kvpager, or /run/kvpager without XDG_RUNTIME_DIR; when
// that cannot be made ours (not writable, owned by someone else),
// /tmp/kvpager-<uid>, and the note says so. Servers and clients resolve it
// the same way, so they meet in the same place.
#pragma once

#include <string>
#include <sys/types.h>
#include <vector>

#include "kvpager/config.h"

namespace kvpager::control {

struct RuntimeDir {
  std::string path;
  std::string note;  // non-empty when a fallback was taken: why, for the user
};

enum class DirUse : unsigned char {
  kServe,   // creates the directory (0700) and checks it is ours
  kClient,  // creates and changes nothing: the directory a server would use
};

// Resolves the runtime directory for cfg. Throws ConfigError naming
// runtime_dir when an explicitly configured directory cannot be used by a
// server (not creatable, not a directory, owned by another user, path too long
// for a socket).
RuntimeDir resolve_runtime_dir(const Config& cfg, DirUse use);

// Makes `path` a directory of ours with mode 0700 (creating parents 0755).
// Returns "" on success, else why not.
std::string prepare_private_dir(const std::string& path);

// <dir>/<pid>.sock
std::string socket_path(const std::string& dir, pid_t pid);

struct Endpoint {
  pid_t pid = 0;
  std::string socket;
};

struct Listing {
  std::vector<Endpoint> live;        // sorted by pid
  std::vector<pid_t> cleaned;        // stale sockets of dead processes, removed
  std::vector<std::string> problems; // sockets that could not be removed, and why
  std::string error;                 // the directory could not be read ("" if it does not exist)
};

// The pagers serving in `dir`. A socket whose process is gone (crashed,
// killed) is removed and reported in `cleaned`.
Listing list_pagers(const std::string& dir);

// Removes e's socket if nobody serves it any more: its process is gone, or
// the pid now belongs to another process and connecting is refused (a
// server only publishes its socket once it listens). True if removed.
bool remove_if_stale(const Endpoint& e);

}  // namespace kvpager::control
