// KvCacheManager, one behaviour at a time. With caching off it is the plain allocator, checked
// against a reference model (an ordered set of free ids): random allocations and frees must hand
// out the lowest free ids, be all-or-nothing, and keep free + held == n_blocks. With caching on:
// the chained hash, sharing of full blocks (never the last token), the eviction pool and its
// order, private copies of content already cached, extra keys, flush. The random sequences of
// every operation against a reference model are in test-kv-cache-property.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "pp/pipeline/kv-cache-manager.h"
#include "test-util.h"

namespace pp::pipeline {
namespace {

std::vector<int32_t> random_tokens(size_t n) {
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = int32_t(test::rng()() % 50000);
  return t;
}

void expect_accounting(const KvCacheManager& m) {
  EXPECT_EQ(m.n_free() + m.n_used() + m.n_cached_unreferenced(), m.n_blocks());
}

TEST(KvCacheManager, BlocksFor) {
  KvCacheManager bm(10, 16);
  EXPECT_EQ(bm.blocks_for(0), 0);
  EXPECT_EQ(bm.blocks_for(1), 1);
  EXPECT_EQ(bm.blocks_for(16), 1);
  EXPECT_EQ(bm.blocks_for(17), 2);
  EXPECT_EQ(bm.blocks_for(160), 10);
}

TEST(KvCacheManager, AllOrNothingLowestFirst) {
  KvCacheManager bm(8, 4);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(bm.allocate(3, &a));
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2}));
  ASSERT_TRUE(bm.allocate(4, &b));
  EXPECT_EQ(b, (std::vector<int32_t>{3, 4, 5, 6}));
  std::vector<int32_t> c{99};
  EXPECT_FALSE(bm.allocate(2, &c));  // only 1 free
  EXPECT_EQ(c, (std::vector<int32_t>{99}));
  EXPECT_EQ(bm.n_free(), 1);
  bm.free(std::vector<int32_t>{4, 1});
  EXPECT_EQ(bm.n_free(), 3);
  c.clear();
  ASSERT_TRUE(bm.allocate(3, &c));
  EXPECT_EQ(c, (std::vector<int32_t>{1, 4, 7}));
  EXPECT_DOUBLE_EQ(bm.usage(), 1.0);
}

TEST(KvCacheManager, RandomAgainstReference) {
  std::mt19937_64& rng = test::rng();
  const int32_t n_blocks = int32_t(rng() % 200) + 1;
  KvCacheManager bm(n_blocks, 16);
  std::set<int32_t> free_ref;
  for (int32_t b = 0; b < n_blocks; ++b) free_ref.insert(b);
  std::vector<std::vector<int32_t>> held;
  for (int step = 0; step < 5000; ++step) {
    if (held.empty() || rng() % 2 == 0) {
      const int32_t n = int32_t(rng() % 12);
      std::vector<int32_t> got;
      const bool ok = bm.allocate(n, &got);
      ASSERT_EQ(ok, n <= int32_t(free_ref.size())) << "seed " << test::rng_seed();
      if (ok) {
        std::vector<int32_t> want(free_ref.begin(), std::next(free_ref.begin(), n));
        ASSERT_EQ(got, want);
        for (int32_t b : got) free_ref.erase(b);
        held.push_back(got);
      } else {
        ASSERT_TRUE(got.empty());
      }
    } else {
      const size_t i = rng() % held.size();
      bm.free(held[i]);
      for (int32_t b : held[i]) free_ref.insert(b);
      held.erase(held.begin() + std::ptrdiff_t(i));
    }
    ASSERT_EQ(bm.n_free(), int32_t(free_ref.size()));
    int32_t n_held = 0;
    for (const auto& h : held) {
      n_held += int32_t(h.size());
      for (int32_t b : h) ASSERT_EQ(bm.ref_count(b), 1);
    }
    ASSERT_EQ(bm.n_free() + n_held, n_blocks);
    ASSERT_EQ(bm.n_cached_unreferenced(), 0);
    ASSERT_NEAR(bm.usage(), double(n_held) / n_blocks, 1e-12);
  }
}

TEST(KvCacheManagerDeathTest, DoubleFree) {
  KvCacheManager bm(4, 4);
  std::vector<int32_t> a;
  ASSERT_TRUE(bm.allocate(2, &a));
  bm.free(a);
  EXPECT_DEATH(bm.free(a), "not held");
}

