// BlockManager: the paged KV cache's allocator, the single source of truth for which KV block
// belongs to whom. Every stage stores KV for the same tokens (for its own layers), so one table
// of block ids per request serves all stages; this class only hands ids out and takes them back.
//
// Invariants: a block is either free or held (n_free() + held == n_blocks() at all times); an
// allocation is all-or-nothing; ids are handed out lowest free id first, so a run is
// reproducible. Freeing a block that is not held is a bug (PP_ASSERT).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace pp::pipeline {

class BlockManager {
 public:
  // n_blocks blocks of block_size tokens each; both > 0 (n_blocks may be 0 for an empty pool).
  BlockManager(int32_t n_blocks, int32_t block_size);

  int32_t n_blocks() const { return n_blocks_; }
  int32_t block_size() const { return block_size_; }
  int32_t n_free() const { return int32_t(free_heap_.size()); }
  int32_t n_used() const { return n_blocks_ - n_free(); }
  // Fraction of the pool held, in [0, 1] (0 for an empty pool).
  double usage() const { return n_blocks_ > 0 ? double(n_used()) / double(n_blocks_) : 0.0; }

  // Blocks needed to hold the KV of n_tokens tokens: ceil(n_tokens / block_size).
  int32_t blocks_for(int64_t n_tokens) const {
    return int32_t((n_tokens + block_size_ - 1) / block_size_);
  }
  bool can_allocate(int32_t n) const { return n <= n_free(); }

  // Appends n free block ids to *out, lowest first, and returns true; or, when fewer than n are
  // free, changes nothing and returns false.
  bool allocate(int32_t n, std::vector<int32_t>* out);
  // Returns held blocks to the pool.
  void free(std::span<const int32_t> blocks);
  bool is_held(int32_t block) const;

 private:
  int32_t n_blocks_;
  int32_t block_size_;
  std::vector<int32_t> free_heap_;  // min-heap of free ids
  std::vector<uint8_t> held_;       // [n_blocks] 1 while the block is allocated
};

}  // namespace pp::pipeline
