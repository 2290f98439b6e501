#include "prometheus.h"

#include <fmt/format.h>

#include <cmath>

namespace kvpager::fs {

std::string Prometheus::escape(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

Prometheus::Family& Prometheus::family(std::string name, std::string type, std::string help) {
  Family& f = families_.emplace_back();
  f.name_ = std::move(name);
  f.type_ = std::move(type);
  f.help_ = std::move(help);
  return f;
}

Prometheus::Family& Prometheus::Family::add(const Labels& labels, std::string value) {
  lines_ += name_;
  if (!labels.empty()) {
    lines_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i) lines_ += ',';
      lines_ += labels[i].first;
      lines_ += "=\"";
      lines_ += escape(labels[i].second);
      lines_ += '"';
    }
    lines_ += '}';
  }
  lines_ += ' ';
  lines_ += value;
  lines_ += '\n';
  return *this;
}

Prometheus::Family& Prometheus::Family::sample(const Labels& labels, uint64_t value) {
  return add(labels, std::to_string(value));
}

Prometheus::Family& Prometheus::Family::sample(const Labels& labels, double value) {
  if (std::isnan(value)) return add(labels, "NaN");
  if (std::isinf(value)) return add(labels, value > 0 ? "+Inf" : "-Inf");
  return add(labels, fmt::format("{}", value));
}

std::string Prometheus::text() const {
  std::string out;
  for (const Family& f : families_) {
    // HELP text escapes \ and newline only.
    std::string help;
    for (char c : f.help_) {
      if (c == '\\') help += "\\\\";
      else if (c == '\n') help += "\\n";
      else help += c;
    }
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f.name_, help, f.name_, f.type_);
    out += f.lines_;
  }
  return out;
}

}  // namespace kvpager::fs
