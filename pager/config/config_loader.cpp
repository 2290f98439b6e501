#include "kvpager/config_loader.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>
#include <unistd.h>

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace kvpager {

std::string_view to_string(ConfigSource s) {
  switch (s) {
    case ConfigSource::kDefault: return "default";
    case ConfigSource::kFile: return "file";
    case ConfigSource::kEnv: return "env";
    case ConfigSource::kCli: return "cli";
  }
  return "?";
}

ConfigLoader::ConfigLoader() : origins_(knobs().size()) {}

const KnobOrigin& ConfigLoader::origin(const Knob& k) const {
  return origins_[static_cast<size_t>(&k - knobs().data())];
}

namespace {
[[noreturn]] void unknown(std::string_view name, std::string_view where, std::string (Knob::*spelling)() const) {
  std::string known;
  for (const Knob& k : knobs()) known += (known.empty() ? "" : ", ") + (spelling ? (k.*spelling)() : std::string(k.name));
  throw ConfigError(fmt::format("{}: unknown setting '{}' (known: {})", where, name, known));
}
}  // namespace

void ConfigLoader::set(std::string_view name, std::string_view value, ConfigSource source, std::string detail) {
  const Knob* k = find_knob(name);
  if (!k) unknown(name, detail, nullptr);
  if (auto err = k->set(cfg_, value)) throw ConfigError(fmt::format("{}: {}", detail, *err));
  origins_[static_cast<size_t>(k - knobs().data())] = KnobOrigin{source, std::move(detail)};
}

void ConfigLoader::set_assignment(std::string_view assignment, ConfigSource source, std::string detail) {
  size_t eq = assignment.find('=');
  if (eq == std::string_view::npos || eq == 0)
    throw ConfigError(fmt::format("{}: '{}' is not KEY=VALUE", detail, assignment));
  set(assignment.substr(0, eq), assignment.substr(eq + 1), source, std::move(detail));
}

namespace {

std::string value_text(const toml::node& node) {
  if (auto s = node.as_string()) return s->get();
  if (auto i = node.as_integer()) return fmt::format("{}", i->get());
  if (auto f = node.as_floating_point()) return fmt::format("{}", f->get());
  if (auto b = node.as_boolean()) return b->get() ? "true" : "false";
  if (auto a = node.as_array()) {
    std::string out;
    for (const auto& item : *a) out += (out.empty() ? "" : ",") + value_text(item);
    return out;
  }
  return {};
}

}  // namespace

void ConfigLoader::load_file(const std::string& path) {
  // A directory or a device parses as an empty file: say so instead of
  // silently running on defaults (KVPAGER_CONFIG is not checked by the CLI).
  struct stat st {};
  if (stat(path.c_str(), &st) != 0)
    throw ConfigError(fmt::format("{}: configuration file: {}", path, std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) throw ConfigError(fmt::format("{}: configuration file: not a regular file", path));
  // toml++ says only "could not be opened" (at line 0:0): say why.
  if (access(path.c_str(), R_OK) != 0)
    throw ConfigError(fmt::format("{}: configuration file: {}", path, std::strerror(errno)));
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    throw ConfigError(fmt::format("{}:{}:{}: {}", path, where.line, where.column, e.description()));
  }
  file_ = path;
  // Walk the tree; every leaf is a knob named by its dotted path.
  auto walk = [&](auto& self, const toml::table& table, const std::string& prefix) -> void {
    for (const auto& [key, node] : table) {
      std::string name = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
      std::string where = fmt::format("{}:{}", path, node.source().begin.line);
      if (const auto* sub = node.as_table()) {
        // A section no knob lives in is a typo even when it holds nothing.
        if (sub->empty() && std::none_of(knobs().begin(), knobs().end(), [&](const Knob& k) {
              return std::string_view(k.name).starts_with(name + ".");
            }))
          unknown(name, where, nullptr);
        self(self, *sub, name);
        continue;
      }
      std::string text = value_text(node);
      if (text.empty() && !node.is_string())
        throw ConfigError(fmt::format("{}: {}: unsupported value type", where, name));
      const Knob* k = find_knob(name);
      if (!k || k->name != name) unknown(name, where, nullptr);  // file keys are knob names
      // A path or a list of names written as a number (store_dir = 5) is a
      // mistake, not the directory "5".
      // A list is a list of prefetchers; prefetch_depth = [8] is a mistake.
      if (node.is_array() && k->type != KnobType::kPrefetchers)
        throw ConfigError(fmt::format("{}: {} = [{}]: one value is expected, not a list", where, name, text));
      if (k && k->type == KnobType::kString && !node.is_string())
        throw ConfigError(fmt::format("{}: {} = {}: a string is expected (quoted: {} = \"{}\")", where, name, text,
                                      name, text));
      set(name, text, ConfigSource::kFile, where);
    }
  };
  walk(walk, root, "");
}

void ConfigLoader::load_env(char** envp) {
  if (!envp) envp = environ;
  for (char** e = envp; *e; ++e) {
    std::string_view entry(*e);
    if (!entry.starts_with("KVPAGER_")) continue;
    size_t eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view name = entry.substr(0, eq);
    if (name == kConfigFileVar) continue;
    const Knob* k = find_knob(name);
    if (!k || k->env_name() != name) {
      // The environment is shared with other tools and scripts: an unknown
      // variable is reported, not fatal (a file key or flag typo is an error).
      warnings_.push_back(fmt::format("environment: {} is not a kvpager setting; ignored (see `kvpager config knobs`)", name));
      continue;
    }
    set(name, entry.substr(eq + 1), ConfigSource::kEnv, std::string(name));
  }
}

ConfigLoader ConfigLoader::standard(const std::string& config_file, const std::vector<std::string>& cli_sets,
                                    char** envp) {
  ConfigLoader loader;
  std::string file = config_file;
  if (file.empty()) {
    char** env = envp ? envp : environ;
    for (char** e = env; *e; ++e) {
      std::string_view entry(*e);
      std::string prefix = std::string(kConfigFileVar) + "=";
      if (entry.starts_with(prefix)) file = std::string(entry.substr(prefix.size()));
    }
  }
  if (!file.empty()) loader.load_file(file);
  loader.load_env(envp);
  for (const auto& s : cli_sets) loader.set_assignment(s, ConfigSource::kCli, "--set " + s);
  return loader;
}

// A problem between knobs ("low_watermark = 0.85: must be below
// high_watermark = 0.5") names both; the user set one of them somewhere, and
// the message says where each came from.
std::string ConfigLoader::with_origins(const std::string& problem) const {
  std::vector<std::string> where;
  for (const Knob& k : knobs()) {
    const std::string pattern = std::string(k.name) + " = ";
    for (size_t at = problem.find(pattern); at != std::string::npos; at = problem.find(pattern, at + 1)) {
      const char before = at == 0 ? ' ' : problem[at - 1];
      if (std::isalnum(static_cast<unsigned char>(before)) || before == '_' || before == '.') continue;
      const KnobOrigin& o = origin(k);
      where.push_back(fmt::format("{} from {}", k.name, o.source == ConfigSource::kDefault ? "the default" : o.detail));
      break;
    }
  }
  return where.empty() ? problem : fmt::format("{} ({})", problem, fmt::join(where, "; "));
}

Config ConfigLoader::finish() const {
  auto errors = validate(cfg_);
  if (errors.empty()) return cfg_;
  std::string msg = "invalid configuration:";
  for (const auto& e : errors) msg += "\n  " + with_origins(e);
  throw ConfigError(msg);
}

}  // namespace kvpager
