// The token filesystem's namespace, as syntax: which names can exist where.
//
//   /contexts/<name>/{kv,info,chunks/<i>}   the store's contexts (one namespace per mount)
//   /import/<name>[.kvctx]                   files being imported
//   /stats                                   Prometheus text
//   /processes/<pid>/{stats,config,control/<knob>}
//   /control/<knob>
//
// Whether a context, pid or knob exists is the daemon's question; these
// functions only say whether a name *could* be one, so the daemon never
// hands a name it has not checked to the store or the control socket. Pure
// functions (no I/O): fuzzed by fusefs/fs/fuzz with the export parser.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kvpager::fs {

enum class NodeKind : uint8_t {
  kNone,  // no such entry can exist
  kRoot,
  kContextsDir,
  kContextDir,
  kContextKv,
  kContextInfo,
  kChunksDir,
  kChunk,
  kImportDir,
  kImportFile,
  kStats,
  kProcessesDir,
  kProcessDir,
  kProcessStats,
  kProcessConfig,
  kProcessControlDir,
  kProcessKnob,
  kControlDir,
  kControlKnob,
};
std::string_view to_string(NodeKind k);
bool is_dir(NodeKind k);

// A node named by path: its kind and whatever of context / chunk / pid /
// knob / import name its path carries.
struct PathRef {
  NodeKind kind = NodeKind::kNone;
  std::string context;  // context dir and below; for kImportFile: the file name as given
  uint64_t chunk = 0;
  int32_t pid = 0;
  std::string knob;
  friend bool operator==(const PathRef&, const PathRef&) = default;
};

// Limits of a context name that the mount can show: a file name (1..255
// bytes, NAME_MAX), no '/', no NUL, not "." or "..".
inline constexpr size_t kMaxFileName = 255;
bool valid_context_name(std::string_view name);

// The context a file created as /import/<file_name> imports into: the name
// with a trailing ".kvctx" removed. nullopt if that is not a valid context
// name, or if file_name starts with '.' (a tool's temporary file).
std::optional<std::string> import_context_name(std::string_view file_name);

// Canonical decimal numbers, as the tree prints them: no sign, no leading
// zeros ("0" alone is fine), no spaces.
std::optional<uint64_t> parse_chunk_index(std::string_view s);  // < 2^62
std::optional<int32_t> parse_pid(std::string_view s);           // 1..INT32_MAX

// A knob file name: 1..64 of [a-z0-9_.], not starting or ending with '.'.
bool valid_knob_name(std::string_view s);

// The entry `name` in directory `parent` (kNone if parent is not a directory
// or no such entry can exist there).
PathRef child(const PathRef& parent, std::string_view name);

// A whole path from the mount's root: "/", "/contexts/a/chunks/3". Empty
// components ("//") and "." are skipped; ".." is refused (kNone): the mount
// resolves paths itself only for tests and tools, the kernel never sends one.
PathRef resolve(std::string_view path);

// The canonical path of a node (resolve(render(p)) == p for every p that
// resolve() returned).
std::string render(const PathRef& p);

}  // namespace kvpager::fs
