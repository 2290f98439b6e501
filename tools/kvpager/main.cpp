// kvpager: the command-line tool of the token warehouse.
#include <fmt/core.h>

#include <exception>

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
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
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
