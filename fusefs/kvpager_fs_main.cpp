// kvpager-fs STORE MOUNTPOINT [-f] [-d] [-o OPTIONS] [--config FILE] [--set KEY=VALUE]...
//
// Mounts the token filesystem (docs/fs.md): the contexts of the token store
// in STORE, the live pagers' stats and controls, /import and /stats. Runs in
// the background once the mount is up, unless -f. `fusermount3 -u MOUNTPOINT`
// (or `kvpager umount`) or SIGTERM/SIGINT/SIGHUP unmount it and end it.
//
// Exit status: 0 unmounted cleanly; 2 bad usage or configuration (options,
// a store directory that does not exist or cannot be used, a mount point
// that is not a directory or is already a mount point); 1 the mount failed
// (no /dev/fuse, not permitted).
#include "token_fs.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/user_paths.h"
#include "control/runtime_dir.h"
#include "kvpager/config_loader.h"
#include "kvpager/fs/mount_options.h"

namespace {

using namespace kvpager;

constexpr int kExitOk = 0, kExitRuntime = 1, kExitUsage = 2;
std::atomic<bool> g_background{false};

void log_line(std::string_view msg) {
  if (g_background.load()) syslog(LOG_WARNING, "%.*s", static_cast<int>(msg.size()), msg.data());
  else fmt::print(stderr, "kvpager-fs: {}\n", msg);
}

std::string indented(std::string_view text, std::string_view indent) {
  std::string out;
  for (char c : text) {
    out += c;
    if (c == '\n') out += indent;
  }
  return out;
}

const std::string kUsage =
    std::string("usage: kvpager-fs STORE MOUNTPOINT [-f] [-d] [-o OPTION[,OPTION...]] [--config FILE] [--set KEY=VALUE]...\n"
    "\n"
    "Mounts the kvpager token store STORE at MOUNTPOINT:\n"
    "  /contexts/<name>/{kv,info,chunks/<i>}   contexts (rm -r removes one)\n"
    "  /import/                                 copy a context file here to import it\n"
    "  /stats                                   Prometheus text for the store and every live pager\n"
    "  /processes/<pid>/{stats,config,control/} live pagers; /control/<knob> tunes them all\n"
    "\n"
    "  -f            stay in the foreground (default: background once mounted)\n"
    "  -d            foreground, and log every FUSE request (libfuse debug)\n"
    "  -o OPTIONS    comma-separated:\n") +
    "                " + indented(fs::kMountOptionsHelp, "                ") + "\n" +
    "  --config FILE, --set KEY=VALUE   configuration (runtime_dir, chunk_size, store.queue_depth,\n"
    "                nvme_capacity, ...), as for kvpager; KVPAGER_* environment applies too\n"
    "  --version     print the version\n"
    "\n"
    "Unmount: fusermount3 -u MOUNTPOINT (or kvpager umount MOUNTPOINT), or SIGTERM.\n";

// Bad usage that the usage text does not help with: the message, exit 2.
[[noreturn]] void refuse(const std::string& msg) {
  fmt::print(stderr, "kvpager-fs: {}\n", msg);
  std::exit(kExitUsage);
}

[[noreturn]] void usage_error(const std::string& msg) {
  fmt::print(stderr, "kvpager-fs: {} (kvpager-fs --help for usage)\n", msg);
  std::exit(kExitUsage);
}

struct Args {
  std::string store, mountpoint;
  bool foreground = false, debug = false;
  std::vector<std::string> fuse_opts;  // passed to libfuse
  std::string config_file;
  std::vector<std::string> sets;
  std::string ns;
  std::optional<double> entry_timeout, attr_timeout;
  std::optional<uint32_t> read_window;
  bool allow_other = false, read_only = false;
};

double parse_seconds(const std::string& key, const std::string& v) {
  char* end = nullptr;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !(d >= 0) || d > 86400) usage_error(fmt::format("-o {}={}: want seconds, 0..86400", key, v));
  return d;
}

