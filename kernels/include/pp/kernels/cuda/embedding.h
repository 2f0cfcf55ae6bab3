// CUDA twin of cpu::embedding: gathers one bf16 table row per token.
// Included only by kernels/ and GPU tests: it names CUDA types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pp::kernels::cuda {

// out[t, :] = table[ids[t], :]. ids must be < n_vocab (checked by the caller); an id out of
// range leaves its row unwritten rather than reading outside the table.
struct EmbeddingParams {
  const __nv_bfloat16* table = nullptr;  // [n_vocab, n_embd]
  const int32_t* ids = nullptr;          // [n_tokens], device memory
  __nv_bfloat16* out = nullptr;          // [n_tokens, n_embd]
  int64_t n_vocab = 0, n_embd = 0, n_tokens = 0;
};

cudaError_t embedding(const EmbeddingParams& p, cudaStream_t stream);

}  // namespace pp::kernels::cuda
