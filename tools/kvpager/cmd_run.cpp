// kvpager run [--budget 8G] [--lib PATH] [--config FILE] [--set KEY=VALUE ...] -- CMD ARGS...
// Runs CMD with libkvpager.so preloaded and the effective settings passed as
// KVPAGER_* environment variables. kvpager replaces itself with CMD (exec),
// so CMD's exit status, signals and terminal are its own.
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <cstring>
#include <filesystem>
#include <string_view>

#include "cli.h"

namespace kvpager::cli {

namespace {

namespace fsys = std::filesystem;

constexpr const char* kPreloadName = "libkvpager.so";

// Next to the binary; ../<libdir> of an install; the build tree's cuda/
// (the binary is <build>/tools/kvpager, the library <build>/cuda/libkvpager.so).
std::vector<fsys::path> preload_candidates() {
  std::error_code ec;
  fsys::path exe = fsys::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  fsys::path dir = exe.parent_path();
  std::vector<fsys::path> out{dir / kPreloadName, dir / ".." / KVPAGER_INSTALL_LIBDIR / kPreloadName};
  if (fsys::path(KVPAGER_INSTALL_LIBDIR) != "lib") out.push_back(dir / ".." / "lib" / kPreloadName);
  out.push_back(dir / ".." / "cuda" / kPreloadName);
  return out;
}

// "" when path is a 64-bit little-endian ELF shared library (a shared
// object without a program interpreter: not a PIE executable), else what it is.
std::string not_a_library(const std::string& path) {
  std::error_code ec;
  if (!fsys::is_regular_file(path, ec)) return "not a regular file";
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::strerror(errno);
  unsigned char h[64] = {};
  f.read(reinterpret_cast<char*>(h), sizeof h);
  if (f.gcount() < 64 || h[0] != 0x7f || h[1] != 'E' || h[2] != 'L' || h[3] != 'F') return "not an ELF file";
  if (h[4] != 2 || h[5] != 1) return "not a 64-bit little-endian ELF file";
  auto le = [](const unsigned char* p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
  };
  if (le(h + 16, 2) != 3) return "an ELF file but not a shared object";
  const uint64_t phoff = le(h + 32, 8), phentsize = le(h + 54, 2), phnum = le(h + 56, 2);
  for (uint64_t i = 0; i < phnum && phentsize >= 4; ++i) {
    unsigned char ph[4] = {};
    f.seekg(static_cast<std::streamoff>(phoff + i * phentsize));
    f.read(reinterpret_cast<char*>(ph), sizeof ph);
    if (!f) return "a truncated ELF file";
    if (le(ph, 4) == 3) return "an executable, not a library";  // PT_INTERP
  }
  return {};
}

std::string find_preload(const std::string& given) {
  if (!given.empty()) {
    // A path the user named: a wrong one is bad usage, not a missing install.
    if (access(given.c_str(), R_OK) != 0)
      throw ConfigError(fmt::format("--lib {}: {}", given, std::strerror(errno)));
    // ld.so would only warn about a file it cannot preload and run CMD
    // unpaged: check that it is a shared object first.
    if (std::string why = not_a_library(given); !why.empty())
      throw ConfigError(fmt::format("--lib {}: {} (expected libkvpager.so)", given, why));
    return fsys::absolute(given).string();
  }
  auto candidates = preload_candidates();
  std::string looked;
  for (const auto& c : candidates) {
    std::error_code ec;
    fsys::path p = fsys::weakly_canonical(c, ec);
    if (ec) p = c;
    if (access(p.c_str(), R_OK) == 0) return p.string();
    looked += "\n  " + p.string();
  }
  throw RuntimeError(fmt::format(
      "{} not found; looked in:{}\nBuild it with `cmake --build build/default --target kvpager_preload` (needs the "
      "CUDA toolkit) or install it next to kvpager",
      kPreloadName, looked));
}

// What execvp would run for `name`: 0 if it finds an executable file (PATH
// searched for a name without a slash), else the errno it would fail with.
int program_error(const std::string& name) {
  auto check = [](const std::string& path) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) return errno;
    if (S_ISDIR(st.st_mode)) return EACCES;
    return access(path.c_str(), X_OK) == 0 ? 0 : errno;
  };
  if (name.empty()) return ENOENT;
  if (name.find('/') != std::string::npos) return check(name);
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/bin:/usr/bin";  // glibc execvp's default
  int err = ENOENT;
  for (;;) {
    const size_t colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    int e = check((dir.empty() ? std::string(".") : dir) + "/" + name);
    if (e == 0) return 0;
    if (e == EACCES) err = EACCES;  // as execvp: a match that is not executable, unless another one is
    if (colon == std::string_view::npos) return err;
    dirs.remove_prefix(colon + 1);
  }
}

