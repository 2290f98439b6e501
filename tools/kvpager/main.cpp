// kvpager: the command-line tool of the token warehouse.
#include <fmt/core.h>

#include <algorithm>
#include <exception>
#include <string>

#include "cli.h"

int main(int argc, char** argv) {
  using namespace kvpager;
  CLI::App app{
      "kvpager: a token warehouse for LLM KV caches. Extends GPU memory into host RAM and an NVMe store,\n"
      "keeps the hot part in HBM within a budget and stages the rest back ahead of use.\n"
      "Configuration: defaults < TOML file (--config, $KVPAGER_CONFIG) < KVPAGER_* environment < flags.",
      "kvpager"};
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
  // CLI11 answers a mistyped first word with "A subcommand is required":
  // name it instead.
  if (argc > 1) {
    const std::string first = argv[1];
    const bool option = first.starts_with("-");
    const std::string name = option ? first.substr(0, first.find('=')) : first;
    const auto subs = app.get_subcommands({});
    const bool known_word = option ? app.get_option_no_throw(name) != nullptr || name == "-h" || name == "--help"
                                   : std::any_of(subs.begin(), subs.end(), [&](CLI::App* sub) { return sub->check_name(first); });
    if (!known_word) {
      std::string known;
      for (const CLI::App* sub : subs) known += (known.empty() ? "" : ", ") + sub->get_name();
      fmt::print(stderr, "kvpager: unknown {} '{}' (commands: {}; see kvpager --help)\n", option ? "option" : "command",
                 first, known);
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
  return g.exit_code;
}
