// libFuzzer target: the token store's object-header and manifest parsers.
// Properties checked on every input:
//   - the parsers never read out of bounds or crash (ASan/UBSan);
//   - whatever parses re-encodes to exactly the same bytes (the formats are
//     canonical, so a parser that accepted something the encoder cannot
//     produce would show here);
//   - the same holds after the input's length and checksum fields are
//     patched to be right, so the structural checks behind the checksum
//     are fuzzed too, not only the checksum test.
#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "kvpager/store/format.h"

using namespace kvpager::store;

namespace {

void check_header(std::span<const std::byte> in) {
  auto h = parse_object_header(in);
  if (!h) return;
  std::byte out[kObjectHeaderBytes];
  encode_object_header(*h, std::span<std::byte, kObjectHeaderBytes>(out, kObjectHeaderBytes));
  if (std::memcmp(out, in.data(), kObjectHeaderBytes) != 0) std::abort();
  if (!(parse_object_header(out) == h)) std::abort();
}

void check_manifest(std::span<const std::byte> in) {
  auto m = parse_manifest(in);
  if (!m) return;
  std::vector<std::byte> out = encode_manifest(*m);
  if (out.size() != in.size() || std::memcmp(out.data(), in.data(), in.size()) != 0) std::abort();
  if (!(parse_manifest(out) == m)) std::abort();
}

void put_u64(std::byte* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  check_header(in);
  check_manifest(in);

  // Patched copies: correct self-checksums (and manifest length).
  if (size >= kObjectHeaderBytes) {
    std::vector<std::byte> h(in.begin(), in.begin() + kObjectHeaderBytes);
    put_u64(h.data() + 120, XXH3_64bits(h.data(), 120));
    check_header(h);
  }
  if (size >= 96) {
    std::vector<std::byte> m(in.begin(), in.end());
    put_u64(m.data() + 16, m.size());
    put_u64(m.data() + m.size() - 8, XXH3_64bits(m.data(), m.size() - 8));
    check_manifest(m);
  }

  // Key names: whatever parses prints back the same.
  std::string_view s(reinterpret_cast<const char*>(data), size);
  if (auto k = parse_key_hex(s)) {
    if (key_hex(*k) != s) std::abort();
  }
  return 0;
}
