// Request traces in the Mooncake format (JSON Lines), for `kvpager replay`.
//
// One request per line:
//   {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 1384, 1385]}
// timestamp: arrival in milliseconds (non-decreasing); input_length: prompt
// tokens; output_length: generated tokens (optional); hash_ids: one id per
// block of `block_tokens` prompt tokens, chained (an id names the block and
// its whole prefix), so equal ids mean reusable KV. Other keys are ignored.
//
// Parsing never crashes and never throws: a bad line yields a message that
// says what is wrong (and at which column); with skip_bad it is counted and
// skipped instead. Block ids are mapped to dense 32-bit indices as they are
// read.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvpager::replay {

inline constexpr uint32_t kNone = UINT32_MAX;

// One parsed line, before any check against the rest of the trace.
struct TraceRecord {
  double timestamp_ms = 0;
  uint64_t input_length = 0;
  uint64_t output_length = 0;
  std::vector<uint64_t> hash_ids;
};

// Parses one line (no newline). Returns the problem, or nullopt if `out` now
// holds the record. Blank lines are not records: check is_blank() first.
std::optional<std::string> parse_record(std::string_view line, TraceRecord& out);
bool is_blank(std::string_view line);

struct Request {
  uint64_t arrival_ns = 0;
  uint32_t input_tokens = 0;
  uint32_t output_tokens = 0;
  uint32_t first = 0;    // its blocks are Trace::refs[first, first + nblocks)
  uint32_t nblocks = 0;
  uint32_t line = 0;     // 1-based line in the source
};

struct Trace {
  std::string name;
  uint32_t block_tokens = 512;
  std::vector<Request> requests;
  std::vector<uint32_t> refs;  // dense block ids, every request's blocks in order
  uint32_t distinct_blocks = 0;
  uint64_t input_tokens = 0;
  uint64_t lines = 0;           // lines read (blank ones included)
  uint64_t skipped_lines = 0;   // bad lines skipped (skip_bad)
  std::vector<std::string> skipped_examples;  // "LINE: why" of the first few

  // Tokens of block j of r: [j*B, min((j+1)*B, input)).
  uint32_t tokens(const Request& r, uint32_t j) const {
    const uint64_t lo = uint64_t{j} * block_tokens;
    const uint64_t hi = std::min<uint64_t>(lo + block_tokens, r.input_tokens);
    return hi > lo ? static_cast<uint32_t>(hi - lo) : 0;
  }
  uint64_t duration_ns() const {
    return requests.empty() ? 0 : requests.back().arrival_ns - requests.front().arrival_ns;
  }
};

struct TraceOptions {
  uint32_t block_tokens = 512;
  bool skip_bad = false;
  size_t max_examples = 5;
};

// Builds a Trace line by line: the record checks that need the rest of the
// trace (ids per block, arrival order, size limits) live here.
class TraceBuilder {
 public:
  explicit TraceBuilder(const TraceOptions& opt, std::string name = {});
  ~TraceBuilder();
  TraceBuilder(const TraceBuilder&) = delete;
  TraceBuilder& operator=(const TraceBuilder&) = delete;
  // Adds the next line. Returns the problem with a bad line (it is skipped
  // and counted when skip_bad; otherwise the caller should stop).
  std::optional<std::string> add_line(std::string_view line);
  uint64_t line_number() const { return trace_.lines; }
  Trace take();

 private:
  std::optional<std::string> add_record(const TraceRecord& rec);
  struct IdMap;
  TraceOptions opt_;
  Trace trace_;
  TraceRecord rec_;  // reused
  IdMap* ids_;
};

// A whole trace from memory or from a file. Returns false with *error
// ("NAME:LINE: what is wrong", or why the file cannot be read) on the first
// bad line unless opt.skip_bad, or when nothing can be read.
bool parse_trace(std::string_view text, std::string_view name, const TraceOptions& opt, Trace& out, std::string* error);
bool load_trace(const std::string& path, const TraceOptions& opt, Trace& out, std::string* error);

// Conversations, inferred from the chained ids: request i continues an
// earlier request k (its previous turn) when one of i's blocks after the first
// is the last block, or the last full block, of k. (Block 0 is left out: it is
// often a system prompt that every request shares.) Turns of one
// conversation share a context id.
struct Turns {
  std::vector<uint32_t> ctx;     // per request: its conversation
  std::vector<uint32_t> prev;    // per request: the turn it continues, or kNone
  std::vector<uint32_t> shared;  // per request: blocks shared with prev (its resumed prefix)
  std::vector<uint32_t> next;    // per request: the first later turn continuing it, or kNone
  uint32_t contexts = 0;
  uint32_t resumed = 0;          // requests with a previous turn
};
Turns infer_turns(const Trace& t);

}  // namespace kvpager::replay
