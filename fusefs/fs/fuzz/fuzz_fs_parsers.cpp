// libFuzzer target: kvpager-fs's path parser and context-export parser.
// Properties checked on every input:
//   - nothing reads out of bounds or crashes (ASan/UBSan);
//   - paths: whatever resolves renders back to a path that resolves to the
//     same node, names nothing outside the tree, and carries only valid names;
//     one component resolves the same through child() as through resolve();
//   - exports: whatever header parses re-encodes to exactly the same bytes;
//     the streaming reader, fed the input in pieces of any size, accepts
//     exactly what a whole-file check accepts and delivers exactly the payload;
//   - the same after the input's checksums are patched to be right, so the
//     checks behind the checksums are fuzzed too;
//   - /proc/<tid>/stat lines: any verdict is one of the two phrasings.
#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kvpager/fs/export_format.h"
#include "kvpager/fs/paths.h"
#include "kvpager/fs/writer_exit.h"
#include "kvpager/store/le_bytes.h"

using namespace kvpager::fs;

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

void check_path(std::string_view s) {
  PathRef r = resolve(s);
  if (r.kind == NodeKind::kNone) return;
  std::string back = render(r);
  check(!back.empty() && back[0] == '/');
  check(resolve(back) == r);
  check(back.find("/..") == std::string::npos || r.context.find("..") != std::string::npos);
  if (!r.context.empty()) check(r.kind == NodeKind::kImportFile ? import_context_name(r.context).has_value()
                                                                : valid_context_name(r.context));
  if (!r.knob.empty()) check(valid_knob_name(r.knob));
  if (r.kind == NodeKind::kProcessDir) check(r.pid > 0);
}

void check_component(std::string_view name) {
  PathRef dirs[5];
  dirs[0].kind = NodeKind::kRoot;
  dirs[1].kind = NodeKind::kContextsDir;
  dirs[2].kind = NodeKind::kImportDir;
  dirs[3].kind = NodeKind::kProcessesDir;
  dirs[4].kind = NodeKind::kControlDir;
  for (const PathRef& d : dirs) {
    PathRef c = child(d, name);
    if (c.kind == NodeKind::kNone) continue;
    check(name.find('/') == std::string_view::npos && !name.empty() && name != "." && name != "..");
    check(resolve(render(c)) == c);
    check(resolve(render(d) + (d.kind == NodeKind::kRoot ? "" : "/") + std::string(name)) == c);
  }
  if (auto n = import_context_name(name)) check(valid_context_name(*n) && n->size() <= name.size());
  if (auto i = parse_chunk_index(name)) check(std::to_string(*i) == name);
  if (auto p = parse_pid(name)) check(std::to_string(*p) == name);
}

// The reference: the whole file at once.
bool whole_file_ok(std::span<const std::byte> in, std::vector<std::byte>* payload) {
  auto h = parse_export_header(in);
  if (!h) return false;
  const uint64_t hb = h->header_bytes(), total = h->total_bytes();
  if (in.size() != hb + total) return false;
  uint64_t off = hb;
  for (const ExportChunk& c : h->chunks) {
    if (XXH3_64bits(in.data() + off, c.bytes) != c.checksum) return false;
    off += c.bytes;
  }
  payload->assign(in.begin() + static_cast<ptrdiff_t>(hb), in.end());
  return true;
}

void check_export(std::span<const std::byte> in, uint8_t piece_seed) {
  if (auto h = parse_export_header(in)) {
    auto enc = encode_export_header(*h);
    check(enc.size() == h->header_bytes() && enc.size() <= in.size());
    check(std::memcmp(enc.data(), in.data(), enc.size()) == 0);
    check(parse_export_header(enc) == h);
  }
  std::vector<std::byte> want, got;
  const bool ok = whole_file_ok(in, &want);
  ExportReader r([&](uint64_t, std::span<const std::byte> c) {
    got.insert(got.end(), c.begin(), c.end());
    return true;
  });
  size_t off = 0, piece = 1 + piece_seed % 97;
  bool fed = true;
  while (off < in.size() && fed) {
    const size_t n = std::min(piece, in.size() - off);
    fed = r.feed(in.subspan(off, n));
    off += n;
    piece = piece * 3 % 4099 + 1;
  }
  const bool streamed = fed && r.finish();
  check(streamed == ok);
  if (ok) check(got == want);
}

using kvpager::store::le::get_u64;
using kvpager::store::le::put_u64;

// The input with the magic, the header length and every checksum made
// right (as far as the fields allow), so the structural checks are reached.
std::vector<std::byte> patched(std::span<const std::byte> in) {
  std::vector<std::byte> v(in.begin(), in.end());
  if (v.size() < kExportFixedBytes) return v;
  std::memcpy(v.data(), kExportMagic, sizeof kExportMagic);
  const uint64_t ns = get_u64(v.data() + 64) & 0xffffffff, name = get_u64(v.data() + 64) >> 32;
  const uint64_t chunks = get_u64(v.data() + 32);
  if (ns > kExportMaxNamespace || name > kExportMaxName || chunks > 4096) return v;
  const uint64_t hb = kExportFixedBytes + ns + name + 16 * chunks + 8;
  put_u64(v.data() + 16, hb);
  if (v.size() < hb) return v;
  uint64_t off = hb, total = 0;
  for (uint64_t i = 0; i < chunks; ++i) {
    std::byte* e = v.data() + kExportFixedBytes + ns + name + 16 * i;
    const uint64_t bytes = get_u64(e);
    if (bytes == 0 || bytes > v.size() - off) break;
    put_u64(e + 8, XXH3_64bits(v.data() + off, bytes));
    off += bytes;
    total += bytes;
  }
  put_u64(v.data() + 24, total);
  put_u64(v.data() + hb - 8, XXH3_64bits(v.data(), hb - 8));
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  std::string_view s(reinterpret_cast<const char*>(data), size);
  check_path(s);
  if (size < 300) check_component(s);
  const uint8_t seed = size ? data[size - 1] : 0;
  check_export(in, seed);
  auto fixed = patched(in);
  check_export(fixed, seed);
  if (auto why = failed_exit_in_stat(s))
    check(why->rfind("was killed by signal ", 0) == 0 || why->rfind("exited with status ", 0) == 0);
  return 0;
}
