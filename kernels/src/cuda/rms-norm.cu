// RMSNorm (optionally fused with the residual add) on the GPU: one block per row, the row kept in
// registers between the sum of squares and the scaling, so x and residual are read once and out
// (and residual) written once: a memory-bound kernel that should run near copy bandwidth. Rows
// whose length is a multiple of 8 (and 16-byte aligned) move 8 bf16 per access; others go one
// element at a time.
#include "pp/kernels/cuda/rms-norm.h"

#include <cstdint>

#include "cuda-common.h"

namespace pp::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPerThread = 32;  // rows up to 8192 elements stay in registers

template <int kPerThread>
__global__ void rms_norm_kernel(RmsNormParams p) {
  detail::launch_dependents();
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = p.x + row * p.n;
  __nv_bfloat16* res = p.residual ? p.residual + row * p.n : nullptr;
  __nv_bfloat16* out = p.out + row * p.n;
  float v[kPerThread];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    int64_t c = threadIdx.x + int64_t(i) * kThreads;
    float xv = 0.0f;
    if (c < p.n) {
      xv = __bfloat162float(x[c]);
      if (res) {
        // Round the sum to bf16 as the stored residual is, so the norm sees what is stored.
        __nv_bfloat16 s = __float2bfloat16(__bfloat162float(res[c]) + xv);
        res[c] = s;
        xv = __bfloat162float(s);
      }
    }
    v[i] = xv;
    ss += xv * xv;
  }
  __shared__ float warp_sums[kThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
    if (threadIdx.x == 0) warp_sums[0] = t;
  }
  __syncthreads();
  const float inv = rsqrtf(warp_sums[0] / float(p.n) + p.eps);
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    int64_t c = threadIdx.x + int64_t(i) * kThreads;
    if (c < p.n) out[c] = __float2bfloat16(v[i] * inv * __bfloat162float(p.weight[c]));
  }
}

// The same with 16-byte accesses: each thread holds kVec vectors of 8 bf16.
template <int kVec>
__global__ void rms_norm_vec_kernel(RmsNormParams p) {
  detail::launch_dependents();
  const int64_t row = blockIdx.x;
  const int64_t n_vec = p.n / 8;
  const uint4* x = reinterpret_cast<const uint4*>(p.x + row * p.n);
  uint4* res = p.residual ? reinterpret_cast<uint4*>(p.residual + row * p.n) : nullptr;
  uint4* out = reinterpret_cast<uint4*>(p.out + row * p.n);
  const uint4* w = reinterpret_cast<const uint4*>(p.weight);
  float v[kVec][8];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const int64_t c = threadIdx.x + int64_t(i) * kThreads;
    if (c < n_vec) {
      uint4 xv = x[c];
      const __nv_bfloat16* xb = reinterpret_cast<const __nv_bfloat16*>(&xv);
      if (res) {
        uint4 rv = res[c];
        __nv_bfloat16* rb = reinterpret_cast<__nv_bfloat16*>(&rv);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          // Round the sum to bf16 as the stored residual is, so the norm sees what is stored.
          rb[j] = __float2bfloat16(__bfloat162float(rb[j]) + __bfloat162float(xb[j]));
          v[i][j] = __bfloat162float(rb[j]);
        }
        res[c] = rv;
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) v[i][j] = __bfloat162float(xb[j]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[i][j] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += v[i][j] * v[i][j];
  }
  __shared__ float warp_sums[kThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0f;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
    if (threadIdx.x == 0) warp_sums[0] = t;
  }
  __syncthreads();
  const float inv = rsqrtf(warp_sums[0] / float(p.n) + p.eps);
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    const int64_t c = threadIdx.x + int64_t(i) * kThreads;
    if (c < n_vec) {
      uint4 wv = w[c];
      const __nv_bfloat16* wb = reinterpret_cast<const __nv_bfloat16*>(&wv);
      uint4 ov;
      __nv_bfloat16* ob = reinterpret_cast<__nv_bfloat16*>(&ov);
#pragma unroll
      for (int j = 0; j < 8; ++j) ob[j] = __float2bfloat16(v[i][j] * inv * __bfloat162float(wb[j]));
      out[c] = ov;
    }
  }
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <int kVec>
cudaError_t launch_vec(const RmsNormParams& p, cudaStream_t stream) {
  rms_norm_vec_kernel<kVec><<<dim3(unsigned(p.n_rows)), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <int kPerThread>
cudaError_t launch(const RmsNormParams& p, cudaStream_t stream) {
  rms_norm_kernel<kPerThread><<<dim3(unsigned(p.n_rows)), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t rms_norm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.n_rows == 0) return cudaSuccess;
  if (p.n <= 0 || p.n > int64_t(kThreads) * kMaxPerThread) return cudaErrorInvalidValue;
  const bool vec = p.n % 8 == 0 && aligned16(p.x) && aligned16(p.out) && aligned16(p.weight) &&
                   (p.residual == nullptr || aligned16(p.residual));
  if (vec) {
    const int64_t vec_per_thread = (p.n / 8 + kThreads - 1) / kThreads;
    if (vec_per_thread <= 1) return launch_vec<1>(p, stream);
    if (vec_per_thread <= 2) return launch_vec<2>(p, stream);
    return launch_vec<4>(p, stream);  // n <= 8192
  }
  const int64_t per_thread = (p.n + kThreads - 1) / kThreads;
  if (per_thread <= 4) return launch<4>(p, stream);
  if (per_thread <= 8) return launch<8>(p, stream);
  if (per_thread <= 16) return launch<16>(p, stream);
  return launch<32>(p, stream);
}

}  // namespace pp::kernels::cuda
