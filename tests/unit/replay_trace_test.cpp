// The Mooncake trace parser of kvpager replay: what it accepts, and that every
// malformed line is refused with a message saying what is wrong (and where),
// or skipped and counted with skip_bad.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "replay_test_util.h"

using namespace replay_test;

namespace {

std::string parse_error(std::string_view line) {
  TraceRecord rec;
  auto e = parse_record(line, rec);
  return e ? *e : "";
}

}  // namespace

TEST(ReplayTrace, ParsesAMooncakeLine) {
  TraceRecord rec;
  ASSERT_EQ(parse_record(R"({"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 1384, 1385, 1386, 1387, 1388, 1389, 1390, 1391, 1392, 1393, 1394, 1395]})", rec), std::nullopt);
  EXPECT_EQ(rec.timestamp_ms, 27482);
  EXPECT_EQ(rec.input_length, 6955u);
  EXPECT_EQ(rec.output_length, 52u);
  ASSERT_EQ(rec.hash_ids.size(), 14u);
  EXPECT_EQ(rec.hash_ids.front(), 46u);
  EXPECT_EQ(rec.hash_ids.back(), 1395u);
}

TEST(ReplayTrace, AcceptsAnyKeyOrderUnknownKeysAndWhitespace) {
  TraceRecord rec;
  ASSERT_EQ(parse_record(" { \"hash_ids\" : [ 18446744073709551615 ] ,\t\"extra\": {\"a\": [1, {\"b\": null}], "
                         "\"s\": \"x\\\"\\u00e9\"}, \"input_length\":3,\"timestamp\":1.5e3 , \"flag\": true }\r",
                         rec),
            std::nullopt);
  EXPECT_EQ(rec.timestamp_ms, 1500.0);
  EXPECT_EQ(rec.input_length, 3u);
  EXPECT_EQ(rec.output_length, 0u);  // optional
  EXPECT_EQ(rec.hash_ids, std::vector<uint64_t>{UINT64_MAX});
}

TEST(ReplayTrace, SaysWhatIsWrongWithABadLine) {
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "input_length": 6, "hash_ids": [0, -1]})"),
            "hash_ids[1]: must not be negative (got -1)");
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "input_length": 6.5, "hash_ids": []})"),
            "input_length: must be an integer (got 6.5)");
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "input_length": 99999999999, "hash_ids": []})"),
            "input_length: too large (got 99999999999, at most 4294967295)");
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "input_length": 1, "hash_ids": [18446744073709551616]})"),
            "hash_ids[0]: too large (got 18446744073709551616, at most 18446744073709551615)");
  EXPECT_EQ(parse_error(R"({"timestamp": -3, "input_length": 1, "hash_ids": [1]})"),
            "timestamp: must not be negative (got -3)");
  EXPECT_EQ(parse_error(R"({"input_length": 1, "hash_ids": [1]})"), "missing \"timestamp\"");
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "hash_ids": [1]})"), "missing \"input_length\"");
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "input_length": 1})"), "missing \"hash_ids\"");
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "timestamp": 1, "input_length": 1, "hash_ids": [1]})"),
            "column 17: \"timestamp\" appears twice");
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "input_length": 1, "hash_ids": [1]} x)"),
            "column 54: expected the end of the line after the object, found 'x'");
  EXPECT_EQ(parse_error(R"({"timestamp": "soon", "input_length": 1, "hash_ids": [1]})"),
            "timestamp: column 15: expected a number, found '\"soon\", \"inp'");
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "input_length": 1, "hash_ids": 7})"),
            "hash_ids: column 49: expected '[' (an array of block ids), found '7}'");
  EXPECT_EQ(parse_error("[1, 2]"), "column 1: expected '{' (one JSON object per line), found '[1, 2]'");
  EXPECT_EQ(parse_error(R"({"timestamp": 0, "input_length": 1, "hash_ids": [1)"),
            "hash_ids: column 51: expected ',' or ']', found the end of the line");
  EXPECT_EQ(parse_error("{\"timestamp\": 0, \"a\": \"\x01\"}"), "\"a\": column 24: control character in a string");
  EXPECT_EQ(parse_error(std::string(R"({"timestamp": 0, "x": )") + std::string(100, '[')),
            "\"x\": column 88: nested deeper than 64 levels");
}

