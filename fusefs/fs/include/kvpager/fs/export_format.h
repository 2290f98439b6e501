// The context export file (".kvctx"): one context, self-describing and
// verifiable, so a copy can be checked end to end when it is imported on
// another machine (`kvpager store get NAME FILE --export`, then
// `cp FILE MOUNT/import/` or `kvpager store put FILE --context NAME`).
//
//   header   fixed part, namespace, name, chunk table, XXH3-64 of all that
//   payload  the context's bytes: the chunks back to back, exactly what
//            /contexts/<name>/kv reads
//
// Header (little-endian, offsets in bytes):
//    0  magic "\x89KVCTX\r\n"   (the \x89 and \r\n catch 7-bit and newline-mangling transfers)
//    8  u32 version (1)
//   12  u32 flags: bit 0 pinned; other bits must be 0
//   16  u64 header_bytes: the whole header, up to and including its checksum
//   24  u64 total_bytes: payload bytes (= the sum of the chunk sizes)
//   32  u64 chunk_count
//   40  u64 created_ns   (wall clock)
//   48  u64 token_count  (0: unknown)
//   56  u64 ttl_ns       (0: none)
//   64  u32 ns_len, 68 u32 name_len
//   72  namespace bytes, name bytes, then chunk_count x {u64 bytes, u64 XXH3-64 of the chunk}
//   header_bytes-8: u64 XXH3-64 of bytes [0, header_bytes-8)
// A file is valid only if it is exactly header_bytes + total_bytes long and
// every chunk matches its checksum: a truncated, extended or altered file is
// rejected. Pure functions over bytes (no I/O): fuzzed by fusefs/fs/fuzz.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvpager::fs {

inline constexpr std::byte kExportMagic[8] = {std::byte{0x89}, std::byte{'K'}, std::byte{'V'}, std::byte{'C'},
                                              std::byte{'T'},  std::byte{'X'}, std::byte{'\r'}, std::byte{'\n'}};
inline constexpr uint32_t kExportVersion = 1;
inline constexpr size_t kExportFixedBytes = 72;
inline constexpr size_t kExportMaxNamespace = 1024;  // as the store (kMaxNamespaceBytes)
inline constexpr size_t kExportMaxName = 4096;       // as the store (kMaxNameBytes)
// Bounds of what an importer holds in memory: the header, and one chunk.
inline constexpr uint64_t kExportMaxChunks = uint64_t{1} << 22;
inline constexpr uint64_t kExportMaxChunkBytes = uint64_t{64} << 20;  // the largest chunk_size
inline constexpr const char* kExportSuffix = ".kvctx";

struct ExportChunk {
  uint64_t bytes = 0;
  uint64_t checksum = 0;  // XXH3-64
  friend bool operator==(const ExportChunk&, const ExportChunk&) = default;
};

struct ExportHeader {
  std::string ns;
  std::string name;
  bool pinned = false;
  uint64_t created_ns = 0;
  uint64_t token_count = 0;
  uint64_t ttl_ns = 0;
  std::vector<ExportChunk> chunks;
  uint64_t total_bytes() const;
  uint64_t header_bytes() const;  // encoded size
  friend bool operator==(const ExportHeader&, const ExportHeader&) = default;
};

std::vector<std::byte> encode_export_header(const ExportHeader& h);

// The header at the start of `in` (bytes after it are not looked at):
// nullopt, and why, unless `in` starts with a complete, valid header.
std::optional<ExportHeader> parse_export_header(std::span<const std::byte> in, std::string* why = nullptr);

// What the first bytes of a file say about it: an export file, not one, or
// too short to tell (fewer than 8 bytes that match the magic so far).
enum class Sniff : uint8_t { kExport, kRaw, kUndecided };
Sniff sniff_export(std::span<const std::byte> first_bytes);

// Streaming reader of an export file, for importers that receive it in
// pieces (a FUSE write at a time): feed() the bytes in order; each chunk is
// handed to on_chunk only once it is complete and its checksum matched.
// The first problem sticks: feed() and finish() return false from then on
// and error() says what it was.
class ExportReader {
 public:
  using ChunkSink = std::function<bool(uint64_t index, std::span<const std::byte> chunk)>;
  // on_chunk returning false stops the reader (error() = "stopped by the sink").
  explicit ExportReader(ChunkSink on_chunk) : on_chunk_(std::move(on_chunk)) {}

  bool feed(std::span<const std::byte> in);
  // True if the input ended exactly at the end of the last chunk.
  bool finish();

  const std::optional<ExportHeader>& header() const { return header_; }
  const std::string& error() const { return error_; }
  bool failed() const { return !error_.empty(); }
  uint64_t consumed() const { return consumed_; }

 private:
  bool fail(std::string why);

  ChunkSink on_chunk_;
  std::vector<std::byte> buf_;  // the header until it is whole, then the chunk being received
  std::optional<ExportHeader> header_;
  uint64_t header_len_ = 0;     // known once the fixed part is in
  uint64_t chunk_ = 0;          // index of the chunk being received
  uint64_t consumed_ = 0;
  std::string error_;
};

}  // namespace kvpager::fs
