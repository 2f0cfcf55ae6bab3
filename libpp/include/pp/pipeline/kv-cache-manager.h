// KvCacheManager: the paged KV cache's block manager, the single source of truth for which KV
// block holds what. Every stage stores KV for the same tokens (for its own layers), so one table
// of block ids per request serves all stages; this class hands ids out, counts who holds them,
// and (with prefix caching on) remembers which full blocks hold which tokens so that a new
// request with the same prefix shares them instead of computing them again.
//
// A block is in exactly one of three states:
//   free        no valid content; in the free heap (lowest id handed out first);
//   referenced  ref_count(b) > 0: in the block table of that many requests;
//   pooled      ref_count 0 but its content is cached (caching on only): in the eviction pool,
//               still found by match_prefix, handed out for new content only when no block is
//               free.
// so n_free() + n_used() + n_cached_unreferenced() == n_blocks() at all times. A referenced block
// is never handed out by allocate() and never evicted. allocate() is all-or-nothing.
//
// Content hashes. A full block's hash chains its parent's: kv_block_hash(parent, its block_size
// token ids, extra_key), the first block's parent being kKvRootHash, so equal hashes mean equal
// whole prefixes (up to a 64-bit collision, about n_cached * n_lookups / 2^64: negligible). The
// extra key is for what else the KV depends on (a LoRA adapter id, a multimodal input's hash);
// 0 for plain text. The hash is a fixed function of 64-bit integer arithmetic: the same on every
// run and platform. At most one block is cached under a hash: a block that fills with content
// already cached elsewhere (two requests computing the same prefix at once) stays private and
// goes back to the free heap when freed.
//
// When a block may be shared. A request's KV is written by the stages when the plan that carries
// its tokens runs, and every stage runs plans in issue order, so a block may be offered to other
// requests (commit_full) once the plan that fills it has been ISSUED: any later plan runs after
// it. Not within the same plan (the entries of one micro-batch run together). The scheduler
// commits after building each plan.
//
// Eviction order: least recently freed first; among blocks freed by the same free() call (one
// request's table), the one deepest in its chain first (largest position in the table). Every
// holder of a block also holds all its ancestors (a table is a whole chain), so a block's
// ancestors return to the pool no earlier than it does; with the depth tiebreak, a chain is
// evicted from its tail, and its prefix, the part other requests are likeliest to share, lasts
// longest. This is LRU with the youngest-chain-position tiebreak rather than strict
// leaves-first: a strict leaf set needs child counts per block, which two copies of one content
// (see above) make ambiguous, and LRU already gives leaves first in all other cases. (A copy can
// outlive the parent it chains to; it is then unreachable and simply ages out.)
//
// With caching off (the default) nothing is ever hashed, cached or pooled: the manager is the
// plain allocator, block ids come out in exactly the same order as before prefix caching existed.
#pragma once

#include <compare>
#include <cstdint>
#include <set>
#include <span>
#include <unordered_map>
#include <vector>

namespace pp::pipeline {

// The parent hash of a sequence's first block.
inline constexpr uint64_t kKvRootHash = 0x5A17E0F1C3B2D4E6ull;
// The extra key of plain text (no adapter, no multimodal input).
inline constexpr uint64_t kKvNoExtraKey = 0;

// The chained hash of a full block: its parent's hash, its token ids (block_size of them) and an
// extra key. Deterministic across runs and platforms.
uint64_t kv_block_hash(uint64_t parent_hash, std::span<const int32_t> tokens, uint64_t extra_key);

// Prefix-cache counters, cumulative since construction (all zero with caching off).
struct KvCacheStats {
  int32_t n_cached_blocks = 0;  // blocks cached under a hash now (referenced or pooled)
  int32_t n_pooled_blocks = 0;  // of them, unreferenced now (in the eviction pool)
  int64_t n_queries = 0;        // match_prefix calls
  int64_t n_query_tokens = 0;   // tokens asked about (whole sequences passed to match_prefix)
  int64_t n_hits = 0;           // match_prefix calls that shared at least one block
  int64_t n_hit_tokens = 0;     // tokens served from the cache (whole shared blocks)
  int64_t n_evictions = 0;      // pooled blocks handed out for new content
  int64_t n_flushes = 0;        // successful flush() calls
};

// What match_prefix would find, without taking anything.
struct PrefixProbe {
  int64_t n_tokens = 0;        // cached prefix length in tokens (whole blocks)
  int32_t n_unreferenced = 0;  // of its blocks, how many are pooled (sharing takes them out)
};

class KvCacheManager {
 public:
  // n_blocks blocks (>= 0) of block_size tokens (> 0) each; enable_caching: prefix caching.
  KvCacheManager(int32_t n_blocks, int32_t block_size, bool enable_caching = false);