TEST(ReplayTrace, ChecksIdsAgainstBlockSizeAndArrivalOrder) {
  TraceOptions opt;
  opt.block_tokens = 4;
  Trace t;
  std::string err;
  EXPECT_FALSE(parse_trace(line(0, 9, {1, 2}), "t.jsonl", opt, t, &err));
  EXPECT_EQ(err, "t.jsonl:1: hash_ids has 2 id(s) but input_length 9 needs 3 block(s) of 4 tokens "
                 "(is --block-tokens right?)");
  EXPECT_FALSE(parse_trace(line(5, 4, {1}) + line(4, 4, {1}), "t.jsonl", opt, t, &err));
  EXPECT_EQ(err, "t.jsonl:2: timestamp 4 ms is before the previous request's 5 ms (requests must be in arrival order)");
}

TEST(ReplayTrace, BuildsDenseIdsBlocksAndTokens) {
  const Trace t = make_trace(line(0, 10, {100, 7, 9}) + "\n  \n" + line(3, 5, {100, 8}), 4);
  ASSERT_EQ(t.requests.size(), 2u);
  EXPECT_EQ(t.lines, 4u);  // blank lines are counted, not requests
  EXPECT_EQ(t.distinct_blocks, 4u);
  EXPECT_EQ(t.refs, (std::vector<uint32_t>{0, 1, 2, 0, 3}));
  EXPECT_EQ(t.input_tokens, 15u);
  const Request& r = t.requests[0];
  EXPECT_EQ(t.tokens(r, 0), 4u);
  EXPECT_EQ(t.tokens(r, 2), 2u);  // block 2 covers tokens [8, 10)
  EXPECT_EQ(t.requests[1].arrival_ns, 3'000'000u);
  EXPECT_EQ(t.requests[1].line, 4u);
}

TEST(ReplayTrace, SkipBadCountsAndKeepsTheRest) {
  TraceOptions opt;
  opt.block_tokens = 4;
  opt.skip_bad = true;
  Trace t;
  std::string err;
  ASSERT_TRUE(parse_trace(line(0, 4, {1}) + "garbage\n" + line(1, 8, {1, 2}) + "{\"timestamp\": 2}\n", "x", opt, t, &err));
  EXPECT_EQ(t.requests.size(), 2u);
  EXPECT_EQ(t.skipped_lines, 2u);
  ASSERT_EQ(t.skipped_examples.size(), 2u);
  EXPECT_EQ(t.skipped_examples[0], "line 2: column 1: expected '{' (one JSON object per line), found 'garbage'");
  EXPECT_EQ(t.skipped_examples[1], "line 4: missing \"input_length\"");
}

TEST(ReplayTrace, LoadsFilesInPiecesAndReportsFileAndLine) {
  const std::string path = testing::TempDir() + "/replay_trace_test.jsonl";
  std::string text;
  for (int i = 0; i < 30000; ++i) text += line(static_cast<uint64_t>(i), 8, {1, static_cast<uint64_t>(i + 2)});
  text += "{\"timestamp\": 30000, \"input_length\": 4, \"hash_ids\": [1]";  // last line: no newline, unterminated
  std::ofstream(path) << text;
  TraceOptions opt;
  opt.block_tokens = 4;
  Trace t;
  std::string err;
  EXPECT_FALSE(load_trace(path, opt, t, &err));
  EXPECT_EQ(err, path + ":30001: column 56: expected ',' or '}', found the end of the line");
  std::ofstream(path, std::ios::app) << "}";
  ASSERT_TRUE(load_trace(path, opt, t, &err)) << err;
  EXPECT_EQ(t.requests.size(), 30001u);
  EXPECT_EQ(t.distinct_blocks, 30001u);
  std::remove(path.c_str());
  EXPECT_FALSE(load_trace(path, opt, t, &err));
  EXPECT_NE(err.find("cannot open"), std::string::npos);
}

TEST(ReplayTrace, InfersConversationTurnsFromChainedIds) {
  // Request 1 continues request 0 (it extends 0's last full block, id 2);
  // request 2 shares only the root block 0 with them: a new conversation;
  // request 3 continues request 1 through its last full block (3).
  const Trace t = make_trace(line(0, 10, {0, 1, 2}) + line(1, 14, {0, 1, 2, 3}) + line(2, 6, {0, 9}) +
                                 line(3, 18, {0, 1, 2, 3, 4}),
                             4);
  const Turns turns = infer_turns(t);
  EXPECT_EQ(turns.contexts, 2u);
  EXPECT_EQ(turns.resumed, 2u);
  EXPECT_EQ(turns.prev, (std::vector<uint32_t>{kNone, 0, kNone, 1}));
  EXPECT_EQ(turns.ctx, (std::vector<uint32_t>{0, 0, 1, 0}));
  EXPECT_EQ(turns.shared, (std::vector<uint32_t>{0, 3, 0, 4}));
  EXPECT_EQ(turns.next, (std::vector<uint32_t>{1, 3, kNone, kNone}));
}
