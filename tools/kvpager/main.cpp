// kvpager: the command-line tool of the token warehouse.
#include <fmt/core.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>

#include "cli.h"

namespace {

// "put, get, ls, ...": the commands of `app`.
std::string command_names(CLI::App& app) {
  std::string known;
  for (const CLI::App* sub : app.get_subcommands({})) known += (known.empty() ? "" : ", ") + sub->get_name();
  return known;
}

// After a parse that ended in "a subcommand is required": when the deepest
// command reached wants one, says which word was not one (or that none was
// given) and what that command has, on stderr, and returns true.
bool name_unknown_subcommand(CLI::App& app) {
  CLI::App* at = &app;
  std::string path = "kvpager";
  for (auto subs = at->get_subcommands(); !subs.empty(); subs = at->get_subcommands()) {
    at = subs.front();
    path += " " + at->get_name();
  }
  if (at->get_require_subcommand_min() == 0) return false;
  const std::string known = command_names(*at);
  const std::vector<std::string> left = app.remaining(true);
  const auto word = std::find_if(left.begin(), left.end(), [](const std::string& w) { return !w.starts_with("-"); });
  if (word == left.end())
    fmt::print(stderr, "{}: a command is required (commands: {}; see {} --help)\n", path, known, path);
  else
    fmt::print(stderr, "{}: unknown command '{}' (commands: {}; see {} --help)\n", path, *word, known, path);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvpager;
  CLI::App app{
      "kvpager: a token warehouse for LLM KV caches. Extends GPU memory into host RAM and an NVMe store,\n"
      "keeps the hot part in HBM within a budget and stages the rest back ahead of use.\n"
      "Configuration: defaults < TOML file (--config, $KVPAGER_CONFIG) < KVPAGER_* environment < flags.",
      "kvpager"};
  // Every error starts with "kvpager: ", the parser's too.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return fmt::format("kvpager: {}\nRun with --help for more information.\n", e.what());
  });
  app.require_subcommand(1);
  app.fallthrough();
  cli::Globals g;
  cli::add_global_options(app, g);
  cli::add_config_command(app, g);
  cli::add_demo_command(app, g);
  cli::add_replay_command(app, g);
  cli::add_store_command(app, g);
  cli::add_mount_commands(app, g);
  cli::add_control_commands(app, g);
  cli::check_unsigned_options(app);
  cli::add_global_options_footer(app);
  app.set_version_flag("--version", std::string("kvpager ") + KVPAGER_VERSION);
  // CLI11 answers an unknown option before the command word with "A
  // subcommand is required": name it instead.
  if (argc > 1 && std::string_view(argv[1]).starts_with("-")) {
    const std::string first = argv[1];
    const std::string name = first.substr(0, first.find('='));
    if (app.get_option_no_throw(name) == nullptr && name != "-h" && name != "--help") {
      fmt::print(stderr, "kvpager: unknown option '{}' (commands: {}; see kvpager --help)\n", first,
                 command_names(app));
      return cli::kExitUsage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::RequiredError& e) {
    // CLI11 answers a mistyped word after a command (`store lst`) with "A
    // subcommand is required" too: name it, and what that command has.
    if (name_unknown_subcommand(app)) return cli::kExitUsage;
    app.exit(e);
    return cli::kExitUsage;
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return cli::kExitUsage;
  } catch (const ConfigError& e) {
    fmt::print(stderr, "kvpager: {}\n", e.what());
    return cli::kExitUsage;
  } catch (const cli::RuntimeError& e) {
    fmt::print(stderr, "kvpager: {}\n", e.what());
    return cli::kExitRuntime;
  } catch (const std::exception& e) {
    fmt::print(stderr, "kvpager: unexpected error: {}\n", e.what());
    return cli::kExitRuntime;
  }
  // Output that could not be written (a full disk, /dev/full) is a failure:
  // `kvpager status --json > file` must not report success with no file.
  errno = 0;
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    fmt::print(stderr, "kvpager: writing the output failed: {}\n", errno ? std::strerror(errno) : "write error");
    return cli::kExitRuntime;
  }
  return g.exit_code;
}