  int32_t n_blocks() const { return n_blocks_; }
  int32_t block_size() const { return block_size_; }
  bool caching() const { return caching_; }
  // Blocks with no valid content (in the free heap).
  int32_t n_free() const { return int32_t(free_heap_.size()); }
  // Blocks in the eviction pool: cached content, no reference.
  int32_t n_cached_unreferenced() const { return int32_t(pool_.size()); }
  // Blocks referenced by at least one request.
  int32_t n_used() const { return n_blocks_ - n_free() - n_cached_unreferenced(); }
  // Blocks allocate() can hand out: free ones, then pooled ones by eviction.
  int32_t n_available() const { return n_free() + n_cached_unreferenced(); }
  // Fraction of the pool referenced, in [0, 1] (0 for an empty pool); pooled blocks do not count.
  double usage() const { return n_blocks_ > 0 ? double(n_used()) / double(n_blocks_) : 0.0; }

  // Blocks needed to hold the KV of n_tokens tokens: ceil(n_tokens / block_size).
  int32_t blocks_for(int64_t n_tokens) const {
    return int32_t((n_tokens + block_size_ - 1) / block_size_);
  }
  bool can_allocate(int32_t n) const { return n <= n_available(); }

  // Appends n block ids to *out, each with reference count 1, and returns true: free blocks
  // first, lowest id first, then pooled blocks in eviction order (each forgets its hash). When
  // fewer than n are available, changes nothing and returns false.
  bool allocate(int32_t n, std::vector<int32_t>* out);
  // Drops one reference to each block (all referenced: a bug otherwise). A block left without
  // reference goes to the eviction pool when it is cached, else to the free heap. The blocks of
  // one call are one request's table, in table order (see the eviction order above).
  void free(std::span<const int32_t> blocks);
  bool is_held(int32_t block) const { return ref_count(block) > 0; }
  // References to `block` (0 for a free or pooled block or an id out of range).
  int32_t ref_count(int32_t block) const;
  // Whether `block` is cached under a hash (referenced or pooled).
  bool is_cached(int32_t block) const;

  // The longest prefix of `tokens` (a sequence: prompt, then any generated tokens) held by
  // cached blocks under `extra_key`, in whole blocks and at most tokens.size() - 1 tokens (the
  // last token is always computed: the next token is sampled from its logits). Appends those
  // blocks to *blocks, taking a reference on each (pooled ones leave the pool), and their hashes
  // to *hashes; returns the prefix length in tokens. Both vectors must start empty (a new
  // table). With caching off: 0, nothing appended, nothing counted.
  int64_t match_prefix(std::span<const int32_t> tokens, uint64_t extra_key,
                       std::vector<int32_t>* blocks, std::vector<uint64_t>* hashes);
  // What match_prefix would return now, changing nothing (not even the counters).
  PrefixProbe probe_prefix(std::span<const int32_t> tokens, uint64_t extra_key) const;

  // Commits the blocks of a table that have become full. *hashes holds the hashes of the
  // table's blocks committed (or matched) so far, k = hashes->size() of them; `tokens` holds
  // whole blocks of token ids from position k * block_size on, one block for each of table[k],
  // table[k + 1], ... that is now full. Appends their chained hashes to *hashes and, with caching
  // on, caches each block under its hash (unless another block already is cached under it). The
  // blocks must be referenced, and the plan that writes their last token issued (see the top
  // comment). With caching off: does nothing.
  void commit_full(std::span<const int32_t> table, std::span<const int32_t> tokens,
                   uint64_t extra_key, std::vector<uint64_t>* hashes);

  // Empties the cache: every pooled block becomes free and every hash is forgotten. Only when no
  // block is referenced (after every request has finished or been preempted): otherwise changes
  // nothing and returns false.
  bool flush();

  // Counters for metrics (n_cached_blocks and n_pooled_blocks are current counts).
  KvCacheStats stats() const;

 private:
  // Eviction order: least recently freed first, then deepest in its chain, then lowest id.
  struct PoolKey {
    uint64_t freed_at;  // free() call counter
    int32_t neg_position;
    int32_t block;
    auto operator<=>(const PoolKey&) const = default;
  };
  PoolKey pool_key(int32_t b) const { return {freed_at_[size_t(b)], -position_[size_t(b)], b}; }
  // Blocks a prefix match may cover for a sequence of n_tokens: never its last token.
  size_t max_prefix_blocks(size_t n_tokens) const;
  // The block cached for block k of `tokens` after the chain *parent, or -1; on a hit *parent
  // becomes its hash.
  int32_t next_cached(std::span<const int32_t> tokens, size_t k, uint64_t extra_key,
                      uint64_t* parent) const;
  void uncache(int32_t b);

  int32_t n_blocks_;
  int32_t block_size_;
  bool caching_;
  std::vector<int32_t> free_heap_;  // min-heap of free ids
  std::vector<int32_t> ref_;        // [n_blocks] references
  std::vector<uint8_t> cached_;     // [n_blocks] 1 while cached under hash_[b]
  std::vector<uint64_t> hash_;      // [n_blocks] chained hash, while cached
  std::vector<int32_t> position_;   // [n_blocks] index in its table (chain depth), while cached
  std::vector<uint64_t> freed_at_;  // [n_blocks] free() call that pooled it, while pooled
  std::set<PoolKey> pool_;          // the eviction pool, next victim first
  std::unordered_map<uint64_t, int32_t> by_hash_;  // hash -> the block cached under it
  uint64_t n_free_calls_ = 0;
  KvCacheStats stats_;
};

}  // namespace pp::pipeline
