#include "kvpager/store/format.h"

#include <xxhash.h>

#include <cstring>

#include "kvpager/store/le_bytes.h"

namespace kvpager::store {

namespace {

constexpr char kObjectMagic[8] = {'K', 'V', 'P', 'G', 'O', 'B', 'J', '1'};
constexpr char kManifestMagic[8] = {'K', 'V', 'P', 'G', 'M', 'A', 'N', '1'};

// Object header layout (offsets).
constexpr size_t kHdrVersion = 8, kHdrFlags = 12, kHdrKeyHi = 16, kHdrKeyLo = 24, kHdrPayload = 32,
                 kHdrChecksum = 40, kHdrBlock = 48, kHdrCreated = 56, kHdrPid = 64, kHdrUid = 68,
                 kHdrReserved = 72, kHdrSelfSum = 120;
static_assert(kHdrSelfSum + 8 == kObjectHeaderBytes);

// Manifest layout: fixed part, then namespace, name, chunks, checksum.
constexpr size_t kManVersion = 8, kManFlags = 12, kManTotal = 16, kManGeneration = 24, kManCreated = 32,
                 kManLastAccess = 40, kManTtl = 48, kManTokens = 56, kManUid = 64, kManPid = 68, kManNsLen = 72,
                 kManNameLen = 76, kManChunks = 80, kManFixed = 88;
constexpr size_t kManChunkBytes = 32;
constexpr uint32_t kManFlagPinned = 1;

using le::get_u32;
using le::get_u64;
using le::put_u32;
using le::put_u64;
uint64_t sum(const std::byte* p, size_t n) { return XXH3_64bits(p, n); }

template <typename T>
std::optional<T> fail(std::string* why, const char* reason) {
  if (why) *why = reason;
  return std::nullopt;
}

}  // namespace

uint64_t payload_checksum(std::span<const std::byte> payload) { return XXH3_64bits(payload.data(), payload.size()); }

void encode_object_header(const ObjectHeader& h, std::span<std::byte, kObjectHeaderBytes> out) {
  std::byte* p = out.data();
  std::memset(p, 0, kObjectHeaderBytes);
  std::memcpy(p, kObjectMagic, 8);
  put_u32(p + kHdrVersion, kFormatVersion);
  put_u32(p + kHdrFlags, 0);
  put_u64(p + kHdrKeyHi, h.key.hi);
  put_u64(p + kHdrKeyLo, h.key.lo);
  put_u64(p + kHdrPayload, h.payload_bytes);
  put_u64(p + kHdrChecksum, h.checksum);
  put_u64(p + kHdrBlock, h.header_block);
  put_u64(p + kHdrCreated, h.created_ns);
  put_u32(p + kHdrPid, h.writer_pid);
  put_u32(p + kHdrUid, h.writer_uid);
  put_u64(p + kHdrSelfSum, sum(p, kHdrSelfSum));
}

std::optional<ObjectHeader> parse_object_header(std::span<const std::byte> in, std::string* why) {
  if (in.size() < kObjectHeaderBytes) return fail<ObjectHeader>(why, "object header truncated");
  const std::byte* p = in.data();
  if (std::memcmp(p, kObjectMagic, 8) != 0) return fail<ObjectHeader>(why, "not a kvpager object (bad magic)");
  if (get_u64(p + kHdrSelfSum) != sum(p, kHdrSelfSum)) return fail<ObjectHeader>(why, "object header checksum mismatch");
  if (get_u32(p + kHdrVersion) != kFormatVersion) return fail<ObjectHeader>(why, "unsupported object format version");
  if (get_u32(p + kHdrFlags) != 0) return fail<ObjectHeader>(why, "unknown object header flags");
  for (size_t i = kHdrReserved; i < kHdrSelfSum; ++i) {
    if (p[i] != std::byte{0}) return fail<ObjectHeader>(why, "object header reserved bytes not zero");
  }
  ObjectHeader h;
  h.key = ObjectKey{get_u64(p + kHdrKeyHi), get_u64(p + kHdrKeyLo)};
  h.payload_bytes = get_u64(p + kHdrPayload);
  h.checksum = get_u64(p + kHdrChecksum);
  h.header_block = get_u64(p + kHdrBlock);
  h.created_ns = get_u64(p + kHdrCreated);
  h.writer_pid = get_u32(p + kHdrPid);
  h.writer_uid = get_u32(p + kHdrUid);
  if (h.header_block < kMinHeaderBlock || h.header_block > kMaxHeaderBlock ||
      (h.header_block & (h.header_block - 1)) != 0)
    return fail<ObjectHeader>(why, "object header block size out of range");
  if (h.payload_bytes > kMaxObjectBytes) return fail<ObjectHeader>(why, "object payload size out of range");
  return h;
}

uint64_t Manifest::total_bytes() const {
  uint64_t t = 0;
  for (const ManifestChunk& c : chunks) t += c.bytes;
  return t;
}

std::vector<std::byte> encode_manifest(const Manifest& m) {
  const ContextMeta& md = m.meta;
  const size_t total = kManFixed + md.ns.size() + md.name.size() + kManChunkBytes * m.chunks.size() + 8;
  std::vector<std::byte> out(total);
  std::byte* p = out.data();
  std::memcpy(p, kManifestMagic, 8);
  put_u32(p + kManVersion, kFormatVersion);
  put_u32(p + kManFlags, md.pinned ? kManFlagPinned : 0);
  put_u64(p + kManTotal, total);
  put_u64(p + kManGeneration, md.generation);
  put_u64(p + kManCreated, md.created_ns);
  put_u64(p + kManLastAccess, md.last_access_ns);
  put_u64(p + kManTtl, md.ttl_ns);
  put_u64(p + kManTokens, md.token_count);
  put_u32(p + kManUid, md.owner_uid);
  put_u32(p + kManPid, md.owner_pid);
  put_u32(p + kManNsLen, static_cast<uint32_t>(md.ns.size()));
  put_u32(p + kManNameLen, static_cast<uint32_t>(md.name.size()));
  put_u64(p + kManChunks, m.chunks.size());
  size_t off = kManFixed;
  std::memcpy(p + off, md.ns.data(), md.ns.size());
  off += md.ns.size();
  std::memcpy(p + off, md.name.data(), md.name.size());
  off += md.name.size();
  for (const ManifestChunk& c : m.chunks) {
    put_u64(p + off, c.key.hi);
    put_u64(p + off + 8, c.key.lo);
    put_u64(p + off + 16, c.bytes);
    put_u64(p + off + 24, c.checksum);
    off += kManChunkBytes;
  }
  put_u64(p + off, sum(p, off));
  return out;
}

std::optional<Manifest> parse_manifest(std::span<const std::byte> in, std::string* why) {
  if (in.size() < kManFixed + 8) return fail<Manifest>(why, "manifest truncated");
  const std::byte* p = in.data();
  if (std::memcmp(p, kManifestMagic, 8) != 0) return fail<Manifest>(why, "not a kvpager manifest (bad magic)");
  if (get_u64(p + kManTotal) != in.size()) return fail<Manifest>(why, "manifest length mismatch (torn or truncated)");
  if (get_u64(p + in.size() - 8) != sum(p, in.size() - 8)) return fail<Manifest>(why, "manifest checksum mismatch");
  if (get_u32(p + kManVersion) != kFormatVersion) return fail<Manifest>(why, "unsupported manifest format version");
  const uint32_t flags = get_u32(p + kManFlags);
  if ((flags & ~kManFlagPinned) != 0) return fail<Manifest>(why, "unknown manifest flags");
  const uint64_t ns_len = get_u32(p + kManNsLen);
  const uint64_t name_len = get_u32(p + kManNameLen);
  const uint64_t nchunks = get_u64(p + kManChunks);
  if (ns_len > kMaxNamespaceBytes) return fail<Manifest>(why, "manifest namespace too long");
  if (name_len > kMaxNameBytes) return fail<Manifest>(why, "manifest name too long");
  if (nchunks > kMaxManifestChunks) return fail<Manifest>(why, "manifest chunk count out of range");
  // All three are bounded, so this cannot overflow.
  if (kManFixed + ns_len + name_len + kManChunkBytes * nchunks + 8 != in.size())
    return fail<Manifest>(why, "manifest sizes do not add up");

  Manifest m;
  ContextMeta& md = m.meta;
  md.pinned = (flags & kManFlagPinned) != 0;
  md.generation = get_u64(p + kManGeneration);
  md.created_ns = get_u64(p + kManCreated);
  md.last_access_ns = get_u64(p + kManLastAccess);
  md.ttl_ns = get_u64(p + kManTtl);
  md.token_count = get_u64(p + kManTokens);
  md.owner_uid = get_u32(p + kManUid);
  md.owner_pid = get_u32(p + kManPid);
  size_t off = kManFixed;
  md.ns.assign(reinterpret_cast<const char*>(p + off), ns_len);
  off += ns_len;
  md.name.assign(reinterpret_cast<const char*>(p + off), name_len);
  off += name_len;
  m.chunks.resize(nchunks);
  for (ManifestChunk& c : m.chunks) {
    c.key = ObjectKey{get_u64(p + off), get_u64(p + off + 8)};
    c.bytes = get_u64(p + off + 16);
    c.checksum = get_u64(p + off + 24);
    if (c.bytes > kMaxObjectBytes) return fail<Manifest>(why, "manifest chunk size out of range");
    off += kManChunkBytes;
  }
  return m;
}

std::string key_hex(const ObjectKey& k) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s(32, '0');
  for (int i = 0; i < 16; ++i) {
    s[static_cast<size_t>(15 - i)] = digits[(k.hi >> (4 * i)) & 0xF];
    s[static_cast<size_t>(31 - i)] = digits[(k.lo >> (4 * i)) & 0xF];
  }
  return s;
}

