// Runs the libFuzzer target's entry point (tests/fuzz/replay_trace_fuzz.cpp)
// under the normal compiler and the sanitizers: over the seed corpus, and
// over deterministic mutations of it (bytes flipped, cut, duplicated). The
// entry point traps on any inconsistency; scripts/fuzz-replay explores
// further with libFuzzer.
#include <gtest/gtest.h>

#include <filesystem>
#include "replay_test_util.h"
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using replay_test::read_file;

std::vector<std::string> corpus() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(KVPAGER_FUZZ_CORPUS)) out.push_back(read_file(e.path()));
  return out;
}

int feed(const std::string& s) { return LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

}  // namespace

TEST(ReplayFuzzCorpus, SeedsPass) {
  const auto seeds = corpus();
  ASSERT_GE(seeds.size(), 4u);
  for (const auto& s : seeds) EXPECT_EQ(feed(s), 0);
  EXPECT_EQ(feed(""), 0);
}

TEST(ReplayFuzzCorpus, MutationsNeverCrash) {
  const auto seeds = corpus();
  std::mt19937_64 rng(42);
  const int rounds = replay_test::scale(3000);
  const std::string alphabet = "{}[]\",:0123456789-.eE \n\\u\x01\xff";
  for (int i = 0; i < rounds; ++i) {
    std::string s = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < edits && !s.empty(); ++k) {
      const size_t at = rng() % s.size();
      switch (rng() % 4) {
        case 0: s[at] = alphabet[rng() % alphabet.size()]; break;
        case 1: s.erase(at, 1 + rng() % 8); break;
        case 2: s.insert(at, s.substr(rng() % s.size(), 1 + rng() % 40)); break;
        default: s.insert(at, 1, static_cast<char>(rng() % 256)); break;
      }
    }
    ASSERT_EQ(feed(s), 0);
  }
}