// The hash is a fixed function: these values must never change between runs or platforms (a
// cache persisted or shared across processes would silently miss otherwise). They were computed
// by an independent implementation of the definition (Python integers, masked to 64 bits).
TEST(KvCacheManager, HashIsFixedAndChained) {
  const std::vector<int32_t> t{1, 2, 3, 4};
  EXPECT_EQ(kv_block_hash(kKvRootHash, t, kKvNoExtraKey), 0x820dc59a30b54722ull);
  EXPECT_EQ(kv_block_hash(0x0123456789ABCDEFull, std::vector<int32_t>{7, -1, 50000}, 42),
            0x1e0eea08e27c335full);
  // Every input matters, and equal inputs give equal hashes.
  const std::vector<int32_t> a = random_tokens(16);
  const uint64_t parent = test::rng()();
  const uint64_t h = kv_block_hash(parent, a, 0);
  EXPECT_EQ(h, kv_block_hash(parent, a, 0));
  EXPECT_NE(h, kv_block_hash(parent ^ 1, a, 0));
  EXPECT_NE(h, kv_block_hash(parent, a, 1));
  std::vector<int32_t> b = a;
  b[test::rng()() % b.size()] ^= 1;
  EXPECT_NE(h, kv_block_hash(parent, b, 0));
  b = a;
  std::swap(b[3], b[4]);
  if (b != a) {
    EXPECT_NE(h, kv_block_hash(parent, b, 0));
  }
  EXPECT_NE(h, kv_block_hash(parent, std::span(a).first(15), 0));
  // Well mixed: flipping one input bit flips about half the output bits.
  int64_t n_flipped = 0;
  const int n_trials = 256;
  for (int i = 0; i < n_trials; ++i) {
    b = a;
    b[size_t(i) % b.size()] ^= int32_t(1u << (i % 31));
    n_flipped += __builtin_popcountll(h ^ kv_block_hash(parent, b, 0));
  }
  EXPECT_NEAR(double(n_flipped) / n_trials, 32.0, 2.0);
}

TEST(KvCacheManager, CachingOffNeverCaches) {
  KvCacheManager m(8, 4);
  const std::vector<int32_t> tokens = random_tokens(12);
  std::vector<int32_t> table;
  std::vector<uint64_t> hashes;
  ASSERT_TRUE(m.allocate(3, &table));
  m.commit_full(table, tokens, 0, &hashes);
  EXPECT_TRUE(hashes.empty());
  EXPECT_FALSE(m.is_cached(table[0]));
  std::vector<int32_t> shared;
  EXPECT_EQ(m.match_prefix(tokens, 0, &shared, &hashes), 0);
  EXPECT_TRUE(shared.empty());
  m.free(table);
  EXPECT_EQ(m.n_free(), 8);
  EXPECT_EQ(m.n_cached_unreferenced(), 0);
  const KvCacheStats s = m.stats();
  EXPECT_EQ(s.n_queries, 0);
  EXPECT_EQ(s.n_cached_blocks, 0);
}

// One request's table: blocks for tokens, and commits its full blocks.
struct Seq {
  std::vector<int32_t> tokens;
  std::vector<int32_t> table;
  std::vector<uint64_t> hashes;
  int64_t n_hit = 0;
};

Seq run_seq(KvCacheManager& m, std::vector<int32_t> tokens, uint64_t key = 0) {
  Seq s;
  s.tokens = std::move(tokens);
  s.n_hit = m.match_prefix(s.tokens, key, &s.table, &s.hashes);
  const int32_t need = m.blocks_for(int64_t(s.tokens.size())) - int32_t(s.table.size());
  EXPECT_TRUE(m.allocate(need, &s.table));
  const size_t bs = size_t(m.block_size());
  const size_t n_full = s.tokens.size() / bs;
  const size_t first = s.hashes.size();
  m.commit_full(s.table, std::span(s.tokens).subspan(first * bs, (n_full - first) * bs), key,
                &s.hashes);
  return s;
}

