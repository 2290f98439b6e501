#include "trace.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <memory>

namespace kvpager::replay {

namespace {

constexpr int kMaxDepth = 64;  // nesting of ignored values
constexpr uint64_t kMaxTokens = UINT32_MAX;
constexpr double kMaxTimestampMs = 9.0e12;  // ~285 years: keeps ns within 64 bits

// A JSON reader over one line, just enough for one flat object whose
// unknown members may be any JSON value. Every read checks bounds; errors
// carry the 1-based column.
class Cursor {
 public:
  explicit Cursor(std::string_view s) : s_(s) {}

  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\r' || s_[i_] == '\n')) ++i_;
  }
  bool at_end() const { return i_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[i_]; }
  bool eat(char c) {
    ws();
    if (peek() != c) return false;
    ++i_;
    return true;
  }
  size_t column() const { return i_ + 1; }

  std::string what_is_here() const {
    if (at_end()) return "the end of the line";
    const unsigned char c = static_cast<unsigned char>(s_[i_]);
    if (c < 0x20 || c >= 0x7F) return fmt::format("byte 0x{:02x}", c);
    return fmt::format("'{}'", s_.substr(i_, std::min<size_t>(12, s_.size() - i_)));
  }
  std::string error(std::string_view expected) const {
    return fmt::format("column {}: expected {}, found {}", column(), expected, what_is_here());
  }

  // A string; its decoded value (escapes of ASCII characters decoded, others
  // kept as '?'). Returns an error message or nullopt.
  std::optional<std::string> string(std::string& out) {
    ws();
    if (peek() != '"') return error("a string");
    ++i_;
    out.clear();
    for (;;) {
      if (at_end()) return fmt::format("column {}: unterminated string", column());
      const char c = s_[i_++];
      if (c == '"') return std::nullopt;
      if (static_cast<unsigned char>(c) < 0x20) return fmt::format("column {}: control character in a string", i_);
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_end()) return fmt::format("column {}: unterminated escape", column());
      const char e = s_[i_++];
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (s_.size() - i_ < 4) return fmt::format("column {}: short \\u escape", column());
          unsigned v = 0;
          auto [p, ec] = std::from_chars(s_.data() + i_, s_.data() + i_ + 4, v, 16);
          if (ec != std::errc{} || p != s_.data() + i_ + 4) return fmt::format("column {}: bad \\u escape", column());
          i_ += 4;
          out += v < 0x80 ? static_cast<char>(v) : '?';
          break;
        }
        default: return fmt::format("column {}: bad escape '\\{}'", i_, e);
      }
    }
  }

  // The text of a JSON number (not converted). Error or nullopt.
  std::optional<std::string> number_text(std::string_view& out) {
    ws();
    const size_t start = i_;
    if (peek() == '-') ++i_;
    auto digits = [&] {
      size_t n = 0;
      while (!at_end() && s_[i_] >= '0' && s_[i_] <= '9') ++i_, ++n;
      return n;
    };
    if (digits() == 0) {
      i_ = start;
      return error("a number");
    }
    if (peek() == '.') {
      ++i_;
      if (digits() == 0) return fmt::format("column {}: expected digits after '.'", column());
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (digits() == 0) return fmt::format("column {}: expected digits in the exponent", column());
    }
    out = s_.substr(start, i_ - start);
    return std::nullopt;
  }

  // Skips any JSON value (for members we do not use).
  std::optional<std::string> skip_value(int depth = 0) {
    if (depth > kMaxDepth) return fmt::format("column {}: nested deeper than {} levels", column(), kMaxDepth);
    ws();
    std::string scratch;
    std::string_view num;
    switch (peek()) {
      case '"': return string(scratch);
      case '{': {
        ++i_;
        if (eat('}')) return std::nullopt;
        do {
          if (auto e = string(scratch)) return e;
          if (!eat(':')) return error("':'");
          if (auto e = skip_value(depth + 1)) return e;
        } while (eat(','));
        if (!eat('}')) return error("',' or '}'");
        return std::nullopt;
      }
      case '[': {
        ++i_;
        if (eat(']')) return std::nullopt;
        do {
          if (auto e = skip_value(depth + 1)) return e;
        } while (eat(','));
        if (!eat(']')) return error("',' or ']'");
        return std::nullopt;
      }
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: return number_text(num);
    }
  }

 private:
  std::optional<std::string> literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return error("a JSON value");
    i_ += word.size();
    return std::nullopt;
  }
  std::string_view s_;
  size_t i_ = 0;
};

