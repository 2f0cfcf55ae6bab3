// The KV cache manager (see kv-cache-manager.h). Free ids live in a min-heap (lowest id first in
// O(log n)); pooled blocks in an ordered set keyed by their eviction order (O(log n) to take the
// next victim, or to take a block out again when a request shares it); cached blocks in a hash
// map from chained hash to block id. With caching off only the heap and the reference counts are
// ever touched.
#include "pp/pipeline/kv-cache-manager.h"

#include <algorithm>
#include <functional>

#include "pp/assert.h"

namespace pp::pipeline {

namespace {

constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;  // odd: v -> v * kMul is a bijection
constexpr uint64_t kAdd = 0x632BE59BD9B4E019ull;
constexpr uint64_t kParentSalt = 0xD6E8FEB86659FD93ull;

// The splitmix64 finalizer: a bijection of 64-bit words in which every output bit depends on
// every input bit.
uint64_t fmix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Absorbs one 64-bit word into the state. For a fixed state it is a bijection of v, so two inputs
// that differ in one word give different states after that word.
uint64_t absorb(uint64_t h, uint64_t v) { return fmix(h ^ (v * kMul + kAdd)); }

}  // namespace

uint64_t kv_block_hash(uint64_t parent_hash, std::span<const int32_t> tokens, uint64_t extra_key) {
  uint64_t h = fmix(parent_hash ^ kParentSalt);
  h = absorb(h, extra_key);
  h = absorb(h, uint64_t(tokens.size()));  // makes the odd tail below unambiguous
  size_t i = 0;
  for (; i + 1 < tokens.size(); i += 2) {
    h = absorb(h, uint64_t(uint32_t(tokens[i])) | uint64_t(uint32_t(tokens[i + 1])) << 32);
  }
  if (i < tokens.size()) h = absorb(h, uint64_t(uint32_t(tokens[i])));
  return h;
}

KvCacheManager::KvCacheManager(int32_t n_blocks, int32_t block_size, bool enable_caching)
    : n_blocks_(n_blocks), block_size_(block_size), caching_(enable_caching) {
  PP_ASSERT(n_blocks >= 0 && block_size > 0);
  const size_t n = size_t(n_blocks);
  ref_.assign(n, 0);
  free_heap_.reserve(n);
  // An ascending array is already a min-heap.
  for (int32_t b = 0; b < n_blocks; ++b) free_heap_.push_back(b);
  if (caching_) {
    cached_.assign(n, 0);
    hash_.assign(n, 0);
    position_.assign(n, 0);
    freed_at_.assign(n, 0);
  }
}

bool KvCacheManager::allocate(int32_t n, std::vector<int32_t>* out) {
  PP_ASSERT(n >= 0);
  if (n > n_available()) return false;
  for (int32_t i = 0; i < n; ++i) {
    int32_t b;
    if (!free_heap_.empty()) {
      std::pop_heap(free_heap_.begin(), free_heap_.end(), std::greater<>());
      b = free_heap_.back();
      free_heap_.pop_back();
    } else {
      b = pool_.begin()->block;
      pool_.erase(pool_.begin());
      uncache(b);
      ++stats_.n_evictions;
    }
    PP_ASSERT(ref_[size_t(b)] == 0);
    ref_[size_t(b)] = 1;
    out->push_back(b);
  }
  return true;
}

void KvCacheManager::free(std::span<const int32_t> blocks) {
  const uint64_t now = n_free_calls_++;
  for (int32_t b : blocks) {
    PP_ASSERT_MSG(b >= 0 && b < n_blocks_, "block id out of range");
    int32_t& ref = ref_[size_t(b)];
    PP_ASSERT_MSG(ref > 0, "freeing a block that is not held");
    if (--ref > 0) continue;
    if (caching_ && cached_[size_t(b)]) {
      freed_at_[size_t(b)] = now;
      pool_.insert(pool_key(b));
    } else {
      free_heap_.push_back(b);
      std::push_heap(free_heap_.begin(), free_heap_.end(), std::greater<>());
    }
  }
}

int32_t KvCacheManager::ref_count(int32_t block) const {
  return block >= 0 && block < n_blocks_ ? ref_[size_t(block)] : 0;
}

bool KvCacheManager::is_cached(int32_t block) const {
  return caching_ && block >= 0 && block < n_blocks_ && cached_[size_t(block)] != 0;
}

void KvCacheManager::uncache(int32_t b) {
  PP_ASSERT(cached_[size_t(b)]);
  by_hash_.erase(hash_[size_t(b)]);
  cached_[size_t(b)] = 0;
}

size_t KvCacheManager::max_prefix_blocks(size_t n_tokens) const {
  return n_tokens == 0 ? 0 : (n_tokens - 1) / size_t(block_size_);
}

int32_t KvCacheManager::next_cached(std::span<const int32_t> tokens, size_t k, uint64_t extra_key,
                                    uint64_t* parent) const {
  const uint64_t h = kv_block_hash(
      *parent, tokens.subspan(k * size_t(block_size_), size_t(block_size_)), extra_key);
  auto it = by_hash_.find(h);
  if (it == by_hash_.end()) return -1;
  *parent = h;
  return it->second;
}

int64_t KvCacheManager::match_prefix(std::span<const int32_t> tokens, uint64_t extra_key,
                                     std::vector<int32_t>* blocks, std::vector<uint64_t>* hashes) {
  PP_ASSERT(blocks->empty() && hashes->empty());
  if (!caching_) return 0;
  ++stats_.n_queries;
  stats_.n_query_tokens += int64_t(tokens.size());
  uint64_t parent = kKvRootHash;
  for (size_t k = 0; k < max_prefix_blocks(tokens.size()); ++k) {
    const int32_t b = next_cached(tokens, k, extra_key, &parent);
    if (b < 0) break;
    if (ref_[size_t(b)]++ == 0) pool_.erase(pool_key(b));
    blocks->push_back(b);
    hashes->push_back(parent);
  }
  const int64_t n_hit = int64_t(blocks->size()) * block_size_;
  if (n_hit > 0) ++stats_.n_hits;
  stats_.n_hit_tokens += n_hit;
  return n_hit;
}

PrefixProbe KvCacheManager::probe_prefix(std::span<const int32_t> tokens,
                                         uint64_t extra_key) const {
  PrefixProbe p;
  if (!caching_) return p;
  uint64_t parent = kKvRootHash;
  for (size_t k = 0; k < max_prefix_blocks(tokens.size()); ++k) {
    const int32_t b = next_cached(tokens, k, extra_key, &parent);
    if (b < 0) break;
    p.n_tokens += block_size_;
    p.n_unreferenced += ref_[size_t(b)] == 0 ? 1 : 0;
  }
  return p;
}

void KvCacheManager::commit_full(std::span<const int32_t> table, std::span<const int32_t> tokens,
                                 uint64_t extra_key, std::vector<uint64_t>* hashes) {
  if (!caching_) return;
  PP_ASSERT(tokens.size() % size_t(block_size_) == 0);
  const size_t first = hashes->size();
  const size_t n_full = tokens.size() / size_t(block_size_);
  PP_ASSERT(first + n_full <= table.size());
  uint64_t parent = first == 0 ? kKvRootHash : hashes->back();
  for (size_t k = 0; k < n_full; ++k) {
    const int32_t b = table[first + k];
    PP_ASSERT_MSG(b >= 0 && b < n_blocks_ && ref_[size_t(b)] > 0,
                  "committing a block that is not held");
    PP_ASSERT_MSG(!cached_[size_t(b)], "committing a block twice");
    const uint64_t h = kv_block_hash(
        parent, tokens.subspan(k * size_t(block_size_), size_t(block_size_)), extra_key);
    hashes->push_back(h);
    parent = h;
    // The same content already cached elsewhere: this copy stays private.
    if (!by_hash_.emplace(h, b).second) continue;
    cached_[size_t(b)] = 1;
    hash_[size_t(b)] = h;
    position_[size_t(b)] = int32_t(first + k);
  }
}

bool KvCacheManager::flush() {
  if (n_used() > 0) return false;
  if (!caching_) return true;
  for (const PoolKey& k : pool_) {
    uncache(k.block);
    free_heap_.push_back(k.block);
  }
  pool_.clear();
  PP_ASSERT(by_hash_.empty());
  std::make_heap(free_heap_.begin(), free_heap_.end(), std::greater<>());
  ++stats_.n_flushes;
  return true;
}

KvCacheStats KvCacheManager::stats() const {
  KvCacheStats s = stats_;
  s.n_cached_blocks = int32_t(by_hash_.size());
  s.n_pooled_blocks = n_cached_unreferenced();
  return s;
}

}  // namespace pp::pipeline
