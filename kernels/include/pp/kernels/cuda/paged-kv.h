// One layer's paged KV pool on the GPU, bf16: the CUDA twin of cpu::PagedKv. Slot
// s = block * block_size + offset holds one token's keys (and values) for every KV head.
// Included only by kernels/ and GPU tests: it names CUDA types.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace pp::kernels::cuda {

struct PagedKv {
  __nv_bfloat16* k = nullptr;  // [n_blocks, block_size, n_head_kv, head_dim]
  __nv_bfloat16* v = nullptr;  // [n_blocks, block_size, n_head_kv, head_dim]
  int64_t n_blocks = 0, block_size = 0, n_head_kv = 0, head_dim = 0;
};

}  // namespace pp::kernels::cuda