// A non-negative integer no larger than max, from a number's text.
std::optional<std::string> to_uint(std::string_view text, uint64_t max, uint64_t& out) {
  if (!text.empty() && text.front() == '-') return fmt::format("must not be negative (got {})", text);
  if (text.find_first_of(".eE") != std::string_view::npos) return fmt::format("must be an integer (got {})", text);
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (ec == std::errc::result_out_of_range || (ec == std::errc{} && out > max))
    return fmt::format("too large (got {}, at most {})", text, max);
  if (ec != std::errc{} || p != text.data() + text.size()) return fmt::format("not an integer (got {})", text);
  return std::nullopt;
}

}  // namespace

bool is_blank(std::string_view line) {
  return std::all_of(line.begin(), line.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

std::optional<std::string> parse_record(std::string_view line, TraceRecord& out) {
  Cursor in(line);
  out.hash_ids.clear();
  out.output_length = 0;
  bool have_ts = false, have_in = false, have_out = false, have_ids = false;
  if (!in.eat('{')) return in.error("'{' (one JSON object per line)");
  std::string key;
  if (!in.eat('}')) {
    do {
      const size_t key_col = in.column();
      if (auto e = in.string(key)) return e;
      if (!in.eat(':')) return in.error(fmt::format("':' after \"{}\"", key));
      auto dup = [&](bool& seen) -> std::optional<std::string> {
        if (seen) return fmt::format("column {}: \"{}\" appears twice", key_col, key);
        seen = true;
        return std::nullopt;
      };
      std::string_view num;
      if (key == "timestamp") {
        if (auto e = dup(have_ts)) return e;
        if (auto e = in.number_text(num)) return "timestamp: " + *e;
        double v = 0;
        auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
        if (ec != std::errc{} || p != num.data() + num.size() || !std::isfinite(v))
          return fmt::format("timestamp: not a number (got {})", num);
        if (v < 0) return fmt::format("timestamp: must not be negative (got {})", num);
        if (v > kMaxTimestampMs) return fmt::format("timestamp: too large (got {} ms)", num);
        out.timestamp_ms = v;
      } else if (key == "input_length" || key == "output_length") {
        const bool input = key == "input_length";
        if (auto e = dup(input ? have_in : have_out)) return e;
        if (auto e = in.number_text(num)) return key + ": " + *e;
        if (auto e = to_uint(num, kMaxTokens, input ? out.input_length : out.output_length)) return key + ": " + *e;
      } else if (key == "hash_ids") {
        if (auto e = dup(have_ids)) return e;
        if (!in.eat('[')) return "hash_ids: " + in.error("'[' (an array of block ids)");
        if (!in.eat(']')) {
          do {
            if (auto e = in.number_text(num)) return fmt::format("hash_ids[{}]: {}", out.hash_ids.size(), *e);
            uint64_t id = 0;
            if (auto e = to_uint(num, UINT64_MAX, id)) return fmt::format("hash_ids[{}]: {}", out.hash_ids.size(), *e);
            out.hash_ids.push_back(id);
          } while (in.eat(','));
          if (!in.eat(']')) return "hash_ids: " + in.error("',' or ']'");
        }
      } else if (auto e = in.skip_value()) {
        return fmt::format("\"{}\": {}", key, *e);
      }
    } while (in.eat(','));
    if (!in.eat('}')) return in.error("',' or '}'");
  }
  in.ws();
  if (!in.at_end()) return in.error("the end of the line after the object");
  if (!have_ts) return "missing \"timestamp\"";
  if (!have_in) return "missing \"input_length\"";
  if (!have_ids) return "missing \"hash_ids\"";
  return std::nullopt;
}

// uint64 block id -> dense uint32 index: open addressing, linear probing.
struct TraceBuilder::IdMap {
  std::vector<uint64_t> keys;
  std::vector<uint32_t> vals;  // kNone = empty
  uint32_t count = 0;
  IdMap() { rehash(1u << 16); }
  static uint64_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDull;
    k ^= k >> 33;
    return k;
  }
  void rehash(size_t n) {
    std::vector<uint64_t> old_keys = std::move(keys);
    std::vector<uint32_t> old_vals = std::move(vals);
    keys.assign(n, 0);
    vals.assign(n, kNone);
    for (size_t i = 0; i < old_vals.size(); ++i)
      if (old_vals[i] != kNone) place(old_keys[i], old_vals[i]);
  }
  void place(uint64_t k, uint32_t v) {
    size_t mask = keys.size() - 1;
    for (size_t i = mix(k) & mask;; i = (i + 1) & mask) {
      if (vals[i] == kNone) {
        keys[i] = k;
        vals[i] = v;
        return;
      }
    }
  }
  // The dense id of k, or kNone when the table is full (2^32 - 1 ids).
  uint32_t get(uint64_t k) {
    size_t mask = keys.size() - 1;
    size_t i = mix(k) & mask;
    for (; vals[i] != kNone; i = (i + 1) & mask)
      if (keys[i] == k) return vals[i];
    if (count == kNone - 1) return kNone;
    keys[i] = k;
    vals[i] = count;
    uint32_t v = count++;
    if (uint64_t{count} * 2 > keys.size()) rehash(keys.size() * 2);
    return v;
  }
};

TraceBuilder::TraceBuilder(const TraceOptions& opt, std::string name) : opt_(opt), ids_(new IdMap) {
  trace_.name = std::move(name);
  trace_.block_tokens = opt.block_tokens;
}

TraceBuilder::~TraceBuilder() { delete ids_; }

std::optional<std::string> TraceBuilder::add_record(const TraceRecord& rec) {
  const uint64_t B = opt_.block_tokens;
  const uint64_t need = (rec.input_length + B - 1) / B;
  if (rec.hash_ids.size() != need) {
    return fmt::format("hash_ids has {} id(s) but input_length {} needs {} block(s) of {} tokens "
                       "(is --block-tokens right?)",
                       rec.hash_ids.size(), rec.input_length, need, B);
  }
  const uint64_t arrival = static_cast<uint64_t>(std::llround(rec.timestamp_ms * 1e6));
  if (!trace_.requests.empty() && arrival < trace_.requests.back().arrival_ns) {
    return fmt::format("timestamp {} ms is before the previous request's {} ms (requests must be in arrival order)",
                       rec.timestamp_ms, static_cast<double>(trace_.requests.back().arrival_ns) / 1e6);
  }
  if (trace_.refs.size() + rec.hash_ids.size() >= kNone)
    return fmt::format("the trace has more than {} block references: split it", kNone - 1);
  const size_t mark = trace_.refs.size();
  for (uint64_t id : rec.hash_ids) {
    uint32_t dense = ids_->get(id);
    if (dense == kNone) {
      trace_.refs.resize(mark);
      return fmt::format("the trace has more than {} distinct blocks: split it", kNone - 1);
    }
    trace_.refs.push_back(dense);
  }
  Request r;
  r.arrival_ns = arrival;
  r.input_tokens = static_cast<uint32_t>(rec.input_length);
  r.output_tokens = static_cast<uint32_t>(std::min<uint64_t>(rec.output_length, UINT32_MAX));
  r.first = static_cast<uint32_t>(mark);
  r.nblocks = static_cast<uint32_t>(rec.hash_ids.size());
  r.line = static_cast<uint32_t>(std::min<uint64_t>(trace_.lines, UINT32_MAX));
  trace_.requests.push_back(r);
  trace_.input_tokens += rec.input_length;
  trace_.distinct_blocks = ids_->count;
  return std::nullopt;
}

std::optional<std::string> TraceBuilder::add_line(std::string_view line) {
  ++trace_.lines;
  if (is_blank(line)) return std::nullopt;
  std::optional<std::string> err = parse_record(line, rec_);
  if (!err) err = add_record(rec_);
  if (err && opt_.skip_bad) {
    ++trace_.skipped_lines;
    if (trace_.skipped_examples.size() < opt_.max_examples)
      trace_.skipped_examples.push_back(fmt::format("line {}: {}", trace_.lines, *err));
  }
  return err;
}

Trace TraceBuilder::take() {
  trace_.distinct_blocks = ids_->count;
  return std::move(trace_);
}

namespace {
// Feeds `text` to b line by line; stops at the first bad line unless skip_bad.
bool feed(TraceBuilder& b, std::string_view text, std::string_view name, bool skip_bad, std::string* error) {
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (auto e = b.add_line(line); e && !skip_bad) {
      if (error) *error = fmt::format("{}:{}: {}", name, b.line_number(), *e);
      return false;
    }
  }
  return true;
}
}  // namespace

