// Writes valid object headers and manifests into DIR as the fuzz seed corpus.
#include <cstdio>
#include <string>
#include <vector>

#include "kvpager/store/format.h"

using namespace kvpager;
using namespace kvpager::store;

namespace {
bool write(const std::string& path, const std::byte* p, size_t n) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  bool good = std::fwrite(p, 1, n, f) == n;
  return std::fclose(f) == 0 && good;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_store_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  bool good = true;
  for (uint64_t i = 0; i < 4; ++i) {
    ObjectHeader h;
    h.key = chunk_key("ns", "ctx", i);
    h.payload_bytes = i * 1000 + 1;
    h.checksum = 0x1234 + i;
    h.header_block = 4096u << i;
    h.created_ns = 1'700'000'000'000'000'000ull + i;
    h.writer_pid = static_cast<uint32_t>(100 + i);
    h.writer_uid = static_cast<uint32_t>(i);
    std::byte buf[kObjectHeaderBytes];
    encode_object_header(h, std::span<std::byte, kObjectHeaderBytes>(buf, kObjectHeaderBytes));
    good &= write(dir + "/header-" + std::to_string(i), buf, sizeof buf);

    Manifest m;
    m.meta.ns = i % 2 ? "model-a" : "";
    m.meta.name = std::string("session-") + std::to_string(i);
    m.meta.generation = 77 + i;
    m.meta.created_ns = h.created_ns;
    m.meta.last_access_ns = h.created_ns + 5;
    m.meta.owner_uid = 1000;
    m.meta.owner_pid = 4242;
    m.meta.token_count = i * 512;
    m.meta.pinned = i == 2;
    m.meta.ttl_ns = i == 3 ? 3'600'000'000'000ull : 0;
    for (uint64_t c = 0; c < i * 2; ++c) m.chunks.push_back(ManifestChunk{chunk_key("ns", "ctx", c), 2u << 20, c * 31});
    std::vector<std::byte> bytes = encode_manifest(m);
    good &= write(dir + "/manifest-" + std::to_string(i), bytes.data(), bytes.size());
  }
  return good ? 0 : 1;
}
