// The control-plane wire format: every message type round-trips with random field values; every
// truncation, random mutation, huge length field, bad bool, bad magic, unknown type and other
// version is a clean error (never a crash or a huge allocation); and a 256-entry Plan is fast.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <variant>

#include "pp/transport/wire.h"
#include "test-util.h"
#include "test-wire-random.h"

namespace pp::transport {
namespace {

constexpr size_t kTypes = std::variant_size_v<Message>;

void put_u32(std::vector<uint8_t>& b, size_t off, uint32_t v) { std::memcpy(&b[off], &v, 4); }
void put_u16(std::vector<uint8_t>& b, size_t off, uint16_t v) { std::memcpy(&b[off], &v, 2); }

TEST(Wire, RoundTripsEveryTypeWithRandomFields) {
  test::RandomMessages r(test::rng()());
  std::vector<uint8_t> buf, again;
  for (int iter = 0; iter < 2000; ++iter) {
    for (size_t t = 0; t < kTypes; ++t) {
      const Message m = r.make(t);
      ASSERT_EQ(m.index(), t);
      encode(m, buf);
      ASSERT_EQ(buf.size(), encoded_size(m));
      auto d = decode(buf);
      ASSERT_TRUE(d.ok()) << message_name(m) << ": " << d.status().message();
      ASSERT_EQ(d->index(), t);
      ASSERT_TRUE(*d == m) << message_name(m) << " differs after a round trip (iteration " << iter
                           << ")";
      encode(*d, again);
      ASSERT_EQ(again, buf);
    }
  }
}

TEST(Wire, KeepsEveryFloatBitPattern) {
  test::RandomMessages r(test::rng()(), /*any_float_bits=*/true);
  for (int iter = 0; iter < 2000; ++iter) {
    for (size_t t : {2u, 5u, 6u}) {  // Loaded (double), Plan and Tokens (floats)
      const Message m = r.make(t);
      const auto bytes = encode(m);
      auto d = decode(bytes);
      ASSERT_TRUE(d.ok()) << d.status().message();
      ASSERT_EQ(encode(*d), bytes);  // bytewise: NaN payloads included
    }
  }
}

TEST(Wire, HeaderIsAsDocumented) {
  test::RandomMessages r(test::rng()());
  const Message m = r.make(5);
  const auto b = encode(m);
  uint32_t magic, length;
  uint16_t version, type;
  std::memcpy(&magic, &b[0], 4);
  std::memcpy(&version, &b[4], 2);
  std::memcpy(&type, &b[6], 2);
  std::memcpy(&length, &b[8], 4);
  EXPECT_EQ(magic, kWireMagic);
  EXPECT_EQ(std::memcmp(&b[0], "PPP1", 4), 0);
  EXPECT_EQ(version, kWireVersion);
  EXPECT_EQ(type, static_cast<uint16_t>(MessageType::kPlan));
  EXPECT_EQ(length, b.size() - kWireHeaderBytes);
  EXPECT_STREQ(message_name(m), "Plan");
}

TEST(Wire, EveryTruncationIsAnError) {
  test::RandomMessages r(test::rng()());
  for (int iter = 0; iter < 20; ++iter) {
    for (size_t t = 0; t < kTypes; ++t) {
      const auto full = encode(r.make(t));
      for (size_t cut = 0; cut < full.size(); ++cut) {
        std::vector<uint8_t> part(full.begin(), full.begin() + cut);
        auto d = decode(part);
        ASSERT_FALSE(d.ok()) << "type " << t << " cut at " << cut;
        EXPECT_EQ(d.status().code(), StatusCode::kDataLoss);
        // With the length field made consistent, the body parser itself must notice.
        if (cut >= kWireHeaderBytes) {
          put_u32(part, 8, static_cast<uint32_t>(cut - kWireHeaderBytes));
          auto d2 = decode(part);
          ASSERT_FALSE(d2.ok()) << "type " << t << " cut at " << cut;
          EXPECT_EQ(d2.status().code(), StatusCode::kDataLoss);
          EXPECT_EQ(d2.status().message().find('\n'), std::string::npos);
        }
      }
    }
  }
}

TEST(Wire, TrailingBytesAreAnError) {
  test::RandomMessages r(test::rng()());
  for (size_t t = 0; t < kTypes; ++t) {
    auto b = encode(r.make(t));
    b.push_back(static_cast<uint8_t>(r.u64()));
    put_u32(b, 8, static_cast<uint32_t>(b.size() - kWireHeaderBytes));
    auto d = decode(b);
    ASSERT_FALSE(d.ok());
    EXPECT_NE(d.status().message().find("1 trailing bytes"), std::string::npos)
        << d.status().message();
  }
}

TEST(Wire, RandomMutationsNeverCrash) {
  test::RandomMessages r(test::rng()());
  auto& g = r.gen();
  int n_ok = 0, n_err = 0;
  for (int iter = 0; iter < 10000; ++iter) {
    auto b = encode(r.make(iter % kTypes));
    const int n_flips = 1 + static_cast<int>(g() % 4);
    for (int k = 0; k < n_flips; ++k) {
      // Mostly the body; sometimes the header, so the header checks are mutated too.
      const size_t at = (g() % 8 == 0) ? g() % kWireHeaderBytes : g() % b.size();
      b[at] ^= static_cast<uint8_t>(1 + g() % 255);
    }
    auto d = decode(b);
    if (d.ok()) {
      ++n_ok;
      // A mutation that still decodes is a valid message: it re-encodes to the same bytes.
      ASSERT_EQ(encode(*d), b);
    } else {
      ++n_err;
      EXPECT_FALSE(d.status().message().empty());
    }
  }
  std::printf("[wire] 10000 mutations: %d still valid, %d rejected\n", n_ok, n_err);
  EXPECT_GT(n_err, 0);
}

TEST(Wire, HugeLengthAtEveryOffsetFailsQuickly) {
  test::RandomMessages r(test::rng()());
  const auto t0 = std::chrono::steady_clock::now();
  size_t n_tries = 0;
  for (size_t t = 0; t < kTypes; ++t) {
    const auto full = encode(r.make(t));
    for (size_t off = kWireHeaderBytes; off + 4 <= full.size(); ++off) {
      auto b = full;
      put_u32(b, off, 0xFFFFFFFFu);
      auto d = decode(b);  // a length of 2^32-1 anywhere must not allocate gigabytes
      if (d.ok()) {
        EXPECT_EQ(encode(*d), b);
      }
      ++n_tries;
    }
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 2.0) << n_tries << " decodes took " << s << " s";
}

// Offsets from the documented layout: Plan = seq u64, group i32, count u32, entries...;
// PlanEntry = request_id u64, pos_begin i32, n_new i32, new_blocks (u32 + 4n), reset_table u8,
// sample u8, sample_step u64, sampling 40 bytes, token_ids (u32 + 4n), ...
TEST(Wire, ErrorNamesTheEntryAndField) {
  test::RandomMessages r(test::rng()());
  Plan p = r.plan(6);
  size_t off = kWireHeaderBytes + 8 + 4 + 4;
  for (int i = 0; i < 3; ++i)
    off += encoded_size(Plan{0, 0, {p.entries[i]}, {}}) - encoded_size(Plan{});
  const size_t new_blocks_off = off + 8 + 4 + 4;
  const size_t reset_off = new_blocks_off + 4 + 4 * p.entries[3].new_blocks.size();
  // reset, sample, step, the sampling's scalars and its two bias vectors.
  const size_t token_ids_off =
      reset_off + 1 + 1 + 8 + 40 + 8 + 8 * p.entries[3].sampling.bias_ids.size();
  const auto full = encode(p);

  uint32_t n_tokens;
  std::memcpy(&n_tokens, &full[token_ids_off], 4);
  ASSERT_EQ(n_tokens, p.entries[3].token_ids.size());

  auto b = full;
  put_u32(b, token_ids_off, 0xFFFFFFFFu);
  auto d = decode(b);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(d.status().message().find(
                "malformed 'Plan' message: entry 3 token_ids length 4294967295 exceeds frame"),
            std::string::npos)
      << d.status().message();

  b = full;
  b[reset_off] = 2;
  d = decode(b);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("entry 3 reset_table is 2"), std::string::npos)
      << d.status().message();
  b[reset_off] = p.entries[3].reset_table ? 0 : 1;  // the other valid value decodes
  d = decode(b);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(std::get<Plan>(*d).entries[3].reset_table, !p.entries[3].reset_table);
}

TEST(Wire, CountCannotOutgrowTheFrame) {
  // 100000 entries claimed in a 40-byte frame: rejected before any entry is allocated.
  Plan p;
  auto b = encode(p);
  put_u32(b, kWireHeaderBytes + 12, 100000);
  b.resize(b.size() + 12, 0);
  put_u32(b, 8, static_cast<uint32_t>(b.size() - kWireHeaderBytes));
  auto d = decode(b);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("entry length 100000 exceeds frame"), std::string::npos)
      << d.status().message();
}