TEST(KvCacheManager, SharesFullBlocksButNeverTheLastToken) {
  KvCacheManager m(32, 4, true);
  const std::vector<int32_t> prompt = random_tokens(14);  // 3 full blocks and 2 tokens
  const Seq a = run_seq(m, prompt);
  EXPECT_EQ(a.n_hit, 0);
  ASSERT_EQ(a.table.size(), 4u);
  ASSERT_EQ(a.hashes.size(), 3u);
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(m.is_cached(a.table[size_t(k)]));
  EXPECT_FALSE(m.is_cached(a.table[3]));  // partial: never cached

  // The same prompt: its 3 full blocks are shared, the 2 last tokens computed.
  const Seq b = run_seq(m, prompt);
  EXPECT_EQ(b.n_hit, 12);
  EXPECT_EQ(std::vector<int32_t>(b.table.begin(), b.table.begin() + 3),
            std::vector<int32_t>(a.table.begin(), a.table.begin() + 3));
  EXPECT_NE(b.table[3], a.table[3]);
  EXPECT_EQ(b.hashes, a.hashes);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(m.ref_count(a.table[size_t(k)]), 2);

  // A prompt of exactly 3 blocks: the last token must be computed, so 2 blocks are shared.
  const Seq c = run_seq(m, std::vector<int32_t>(prompt.begin(), prompt.begin() + 12));
  EXPECT_EQ(c.n_hit, 8);
  // A prompt that diverges inside block 1 shares block 0 only.
  std::vector<int32_t> d_tokens = prompt;
  d_tokens[6] ^= 1;
  const Seq d = run_seq(m, d_tokens);
  EXPECT_EQ(d.n_hit, 4);
  // A different extra key (another adapter) shares nothing.
  const Seq e = run_seq(m, prompt, 7);
  EXPECT_EQ(e.n_hit, 0);
  EXPECT_EQ(m.ref_count(a.table[0]), 4);  // a, b, c, d

  const KvCacheStats s = m.stats();
  EXPECT_EQ(s.n_queries, 5);
  EXPECT_EQ(s.n_hits, 3);
  EXPECT_EQ(s.n_hit_tokens, 12 + 8 + 4);
  EXPECT_EQ(s.n_query_tokens, 14 + 14 + 12 + 14 + 14);
  expect_accounting(m);
}

TEST(KvCacheManager, FreedBlocksStayCachedUntilTheirMemoryIsNeeded) {
  KvCacheManager m(6, 4, true);
  const std::vector<int32_t> prompt = random_tokens(13);  // 3 full blocks and 1 token
  Seq a = run_seq(m, prompt);
  ASSERT_EQ(a.table, (std::vector<int32_t>{0, 1, 2, 3}));
  m.free(a.table);
  EXPECT_EQ(m.n_used(), 0);
  EXPECT_EQ(m.n_cached_unreferenced(), 3);
  EXPECT_EQ(m.n_free(), 3);
  EXPECT_EQ(m.n_available(), 6);
  EXPECT_EQ(m.usage(), 0.0);
  EXPECT_EQ(m.probe_prefix(prompt, 0).n_tokens, 12);
  EXPECT_EQ(m.probe_prefix(prompt, 0).n_unreferenced, 3);

  // Free blocks go first, lowest id first: the cache survives an allocation that fits them.
  std::vector<int32_t> x;
  ASSERT_TRUE(m.allocate(2, &x));
  EXPECT_EQ(x, (std::vector<int32_t>{3, 4}));
  // A hit takes the pooled blocks back; the last token gets the last free block.
  Seq b = run_seq(m, prompt);
  EXPECT_EQ(b.n_hit, 12);
  EXPECT_EQ(b.table, (std::vector<int32_t>{0, 1, 2, 5}));
  EXPECT_EQ(m.n_available(), 0);
  EXPECT_EQ(m.stats().n_evictions, 0);
  m.free(b.table);
  m.free(x);
  // Only when no block is free does the pool give one up: the tail of the chain first.
  std::vector<int32_t> y;
  ASSERT_TRUE(m.allocate(4, &y));
  EXPECT_EQ(y, (std::vector<int32_t>{3, 4, 5, 2}));
  EXPECT_EQ(m.stats().n_evictions, 1);
  EXPECT_FALSE(m.is_cached(2));
  EXPECT_EQ(m.probe_prefix(prompt, 0).n_tokens, 8);
  m.free(y);
  expect_accounting(m);
}

