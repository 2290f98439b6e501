#include "kvpager/fs/paths.h"

#include <limits>

#include "kvpager/fs/export_format.h"

namespace kvpager::fs {

std::string_view to_string(NodeKind k) {
  switch (k) {
    case NodeKind::kNone: return "none";
    case NodeKind::kRoot: return "root";
    case NodeKind::kContextsDir: return "contexts";
    case NodeKind::kContextDir: return "context";
    case NodeKind::kContextKv: return "kv";
    case NodeKind::kContextInfo: return "info";
    case NodeKind::kChunksDir: return "chunks";
    case NodeKind::kChunk: return "chunk";
    case NodeKind::kImportDir: return "import";
    case NodeKind::kImportFile: return "import file";
    case NodeKind::kStats: return "stats";
    case NodeKind::kProcessesDir: return "processes";
    case NodeKind::kProcessDir: return "process";
    case NodeKind::kProcessStats: return "process stats";
    case NodeKind::kProcessConfig: return "process config";
    case NodeKind::kProcessControlDir: return "process control";
    case NodeKind::kProcessKnob: return "process knob";
    case NodeKind::kControlDir: return "control";
    case NodeKind::kControlKnob: return "knob";
  }
  return "?";
}

bool is_dir(NodeKind k) {
  switch (k) {
    case NodeKind::kRoot:
    case NodeKind::kContextsDir:
    case NodeKind::kContextDir:
    case NodeKind::kChunksDir:
    case NodeKind::kImportDir:
    case NodeKind::kProcessesDir:
    case NodeKind::kProcessDir:
    case NodeKind::kProcessControlDir:
    case NodeKind::kControlDir:
      return true;
    default:
      return false;
  }
}

bool valid_context_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxFileName || name == "." || name == "..") return false;
  return name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

std::optional<std::string> import_context_name(std::string_view file_name) {
  std::string_view name = file_name;
  if (name.ends_with(kExportSuffix)) name.remove_suffix(std::string_view(kExportSuffix).size());
  // The file name itself must be one the mount could show, too. Hidden
  // names are refused: tools that write "name" as ".name.XXXX" and rename it
  // at the end (rsync) would otherwise import the temporary name.
  if (!valid_context_name(file_name) || !valid_context_name(name) || file_name.front() == '.') return std::nullopt;
  return std::string(name);
}