TEST(Wire, OtherVersionsMagicAndTypesAreRejected) {
  test::RandomMessages r(test::rng()());
  const auto full = encode(r.make(r.len(kTypes - 1)));

  auto b = full;
  put_u16(b, 4, kWireVersion + 1);
  auto d = decode(b);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(d.status().message().find(fmt::format("version {}", kWireVersion + 1)),
            std::string::npos);
  EXPECT_NE(d.status().message().find(fmt::format("version {}", kWireVersion)), std::string::npos);

  b = full;
  put_u16(b, 4, 0);
  EXPECT_EQ(decode(b).status().code(), StatusCode::kUnimplemented);

  b = full;
  put_u32(b, 0, 0xdeadbeef);
  d = decode(b);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(d.status().message().find("magic"), std::string::npos);

  for (uint16_t type : {uint16_t(0), uint16_t(kTypes + 1), uint16_t(0xffff)}) {
    b = full;
    put_u16(b, 6, type);
    d = decode(b);
    ASSERT_FALSE(d.ok());
    EXPECT_NE(d.status().message().find("unknown type"), std::string::npos);
  }

  b = full;
  put_u32(b, 8, static_cast<uint32_t>(b.size()));  // length says more than there is
  EXPECT_FALSE(decode(b).ok());
}

