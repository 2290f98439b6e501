// The token store's on-disk formats: the object header and the context
// manifest. Pure functions over bytes (no I/O), so the parsers can be fuzzed
// on their own (fusefs/store/fuzz).
//
// Every integer is little-endian at a fixed offset; every record ends with an
// XXH3-64 of the bytes before it, so a torn or flipped record never parses.
// Parsers check every length against the input before touching it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvpager/store.h"

namespace kvpager::store {

inline constexpr uint32_t kFormatVersion = 1;

// ---------------------------------------------------------------- objects
//
// An object file: a header block (kObjectHeaderBytes of encoded header, then
// zeros up to header_block bytes, a multiple of the O_DIRECT alignment), the
// payload, then zeros up to the next alignment boundary. The header names the
// key (a file renamed to the wrong name is detected), the payload size and
// the payload's XXH3-64.
inline constexpr size_t kObjectHeaderBytes = 128;
inline constexpr uint64_t kMinHeaderBlock = 4096;
inline constexpr uint64_t kMaxHeaderBlock = 1u << 20;
inline constexpr uint64_t kMaxObjectBytes = uint64_t{1} << 40;  // sanity bound of the parser

struct ObjectHeader {
  ObjectKey key;
  uint64_t payload_bytes = 0;
  uint64_t checksum = 0;          // XXH3-64 of the payload
  uint64_t header_block = kMinHeaderBlock;  // payload offset in the file
  uint64_t created_ns = 0;        // wall clock, ns since the epoch
  uint32_t writer_pid = 0;
  uint32_t writer_uid = 0;
  friend bool operator==(const ObjectHeader&, const ObjectHeader&) = default;
};

void encode_object_header(const ObjectHeader& h, std::span<std::byte, kObjectHeaderBytes> out);
// nullopt (and the reason in *why) unless `in` starts with a valid header.
std::optional<ObjectHeader> parse_object_header(std::span<const std::byte> in, std::string* why = nullptr);

uint64_t payload_checksum(std::span<const std::byte> payload);

// ---------------------------------------------------------------- contexts

inline constexpr size_t kMaxNameBytes = 4096;
inline constexpr size_t kMaxNamespaceBytes = 1024;
inline constexpr uint64_t kMaxManifestChunks = uint64_t{1} << 24;

// What the store knows about a context besides its chunks.
struct ContextMeta {
  std::string ns;    // namespace: model / tenant salt
  std::string name;  // the context key
  uint64_t generation = 0;      // names this publication's objects; set by the store
  uint64_t created_ns = 0;      // wall clock, ns since the epoch
  uint64_t last_access_ns = 0;  // as written; the store tracks later reads in the manifest's mtime
  uint32_t owner_uid = 0;
  uint32_t owner_pid = 0;
  uint64_t token_count = 0;  // 0: unknown
  bool pinned = false;       // never dropped for capacity or TTL
  uint64_t ttl_ns = 0;       // dropped once idle (since last access) this long; 0: never
  friend bool operator==(const ContextMeta&, const ContextMeta&) = default;
};

struct ManifestChunk {
  ObjectKey key;
  uint64_t bytes = 0;
  uint64_t checksum = 0;  // XXH3-64 of the chunk (equals its object header's)
  friend bool operator==(const ManifestChunk&, const ManifestChunk&) = default;
};

struct Manifest {
  ContextMeta meta;
  std::vector<ManifestChunk> chunks;
  uint64_t total_bytes() const;
  friend bool operator==(const Manifest&, const Manifest&) = default;
};

std::vector<std::byte> encode_manifest(const Manifest& m);
std::optional<Manifest> parse_manifest(std::span<const std::byte> in, std::string* why = nullptr);

// ---------------------------------------------------------------- names

// 32 lower-case hex digits (hi then lo), and back.
std::string key_hex(const ObjectKey& k);
std::optional<ObjectKey> parse_key_hex(std::string_view s);

// The manifest file of a context is named by this: XXH3-128 of the
// length-prefixed namespace and name (any bytes allowed in either).
ObjectKey context_id(std::string_view ns, std::string_view name);

// The key of chunk `index` of one publication of a context: chunk_key() of
// the namespace, the name with the generation appended, and the index. A new
// publication of the same name never overwrites the objects the old manifest
// names, so a reader sees the whole old or the whole new context.
ObjectKey context_chunk_key(std::string_view ns, std::string_view name, uint64_t generation, uint64_t index);

}  // namespace kvpager::store
