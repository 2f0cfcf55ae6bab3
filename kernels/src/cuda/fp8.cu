// FP8 e4m3 kernels (fp8.h): the decode GEMV, the quantizers, the dequantizer and small helpers.
//
// The GEMV (m <= 8 rows of x against an fp8 weight [n, k]) is bound by reading W once, so it is
// built to stream W at the copy rate: each warp owns R consecutive rows of W (R = 2 or 4) and
// walks k in 16-byte vectors, lane l taking vectors l, l + 32, ...; U vectors per row are loaded
// before any is used (R * U 16-byte loads in flight per lane), with an L1 no-allocate hint so
// that W does not evict x, which every warp of the SM re-reads from L1 (x is tiny: m * k bf16).
// x is converted to f32 once per element and reused across the warp's R rows; W's bytes go
// fp8x2 -> half2 (one hardware cvt on sm_89+) -> f32. A 128x128 block scale multiplies each
// 16-wide vector's partial sum (a vector never straddles a 128-column block, and a warp's R
// rows never straddle a 128-row block since R divides 128), per-channel and per-tensor scales
// multiply the final sum. The warp reduces its m * R sums with shuffles and R * m lanes write
// the outputs. No shared memory, so no bank conflicts; no atomics, so results are deterministic.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "cuda-common.h"
#include "pp/kernels/cuda/fp8.h"

namespace pp::kernels::cuda {
namespace {

constexpr int kGemvWarps = 4;  // warps per block of the GEMV
constexpr float kFp8Max = 448.0f;

// 16 bytes of W, streamed: read once, not worth a line in L1.
__device__ __forceinline__ uint4 load_stream(const uint8_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// Four fp8 e4m3 values (one 32-bit word, lowest byte first) as f32.
__device__ __forceinline__ void fp8x4_to_f32(uint32_t w, float (&f)[4]) {
  const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w & 0xffffu), __NV_E4M3);
  const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w >> 16), __NV_E4M3);
  const float2 a = __half22float2(__half2(lo)), b = __half22float2(__half2(hi));
  f[0] = a.x;
  f[1] = a.y;
  f[2] = b.x;
  f[3] = b.y;
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

template <int M, int R, int U, bool kBlock>
__global__ void __launch_bounds__(kGemvWarps * 32) fp8_gemv_kernel(Fp8GemvParams p) {
  const int lane = int(threadIdx.x) & 31;
  const int64_t row0 = (int64_t(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5)) * R;
  if (row0 >= p.n) return;
  const int64_t kv = p.k / 16;  // 16-byte vectors per row
  const uint8_t* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    // Rows past n read row n - 1 (valid memory) and are never written.
    wrow[r] = p.w + (row0 + r < p.n ? row0 + r : p.n - 1) * p.k;
  }
  const int64_t kb = (p.k + 127) / 128;
  const float* block_scales = kBlock ? p.scales + (row0 / 128) * kb : nullptr;

  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  }

  for (int64_t base = lane; base < kv; base += 32 * U) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t v = base + 32 * u;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        wv[u][r] = v < kv ? load_stream(wrow[r] + v * 16) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t v = base + 32 * u;
      if (v >= kv) break;
      float part[M][R];
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll
        for (int r = 0; r < R; ++r) part[m][r] = 0.0f;
      }
      // x[m, 16 v .. 16 v + 16): two 16-byte loads per row, kept in L1 for the other warps.
      uint4 xv[M][2];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4* xp = reinterpret_cast<const uint4*>(p.x + m * p.k + v * 16);
        xv[m][0] = __ldg(xp);
        xv[m][1] = __ldg(xp + 1);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {  // elements 4 j .. 4 j + 3 of the vector
        float wf[R][4];
#pragma unroll
        for (int r = 0; r < R; ++r) fp8x4_to_f32(word(wv[u][r], j), wf[r]);
#pragma unroll
        for (int m = 0; m < M; ++m) {
          const uint4& xh = xv[m][j / 2];
          const uint32_t x01 = word(xh, (j % 2) * 2), x23 = word(xh, (j % 2) * 2 + 1);
          const float xf[4] = {bf16_lo(x01), bf16_hi(x01), bf16_lo(x23), bf16_hi(x23)};
#pragma unroll
          for (int r = 0; r < R; ++r) {
#pragma unroll
            for (int e = 0; e < 4; ++e) part[m][r] = fmaf(xf[e], wf[r][e], part[m][r]);
          }
        }
      }
      const float s = kBlock ? __ldg(block_scales + v / 8) : 1.0f;
