// The token store's on-disk formats: what parses, what is refused.
#include <gtest/gtest.h>

#include "kvpager/store/format.h"

using namespace kvpager;
using namespace kvpager::store;

namespace {

ObjectHeader sample_header() {
  ObjectHeader h;
  h.key = chunk_key("ns", "ctx", 7);
  h.payload_bytes = 2 * 1024 * 1024 + 3;
  h.checksum = 0xDEADBEEFCAFEF00Dull;
  h.header_block = 4096;
  h.created_ns = 1'700'000'000'123'456'789ull;
  h.writer_pid = 4242;
  h.writer_uid = 1000;
  return h;
}

Manifest sample_manifest() {
  Manifest m;
  m.meta.ns = "llama-70b/tenant-a";
  m.meta.name = std::string("session with / and \0 bytes", 26);
  m.meta.generation = 99;
  m.meta.created_ns = 1;
  m.meta.last_access_ns = 2;
  m.meta.owner_uid = 1000;
  m.meta.owner_pid = 77;
  m.meta.token_count = 123456;
  m.meta.pinned = true;
  m.meta.ttl_ns = 3600;
  for (uint64_t i = 0; i < 5; ++i) m.chunks.push_back({chunk_key("a", "b", i), 1000 + i, i * 17});
  return m;
}

std::array<std::byte, kObjectHeaderBytes> encode(const ObjectHeader& h) {
  std::array<std::byte, kObjectHeaderBytes> b{};
  encode_object_header(h, b);
  return b;
}

}  // namespace

TEST(StoreFormat, ObjectHeaderRoundTrips) {
  ObjectHeader h = sample_header();
  auto b = encode(h);
  auto back = parse_object_header(b);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, h);
}

TEST(StoreFormat, ObjectHeaderRefusesEveryTruncationAndEveryFlippedByte) {
  auto b = encode(sample_header());
  for (size_t n = 0; n < b.size(); ++n) {
    EXPECT_FALSE(parse_object_header(std::span<const std::byte>(b.data(), n))) << "truncated to " << n;
  }
  for (size_t i = 0; i < b.size(); ++i) {
    auto c = b;
    c[i] ^= std::byte{0x01};
    std::string why;
    EXPECT_FALSE(parse_object_header(c, &why)) << "byte " << i;
    EXPECT_FALSE(why.empty());
  }
}

TEST(StoreFormat, ObjectHeaderRefusesOutOfRangeFieldsEvenWithAGoodChecksum) {
  for (uint64_t block : {uint64_t{0}, uint64_t{512}, uint64_t{4097}, uint64_t{1} << 21}) {
    ObjectHeader h = sample_header();
    h.header_block = block;
    EXPECT_FALSE(parse_object_header(encode(h))) << block;
  }
  ObjectHeader h = sample_header();
  h.payload_bytes = kMaxObjectBytes + 1;
  EXPECT_FALSE(parse_object_header(encode(h)));
}

TEST(StoreFormat, ManifestRoundTripsAnyNameBytes) {
  Manifest m = sample_manifest();
  auto b = encode_manifest(m);
  auto back = parse_manifest(b);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, m);
  EXPECT_EQ(back->total_bytes(), 5 * 1000 + 10u);
}

TEST(StoreFormat, ManifestRefusesEveryTruncationEveryFlipAndTrailingBytes) {
  auto b = encode_manifest(sample_manifest());
  for (size_t n = 0; n < b.size(); ++n) {
    EXPECT_FALSE(parse_manifest(std::span<const std::byte>(b.data(), n))) << "truncated to " << n;
  }
  for (size_t i = 0; i < b.size(); ++i) {
    auto c = b;
    c[i] ^= std::byte{0x80};
    EXPECT_FALSE(parse_manifest(c)) << "byte " << i;
  }
  auto longer = b;
  longer.push_back(std::byte{0});
  EXPECT_FALSE(parse_manifest(longer));
}

TEST(StoreFormat, EmptyManifestIsValid) {
  Manifest m;
  m.meta.name = "x";
  auto back = parse_manifest(encode_manifest(m));
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(back->chunks.empty());
}

TEST(StoreFormat, KeyHexRoundTripsAndRefusesJunk) {
  ObjectKey k = chunk_key("n", "c", 3);
  std::string hex = key_hex(k);
  EXPECT_EQ(hex.size(), 32u);
  EXPECT_EQ(parse_key_hex(hex), std::optional<ObjectKey>(k));
  EXPECT_FALSE(parse_key_hex(hex.substr(1)));
  EXPECT_FALSE(parse_key_hex(hex + "0"));
  std::string upper = hex;
  upper[0] = 'A';
  EXPECT_FALSE(parse_key_hex(upper));
  EXPECT_FALSE(parse_key_hex("g" + hex.substr(1)));
}

TEST(StoreFormat, GenerationsAndNamesGiveDistinctKeys) {
  EXPECT_FALSE(context_chunk_key("", "a", 1, 0) == context_chunk_key("", "a", 2, 0));
  EXPECT_FALSE(context_chunk_key("", "a", 1, 0) == context_chunk_key("", "a", 1, 1));
  EXPECT_FALSE(context_id("ab", "c") == context_id("a", "bc"));
  EXPECT_FALSE(context_id("", "a") == context_id("a", ""));
}
