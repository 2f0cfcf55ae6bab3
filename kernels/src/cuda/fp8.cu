// FP8 e4m3 kernels (fp8.h): the quantizers, the dequantizer and small helpers of the cuBLASLt
// paths (the decode GEMV on fp8 weights is gemv.cu's).
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "cuda-common.h"
#include "pp/kernels/cuda/fp8.h"

namespace pp::kernels::cuda {
namespace {

constexpr float kFp8Max = 448.0f;

__device__ __forceinline__ float fp8_scale_of(float amax) {
  return amax > 0.0f ? __fdiv_rn(amax, kFp8Max) : 1.0f;
}

__device__ __forceinline__ uint8_t to_fp8(float v, float scale) {
  return uint8_t(__nv_cvt_float_to_fp8(__fdiv_rn(v, scale), __NV_SATFINITE, __NV_E4M3));
}

constexpr int kQuantThreads = 256;

// One block per row: amax over the row, then the row's bytes.
__global__ void __launch_bounds__(kQuantThreads) quantize_rows_kernel(QuantizeFp8Params p) {
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* x = p.x + row * p.cols;
  float amax = 0.0f;
  for (int64_t c = threadIdx.x; c < p.cols; c += kQuantThreads) {
    amax = fmaxf(amax, fabsf(__bfloat162float(x[c])));
  }
  __shared__ float warp_max[kQuantThreads / 32];
  amax = detail::warp_max(amax);
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < kQuantThreads / 32 ? warp_max[threadIdx.x] : 0.0f;
    v = detail::warp_max(v);
    if (threadIdx.x == 0) warp_max[0] = v;
  }
  __syncthreads();
  const float scale = fp8_scale_of(warp_max[0]);
  if (threadIdx.x == 0) p.scales[row] = scale;
  uint8_t* q = p.q + row * p.cols;
  for (int64_t c = threadIdx.x; c < p.cols; c += kQuantThreads) {
    q[c] = to_fp8(__bfloat162float(x[c]), scale);
  }
}

// One warp per (row, 128-column group): 4 elements per lane.
__global__ void __launch_bounds__(kQuantThreads) quantize_groups_kernel(QuantizeFp8Params p) {
  const int64_t groups = (p.cols + 127) / 128;
  const int64_t gi = int64_t(blockIdx.x) * (kQuantThreads / 32) + (threadIdx.x >> 5);
  if (gi >= p.rows * groups) return;
  const int64_t row = gi / groups, g = gi % groups;
  const int lane = int(threadIdx.x) & 31;
  float v[4];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t c = g * 128 + i * 32 + lane;
    v[i] = c < p.cols ? __bfloat162float(p.x[row * p.cols + c]) : 0.0f;
    amax = fmaxf(amax, fabsf(v[i]));
  }
  const float scale = fp8_scale_of(detail::warp_max(amax));
  if (lane == 0) p.scales[p.group_major ? g * p.scale_ld + row : row * groups + g] = scale;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t c = g * 128 + i * 32 + lane;
    if (c < p.cols) p.q[row * p.cols + c] = to_fp8(v[i], scale);
  }
}

__global__ void dequantize_kernel(const uint8_t* w, ScaleKind kind, const float* scales,
                                  int64_t rows, int64_t cols, __nv_bfloat16* out) {
  const int64_t n = rows * cols, kb = (cols + 127) / 128;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const float s = kind == ScaleKind::kPerChannel     ? scales[r]
                    : kind == ScaleKind::kBlock128x128 ? scales[(r / 128) * kb + c / 128]
                                                       : scales[0];
    const __half_raw h = __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(w[i]), __NV_E4M3);
    out[i] = __float2bfloat16(__half2float(__half(h)) * s);
  }
}

__global__ void broadcast_kernel(const float* scale, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = *scale;
  }
}

__global__ void pad_scales_kernel(const float* s, int64_t rb, int64_t cb, int64_t ld, float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rb * ld;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / ld, c = i % ld;
    out[i] = c < cb ? s[r * cb + c] : 1.0f;
  }
}

__global__ void epilogue_kernel(Fp8EpilogueParams p) {
  const int64_t n = p.m * p.n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float y = p.acc ? p.acc[i] : __bfloat162float(p.acc_bf16[i]);
    if (p.bias) y += __bfloat162float(p.bias[i % p.n]);
    if (p.out_f32) {
      p.out_f32[i] = p.accumulate ? p.out_f32[i] + y : y;
    } else {
      p.out[i] = __float2bfloat16(p.accumulate ? __bfloat162float(p.out[i]) + y : y);
    }
  }
}

}  // namespace

cudaError_t quantize_fp8(const QuantizeFp8Params& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (!p.x || !p.q || !p.scales || p.rows < 0 || p.cols <= 0 || (p.group != 0 && p.group != 128) ||
      (p.group_major && (p.group == 0 || p.scale_ld < p.rows))) {
    return cudaErrorInvalidValue;
  }
  if (p.group == 0) {
    quantize_rows_kernel<<<unsigned(p.rows), kQuantThreads, 0, stream>>>(p);
  } else {
    const int64_t warps = p.rows * ((p.cols + 127) / 128);
    const int64_t per_block = kQuantThreads / 32;
    quantize_groups_kernel<<<unsigned((warps + per_block - 1) / per_block), kQuantThreads, 0,
                             stream>>>(p);
  }
  return cudaGetLastError();
}

cudaError_t dequantize_fp8(const uint8_t* w, ScaleKind scale_kind, const float* scales,
                           int64_t rows, int64_t cols, __nv_bfloat16* out, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  if (!w || !scales || !out || scale_kind == ScaleKind::kNone) return cudaErrorInvalidValue;
  dequantize_kernel<<<detail::grid_for(rows * cols, 256), 256, 0, stream>>>(w, scale_kind, scales,
                                                                            rows, cols, out);
  return cudaGetLastError();
}

cudaError_t broadcast_scale(const float* scale, float* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  broadcast_kernel<<<detail::grid_for(n, 256), 256, 0, stream>>>(scale, out, n);
  return cudaGetLastError();
}

cudaError_t pad_block_scales(const float* scales, int64_t row_blocks, int64_t col_blocks,
                             int64_t ld, float* out, cudaStream_t stream) {
  if (ld < col_blocks) return cudaErrorInvalidValue;
  if (row_blocks * ld == 0) return cudaSuccess;
  pad_scales_kernel<<<detail::grid_for(row_blocks * ld, 256), 256, 0, stream>>>(
      scales, row_blocks, col_blocks, ld, out);
  return cudaGetLastError();
}

cudaError_t linear_epilogue(const Fp8EpilogueParams& p, cudaStream_t stream) {
  if (p.m * p.n == 0) return cudaSuccess;
  if ((p.acc == nullptr) == (p.acc_bf16 == nullptr) ||
      (p.out == nullptr) == (p.out_f32 == nullptr)) {
    return cudaErrorInvalidValue;
  }
  epilogue_kernel<<<detail::grid_for(p.m * p.n, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace pp::kernels::cuda