namespace {

std::optional<uint64_t> parse_canonical(std::string_view s, uint64_t max) {
  if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (max - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

}  // namespace

std::optional<uint64_t> parse_chunk_index(std::string_view s) {
  return parse_canonical(s, (uint64_t{1} << 62) - 1);
}

std::optional<int32_t> parse_pid(std::string_view s) {
  auto v = parse_canonical(s, static_cast<uint64_t>(std::numeric_limits<int32_t>::max()));
  if (!v || *v == 0) return std::nullopt;
  return static_cast<int32_t>(*v);
}

bool valid_knob_name(std::string_view s) {
  if (s.empty() || s.size() > 64 || s.front() == '.' || s.back() == '.') return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.')) return false;
  }
  return true;
}

PathRef child(const PathRef& parent, std::string_view name) {
  PathRef out;
  switch (parent.kind) {
    case NodeKind::kRoot:
      if (name == "contexts") out.kind = NodeKind::kContextsDir;
      else if (name == "import") out.kind = NodeKind::kImportDir;
      else if (name == "stats") out.kind = NodeKind::kStats;
      else if (name == "processes") out.kind = NodeKind::kProcessesDir;
      else if (name == "control") out.kind = NodeKind::kControlDir;
      return out;
    case NodeKind::kContextsDir:
      if (valid_context_name(name)) {
        out.kind = NodeKind::kContextDir;
        out.context = std::string(name);
      }
      return out;
    case NodeKind::kContextDir:
      out.context = parent.context;
      if (name == "kv") out.kind = NodeKind::kContextKv;
      else if (name == "info") out.kind = NodeKind::kContextInfo;
      else if (name == "chunks") out.kind = NodeKind::kChunksDir;
      if (out.kind == NodeKind::kNone) out.context.clear();
      return out;
    case NodeKind::kChunksDir:
      if (auto i = parse_chunk_index(name)) {
        out.kind = NodeKind::kChunk;
        out.context = parent.context;
        out.chunk = *i;
      }
      return out;
    case NodeKind::kImportDir:
      if (import_context_name(name)) {
        out.kind = NodeKind::kImportFile;
        out.context = std::string(name);
      }
      return out;
    case NodeKind::kProcessesDir:
      if (auto pid = parse_pid(name)) {
        out.kind = NodeKind::kProcessDir;
        out.pid = *pid;
      }
      return out;
    case NodeKind::kProcessDir:
      out.pid = parent.pid;
      if (name == "stats") out.kind = NodeKind::kProcessStats;
      else if (name == "config") out.kind = NodeKind::kProcessConfig;
      else if (name == "control") out.kind = NodeKind::kProcessControlDir;
      if (out.kind == NodeKind::kNone) out.pid = 0;
      return out;
    case NodeKind::kProcessControlDir:
      if (valid_knob_name(name)) {
        out.kind = NodeKind::kProcessKnob;
        out.pid = parent.pid;
        out.knob = std::string(name);
      }
      return out;
    case NodeKind::kControlDir:
      if (valid_knob_name(name)) {
        out.kind = NodeKind::kControlKnob;
        out.knob = std::string(name);
      }
      return out;
    default:
      return out;  // not a directory
  }
}

PathRef resolve(std::string_view path) {
  if (path.empty() || path.front() != '/') return {};
  PathRef at;
  at.kind = NodeKind::kRoot;
  while (!path.empty()) {
    const size_t start = path.find_first_not_of('/');
    if (start == std::string_view::npos) break;
    path.remove_prefix(start);
    const size_t end = path.find('/');
    std::string_view name = path.substr(0, end);
    path.remove_prefix(end == std::string_view::npos ? path.size() : end);
    if (name == ".") continue;
    if (name == "..") return {};
    at = child(at, name);
    if (at.kind == NodeKind::kNone) return {};
  }
  return at;
}

std::string render(const PathRef& p) {
  switch (p.kind) {
    case NodeKind::kNone: return "";
    case NodeKind::kRoot: return "/";
    case NodeKind::kContextsDir: return "/contexts";
    case NodeKind::kContextDir: return "/contexts/" + p.context;
    case NodeKind::kContextKv: return "/contexts/" + p.context + "/kv";
    case NodeKind::kContextInfo: return "/contexts/" + p.context + "/info";
    case NodeKind::kChunksDir: return "/contexts/" + p.context + "/chunks";
    case NodeKind::kChunk: return "/contexts/" + p.context + "/chunks/" + std::to_string(p.chunk);
    case NodeKind::kImportDir: return "/import";
    case NodeKind::kImportFile: return "/import/" + p.context;
    case NodeKind::kStats: return "/stats";
    case NodeKind::kProcessesDir: return "/processes";
    case NodeKind::kProcessDir: return "/processes/" + std::to_string(p.pid);
    case NodeKind::kProcessStats: return "/processes/" + std::to_string(p.pid) + "/stats";
    case NodeKind::kProcessConfig: return "/processes/" + std::to_string(p.pid) + "/config";
    case NodeKind::kProcessControlDir: return "/processes/" + std::to_string(p.pid) + "/control";
    case NodeKind::kProcessKnob: return "/processes/" + std::to_string(p.pid) + "/control/" + p.knob;
    case NodeKind::kControlDir: return "/control";
    case NodeKind::kControlKnob: return "/control/" + p.knob;
  }
  return "";
}

}  // namespace kvpager::fs
