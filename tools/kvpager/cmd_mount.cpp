// kvpager mount [--store DIR] MOUNTPOINT [-f] [-o OPTIONS]: runs kvpager-fs
// (the token filesystem, docs/fs.md) on the configured store.
// kvpager umount [--lazy] MOUNTPOINT: fusermount3 -u, and waits until the
// mount is gone.
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "cli.h"
#include "common/user_paths.h"
#include "kvpager/fs/mount_options.h"

namespace kvpager::cli {

namespace {

namespace fsys = std::filesystem;


// Next to kvpager (an install); the build tree's fusefs/ (kvpager is
// <build>/tools/kvpager, kvpager-fs <build>/fusefs/kvpager-fs); then PATH.
std::string find_kvpager_fs() {
  std::error_code ec;
  fsys::path exe = fsys::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (const fsys::path& c : {exe.parent_path() / "kvpager-fs", exe.parent_path() / ".." / "fusefs" / "kvpager-fs"}) {
      if (access(c.c_str(), X_OK) == 0) return fsys::weakly_canonical(c, ec).string();
    }
  }
  return "kvpager-fs";  // execvp searches PATH
}

struct MountArgs {
  std::string store;
  std::string mountpoint;
  bool foreground = false;
  bool lazy = false;
  std::vector<std::string> options;
};

[[noreturn]] void mount(const Globals& g, const MountArgs& a) {
  // Checked here too: a mount whose daemon died (ENOTCONN) is named before
  // kvpager-fs would call it just "already a mount point".
  if (auto why = tools::mount_point_problem(a.mountpoint)) throw CLI::ValidationError("MOUNTPOINT", *why);
  std::string store = a.store;
  if (store.empty()) {
    const Config cfg = g.config();
    store = cfg.effective_store_dir();
    // The default location is where pagers will put the warehouse: mounting
    // it before the first one ran is normal, so it is made here (also for a
    // store_dir set to "", which means that default). A store somebody named
    // (flag, file, environment) must exist: a typo is refused.
    if (cfg.store_dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(store, ec);
    }
  }
  std::vector<std::string> args{find_kvpager_fs(), store, a.mountpoint};
  if (a.foreground) args.push_back("-f");
  for (const auto& o : a.options) {
    args.push_back("-o");
    args.push_back(o);
  }
  // The settings given to kvpager reach kvpager-fs the same way.
  if (!g.config_file.empty()) {
    args.push_back("--config");
    args.push_back(g.config_file);
  }
  for (const auto& s : g.sets) {
    args.push_back("--set");
    args.push_back(s);
  }
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  execvp(argv[0], argv.data());
  fmt::print(stderr, "kvpager mount: cannot run {}: {} (build it: cmake --build build/default --target kvpager-fs)\n",
             args[0], std::strerror(errno));
  std::exit(kExitCannotExecute);
}

void umount(const MountArgs& a) {
  const std::vector<std::string> types = tools::mount_types_at(a.mountpoint);
  if (types.empty()) throw RuntimeError(fmt::format("{} is not mounted", a.mountpoint));
  // fusermount3 run by root unmounts whatever is there: only ours.
  if (!tools::is_kvpager_fs_type(types.back()))
    throw RuntimeError(fmt::format("{} is a {} mount, not kvpager-fs (fuse.{}): left alone", a.mountpoint,
                                   types.back(), tools::kKvpagerFsSubtype));
  const int before = static_cast<int>(types.size());
  pid_t pid = fork();
  if (pid < 0) throw RuntimeError(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) {
    if (a.lazy) execlp("fusermount3", "fusermount3", "-u", "-z", a.mountpoint.c_str(), static_cast<char*>(nullptr));
    else execlp("fusermount3", "fusermount3", "-u", a.mountpoint.c_str(), static_cast<char*>(nullptr));
    fmt::print(stderr, "kvpager umount: cannot run fusermount3: {}\n", std::strerror(errno));
    _exit(kExitCannotExecute);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw RuntimeError(fmt::format("fusermount3 -u {} failed (files still open? `kvpager umount --lazy` detaches it "
                                   "now and unmounts when they close)",
                                   a.mountpoint));
  int left = before;
  for (int i = 0; i < 100 && (left = tools::mounts_at(a.mountpoint)) >= before; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  // Stacked mounts: fusermount3 removed the top one only. Success would be a lie.
  if (left > 0)
    throw RuntimeError(fmt::format("{} is still mounted ({} mount(s) left there; fusermount3 -u removes the top one): "
                                   "run kvpager umount {} again",
                                   a.mountpoint, left, a.mountpoint));
}

}  // namespace

void add_mount_commands(CLI::App& app, Globals& g) {
  static MountArgs a;
  auto* m = app.add_subcommand("mount",
                               "Mount the token filesystem (kvpager-fs): contexts as files, live stats and controls.\n"
                               "Runs in the background once mounted, unless -f. A store named by --store, the config file or\n"
                               "KVPAGER_STORE_DIR must exist (a typo is refused); the default one is created. A mount point\n"
                               "that is already mounted is refused. See docs/fs.md");
  m->add_option("MOUNTPOINT", a.mountpoint, "An existing directory")->required();
  m->add_option("--store", a.store, "Store directory (default: store_dir from the configuration)");
  m->add_flag("-f,--foreground", a.foreground, "Stay in the foreground");
  m->add_option("-o,--options", a.options, std::string("Mount options, comma-separated:\n") + fs::kMountOptionsHelp)
      ->allow_extra_args(false);  // one value per -o, as for mount(8)
  m->callback([&g] { mount(g, a); });

  auto* u = app.add_subcommand("umount", "Unmount a kvpager-fs mount (fusermount3 -u) and wait until it is gone");
  u->add_option("MOUNTPOINT", a.mountpoint, "The mount point")->required();
  u->add_flag("--lazy", a.lazy, "Detach it now even if files are open (fusermount3 -u -z)");
  u->callback([] { umount(a); });
}

}  // namespace kvpager::cli