#pragma unroll
      for (int m = 0; m < M; ++m) {
#pragma unroll
        for (int r = 0; r < R; ++r)
          acc[m][r] = kBlock ? fmaf(part[m][r], s, acc[m][r]) : acc[m][r] + part[m][r];
      }
    }
  }

  // Every lane ends with every sum; lane m * R + r writes output (m, row0 + r).
  float mine = 0.0f;
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float t = detail::warp_sum(acc[m][r]);
      if (lane == m * R + r) mine = t;
    }
  }
  if (lane >= M * R) return;
  const int m = lane / R, r = lane % R;
  const int64_t row = row0 + r;
  if (row >= p.n) return;
  float y = mine;
  if (!kBlock) y *= p.scale_kind == ScaleKind::kPerChannel ? p.scales[row] : p.scales[0];
  if (p.bias) y += __bfloat162float(p.bias[row]);
  const int64_t at = m * p.n + row;
  if (p.out_f32) {
    p.out_f32[at] = p.accumulate ? p.out_f32[at] + y : y;
  } else {
    p.out[at] = __float2bfloat16(p.accumulate ? __bfloat162float(p.out[at]) + y : y);
  }
}

template <int M, int R, int U>
cudaError_t launch_gemv(const Fp8GemvParams& p, cudaStream_t stream) {
  const int64_t warps = (p.n + R - 1) / R;
  const unsigned blocks = unsigned((warps + kGemvWarps - 1) / kGemvWarps);
  if (p.scale_kind == ScaleKind::kBlock128x128) {
    fp8_gemv_kernel<M, R, U, true><<<blocks, kGemvWarps * 32, 0, stream>>>(p);
  } else {
    fp8_gemv_kernel<M, R, U, false><<<blocks, kGemvWarps * 32, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

// Rows per warp and vectors in flight per row by m: more rows per warp as m grows, so that
// the x traffic from L1 per byte of W stays low; R * U = 8 loads in flight per lane.
template <int M>
cudaError_t gemv_m(const Fp8GemvParams& p, cudaStream_t stream) {
  if constexpr (M <= 2) {
    return launch_gemv<M, 2, 4>(p, stream);
  } else {
    return launch_gemv<M, 4, 2>(p, stream);
  }
}

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

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool fp8_gemv_supported(const Fp8GemvParams& p) {
  return p.m >= 1 && p.m <= kFp8GemvMaxM && p.n > 0 && p.k > 0 && p.k % 16 == 0 && p.x && p.w &&
         p.scales && (p.out == nullptr) != (p.out_f32 == nullptr) && aligned16(p.x) &&
         aligned16(p.w) && p.scale_kind != ScaleKind::kNone;
}

cudaError_t fp8_gemv(const Fp8GemvParams& p, cudaStream_t stream) {
  if (!fp8_gemv_supported(p)) return cudaErrorInvalidValue;
  switch (p.m) {
    case 1:
      return gemv_m<1>(p, stream);
    case 2:
      return gemv_m<2>(p, stream);
    case 3:
      return gemv_m<3>(p, stream);
    case 4:
      return gemv_m<4>(p, stream);
    case 5:
      return gemv_m<5>(p, stream);
    case 6:
      return gemv_m<6>(p, stream);
    case 7:
      return gemv_m<7>(p, stream);
    default:
      return gemv_m<8>(p, stream);
  }
}

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
