// Allocation of a stage's paged KV pool.
#include "pp/model/kv-cache.h"

#include <new>

#include "pp/assert.h"

namespace pp::model {

Result<std::unique_ptr<KvCache>> KvCache::allocate(const KvCacheShape& shape) {
  if (shape.n_layer < 0 || shape.n_blocks <= 0 || shape.block_size <= 0 || shape.n_head_kv <= 0 ||
      shape.head_dim <= 0) {
    return invalid_argument(
        "bad KV cache shape: {} layers, {} blocks of {} tokens, {} x {} per token", shape.n_layer,
        shape.n_blocks, shape.block_size, shape.n_head_kv, shape.head_dim);
  }
  std::unique_ptr<KvCache> kv(new KvCache());
  kv->shape_ = shape;
  const int64_t n = shape.n_layer * shape.layer_elems();
  try {
    // make_unique_for_overwrite: no zeroing, so untouched blocks cost no resident memory.
    kv->k_ = std::make_unique_for_overwrite<float[]>(size_t(n));
    kv->v_ = std::make_unique_for_overwrite<float[]>(size_t(n));
  } catch (const std::bad_alloc&) {
    return make_error(StatusCode::kResourceExhausted, "cannot allocate a KV cache of {} MiB",
                      shape.bytes() >> 20);
  }
  return kv;
}

kernels::cpu::PagedKv KvCache::layer(int64_t i) const {
  PP_ASSERT(i >= 0 && i < shape_.n_layer);
  const int64_t off = i * shape_.layer_elems();
  return kernels::cpu::PagedKv{.k = k_.get() + off,
                               .v = v_.get() + off,
                               .n_blocks = shape_.n_blocks,
                               .block_size = shape_.block_size,
                               .n_head_kv = shape_.n_head_kv,
                               .head_dim = shape_.head_dim};
}

}  // namespace pp::model
