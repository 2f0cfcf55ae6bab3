// RoPE fused with the paged KV-cache write, on the GPU: the CUDA twin of cpu::rope_neox followed
// by cpu::kv_write (and, for Qwen3, preceded by cpu::rms_norm over each q and k head).
// Included only by kernels/ and GPU tests: it names CUDA types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "pp/kernels/cuda/paged-kv.h"

namespace pp::kernels::cuda {

// Input: the fused q|k|v projection of each token. For every token t:
//   q heads (optionally RMS-normalised with q_norm) are rotated by pos[t] (NeoX layout, the
//   first rot_dim dimensions) and written to q_out, or back into qkv when q_out is null;
//   k heads (optionally normalised with k_norm) are rotated and written to the cache slot
//   slots[t]; v heads are copied to that slot. A negative slot skips the cache write (padding).
// The k and v parts of qkv are left as they are. All arithmetic is f32; the norm keeps the
// normalised head in f32 for the rotation (no bf16 rounding in between).
struct RopeKvParams {
  __nv_bfloat16* qkv = nullptr;           // [n_tokens, (n_head + 2 * kv.n_head_kv) * head_dim]
  __nv_bfloat16* q_out = nullptr;         // [n_tokens, n_head, head_dim] or nullptr (in place)
  const int32_t* pos = nullptr;           // [n_tokens], device memory
  const int64_t* slots = nullptr;         // [n_tokens], device memory; < 0: skip the cache write
  const float* inv_freq = nullptr;        // [rot_dim / 2] (cpu::rope_inv_freq), device memory
  const __nv_bfloat16* q_norm = nullptr;  // [head_dim] or nullptr: per-head RMSNorm of q
  const __nv_bfloat16* k_norm = nullptr;  // [head_dim] or nullptr: per-head RMSNorm of k
  float norm_eps = 1e-6f;
  PagedKv kv;  // this layer's pool; kv.head_dim is the head dimension of q, k and v
  int64_t n_tokens = 0, n_head = 0, rot_dim = 0;  // rot_dim: even, <= head_dim
};

cudaError_t rope_kv_write(const RopeKvParams& p, cudaStream_t stream);

}  // namespace pp::kernels::cuda
