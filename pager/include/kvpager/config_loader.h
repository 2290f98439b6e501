// Builds a Config from its sources, later ones overriding earlier ones:
//   defaults  <  TOML file (--config FILE or $KVPAGER_CONFIG)  <  KVPAGER_* environment  <  command line
// and remembers where every value came from (`kvpager config show`).
// Errors throw ConfigError naming the source, the knob, the value and what is
// allowed. Unknown file keys and flags are errors: a typo must not silently
// leave a default in place. Unknown KVPAGER_* variables become warnings() (the
// environment is shared with other tools), which the caller must show.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kvpager/config.h"

namespace kvpager {

enum class ConfigSource : uint8_t { kDefault, kFile, kEnv, kCli };
std::string_view to_string(ConfigSource s);

struct KnobOrigin {
  ConfigSource source = ConfigSource::kDefault;
  std::string detail;  // file path and line, variable name, or CLI flag
};

class ConfigLoader {
 public:
  // Environment variables that are not knobs but belong to kvpager.
  static constexpr std::string_view kConfigFileVar = "KVPAGER_CONFIG";

  ConfigLoader();

  // A TOML file: top-level keys and [sim] table (or dotted keys) as in the
  // knob table; values as strings or numbers; prefetchers also as an array.
  void load_file(const std::string& path);
  // Every KVPAGER_* variable of envp (default: the process environment).
  void load_env(char** envp = nullptr);
  // One knob from the command line ("--set KEY=VALUE" or "--KNOB VALUE").
  void set(std::string_view name, std::string_view value, ConfigSource source, std::string detail);
  // "KEY=VALUE"
  void set_assignment(std::string_view assignment, ConfigSource source, std::string detail);

  // The standard order in one call: the file named by `config_file` (or
  // $KVPAGER_CONFIG when empty), then the environment, then `cli_sets`
  // (KEY=VALUE strings), validated.
  static ConfigLoader standard(const std::string& config_file, const std::vector<std::string>& cli_sets,
                               char** envp = nullptr);

  const Config& config() const { return cfg_; }
  // The validated config; throws ConfigError listing every problem.
  Config finish() const;
  const KnobOrigin& origin(const Knob& k) const;
  std::string file() const { return file_; }
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  std::string with_origins(const std::string& problem) const;

  Config cfg_;
  std::vector<KnobOrigin> origins_;  // parallel to knobs()
  std::string file_;
  std::vector<std::string> warnings_;
};

}  // namespace kvpager
