// The bf16 decode GEMV (gemv.h), the bf16 twin of fp8.cu's: each warp owns R consecutive rows of
// W and walks k in 16-byte vectors (8 bf16), lane l taking vectors l, l + 32, ...; U vectors per
// row are loaded before any is used (R * U loads in flight per lane) with an L1 no-allocate hint,
// so W streams past while x, which every warp re-reads, stays in L1. x is converted to f32 once
// per vector and reused across the R rows. The warp reduces its m * R sums with shuffles; no
// shared memory, no atomics: results are deterministic, and a row's sum does not depend on n.
#include "cuda-common.h"
#include "pp/kernels/cuda/gemv.h"

namespace pp::kernels::cuda {
namespace {

constexpr int kWarps = 4;  // warps per block

__device__ __forceinline__ uint4 load_stream(const __nv_bfloat16* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ float lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// The 8 bf16 of a 16-byte vector as f32.
__device__ __forceinline__ void to_f32(const uint4& v, float (&f)[8]) {
  f[0] = lo(v.x);
  f[1] = hi(v.x);
  f[2] = lo(v.y);
  f[3] = hi(v.y);
  f[4] = lo(v.z);
  f[5] = hi(v.z);
  f[6] = lo(v.w);
  f[7] = hi(v.w);
}

template <int M, int R, int U>
__global__ void __launch_bounds__(kWarps * 32) bf16_gemv_kernel(Bf16GemvParams p) {
  const int lane = int(threadIdx.x) & 31;
  const int64_t row0 = (int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * R;
  if (row0 >= p.n) return;
  const int64_t kv = p.k / 8;  // 16-byte vectors per row
  const __nv_bfloat16* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    // Rows past n read row n - 1 (valid memory) and are never written.
    wrow[r] = p.w + (row0 + r < p.n ? row0 + r : p.n - 1) * p.k;
  }
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
        wv[u][r] = v < kv ? load_stream(wrow[r] + v * 8) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t v = base + 32 * u;
      if (v >= kv) break;
      float wf[R][8];
#pragma unroll
      for (int r = 0; r < R; ++r) to_f32(wv[u][r], wf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[8];
        to_f32(__ldg(reinterpret_cast<const uint4*>(p.x + m * p.k + v * 8)), xf);
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[m][r] = fmaf(xf[e], wf[r][e], acc[m][r]);
        }
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
  if (p.bias) y += __bfloat162float(p.bias[row]);
  const int64_t at = m * p.n + row;
  if (p.out_f32) {
    p.out_f32[at] = p.accumulate ? p.out_f32[at] + y : y;
  } else {
    p.out[at] = __float2bfloat16(p.accumulate ? __bfloat162float(p.out[at]) + y : y);
  }
}

template <int M, int R, int U>
cudaError_t launch(const Bf16GemvParams& p, cudaStream_t stream) {
  const int64_t warps = (p.n + R - 1) / R;
  const unsigned blocks = unsigned((warps + kWarps - 1) / kWarps);
  bf16_gemv_kernel<M, R, U><<<blocks, kWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

// As the fp8 GEMV: more rows per warp as m grows (x re-reads from L1 per byte of W stay low),
// R * U = 8 loads in flight per lane.
template <int M>
cudaError_t gemv_m(const Bf16GemvParams& p, cudaStream_t stream) {
  if constexpr (M <= 2) {
    return launch<M, 2, 4>(p, stream);
  } else {
    return launch<M, 4, 2>(p, stream);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool bf16_gemv_supported(const Bf16GemvParams& p) {
  return p.m >= 1 && p.m <= kBf16GemvMaxM && p.n > 0 && p.k > 0 && p.k % 8 == 0 && p.x && p.w &&
         (p.out == nullptr) != (p.out_f32 == nullptr) && aligned16(p.x) && aligned16(p.w);
}

cudaError_t bf16_gemv(const Bf16GemvParams& p, cudaStream_t stream) {
  if (!bf16_gemv_supported(p)) return cudaErrorInvalidValue;
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

}  // namespace pp::kernels::cuda