void take_mount_options(Args& a, const std::string& list) {
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    std::string opt = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? list.size() + 1 : comma + 1;
    if (opt.empty()) continue;
    const size_t eq = opt.find('=');
    const std::string key = opt.substr(0, eq), value = eq == std::string::npos ? "" : opt.substr(eq + 1);
    if (key == "namespace") {
      if (eq == std::string::npos || value.size() > store::kMaxNamespaceBytes)
        usage_error("-o namespace=NS: a namespace of up to 1024 bytes");
      a.ns = value;
    } else if (key == "entry_timeout") {
      a.entry_timeout = parse_seconds(key, value);
    } else if (key == "attr_timeout") {
      a.attr_timeout = parse_seconds(key, value);
    } else if (key == "read_window") {
      char* end = nullptr;
      unsigned long n = std::strtoul(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n > 256) usage_error("-o read_window=N: 0..256 chunks");
      a.read_window = static_cast<uint32_t>(n);
    } else {
      if (opt == "allow_other") a.allow_other = true;
      if (opt == "ro") a.read_only = true;
      a.fuse_opts.push_back(opt);
    }
  }
}

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto value = [&](const char* what) -> std::string {
      if (i + 1 >= argc) usage_error(fmt::format("{} needs a value", what));
      return argv[++i];
    };
    if (s == "-h" || s == "--help") {
      fmt::print("{}", kUsage);
      std::exit(kExitOk);
    } else if (s == "-f") {
      a.foreground = true;
    } else if (s == "-d") {
      a.foreground = a.debug = true;
    } else if (s == "-o") {
      take_mount_options(a, value("-o"));
    } else if (s.starts_with("-o")) {
      take_mount_options(a, s.substr(2));
    } else if (s == "--version") {
      fmt::print("kvpager-fs {}\n", KVPAGER_VERSION);
      std::exit(kExitOk);
    } else if (s == "--config") {
      a.config_file = value("--config");
    } else if (s.starts_with("--config=")) {  // both forms, as kvpager takes them
      a.config_file = s.substr(9);
    } else if (s == "--set") {
      a.sets.push_back(value("--set"));
    } else if (s.starts_with("--set=")) {
      a.sets.push_back(s.substr(6));
    } else if (s.starts_with("-") && s != "-") {
      usage_error(fmt::format("unknown option {}", s));
    } else {
      positional.push_back(s);
    }
  }
  if (positional.size() != 2) usage_error("want STORE and MOUNTPOINT");
  a.store = positional[0];
  a.mountpoint = positional[1];
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse_args(argc, argv);

  fs::FsOptions opt;
  try {
    ConfigLoader loader = ConfigLoader::standard(a.config_file, a.sets);
    for (const auto& w : loader.warnings()) fmt::print(stderr, "kvpager-fs: warning: {}\n", w);
    const Config cfg = loader.finish();
    opt.runtime_dir = control::resolve_runtime_dir(cfg, control::DirUse::kClient).path;
    opt.chunk_size = cfg.chunk_size;
    opt.queue_depth = cfg.store_queue_depth;
    opt.capacity = cfg.nvme_capacity;
  } catch (const ConfigError& e) {
    fmt::print(stderr, "kvpager-fs: {}\n", e.what());
    return kExitUsage;
  }
  // A second mount on top would hide the first, and unmounting would
  // remove only one of them.
  if (tools::mounts_at(a.mountpoint) > 0)
    refuse(fmt::format("{} is already a mount point (kvpager umount {} first, or choose another directory)",
                       a.mountpoint, a.mountpoint));
  if (auto why = tools::mount_point_problem(a.mountpoint)) usage_error("mount point " + *why);
  // libfuse unmounts by this path when a signal ends the daemon, which has
  // changed to "/" by then: a relative path would no longer name the mount,
  // and it would stay behind, dead ("Transport endpoint is not connected").
  {
    std::error_code ec;
    const std::filesystem::path abs = std::filesystem::canonical(a.mountpoint, ec);
    if (ec) usage_error(fmt::format("mount point {}: {}", a.mountpoint, ec.message()));
    a.mountpoint = abs.string();
  }
  // A typo must not mount a new, empty store. An existing empty directory
  // becomes one (imports write to it).
  if (auto why = tools::missing_store(a.store, "STORE; for kvpager mount: store_dir / --store")) refuse(*why);
  if (struct stat st {}; stat(a.store.c_str(), &st) == 0 && !S_ISDIR(st.st_mode))
    usage_error(fmt::format("store {}: not a directory", a.store));
  opt.store_dir = a.store;  // made absolute once the store is open (it may be new)
  opt.ns = a.ns;
  opt.read_only = a.read_only;
  opt.allow_other = a.allow_other;
  if (a.entry_timeout) opt.entry_timeout = *a.entry_timeout;
  if (a.attr_timeout) opt.attr_timeout = *a.attr_timeout;
  if (a.read_window) opt.read_window = *a.read_window;
  opt.uid = getuid();
  opt.gid = getgid();
  opt.log = log_line;

  std::unique_ptr<fs::TokenFs> tokenfs;
  try {
    tokenfs = std::make_unique<fs::TokenFs>(opt);
  } catch (const ConfigError& e) {
    fmt::print(stderr, "kvpager-fs: {}\n", e.what());
    return kExitUsage;
  }

  // libfuse's own options: ours first (permissions are the kernel's to
  // check, from the modes and owners the tree reports), then the user's.
  std::string fsname = "fsname=kvpager:";
  for (char c : tokenfs->options().store_dir) {
    if (c == ',' || c == '\\') fsname += '\\';  // libfuse's -o escapes
    fsname += c;
  }
  std::vector<std::string> fargs{"kvpager-fs", "-o", "default_permissions", "-o", fsname, "-o",
                                 "subtype=" + std::string(tools::kKvpagerFsSubtype)};
  for (const auto& o : a.fuse_opts) {
    fargs.push_back("-o");
    fargs.push_back(o);
  }
  if (a.debug) fargs.push_back("-d");
  std::vector<char*> cargs;
  for (auto& s : fargs) cargs.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(cargs.size()), cargs.data());
  fuse_session* se = fuse_session_new(&args, &fs::TokenFs::ops(), sizeof(fuse_lowlevel_ops), tokenfs.get());
  fuse_opt_free_args(&args);  // libfuse may have copied them; it keeps what it needs
  if (!se) {
    fmt::print(stderr, "kvpager-fs: bad mount options (see above)\n");
    return kExitUsage;
  }
  if (fuse_set_signal_handlers(se) != 0) {
    fuse_session_destroy(se);
    return kExitRuntime;
  }
  if (fuse_session_mount(se, a.mountpoint.c_str()) != 0) {
    fmt::print(stderr, "kvpager-fs: cannot mount {} (is /dev/fuse there, and may this user mount?)\n", a.mountpoint);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return kExitRuntime;
  }
  if (!a.foreground) {
    openlog("kvpager-fs", LOG_PID, LOG_DAEMON);
    g_background.store(true);
  }
  // Returns in the child once it is ready; the parent exits 0 then, with
  // the mount in place.
  fuse_daemonize(a.foreground ? 1 : 0);

  tokenfs->start(se);
  fuse_loop_config* loop = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(loop, 64);
  fuse_loop_cfg_set_idle_threads(loop, 8);
  const int ret = fuse_session_loop_mt(se, loop);
  fuse_loop_cfg_destroy(loop);
  tokenfs->stop();
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  tokenfs.reset();
  // ret: 0 (unmounted), a signal number (SIGTERM...), or -errno.
  if (ret < 0) {
    log_line(fmt::format("session ended: {}", std::strerror(-ret)));
    return kExitRuntime;
  }
  return kExitOk;
}
