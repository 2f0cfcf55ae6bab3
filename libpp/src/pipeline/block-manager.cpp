// The KV block allocator (see block-manager.h): a min-heap of free ids gives the lowest free id
// first in O(log n), and a flag per block catches double frees.
#include "pp/pipeline/block-manager.h"

#include <algorithm>
#include <functional>

#include "pp/assert.h"

namespace pp::pipeline {

BlockManager::BlockManager(int32_t n_blocks, int32_t block_size)
    : n_blocks_(n_blocks), block_size_(block_size), held_(size_t(std::max(n_blocks, 0)), 0) {
  PP_ASSERT(n_blocks >= 0 && block_size > 0);
  free_heap_.reserve(size_t(n_blocks));
  // An ascending array is already a min-heap.
  for (int32_t b = 0; b < n_blocks; ++b) free_heap_.push_back(b);
}

bool BlockManager::allocate(int32_t n, std::vector<int32_t>* out) {
  PP_ASSERT(n >= 0);
  if (n > n_free()) return false;
  for (int32_t i = 0; i < n; ++i) {
    std::pop_heap(free_heap_.begin(), free_heap_.end(), std::greater<>());
    const int32_t b = free_heap_.back();
    free_heap_.pop_back();
    held_[size_t(b)] = 1;
    out->push_back(b);
  }
  return true;
}

void BlockManager::free(std::span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    PP_ASSERT_MSG(b >= 0 && b < n_blocks_, "block id out of range");
    PP_ASSERT_MSG(held_[size_t(b)], "freeing a block that is not held");
    held_[size_t(b)] = 0;
    free_heap_.push_back(b);
    std::push_heap(free_heap_.begin(), free_heap_.end(), std::greater<>());
  }
}

bool BlockManager::is_held(int32_t block) const {
  return block >= 0 && block < n_blocks_ && held_[size_t(block)] != 0;
}

}  // namespace pp::pipeline
