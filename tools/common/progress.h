// One line of progress on stderr for long work (store put/get/fsck, the
// demo's prefill and turns, replay). On a terminal it is redrawn in place at
// most every 100 ms and erased before the command prints its result; where
// stderr is not a terminal (a log, a pipe) it is a plain line every so often
// ("kvpager demo: turn 40/120, 20 s"), so that long work is seen to go on,
// and nothing at all for work shorter than that.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

namespace kvpager::tools {

class ProgressLine {
 public:
  enum class Mode { kOff, kTerminal, kPlain };
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kRedraw{100};
  static constexpr std::chrono::seconds kPlainEvery{10};

  // kTerminal where stderr is one, else kPlain (or kOff when `plain` is false).
  static Mode for_stderr(bool plain = true);

  // `who` starts each plain line ("kvpager demo").
  ProgressLine(std::string who, Mode mode, std::chrono::milliseconds plain_every = kPlainEvery, FILE* out = stderr);
  ~ProgressLine() { clear(); }
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  // Shows text() if a line is due (text() is not called otherwise); `now`
  // draws it on a terminal regardless of the redraw limit (the last step).
  template <typename F>
  void update(F&& text, bool now = false) {
    if (due(now)) draw(text());
  }
  // Erases the line on a terminal (before a result is printed); the next
  // update draws again.
  void clear();
  double elapsed_s() const;

 private:
  bool due(bool now);
  void draw(const std::string& text);

  std::string who_;
  Mode mode_;
  std::chrono::milliseconds plain_every_;
  FILE* out_;
  Clock::time_point t0_ = Clock::now(), last_{};
  size_t width_ = 0;  // of the line on the terminal, 0: none shown
};

}  // namespace kvpager::tools