TEST(Wire, PlanOf256EntriesIsFast) {
  test::RandomMessages r(test::rng()());
  // Decode-shaped entries: one token each, a block now and then, sampling on.
  Plan p = r.plan(0);
  for (int i = 0; i < 256; ++i) {
    PlanEntry e = r.entry();
    e.token_ids = {r.i32()};
    e.new_blocks.resize(i % 16 == 0 ? 1 : 0);
    e.penalty_prompt_ids.clear();
    e.penalty_output_ids.clear();
    p.entries.push_back(std::move(e));
  }
  const Message m = p;
  std::vector<uint8_t> buf;
  constexpr int kIters = 2000;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kIters; ++i) encode(m, buf);
  auto t1 = std::chrono::steady_clock::now();
  size_t n_entries = 0;
  for (int i = 0; i < kIters; ++i) {
    auto d = decode(buf);
    ASSERT_TRUE(d.ok());
    n_entries += std::get<Plan>(*d).entries.size();
  }
  auto t2 = std::chrono::steady_clock::now();
  EXPECT_EQ(n_entries, size_t(256) * kIters);
  const double enc_us = std::chrono::duration<double, std::micro>(t1 - t0).count() / kIters;
  const double dec_us = std::chrono::duration<double, std::micro>(t2 - t1).count() / kIters;
  // Thread CPU time too: wall time is noisy on a shared machine.
  timespec c0, c1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
  for (int i = 0; i < kIters; ++i) ASSERT_TRUE(decode(buf).ok());
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
  const double dec_cpu_us =
      ((c1.tv_sec - c0.tv_sec) * 1e9 + (c1.tv_nsec - c0.tv_nsec)) / 1e3 / kIters;
  std::printf(
      "[wire] Plan of 256 entries (%zu bytes): encode %.2f us, decode %.2f us (%.2f us of CPU)\n",
      buf.size(), enc_us, dec_us, dec_cpu_us);
}

}  // namespace
}  // namespace pp::transport