std::optional<ObjectKey> parse_key_hex(std::string_view s) {
  if (s.size() != 32) return std::nullopt;
  uint64_t parts[2] = {0, 0};
  for (size_t i = 0; i < 32; ++i) {
    const char c = s[i];
    uint64_t d;
    if (c >= '0' && c <= '9') d = static_cast<uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f') d = static_cast<uint64_t>(c - 'a' + 10);
    else return std::nullopt;
    parts[i / 16] = (parts[i / 16] << 4) | d;
  }
  return ObjectKey{parts[0], parts[1]};
}

ObjectKey context_id(std::string_view ns, std::string_view name) {
  std::string buf = "kvpager-context";
  auto add = [&](std::string_view s) {
    std::byte len[8];
    put_u64(len, s.size());
    buf.append(reinterpret_cast<const char*>(len), 8);
    buf.append(s);
  };
  add(ns);
  add(name);
  XXH128_hash_t h = XXH3_128bits(buf.data(), buf.size());
  return ObjectKey{h.high64, h.low64};
}

ObjectKey context_chunk_key(std::string_view ns, std::string_view name, uint64_t generation, uint64_t index) {
  // chunk_key() length-prefixes the context field, so a fixed 8-byte suffix
  // cannot collide with another name.
  std::string ctx(name);
  std::byte gen[8];
  put_u64(gen, generation);
  ctx.append(reinterpret_cast<const char*>(gen), 8);
  return chunk_key(ns, ctx, index);
}

}  // namespace kvpager::store
