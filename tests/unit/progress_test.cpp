// tools/common/progress.h: the one progress line of long commands. On a
// terminal it is drawn in place, rate-limited and erased before a result; in
// a log it is a plain line now and then, and nothing for short work.
#include "common/progress.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace kvpager::tools {
namespace {

using namespace std::chrono_literals;

// A FILE* into memory, read back as a string.
class Capture {
 public:
  Capture() : f_(open_memstream(&buf_, &len_)) {}
  ~Capture() {
    std::fclose(f_);
    std::free(buf_);
  }
  FILE* file() const { return f_; }
  std::string text() {
    std::fflush(f_);
    return std::string(buf_, len_);
  }

 private:
  char* buf_ = nullptr;
  size_t len_ = 0;
  FILE* f_;
};

TEST(ProgressLine, OnATerminalItRedrawsInPlaceAtMostEvery100ms) {
  Capture c;
  int asked = 0;
  std::string erased;
  {
    ProgressLine p("kvpager x", ProgressLine::Mode::kTerminal, 10s, c.file());
    p.update([&] { return ++asked, std::string("step 1 of 3 long"); });
    // Within 100 ms: not drawn, and the text is not even made.
    p.update([&] { return ++asked, std::string("step 2 of 3"); });
    EXPECT_EQ(asked, 1);
    // The last step is drawn at once, padded over the longer line before.
    p.update([&] { return ++asked, std::string("step 3 of 3"); }, true);
    EXPECT_EQ(c.text(), "\r  step 1 of 3 long\r  step 3 of 3     ");
    // Erased before the result; erasing again writes nothing.
    p.clear();
    p.clear();
    erased = c.text();
    EXPECT_EQ(erased, "\r  step 1 of 3 long\r  step 3 of 3     \r                  \r");
  }
  EXPECT_EQ(asked, 2);
  EXPECT_EQ(c.text(), erased) << "the destructor has nothing left to erase";
}

TEST(ProgressLine, ADestroyedLineIsErased) {
  Capture c;
  { ProgressLine("kvpager x", ProgressLine::Mode::kTerminal, 10s, c.file()).update([] { return std::string("ab"); }); }
  EXPECT_EQ(c.text(), "\r  ab\r    \r");
}

TEST(ProgressLine, InALogItIsAPlainLineNamingTheCommandAndTheTime) {
  Capture c;
  ProgressLine p("kvpager demo", ProgressLine::Mode::kPlain, 0ms, c.file());
  p.update([] { return std::string("turn 1/2"); });
  p.update([] { return std::string("turn 2/2"); }, true);
  p.clear();  // nothing to erase in a log
  EXPECT_EQ(c.text(), "kvpager demo: turn 1/2, 0 s\nkvpager demo: turn 2/2, 0 s\n");
}

TEST(ProgressLine, ShortWorkPrintsNothingInALogOrWhenOff) {
  Capture c;
  int asked = 0;
  {
    ProgressLine log("kvpager demo", ProgressLine::Mode::kPlain, 1h, c.file());
    ProgressLine off("kvpager demo", ProgressLine::Mode::kOff, 0ms, c.file());
    for (int i = 0; i < 100; ++i) {
      log.update([&] { return ++asked, std::string("x"); }, true);
      off.update([&] { return ++asked, std::string("x"); }, true);
    }
  }
  EXPECT_EQ(asked, 0);
  EXPECT_EQ(c.text(), "");
}

}  // namespace
}  // namespace kvpager::tools
