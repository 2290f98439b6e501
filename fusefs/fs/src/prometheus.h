// Prometheus text exposition format (version 0.0.4): families with HELP and
// TYPE lines, then their samples, each family's samples together.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

namespace kvpager::fs {

class Prometheus {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  class Family {
   public:
    Family& sample(const Labels& labels, uint64_t value);
    Family& sample(const Labels& labels, double value);

   private:
    friend class Prometheus;
    Family& add(const Labels& labels, std::string value);
    std::string name_, type_, help_;
    std::string lines_;
  };

  // A new family (names must match [a-zA-Z_:][a-zA-Z0-9_:]*; counters end in _total).
  Family& family(std::string name, std::string type, std::string help);
  std::string text() const;

  // A label value escaped as the format wants: \ " and newline.
  static std::string escape(std::string_view v);

 private:
  std::deque<Family> families_;  // stable references
};

}  // namespace kvpager::fs
