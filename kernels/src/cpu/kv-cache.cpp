// Writes new tokens' keys and values into the paged KV pool: token t goes to slot
// slots[t] = block * block_size + offset. A negative slot marks a padding token and is skipped.
#include <cstring>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {

void kv_write(const KvWriteParams& p) {
  PP_ASSERT(p.kv.k && p.kv.v && p.k && p.v && p.slots);
  const int64_t row = p.kv.n_head_kv * p.kv.head_dim;
  const int64_t n_slots = p.kv.n_blocks * p.kv.block_size;
#pragma omp parallel for schedule(static) num_threads(detail::pool_size()) if (p.n_tokens > 16)
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const int64_t s = p.slots[t];
    if (s < 0) continue;
    PP_ASSERT(s < n_slots);
    std::memcpy(p.kv.k + s * row, p.k + t * row, size_t(row) * sizeof(float));
    std::memcpy(p.kv.v + s * row, p.v + t * row, size_t(row) * sizeof(float));
  }
}

}  // namespace pp::kernels::cpu
