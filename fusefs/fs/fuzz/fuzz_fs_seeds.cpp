// Writes the fuzz seed corpus into DIR: valid context exports of a few
// shapes, paths of every kind, and /proc/<tid>/stat lines of dying tasks.
#include <xxhash.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "kvpager/fs/export_format.h"

using namespace kvpager::fs;

namespace {
bool write(const std::string& path, const void* p, size_t n) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  bool good = std::fwrite(p, 1, n, f) == n;
  return std::fclose(f) == 0 && good;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_fs_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  bool good = true;
  const size_t sizes[] = {0, 1, 100, 257, 1000};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
    std::vector<std::byte> payload(sizes[i]);
    for (size_t b = 0; b < payload.size(); ++b) payload[b] = static_cast<std::byte>(b * 31 + i);
    ExportHeader h;
    h.ns = i % 2 ? "model-a" : "";
    h.name = "chat-" + std::to_string(i);
    h.pinned = i == 2;
    h.created_ns = 1'700'000'000'000'000'000ull + i;
    h.token_count = i * 64;
    h.ttl_ns = i == 3 ? 3'600'000'000'000ull : 0;
    const size_t chunk = 1 + i * 37;
    for (size_t off = 0; off < payload.size(); off += chunk) {
      const size_t n = std::min(chunk, payload.size() - off);
      h.chunks.push_back({n, XXH3_64bits(payload.data() + off, n)});
    }
    std::vector<std::byte> file = encode_export_header(h);
    file.insert(file.end(), payload.begin(), payload.end());
    good &= write(dir + "/export-" + std::to_string(i), file.data(), file.size());
  }
  const char* paths[] = {"/contexts/chat 1/chunks/12", "/import/chat.kvctx", "/processes/42/control/prefetch_depth",
                         "/control/hbm_budget", "/stats", "/contexts/x/../kv"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; ++i)
    good &= write(dir + "/path-" + std::to_string(i), paths[i], std::string(paths[i]).size());
  // A task killed by SIGINT and one exiting with status 3 (flags PF_EXITING).
  for (uint64_t code : {uint64_t{2}, uint64_t{3} << 8}) {
    std::string stat = "4242 (cp (x) y) R";
    for (int f = 4; f <= 52; ++f) stat += " " + std::to_string(f == 9 ? 0x404 : f == 52 ? code : f);
    good &= write(dir + "/stat-" + std::to_string(code), stat.data(), stat.size());
  }
  return good ? 0 : 1;
}
