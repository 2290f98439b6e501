// kvpager run [--lib PATH] -- COMMAND [ARGS...]: runs an unmodified CUDA
// program with libkvpager.so preloaded. The configuration is validated here
// first (a bad value is refused before the program starts, exit 2); knobs
// given on this command line reach the program as KVPAGER_* variables.
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "cli.h"

namespace kvpager::cli {

namespace {

struct RunArgs {
  std::string lib;
  std::vector<std::string> command;
};

// libkvpager.so: --lib, else next to this binary (installed: ../lib), else
// the build tree's.
std::string find_library(const std::string& given) {
  namespace fs = std::filesystem;
  if (!given.empty()) {
    if (!fs::exists(given)) throw ConfigError(fmt::format("--lib {}: no such file", given));
    return fs::absolute(given).string();
  }
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  std::vector<fs::path> candidates;
  if (!ec) candidates = {self.parent_path() / "libkvpager.so", self.parent_path() / "../lib/libkvpager.so"};
#ifdef KVPAGER_PRELOAD_BUILT
  candidates.emplace_back(KVPAGER_PRELOAD_BUILT);
#endif
  for (const auto& c : candidates)
    if (fs::exists(c, ec)) return fs::canonical(c, ec).string();
  throw ConfigError("cannot find libkvpager.so next to kvpager or in its build tree: give it with --lib PATH");
}

[[noreturn]] void run(const Globals& g, const RunArgs& a) {
  ConfigLoader loader = g.loader();
  loader.finish();  // refuse a bad configuration before the program starts
  const std::string lib = find_library(a.lib);
  if (!g.config_file.empty()) setenv(std::string(ConfigLoader::kConfigFileVar).c_str(), g.config_file.c_str(), 1);
  for (const std::string& s : g.sets) {
    const size_t eq = s.find('=');
    const Knob* k = find_knob(s.substr(0, eq));
    if (k && eq != std::string::npos) setenv(k->env_name().c_str(), s.substr(eq + 1).c_str(), 1);
  }
  const char* old = std::getenv("LD_PRELOAD");
  const std::string preload = old && *old ? lib + ":" + old : lib;
  setenv("LD_PRELOAD", preload.c_str(), 1);
  std::vector<char*> argv;
  for (const auto& s : a.command) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  throw RuntimeError(fmt::format("run: cannot start {}: {}", a.command[0], std::strerror(errno)));
}

}  // namespace

void add_run_command(CLI::App& app, Globals& g) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand(
      "run", "Run an unmodified CUDA program with libkvpager.so preloaded (kvpager run [--lib PATH] -- CMD ARGS...)");
  cmd->add_option("--lib", args->lib, "libkvpager.so to preload (default: next to kvpager, or the build tree's)");
  cmd->add_option("command", args->command, "The program and its arguments (after --)")->required();
  cmd->callback([&g, args] { run(g, *args); });
}

}  // namespace kvpager::cli
