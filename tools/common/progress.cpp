#include "common/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

namespace kvpager::tools {

ProgressLine::Mode ProgressLine::for_stderr(bool plain) {
  if (isatty(STDERR_FILENO)) return Mode::kTerminal;
  return plain ? Mode::kPlain : Mode::kOff;
}

ProgressLine::ProgressLine(std::string who, Mode mode, std::chrono::milliseconds plain_every, FILE* out)
    : who_(std::move(who)), mode_(mode), plain_every_(plain_every), out_(out) {}

double ProgressLine::elapsed_s() const { return std::chrono::duration<double>(Clock::now() - t0_).count(); }

bool ProgressLine::due(bool now) {
  const auto t = Clock::now();
  switch (mode_) {
    case Mode::kOff: return false;
    case Mode::kTerminal:
      if (width_ && !now && t - last_ < kRedraw) return false;
      break;
    case Mode::kPlain:
      // The first line only after plain_every: short work prints nothing.
      if (t - (last_ == Clock::time_point{} ? t0_ : last_) < plain_every_) return false;
      break;
  }
  last_ = t;
  return true;
}

void ProgressLine::draw(const std::string& text) {
  if (mode_ == Mode::kTerminal) {
    const std::string line = "  " + text;
    // Pad over a longer line drawn before.
    fmt::print(out_, "\r{:{}}", line, std::max(line.size(), width_));
    width_ = std::max(line.size(), width_);
  } else {
    fmt::print(out_, "{}: {}, {:.0f} s\n", who_, text, elapsed_s());
  }
  std::fflush(out_);
}

void ProgressLine::clear() {
  if (mode_ != Mode::kTerminal || width_ == 0) return;
  fmt::print(out_, "\r{:{}}\r", "", width_);
  std::fflush(out_);
  width_ = 0;
}

}  // namespace kvpager::tools
