// Random weight fill and logit penalties on the GPU (fill.h).
#include "cuda-common.h"
#include "pp/kernels/cuda/fill.h"
#include "pp/kernels/random-weights.h"

namespace pp::kernels::cuda {
namespace {

__global__ void fill_random_kernel(__nv_bfloat16* out, size_t n, uint64_t key, float lo, float hi) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = __float2bfloat16_rn(random_weight_value(key, i, lo, hi));
  }
}

__global__ void penalties_kernel(float* logits, int64_t row_stride, int64_t n_vocab,
                                 const PenaltyEntry* entries, int64_t n_entries,
                                 const PenaltyRow* rows) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n_entries) return;
  const PenaltyEntry en = entries[e];
  if (en.id < 0 || en.id >= n_vocab) return;
  const PenaltyRow r = rows[en.row];
  float& l = logits[int64_t(en.row) * row_stride + en.id];
  float x = l;
  if (en.seen && r.repetition != 1.0f) x = x > 0.0f ? __fdiv_rn(x, r.repetition) : x * r.repetition;
  if (en.output_count > 0) {
    x = __fsub_rn(x, __fmul_rn(r.frequency, float(en.output_count)));  // no FMA: as the CPU
    x = __fsub_rn(x, r.presence);
  }
  l = x;
}

}  // namespace

cudaError_t fill_random(__nv_bfloat16* out, size_t n, uint64_t key, float lo, float hi,
                        cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  fill_random_kernel<<<detail::grid_for(int64_t(n), 256, 132 * 32), 256, 0, stream>>>(out, n, key,
                                                                                      lo, hi);
  return cudaGetLastError();
}

cudaError_t apply_penalties(float* logits, int64_t row_stride, int64_t n_vocab,
                            const PenaltyEntry* entries, int64_t n_entries, const PenaltyRow* rows,
                            cudaStream_t stream) {
  if (n_entries == 0) return cudaSuccess;
  const unsigned blocks = unsigned((n_entries + 255) / 256);
  penalties_kernel<<<blocks, 256, 0, stream>>>(logits, row_stride, n_vocab, entries, n_entries,
                                               rows);
  return cudaGetLastError();
}

}  // namespace pp::kernels::cuda