[[noreturn]] void cannot_run(const std::string& program, int err) {
  fmt::print(stderr, "kvpager run: cannot run {}: {}\n", program, std::strerror(err));
  std::exit(err == ENOENT ? kExitNotFound : kExitCannotExecute);
}

struct RunArgs {
  std::string lib;
  std::vector<std::string> command;
};

[[noreturn]] void run(const Globals& g, const RunArgs& a) {
  ConfigLoader loader = g.loader();
  Config cfg = loader.finish();
  const std::string lib = find_preload(a.lib);
  // Say so before anything that would describe how it runs.
  if (int err = program_error(a.command.front())) cannot_run(a.command.front(), err);
  std::string why;
  if (!gpu_available(&why)) {
    fmt::print(stderr,
               "kvpager run: no GPU here ({}): {} will pass through and {} runs unchanged, without paging\n", why,
               kPreloadName, a.command.front());
  }
  // Settings from the command line and the file reach the preloaded library
  // as environment (it reads KVPAGER_* at start); those from the
  // environment are there already.
  for (const Knob& k : knobs()) {
    ConfigSource src = loader.origin(k).source;
    if (src == ConfigSource::kCli || src == ConfigSource::kFile) setenv(k.env_name().c_str(), k.format(cfg).c_str(), 1);
  }
  // The file's settings are in that environment now. $KVPAGER_CONFIG would
  // have the library read a file again: the one --config replaced, whose
  // other settings then crept back in.
  unsetenv("KVPAGER_CONFIG");
  std::string preload = lib;
  if (const char* old = std::getenv("LD_PRELOAD"); old && *old) preload += std::string(" ") + old;
  setenv("LD_PRELOAD", preload.c_str(), 1);

  std::vector<char*> argv;
  for (const auto& s : a.command) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  execvp(argv[0], argv.data());
  cannot_run(a.command.front(), errno);
}

}  // namespace

void add_run_command(CLI::App& app, Globals& g) {
  static RunArgs a;
  auto* cmd = app.add_subcommand(
      "run",
      "Run CMD with libkvpager.so preloaded: its allocations above the size threshold are paged within the\n"
      "HBM budget. Settings (--budget, --config, --set, --<knob>) reach it as KVPAGER_* environment.\n"
      "The exit status is CMD's (126/127 if it cannot be started). Usage: kvpager run [OPTIONS] -- CMD ARGS...");
  cmd->add_option_function<std::string>(
         "--budget", [&g](const std::string& v) { g.add_set("hbm_budget=" + v, "--budget " + v); },
         "HBM budget (same as --hbm-budget; the last one given wins)")
      ->type_name("BYTES")
      ->trigger_on_parse();  // in command-line order with the global setting flags (cli.cpp)
  cmd->add_option("--lib", a.lib, "libkvpager.so to preload (default: next to kvpager, in ../lib, or the build tree's)")
      ->type_name("PATH");
  cmd->add_option("command", a.command, "The command to run, after --")->required();
  cmd->callback([&g] { run(g, a); });
}

}  // namespace kvpager::cli
