#include "kvpager/fs/export_format.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "kvpager/store/le_bytes.h"

namespace kvpager::fs {

namespace {

constexpr size_t kVersionAt = 8, kFlagsAt = 12, kHeaderBytesAt = 16, kTotalAt = 24, kChunksAt = 32, kCreatedAt = 40,
                 kTokensAt = 48, kTtlAt = 56, kNsLenAt = 64, kNameLenAt = 68;
static_assert(kNameLenAt + 4 == kExportFixedBytes);
constexpr uint32_t kFlagPinned = 1;
constexpr size_t kChunkEntryBytes = 16;

using store::le::get_u32;
using store::le::get_u64;
using store::le::put_u32;
using store::le::put_u64;

std::optional<ExportHeader> fail(std::string* why, const char* reason) {
  if (why) *why = reason;
  return std::nullopt;
}

// The header length the fixed part announces, checked against what the
// other fixed fields imply; 0 (and why) if they disagree or exceed the limits.
uint64_t announced_header_bytes(const std::byte* p, std::string* why) {
  auto bad = [&](const char* reason) {
    if (why) *why = reason;
    return uint64_t{0};
  };
  if (std::memcmp(p, kExportMagic, sizeof kExportMagic) != 0) return bad("not a kvpager context export (bad magic)");
  if (get_u32(p + kVersionAt) != kExportVersion) return bad("unsupported export format version");
  if ((get_u32(p + kFlagsAt) & ~kFlagPinned) != 0) return bad("unknown flags");
  const uint32_t ns_len = get_u32(p + kNsLenAt), name_len = get_u32(p + kNameLenAt);
  const uint64_t chunks = get_u64(p + kChunksAt);
  if (ns_len > kExportMaxNamespace) return bad("namespace too long");
  if (name_len > kExportMaxName) return bad("name too long");
  if (chunks > kExportMaxChunks) return bad("too many chunks");
  const uint64_t expect = kExportFixedBytes + ns_len + name_len + chunks * kChunkEntryBytes + 8;
  if (get_u64(p + kHeaderBytesAt) != expect) return bad("header length does not match its fields");
  return expect;
}

}  // namespace

uint64_t ExportHeader::total_bytes() const {
  uint64_t t = 0;
  for (const ExportChunk& c : chunks) t += c.bytes;
  return t;
}

uint64_t ExportHeader::header_bytes() const {
  return kExportFixedBytes + ns.size() + name.size() + chunks.size() * kChunkEntryBytes + 8;
}

std::vector<std::byte> encode_export_header(const ExportHeader& h) {
  std::vector<std::byte> out(h.header_bytes());
  std::byte* p = out.data();
  std::memcpy(p, kExportMagic, sizeof kExportMagic);
  put_u32(p + kVersionAt, kExportVersion);
  put_u32(p + kFlagsAt, h.pinned ? kFlagPinned : 0);
  put_u64(p + kHeaderBytesAt, out.size());
  put_u64(p + kTotalAt, h.total_bytes());
  put_u64(p + kChunksAt, h.chunks.size());
  put_u64(p + kCreatedAt, h.created_ns);
  put_u64(p + kTokensAt, h.token_count);
  put_u64(p + kTtlAt, h.ttl_ns);
  put_u32(p + kNsLenAt, static_cast<uint32_t>(h.ns.size()));
  put_u32(p + kNameLenAt, static_cast<uint32_t>(h.name.size()));
  size_t at = kExportFixedBytes;
  std::memcpy(p + at, h.ns.data(), h.ns.size());
  at += h.ns.size();
  std::memcpy(p + at, h.name.data(), h.name.size());
  at += h.name.size();
  for (const ExportChunk& c : h.chunks) {
    put_u64(p + at, c.bytes);
    put_u64(p + at + 8, c.checksum);
    at += kChunkEntryBytes;
  }
  put_u64(p + at, XXH3_64bits(p, at));
  return out;
}

std::optional<ExportHeader> parse_export_header(std::span<const std::byte> in, std::string* why) {
  if (in.size() < kExportFixedBytes) return fail(why, "shorter than an export header");
  const std::byte* p = in.data();
  const uint64_t len = announced_header_bytes(p, why);
  if (len == 0) return std::nullopt;
  if (in.size() < len) return fail(why, "truncated header");
  if (XXH3_64bits(p, len - 8) != get_u64(p + len - 8)) return fail(why, "header checksum mismatch");
  ExportHeader h;
  h.pinned = (get_u32(p + kFlagsAt) & kFlagPinned) != 0;
  h.created_ns = get_u64(p + kCreatedAt);
  h.token_count = get_u64(p + kTokensAt);
  h.ttl_ns = get_u64(p + kTtlAt);
  const uint32_t ns_len = get_u32(p + kNsLenAt), name_len = get_u32(p + kNameLenAt);
  size_t at = kExportFixedBytes;
  h.ns.assign(reinterpret_cast<const char*>(p + at), ns_len);
  at += ns_len;
  h.name.assign(reinterpret_cast<const char*>(p + at), name_len);
  at += name_len;
  const uint64_t n = get_u64(p + kChunksAt);
  h.chunks.resize(n);
  uint64_t total = 0;
  for (uint64_t i = 0; i < n; ++i, at += kChunkEntryBytes) {
    ExportChunk& c = h.chunks[i];
    c.bytes = get_u64(p + at);
    c.checksum = get_u64(p + at + 8);
    if (c.bytes == 0 || c.bytes > kExportMaxChunkBytes) return fail(why, "a chunk size is out of range");
    total += c.bytes;  // at most 2^22 chunks of at most 2^28 bytes: no overflow
  }
  if (total != get_u64(p + kTotalAt)) return fail(why, "total size does not match the chunk sizes");
  return h;
}

Sniff sniff_export(std::span<const std::byte> first) {
  const size_t n = std::min(first.size(), sizeof kExportMagic);
  if (std::memcmp(first.data(), kExportMagic, n) != 0) return Sniff::kRaw;
  return n == sizeof kExportMagic ? Sniff::kExport : Sniff::kUndecided;
}

bool ExportReader::fail(std::string why) {
  if (error_.empty()) error_ = std::move(why);
  buf_.clear();
  buf_.shrink_to_fit();
  return false;
}

bool ExportReader::feed(std::span<const std::byte> in) {
  if (failed()) return false;
  while (!in.empty()) {
    if (!header_) {
      // The fixed part first (it says how long the header is), then the rest.
      const uint64_t want = header_len_ ? header_len_ : kExportFixedBytes;
      const size_t take = static_cast<size_t>(std::min<uint64_t>(want - buf_.size(), in.size()));
      buf_.insert(buf_.end(), in.begin(), in.begin() + static_cast<ptrdiff_t>(take));
      in = in.subspan(take);
      consumed_ += take;
      if (buf_.size() < want) {
        if (sniff_export(buf_) == Sniff::kRaw) return fail("not a kvpager context export (bad magic)");
        continue;
      }
      if (!header_len_) {
        std::string why;
        header_len_ = announced_header_bytes(buf_.data(), &why);
        if (!header_len_) return fail(why);
        continue;
      }
      std::string why;
      header_ = parse_export_header(buf_, &why);
      if (!header_) return fail(why);
      buf_.clear();
      continue;
    }
    const auto& chunks = header_->chunks;
    if (chunk_ >= chunks.size()) return fail("bytes after the last chunk");
    const ExportChunk& c = chunks[chunk_];
    if (buf_.capacity() < c.bytes) buf_.reserve(c.bytes);
    const size_t take = static_cast<size_t>(std::min<uint64_t>(c.bytes - buf_.size(), in.size()));
    buf_.insert(buf_.end(), in.begin(), in.begin() + static_cast<ptrdiff_t>(take));
    in = in.subspan(take);
    consumed_ += take;
    if (buf_.size() < c.bytes) continue;
    if (XXH3_64bits(buf_.data(), buf_.size()) != c.checksum)
      return fail("chunk " + std::to_string(chunk_) + " does not match its checksum");
    if (!on_chunk_(chunk_, buf_)) return fail("stopped by the sink");
    buf_.clear();
    ++chunk_;
  }
  return true;
}

bool ExportReader::finish() {
  if (failed()) return false;
  if (!header_) return fail(consumed_ == 0 ? "empty file" : "truncated header");
  if (chunk_ < header_->chunks.size()) return fail("truncated: the file ends inside chunk " + std::to_string(chunk_));
  return true;
}

}  // namespace kvpager::fs
