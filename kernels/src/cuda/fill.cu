// Random weight fill and logit updates on the GPU: penalties, bias, allowed-token masks (fill.h).
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

__global__ void logit_bias_kernel(float* logits, int64_t row_stride, int64_t n_vocab,
                                  const LogitBias* bias, int64_t n_bias) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_bias) return;
  const LogitBias b = bias[i];
  if (b.id < 0 || b.id >= n_vocab) return;
  logits[int64_t(b.row) * row_stride + b.id] += b.value;
}

// grid.y: the masked rows; each thread one token id.
__global__ void logit_mask_kernel(float* logits, int64_t row_stride, int64_t n_vocab,
                                  const uint32_t* masks, const int32_t* mask_rows, int64_t words) {
  const int64_t k = blockIdx.y;
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n_vocab) return;
  if (!((masks[k * words + (t >> 5)] >> (t & 31)) & 1u)) {
    logits[int64_t(mask_rows[k]) * row_stride + t] = -INFINITY;
  }
}

__global__ void busy_wait_kernel(int64_t ns) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (int64_t(t - t0) < ns);
}

}  // namespace

cudaError_t busy_wait(int64_t microseconds, cudaStream_t stream) {
  busy_wait_kernel<<<1, 1, 0, stream>>>(microseconds * 1000);
  return cudaGetLastError();
}

cudaError_t fill_random(__nv_bfloat16* out, size_t n, uint64_t key, float lo, float hi,
                        cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  fill_random_kernel<<<detail::grid_for(int64_t(n), 256, 132 * 32), 256, 0, stream>>>(out, n, key,
                                                                                      lo, hi);
  return cudaGetLastError();
}

cudaError_t apply_logit_constraints(float* logits, int64_t row_stride, int64_t n_vocab,
                                    const LogitBias* bias, int64_t n_bias, const uint32_t* masks,
                                    const int32_t* mask_rows, int64_t n_masked,
                                    cudaStream_t stream) {
  if (n_bias > 0) {
    logit_bias_kernel<<<unsigned((n_bias + 255) / 256), 256, 0, stream>>>(logits, row_stride,
                                                                          n_vocab, bias, n_bias);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  if (n_masked > 0) {
    const dim3 grid(unsigned((n_vocab + 255) / 256), unsigned(n_masked));
    logit_mask_kernel<<<grid, 256, 0, stream>>>(logits, row_stride, n_vocab, masks, mask_rows,
                                                (n_vocab + 31) / 32);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
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
