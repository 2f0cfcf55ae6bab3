// CUDA twin of cpu::attention: causal paged attention with GQA, bf16 q/k/v/out, f32 softmax and
// accumulation, on the tensor cores (mma.sync m16n8k16 bf16). Included only by kernels/ and GPU
// tests: it names CUDA types.
//
// Two launch shapes, chosen per call from max_q_len: decode (every sequence has at most
// 16 / group query rows: one CTA reads each K/V tile once for all the q heads of a KV head, and
// the keys are split over CTAs in 512-key pieces, flash-decoding, merged by a second kernel) and
// prefill (64 query rows per CTA, the whole causal key range in one CTA). Both compute every
// (token, head) row the same way: online softmax over 64-key tiles (32 for head_dim 256), with
// the state folded every 512 keys in a fixed order. So a row's output is bit-for-bit the same
// whichever shape ran it and whatever else is in the batch (up to 512 * 256 = 131072 keys of
// context; longer contexts use larger decode splits and lose bit-exactness, not accuracy).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "pp/kernels/cuda/paged-kv.h"

namespace pp::kernels::cuda {

// Query token t of sequence s (tokens seq_start[s] .. seq_start[s+1]) sits at position q_pos[t]
// and attends to the keys at positions 0 .. q_pos[t] of its sequence, found through
// block_tables[s]; those keys (the new tokens' too) must already be in the cache.
// head_dim (kv.head_dim) must be 64, 128 or 256; n_head a multiple of kv.n_head_kv.
struct AttentionParams {
  const __nv_bfloat16* q = nullptr;       // [n_tokens, n_head, head_dim]
  __nv_bfloat16* out = nullptr;           // [n_tokens, n_head, head_dim]
  PagedKv kv;                             // this layer's pool
  const int32_t* seq_start = nullptr;     // [n_seq + 1], device memory
  const int32_t* q_pos = nullptr;         // [n_tokens], device memory
  const int32_t* block_tables = nullptr;  // [n_seq, max_blocks], device memory
  int64_t n_tokens = 0, n_seq = 0, n_head = 0, max_blocks = 0;
  float scale = 1.0f;  // usually 1 / sqrt(head_dim)
  // Host-side bounds that shape the launch (the device arrays are not read by the host):
  int64_t max_q_len = 0;   // the most query tokens of any one sequence (> 0)
  int64_t max_kv_len = 0;  // >= q_pos[t] + 1 for every t; 0 = max_blocks * block_size
  // Caller-owned scratch for the decode split partials: attention_workspace_bytes(p) bytes
  // (0 when the launch needs none); 16-byte aligned.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Bytes of workspace `attention` needs for these params (depends on the sizes and bounds only).
size_t attention_workspace_bytes(const AttentionParams& p);

cudaError_t attention(const AttentionParams& p, cudaStream_t stream);

}  // namespace pp::kernels::cuda
