// Embedding gather on the GPU: one block per token copies its table row, 16 bytes per thread
// and access when the row length allows it (n_embd % 8 == 0), element by element otherwise.
#include "cuda-common.h"
#include "pp/kernels/cuda/embedding.h"

namespace pp::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <bool kVec>
__global__ void embedding_kernel(EmbeddingParams p) {
  const int64_t t = blockIdx.x;
  const int64_t id = p.ids[t];
  if (id < 0 || id >= p.n_vocab) return;
  const __nv_bfloat16* src = p.table + id * p.n_embd;
  __nv_bfloat16* dst = p.out + t * p.n_embd;
  if constexpr (kVec) {
    const auto* s = reinterpret_cast<const detail::Bf16x8*>(src);
    auto* d = reinterpret_cast<detail::Bf16x8*>(dst);
    for (int64_t i = threadIdx.x; i < p.n_embd / 8; i += kThreads) d[i] = s[i];
  } else {
    for (int64_t i = threadIdx.x; i < p.n_embd; i += kThreads) dst[i] = src[i];
  }
}

}  // namespace

cudaError_t embedding(const EmbeddingParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return cudaSuccess;
  if (!p.table || !p.ids || !p.out || p.n_embd <= 0) return cudaErrorInvalidValue;
  const bool vec = p.n_embd % 8 == 0 && (reinterpret_cast<uintptr_t>(p.table) % 16) == 0 &&
                   (reinterpret_cast<uintptr_t>(p.out) % 16) == 0;
  if (vec) {
    embedding_kernel<true><<<unsigned(p.n_tokens), kThreads, 0, stream>>>(p);
  } else {
    embedding_kernel<false><<<unsigned(p.n_tokens), kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace pp::kernels::cuda