TEST(KvCacheManager, HitTakesBlocksOutOfThePoolAndEvictionIsLruTailFirst) {
  KvCacheManager m(8, 2, true);
  const std::vector<int32_t> p = random_tokens(7);  // 3 full blocks and 1 token
  const std::vector<int32_t> q = random_tokens(5);  // 2 full blocks and 1 token
  Seq a = run_seq(m, p);                            // blocks 0 1 2 | 3
  Seq b = run_seq(m, q);                            // blocks 4 5 | 6
  ASSERT_EQ(a.table, (std::vector<int32_t>{0, 1, 2, 3}));
  ASSERT_EQ(b.table, (std::vector<int32_t>{4, 5, 6}));
  m.free(a.table);  // pooled: 0 1 2 (freed first); 3 free
  m.free(b.table);  // pooled: 4 5 (freed later); 6 free
  EXPECT_EQ(m.n_cached_unreferenced(), 5);
  EXPECT_EQ(m.n_free(), 3);

  // Sharing p's prefix takes 0 1 2 out of the pool; its last token gets free block 3.
  Seq c = run_seq(m, p);
  EXPECT_EQ(c.n_hit, 6);
  EXPECT_EQ(c.table, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(m.n_cached_unreferenced(), 2);
  m.free(c.table);  // 0 1 2 pooled again, now the most recently freed

  // Evictions: free blocks first (6, 7), then the least recently freed chain (q: 4 5), tail
  // first, then p's chain from its tail.
  std::vector<int32_t> got;
  ASSERT_TRUE(m.allocate(7, &got));
  EXPECT_EQ(got, (std::vector<int32_t>{3, 6, 7, 5, 4, 2, 1}));
  EXPECT_EQ(m.stats().n_evictions, 4);
  EXPECT_TRUE(m.is_cached(0));
  EXPECT_FALSE(m.is_cached(4));
  // q is forgotten; p still shares its first block.
  std::vector<int32_t> shared;
  std::vector<uint64_t> hashes;
  EXPECT_EQ(m.probe_prefix(q, 0).n_tokens, 0);
  EXPECT_EQ(m.match_prefix(p, 0, &shared, &hashes), 2);
  EXPECT_EQ(shared, std::vector<int32_t>{0});
  m.free(shared);
  m.free(got);
  expect_accounting(m);
  EXPECT_EQ(m.n_used(), 0);
}

// Two requests that compute the same content at once: the second copy stays private.
TEST(KvCacheManager, SecondCopyOfCachedContentStaysPrivate) {
  KvCacheManager m(8, 4, true);
  const std::vector<int32_t> p = random_tokens(9);
  Seq a, b;
  a.tokens = b.tokens = p;
  ASSERT_TRUE(m.allocate(3, &a.table));
  ASSERT_TRUE(m.allocate(3, &b.table));
  m.commit_full(a.table, std::span(p).first(8), 0, &a.hashes);
  m.commit_full(b.table, std::span(p).first(8), 0, &b.hashes);
  EXPECT_EQ(a.hashes, b.hashes);  // content hashes, whoever holds the blocks
  EXPECT_TRUE(m.is_cached(a.table[0]) && m.is_cached(a.table[1]));
  EXPECT_FALSE(m.is_cached(b.table[0]) || m.is_cached(b.table[1]));
  EXPECT_EQ(m.stats().n_cached_blocks, 2);
  m.free(b.table);
  EXPECT_EQ(m.n_free(), 5);  // b's blocks: straight back to the free heap
  m.free(a.table);
  EXPECT_EQ(m.n_cached_unreferenced(), 2);
  expect_accounting(m);
}

TEST(KvCacheManager, FlushOnlyWhenNothingIsReferenced) {
  KvCacheManager m(8, 4, true);
  const std::vector<int32_t> p = random_tokens(10);
  Seq a = run_seq(m, p);
  Seq b = run_seq(m, random_tokens(5));
  m.free(a.table);
  EXPECT_FALSE(m.flush());  // b is still running
  EXPECT_EQ(m.n_cached_unreferenced(), 2);
  m.free(b.table);
  EXPECT_EQ(m.n_cached_unreferenced(), 3);
  EXPECT_TRUE(m.flush());
  EXPECT_EQ(m.n_free(), 8);
  EXPECT_EQ(m.n_cached_unreferenced(), 0);
  EXPECT_EQ(m.stats().n_cached_blocks, 0);
  EXPECT_EQ(m.stats().n_flushes, 1);
  EXPECT_EQ(m.probe_prefix(p, 0).n_tokens, 0);
  // Allocation after a flush is lowest id first again.
  std::vector<int32_t> got;
  ASSERT_TRUE(m.allocate(8, &got));
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST(KvCacheManagerDeathTest, CommitOfABlockNotHeld) {
  KvCacheManager m(4, 2, true);
  std::vector<int32_t> t;
  std::vector<uint64_t> h;
  ASSERT_TRUE(m.allocate(1, &t));
  m.free(t);
  EXPECT_DEATH(m.commit_full(t, std::vector<int32_t>{1, 2}, 0, &h), "not held");
}

}  // namespace
}  // namespace pp::pipeline
