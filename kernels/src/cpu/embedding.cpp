// Embedding lookup: copies one table row per token (dequantizing it for a GGUF block table).
// Pure data movement, trivially invariant.
#include <cstring>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/gguf-blocks.h"

namespace pp::kernels::cpu {

void embedding(const EmbeddingParams& p) {
  PP_ASSERT((p.table || !p.blocks.empty()) && p.ids && p.out && p.n_embd > 0);
  const int64_t n_embd = p.n_embd;
  if (!p.blocks.empty()) {
    PP_ASSERT(is_block_format(p.blocks.format) && p.blocks.cols == n_embd);
    const int64_t row_bytes = weight_row_bytes(p.blocks.format, n_embd);
    const auto* base = p.blocks.as<std::byte>();
    for (int64_t t = 0; t < p.n_tokens; ++t) {
      const int64_t id = p.ids[t];
      PP_ASSERT(id >= 0 && id < p.n_vocab);
      dequantize_blocks(p.blocks.format, base + id * row_bytes, p.out + t * n_embd, n_embd);
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(detail::pool_size()) if (p.n_tokens > 1)
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const int64_t id = p.ids[t];
    PP_ASSERT(id >= 0 && id < p.n_vocab);
    std::memcpy(p.out + t * n_embd, p.table + id * n_embd, size_t(n_embd) * sizeof(float));
  }
}

}  // namespace pp::kernels::cpu
