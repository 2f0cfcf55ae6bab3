// KvCache: one stage's paged KV pool, f32. n_blocks blocks of block_size tokens, for each of the
// stage's layers; block b, offset o is the slot of one token in every layer. The coordinator's
// block manager decides which sequence owns which block; every stage mirrors the same tables,
// so a pool only needs the same n_blocks and block_size on every stage.
#pragma once

#include <cstdint>
#include <memory>

#include "pp/kernels/cpu.h"
#include "pp/status.h"

namespace pp::model {

struct KvCacheShape {
  int64_t n_layer = 0;  // layers of this stage
  int64_t n_blocks = 0;
  int64_t block_size = 0;  // tokens per block
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;

  // Floats of K (or of V) for one layer.
  int64_t layer_elems() const { return n_blocks * block_size * n_head_kv * head_dim; }
  // Bytes of K and V for one block in all layers.
  int64_t bytes_per_block() const { return 2 * n_layer * block_size * n_head_kv * head_dim * 4; }
  int64_t bytes() const { return bytes_per_block() * n_blocks; }
};

class KvCache {
 public:
  // Allocates the pool (pages are touched only as tokens are written).
  // kInvalidArgument for a bad shape, kResourceExhausted when memory runs out.
  static Result<std::unique_ptr<KvCache>> allocate(const KvCacheShape& shape);

  const KvCacheShape& shape() const { return shape_; }
  int64_t n_blocks() const { return shape_.n_blocks; }
  int64_t block_size() const { return shape_.block_size; }
  // Layer i of this stage (0-based within the stage).
  kernels::cpu::PagedKv layer(int64_t i) const;

 private:
  KvCache() = default;
  KvCacheShape shape_;
  std::unique_ptr<float[]> k_;  // [n_layer, n_blocks, block_size, n_head_kv, head_dim]
  std::unique_ptr<float[]> v_;  // same
};

}  // namespace pp::model
