// The token filesystem's parsers, without a mount: which names can exist
// where (paths.h), and the context export format (export_format.h), whole and
// streamed in arbitrary pieces.
#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kvpager/fs/export_format.h"
#include "kvpager/fs/paths.h"
#include "kvpager/fs/writer_exit.h"

namespace {

using namespace kvpager::fs;

TEST(FsNames, ContextNamesAreFileNamesAndNothingElse) {
  EXPECT_TRUE(valid_context_name("chat-1"));
  EXPECT_TRUE(valid_context_name("a b:c@d"));
  EXPECT_TRUE(valid_context_name(".hidden"));
  EXPECT_TRUE(valid_context_name(std::string(255, 'x')));
  EXPECT_FALSE(valid_context_name(""));
  EXPECT_FALSE(valid_context_name("."));
  EXPECT_FALSE(valid_context_name(".."));
  EXPECT_FALSE(valid_context_name("a/b"));
  EXPECT_FALSE(valid_context_name("/"));
  EXPECT_FALSE(valid_context_name(std::string("a\0b", 3)));
  EXPECT_FALSE(valid_context_name(std::string(256, 'x')));
}

TEST(FsNames, ImportNamesDropTheExportSuffixAndRefuseHiddenFiles) {
  EXPECT_EQ(import_context_name("chat.kvctx"), "chat");
  EXPECT_EQ(import_context_name("chat"), "chat");
  EXPECT_EQ(import_context_name("chat.kvctx.kvctx"), "chat.kvctx");
  EXPECT_FALSE(import_context_name(".kvctx"));      // no name left
  EXPECT_FALSE(import_context_name(".chat.XyZ12"));  // a tool's temporary file (rsync)
  EXPECT_FALSE(import_context_name(".."));
  EXPECT_FALSE(import_context_name(std::string(256, 'x')));
}

TEST(FsNames, NumbersAreCanonicalDecimal) {
  EXPECT_EQ(parse_chunk_index("0"), 0u);
  EXPECT_EQ(parse_chunk_index("17"), 17u);
  EXPECT_FALSE(parse_chunk_index("017"));
  EXPECT_FALSE(parse_chunk_index("+1"));
  EXPECT_FALSE(parse_chunk_index("-1"));
  EXPECT_FALSE(parse_chunk_index(" 1"));
  EXPECT_FALSE(parse_chunk_index("1x"));
  EXPECT_FALSE(parse_chunk_index(""));
  EXPECT_FALSE(parse_chunk_index("99999999999999999999999"));
  EXPECT_EQ(parse_pid("1"), 1);
  EXPECT_EQ(parse_pid("2147483647"), 2147483647);
  EXPECT_FALSE(parse_pid("0"));
  EXPECT_FALSE(parse_pid("2147483648"));
  EXPECT_TRUE(valid_knob_name("prefetch_depth"));
  EXPECT_TRUE(valid_knob_name("sim.pcie_gbps"));
  EXPECT_FALSE(valid_knob_name("Prefetch"));
  EXPECT_FALSE(valid_knob_name(".x"));
  EXPECT_FALSE(valid_knob_name("x."));
  EXPECT_FALSE(valid_knob_name("a/b"));
}

TEST(FsPaths, EveryKindResolvesAndRendersBack) {
  const char* paths[] = {"/",
                         "/contexts",
                         "/contexts/chat 1",
                         "/contexts/chat 1/kv",
                         "/contexts/chat 1/info",
                         "/contexts/chat 1/chunks",
                         "/contexts/chat 1/chunks/12",
                         "/import",
                         "/import/chat.kvctx",
                         "/stats",
                         "/processes",
                         "/processes/42",
                         "/processes/42/stats",
                         "/processes/42/config",
                         "/processes/42/control",
                         "/processes/42/control/prefetch_depth",
                         "/control",
                         "/control/hbm_budget"};
  for (const char* p : paths) {
    PathRef r = resolve(p);
    ASSERT_NE(r.kind, NodeKind::kNone) << p;
    EXPECT_EQ(render(r), p);
    EXPECT_EQ(resolve(render(r)), r) << p;
  }
  PathRef r = resolve("/contexts/x/chunks/7");
  EXPECT_EQ(r.kind, NodeKind::kChunk);
  EXPECT_EQ(r.context, "x");
  EXPECT_EQ(r.chunk, 7u);
  EXPECT_EQ(resolve("//contexts/./x//kv").kind, NodeKind::kContextKv);
}

TEST(FsPaths, NothingOutsideTheTreeResolves) {
  const char* bad[] = {"",
                       "contexts",  // relative
                       "/etc",
                       "/contexts/..",
                       "/contexts/x/../../etc/passwd",
                       "/contexts/x/other",
                       "/contexts/x/kv/more",
                       "/contexts/x/chunks/01",
                       "/contexts/x/chunks/-1",
                       "/import/.hidden",
                       "/import/a/b",
                       "/processes/0",
                       "/processes/abc",
                       "/processes/1/other",
                       "/control/Bad-Name",
                       "/stats/x"};
  for (const char* p : bad) EXPECT_EQ(resolve(p).kind, NodeKind::kNone) << p;
  EXPECT_EQ(resolve(std::string("/contexts/a\0b", 13)).kind, NodeKind::kNone);
  EXPECT_EQ(resolve("/contexts/" + std::string(256, 'x')).kind, NodeKind::kNone);
}

// ---------------------------------------------------------------- export format

std::vector<std::byte> bytes_of(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

// An export of `payload` cut into `chunk`-byte chunks.
std::vector<std::byte> make_export(const std::vector<std::byte>& payload, size_t chunk, ExportHeader* out = nullptr) {
  ExportHeader h;
  h.ns = "model-a";
  h.name = "chat 7";
  h.pinned = true;
  h.created_ns = 1'700'000'000'000'000'000;
  h.token_count = 4096;
  h.ttl_ns = 3'600'000'000'000;
  for (size_t off = 0; off < payload.size(); off += chunk) {
    const size_t n = std::min(chunk, payload.size() - off);
    h.chunks.push_back({n, XXH3_64bits(payload.data() + off, n)});
  }
  std::vector<std::byte> file = encode_export_header(h);
  file.insert(file.end(), payload.begin(), payload.end());
  if (out) *out = h;
  return file;
}

struct Streamed {
  bool ok = false;
  std::string error;
  std::vector<std::byte> payload;
  std::optional<ExportHeader> header;
};

Streamed stream(const std::vector<std::byte>& file, std::mt19937& rng, size_t max_piece) {
  Streamed s;
  ExportReader r([&](uint64_t, std::span<const std::byte> c) {
    s.payload.insert(s.payload.end(), c.begin(), c.end());
    return true;
  });
  size_t off = 0;
  bool fed = true;
  while (off < file.size() && fed) {
    const size_t n = std::min(file.size() - off, size_t{1} + rng() % max_piece);
    fed = r.feed(std::span<const std::byte>(file.data() + off, n));
    off += n;
  }
  s.ok = fed && r.finish();
  s.error = r.error();
  s.header = r.header();
  return s;
}

TEST(FsExport, HeaderRoundTrips) {
  ExportHeader h;
  auto file = make_export(bytes_of(5 * 1000 + 7, 1), 1000, &h);
  auto back = parse_export_header(file);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, h);
  EXPECT_EQ(back->total_bytes(), 5007u);
  EXPECT_EQ(encode_export_header(*back).size(), h.header_bytes());
  EXPECT_EQ(sniff_export(file), Sniff::kExport);
  EXPECT_EQ(sniff_export(std::span<const std::byte>(file.data(), 3)), Sniff::kUndecided);
  auto raw = bytes_of(100, 2);
  raw[0] = std::byte{0};
  EXPECT_EQ(sniff_export(raw), Sniff::kRaw);
}

TEST(FsExport, StreamsInAnyPiecesAndDeliversEveryChunkVerified) {
  std::mt19937 rng(7);
  for (size_t size : {size_t{0}, size_t{1}, size_t{999}, size_t{1000}, size_t{1001}, size_t{65537}}) {
    auto payload = bytes_of(size, static_cast<uint32_t>(size));
    auto file = make_export(payload, 1000);
    for (size_t piece : {size_t{1}, size_t{7}, size_t{100}, size_t{5000}, file.size() + 1}) {
      Streamed s = stream(file, rng, piece);
      ASSERT_TRUE(s.ok) << size << " in pieces of <= " << piece << ": " << s.error;
      EXPECT_EQ(s.payload, payload);
      ASSERT_TRUE(s.header);
      EXPECT_EQ(s.header->name, "chat 7");
    }
  }
}

TEST(FsExport, EveryTruncationIsRefused) {
  auto file = make_export(bytes_of(3000, 3), 1000);
  std::mt19937 rng(1);
  for (size_t n = 0; n < file.size(); ++n) {
    std::vector<std::byte> cut(file.begin(), file.begin() + static_cast<ptrdiff_t>(n));
    Streamed s = stream(cut, rng, 64);
    EXPECT_FALSE(s.ok) << "a file cut at " << n << " of " << file.size() << " bytes was accepted";
    EXPECT_FALSE(s.error.empty());
  }
}

TEST(FsExport, EveryFlippedByteAndAnyTrailingByteIsRefused) {
  auto file = make_export(bytes_of(2500, 4), 1000);
  std::mt19937 rng(2);
  for (size_t i = 0; i < file.size(); ++i) {
    auto bad = file;
    bad[i] ^= std::byte{0x20};
    Streamed s = stream(bad, rng, 300);
    EXPECT_FALSE(s.ok) << "a flip at byte " << i << " was accepted";
  }
  auto longer = file;
  longer.push_back(std::byte{0});
  EXPECT_FALSE(stream(longer, rng, 300).ok);
}

TEST(FsExport, LimitsAreCheckedBeforeAnythingIsAllocated) {
  ExportHeader h;
  h.name = "x";
  h.chunks.push_back({kExportMaxChunkBytes + 1, 0});
  auto file = encode_export_header(h);
  std::string why;
  EXPECT_FALSE(parse_export_header(file, &why));
  EXPECT_NE(why.find("chunk size"), std::string::npos) << why;
  // A header that claims 2^22 chunks is refused from its first 72 bytes.
  std::vector<std::byte> fixed(file.begin(), file.begin() + kExportFixedBytes);
  for (int i = 0; i < 8; ++i) fixed[32 + static_cast<size_t>(i)] = std::byte{0xff};
  ExportReader r([](uint64_t, std::span<const std::byte>) { return true; });
  EXPECT_FALSE(r.feed(fixed));
  EXPECT_NE(r.error().find("too many chunks"), std::string::npos) << r.error();
}

// ------------------------------------------------------------ writer exit

// A /proc/<tid>/stat line as Linux writes it: "pid (comm) state" then fields
// 4..52; flags is field 9, exit_code field 52.
std::string stat_line(const std::string& comm, uint64_t flags, uint64_t exit_code, size_t fields = 52) {
  std::string s = "4242 (" + comm + ") R";
  for (size_t f = 4; f <= fields; ++f)
    s += " " + std::to_string(f == 9 ? flags : f == 52 ? exit_code : f * 10);
  return s + "\n";
}

constexpr uint64_t kExiting = 0x4, kRunningFlags = 0x400100;

TEST(FsWriterExit, OnlyAnExitingTaskThatWasKilledOrFailedHasAVerdict) {
  EXPECT_FALSE(failed_exit_in_stat(stat_line("cp", kRunningFlags, 0)));
  EXPECT_FALSE(failed_exit_in_stat(stat_line("cp", kRunningFlags, 9))) << "not exiting: the code means nothing yet";
  EXPECT_FALSE(failed_exit_in_stat(stat_line("cat", kRunningFlags | kExiting, 0))) << "exit(0) is an ordinary end";
  EXPECT_EQ(failed_exit_in_stat(stat_line("cp", kRunningFlags | kExiting, 9)), "was killed by signal 9");
  EXPECT_EQ(failed_exit_in_stat(stat_line("cp", kExiting, 0x80 | 11)), "was killed by signal 11") << "core dumped";
  EXPECT_EQ(failed_exit_in_stat(stat_line("dd", kExiting, 3 << 8)), "exited with status 3");
  EXPECT_EQ(failed_exit_in_stat(stat_line("dd", kExiting, 255 << 8)), "exited with status 255");
}

TEST(FsWriterExit, ACommandNameWithSpacesAndParenthesesDoesNotShiftTheFields) {
  EXPECT_EQ(failed_exit_in_stat(stat_line("a) 1 2 3 4 5 6 (b", kExiting, 2)), "was killed by signal 2");
  EXPECT_FALSE(failed_exit_in_stat(stat_line("x) R 0 0 0 0 0 4 (y", kRunningFlags, 2)));
}

TEST(FsWriterExit, WhatIsNotAWholeStatLineHasNoVerdict) {
  EXPECT_FALSE(failed_exit_in_stat(""));
  EXPECT_FALSE(failed_exit_in_stat("4242 cp R 1 2 3"));
  EXPECT_FALSE(failed_exit_in_stat(stat_line("cp", kExiting, 9, 51))) << "a kernel before 3.5 has no exit code";
  std::string bad = stat_line("cp", kExiting, 9);
  bad.replace(bad.rfind(" 9"), 2, " 9x");
  EXPECT_FALSE(failed_exit_in_stat(bad)) << "a field that is not a number";
}

TEST(FsWriterExit, ThisRunningProcessAndNoTaskHaveNoVerdict) {
  EXPECT_FALSE(failed_exit_of(getpid()));
  EXPECT_FALSE(failed_exit_of(0)) << "a task in another pid namespace";
  EXPECT_FALSE(failed_exit_of(-1));
}

}  // namespace