bool parse_trace(std::string_view text, std::string_view name, const TraceOptions& opt, Trace& out, std::string* error) {
  TraceBuilder b(opt, std::string(name));
  if (!feed(b, text, name, opt.skip_bad, error)) return false;
  out = b.take();
  return true;
}

bool load_trace(const std::string& path, const TraceOptions& opt, Trace& out, std::string* error) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) {
    if (error) *error = fmt::format("{}: cannot open: {}", path, std::strerror(errno));
    return false;
  }
  TraceBuilder b(opt, path);
  std::string buf(1 << 20, '\0'), carry;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    std::string_view chunk(buf.data(), n);
    size_t last_nl = chunk.rfind('\n');
    if (last_nl == std::string_view::npos) {
      carry.append(chunk);
      continue;
    }
    carry.append(chunk.substr(0, last_nl + 1));
    if (!feed(b, carry, path, opt.skip_bad, error)) return false;
    carry.assign(chunk.substr(last_nl + 1));
  }
  if (std::ferror(f.get())) {
    if (error) *error = fmt::format("{}: read error: {}", path, std::strerror(errno));
    return false;
  }
  if (!carry.empty() && !feed(b, carry, path, opt.skip_bad, error)) return false;
  out = b.take();
  return true;
}

Turns infer_turns(const Trace& t) {
  const size_t n = t.requests.size();
  Turns out;
  out.ctx.assign(n, kNone);
  out.prev.assign(n, kNone);
  out.shared.assign(n, 0);
  out.next.assign(n, kNone);
  std::vector<uint32_t> end_of(t.distinct_blocks, kNone);  // request whose last (full) block this is
  for (uint32_t i = 0; i < n; ++i) {
    const Request& r = t.requests[i];
    const uint32_t* b = t.refs.data() + r.first;
    for (uint32_t j = r.nblocks; j-- > 1;) {
      if (uint32_t k = end_of[b[j]]; k != kNone) {
        out.prev[i] = k;
        out.shared[i] = j + 1;
        out.ctx[i] = out.ctx[k];
        if (out.next[k] == kNone) out.next[k] = i;
        ++out.resumed;
        break;
      }
    }
    if (out.ctx[i] == kNone) out.ctx[i] = out.contexts++;
    if (r.nblocks > 1) end_of[b[r.nblocks - 1]] = i;
    const uint32_t full = r.input_tokens / t.block_tokens;
    if (full > 1 && full <= r.nblocks) end_of[b[full - 1]] = i;
  }
  return out;
}

}  // namespace kvpager::replay
