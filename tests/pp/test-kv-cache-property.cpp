// KvCacheManager with prefix caching on, against a reference model, over random sequences of
// every operation: start a sequence (match its cached prefix, allocate the rest of its first
// chunk), grow one (allocate, commit the blocks that filled), finish or preempt one (free; a
// preempted one restarts later and may hit its own blocks), flush, probe. Sequences are drawn
// from a few shared "documents" so that prefixes repeat, with two extra keys, in a pool small
// enough that evictions are frequent.
//
// The reference keys cached blocks by CONTENT (the extra key and every token id of the prefix up
// to the block's end), not by hash, so it also checks that the chained hash means "same whole
// prefix". It predicts every block id handed out (free ones lowest first, then the eviction
// order), every match, every counter. After each operation: reference counts agree and are
// never negative, a referenced block is never handed out again or evicted, and
// n_free + n_referenced + n_cached_unreferenced == n_blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "pp/pipeline/kv-cache-manager.h"
#include "test-util.h"

namespace pp::pipeline {
namespace {

using Content = std::pair<uint64_t, std::vector<int32_t>>;  // extra key, whole prefix

// What must be cached, in the plainest terms.
class Reference {
 public:
  Reference(int32_t n_blocks, int32_t block_size)
      : bs_(block_size), ref_(size_t(n_blocks), 0), cached_(size_t(n_blocks)) {
    for (int32_t b = 0; b < n_blocks; ++b) free_.insert(b);
  }

  int32_t n_free() const { return int32_t(free_.size()); }
  int32_t n_pooled() const { return int32_t(pooled_.size()); }
  int32_t ref(int32_t b) const { return ref_[size_t(b)]; }
  bool is_cached(int32_t b) const { return cached_[size_t(b)].has_value(); }
  int32_t n_cached() const { return int32_t(by_content_.size()); }
  int64_t n_evictions = 0, n_queries = 0, n_hits = 0, n_hit_tokens = 0, n_query_tokens = 0;

  // The blocks a match would share.
  std::vector<int32_t> match(const std::vector<int32_t>& tokens, uint64_t key) const {
    std::vector<int32_t> out;
    const size_t max_blocks = tokens.empty() ? 0 : (tokens.size() - 1) / size_t(bs_);
    for (size_t k = 0; k < max_blocks; ++k) {
      auto it = by_content_.find(prefix(tokens, key, k));
      if (it == by_content_.end()) break;
      out.push_back(it->second);
    }
    return out;
  }
  void share(std::span<const int32_t> blocks, size_t n_query) {
    ++n_queries;
    n_query_tokens += int64_t(n_query);
    n_hits += blocks.empty() ? 0 : 1;
    n_hit_tokens += int64_t(blocks.size()) * bs_;
    for (int32_t b : blocks) {
      if (ref_[size_t(b)]++ == 0) pooled_.erase(b);
    }
  }
  bool allocate(int32_t n, std::vector<int32_t>* out) {
    if (n > n_free() + n_pooled()) return false;
    for (int32_t i = 0; i < n; ++i) {
      int32_t b;
      if (!free_.empty()) {
        b = *free_.begin();
        free_.erase(free_.begin());
      } else {
        // Least recently freed, then deepest in its chain, then lowest id.
        auto order = [&](int32_t c) {
          return std::tuple(pooled_.at(c).first, -pooled_.at(c).second, c);
        };
        b = pooled_.begin()->first;
        for (const auto& [c, when] : pooled_) {
          if (order(c) < order(b)) b = c;
        }
        pooled_.erase(b);
        by_content_.erase(*cached_[size_t(b)]);
        cached_[size_t(b)].reset();
        ++n_evictions;
      }
      EXPECT_EQ(ref_[size_t(b)], 0) << "a referenced block handed out";
      ref_[size_t(b)] = 1;
      out->push_back(b);
    }
    return true;
  }
  // Block k of `table` is full with tokens[0, (k + 1) * bs).
  void commit(const std::vector<int32_t>& table, const std::vector<int32_t>& tokens, uint64_t key,
              size_t k) {
    Content c = prefix(tokens, key, k);
    if (by_content_.count(c)) return;
    by_content_[c] = table[k];
    cached_[size_t(table[k])] = std::move(c);
    position_[table[k]] = int32_t(k);
  }
  void free(std::span<const int32_t> blocks) {
    const uint64_t now = clock_++;
    for (int32_t b : blocks) {
      ASSERT_GT(ref_[size_t(b)], 0);
      if (--ref_[size_t(b)] > 0) continue;
      if (is_cached(b)) {
        pooled_[b] = {now, position_[b]};
      } else {
        free_.insert(b);
      }
    }
  }
  bool flush() {
    for (int32_t r : ref_) {
      if (r > 0) return false;
    }
    for (const auto& [b, when] : pooled_) {
      cached_[size_t(b)].reset();
      free_.insert(b);
    }
    pooled_.clear();
    by_content_.clear();
    return true;
  }

 private:
  Content prefix(const std::vector<int32_t>& tokens, uint64_t key, size_t k) const {
    return {key, std::vector<int32_t>(tokens.begin(),
                                      tokens.begin() + std::ptrdiff_t((k + 1) * size_t(bs_)))};
  }

  int32_t bs_;
  std::vector<int32_t> ref_;
  std::vector<std::optional<Content>> cached_;
  std::map<int32_t, int32_t> position_;
  std::set<int32_t> free_;
  std::map<int32_t, std::pair<uint64_t, int32_t>> pooled_;  // block -> (freed at, position)
  std::map<Content, int32_t> by_content_;
  uint64_t clock_ = 0;
};

struct Seq {
  std::vector<int32_t> tokens;  // the whole sequence it will have
  uint64_t key = 0;
  int64_t n_kv = 0;  // tokens with blocks (and committed when their block is full)
  std::vector<int32_t> table;
  std::vector<uint64_t> hashes;
  bool running = false;
};

void check_same(const KvCacheManager& m, const Reference& ref, int32_t n_blocks) {
  ASSERT_EQ(m.n_free(), ref.n_free());
  ASSERT_EQ(m.n_cached_unreferenced(), ref.n_pooled());
  int32_t n_referenced = 0;
  for (int32_t b = 0; b < n_blocks; ++b) {
    ASSERT_EQ(m.ref_count(b), ref.ref(b)) << "block " << b;
    ASSERT_GE(m.ref_count(b), 0);
    ASSERT_EQ(m.is_cached(b), ref.is_cached(b)) << "block " << b;
    n_referenced += m.ref_count(b) > 0 ? 1 : 0;
  }
  ASSERT_EQ(m.n_used(), n_referenced);
  ASSERT_EQ(m.n_free() + n_referenced + m.n_cached_unreferenced(), n_blocks);
  const KvCacheStats s = m.stats();
  ASSERT_EQ(s.n_cached_blocks, ref.n_cached());
  ASSERT_EQ(s.n_evictions, ref.n_evictions);
  ASSERT_EQ(s.n_queries, ref.n_queries);
  ASSERT_EQ(s.n_hits, ref.n_hits);
  ASSERT_EQ(s.n_hit_tokens, ref.n_hit_tokens);
  ASSERT_EQ(s.n_query_tokens, ref.n_query_tokens);
}

TEST(KvCacheProperty, RandomOperationsAgainstReference) {
  std::mt19937_64& rng = test::rng();
  auto uniform = [&](int64_t lo, int64_t hi) {  // [lo, hi]
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  int64_t n_hits = 0, n_evictions = 0, n_flushes = 0;
  for (int trial = 0; trial < 8; ++trial) {
    const int32_t bs = int32_t(uniform(1, 8));
    const int32_t n_blocks = int32_t(uniform(4, 80));
    SCOPED_TRACE(::testing::Message() << "trial " << trial << " bs=" << bs << " blocks=" << n_blocks
                                      << " seed=" << test::rng_seed());
    KvCacheManager m(n_blocks, bs, true);
    Reference ref(n_blocks, bs);
    // A few documents that sequences start with, so prefixes repeat.
    std::vector<std::vector<int32_t>> docs(size_t(uniform(1, 4)));
    for (auto& d : docs) {
      d.resize(size_t(uniform(1, 6 * bs)));
      for (int32_t& t : d) t = int32_t(uniform(0, 30));
    }
    std::vector<Seq> seqs;

    // Allocates blocks for `n` more tokens of s and commits the blocks that filled.
    auto grow = [&](Seq& s, int64_t n, bool* ok) {
      const int32_t need = m.blocks_for(s.n_kv + n) - int32_t(s.table.size());
      std::vector<int32_t> want = s.table;
      *ok = m.allocate(need, &s.table);
      ASSERT_EQ(*ok, ref.allocate(need, &want));
      if (!*ok) return;
      ASSERT_EQ(s.table, want) << "allocation order";
      s.n_kv += n;
      const size_t first = s.hashes.size(), n_full = size_t(s.n_kv / bs);
      m.commit_full(s.table,
                    std::span(s.tokens).subspan(first * size_t(bs), (n_full - first) * size_t(bs)),
                    s.key, &s.hashes);
      for (size_t k = first; k < n_full; ++k) ref.commit(s.table, s.tokens, s.key, k);
      EXPECT_EQ(s.hashes.size(), n_full);
    };
    auto stop = [&](Seq& s) {
      m.free(s.table);
      ref.free(s.table);
      s.table.clear();
      s.hashes.clear();
      s.n_kv = 0;
      s.running = false;
    };

    for (int step = 0; step < 1500; ++step) {
      const int op = int(uniform(0, 9));
      if (op <= 2) {
        // Start a new sequence, or restart a preempted one (recompute).
        std::vector<Seq*> stopped;
        for (Seq& s : seqs) {
          if (!s.running) stopped.push_back(&s);
        }
        Seq* s;
        if (!stopped.empty() && uniform(0, 1) == 0) {
          s = stopped[size_t(uniform(0, int64_t(stopped.size()) - 1))];
        } else {
          Seq fresh;
          const auto& d = docs[size_t(uniform(0, int64_t(docs.size()) - 1))];
          fresh.tokens.assign(d.begin(), d.begin() + uniform(1, int64_t(d.size())));
          for (int64_t i = uniform(0, 4 * bs); i > 0; --i) {
            fresh.tokens.push_back(int32_t(uniform(0, 30)));
          }
          fresh.key = uniform(0, 5) == 0 ? 1 : 0;
          seqs.push_back(std::move(fresh));
          s = &seqs.back();
        }
        const std::vector<int32_t> want = ref.match(s->tokens, s->key);
        const PrefixProbe probe = m.probe_prefix(s->tokens, s->key);
        ASSERT_EQ(probe.n_tokens, int64_t(want.size()) * bs);
        const int64_t n_hit = m.match_prefix(s->tokens, s->key, &s->table, &s->hashes);
        ref.share(want, s->tokens.size());
        ASSERT_EQ(s->table, want) << "a hit returns exactly the blocks of the cached prefix";
        ASSERT_EQ(n_hit, int64_t(want.size()) * bs);
        ASSERT_LT(n_hit, int64_t(s->tokens.size())) << "the last token is always computed";
        for (size_t k = 0; k < s->hashes.size(); ++k) {
          ASSERT_EQ(
              s->hashes[k],
              kv_block_hash(k == 0 ? kKvRootHash : s->hashes[k - 1],
                            std::span(s->tokens).subspan(k * size_t(bs), size_t(bs)), s->key));
        }
        n_hits += n_hit > 0 ? 1 : 0;
        s->n_kv = n_hit;
        s->running = true;
        const int64_t n = uniform(1, int64_t(s->tokens.size()) - n_hit);
        bool grew = false;
        ASSERT_NO_FATAL_FAILURE(grow(*s, n, &grew));
        if (!grew) stop(*s);  // no room: give the shared blocks back (admission fails)
      } else if (op <= 5) {
        // Grow a running sequence: more prompt, or a generated token.
        std::vector<Seq*> running;
        for (Seq& s : seqs) {
          if (s.running) running.push_back(&s);
        }
        if (running.empty()) continue;
        Seq& s = *running[size_t(uniform(0, int64_t(running.size()) - 1))];
        if (s.n_kv == int64_t(s.tokens.size())) s.tokens.push_back(int32_t(uniform(0, 30)));
        const int64_t n = uniform(1, int64_t(s.tokens.size()) - s.n_kv);
        bool grew = false;
        ASSERT_NO_FATAL_FAILURE(grow(s, n, &grew));
        if (!grew) stop(s);  // preempted for lack of blocks
      } else if (op <= 8) {
        // Finish (forget) or preempt (keep, to restart later) a running sequence.
        std::vector<size_t> running;
        for (size_t i = 0; i < seqs.size(); ++i) {
          if (seqs[i].running) running.push_back(i);
        }
        if (running.empty()) continue;
        const size_t i = running[size_t(uniform(0, int64_t(running.size()) - 1))];
        stop(seqs[i]);
        if (uniform(0, 1) == 0) seqs.erase(seqs.begin() + std::ptrdiff_t(i));
      } else {
        // Flush: refused while anything is referenced.
        const bool want = ref.flush();
        ASSERT_EQ(m.flush(), want);
        n_flushes += want ? 1 : 0;
      }
      ASSERT_NO_FATAL_FAILURE(check_same(m, ref, n_blocks)) << "step " << step << " op " << op;
    }
    // No leak: once everything stops only cached blocks remain, and a flush frees them all.
    for (Seq& s : seqs) {
      if (s.running) stop(s);
    }
    ASSERT_NO_FATAL_FAILURE(check_same(m, ref, n_blocks));
    EXPECT_EQ(m.n_used(), 0);
    EXPECT_EQ(m.n_free() + m.n_cached_unreferenced(), n_blocks);
    n_evictions += m.stats().n_evictions;
    ASSERT_TRUE(m.flush());
    EXPECT_EQ(m.n_free(), n_blocks);
    EXPECT_EQ(m.stats().n_cached_blocks, 0);
  }
  // The workload did what it is for.
  EXPECT_GT(n_hits, 0);
  EXPECT_GT(n_evictions, 0);
  EXPECT_GT(n_flushes, 0);
}

}  // namespace
}  // namespace pp::pipeline
