// The decode GEMV (gemv.h) for bf16 and fp8 weights, with its fused SwiGLU epilogue.
//
// Built to stream W at the copy rate: each warp owns R weight rows (R consecutive rows, or with
// SwiGLU R / 2 gate rows and the matching up rows) and walks k in 16-byte vectors (8 bf16 or 16
// fp8), lane l taking vectors l, l + 32, ...; U vectors per row are loaded before any is used
// (R * U loads in flight per lane) with an L1 no-allocate hint, so W streams past while x, which
// every warp of the SM re-reads, stays in L1. x is converted to f32 once per vector and reused
// across the R rows. Each vector's products are summed into a partial, which a 128x128 block
// scale multiplies (a vector never straddles a 128-column block); per-channel and per-tensor
// scales multiply the final sum. The order in which a row's products are added depends on
// neither R, U, M nor the other rows, so a row's result is the same in every variant, fused or
// not. The warp reduces its sums with shuffles: no shared memory, no atomics, deterministic.
//
// Launched as a programmatic dependent, the kernel issues its first R * U weight loads, then
// waits for the kernel ahead of it (whose output is x), and lets the kernel after it launch at
// once: a step's GEMVs start streaming their weights while the small kernels between them run.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "cuda-common.h"
#include "pp/kernels/cuda/gemv.h"

namespace pp::kernels::cuda {
namespace {

constexpr int kWarps = 4;  // warps per block

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

// The 8 bf16 of a 16-byte vector as f32.
__device__ __forceinline__ void bf16x8_to_f32(const uint4& v, float (&f)[8]) {
  f[0] = bf16_lo(v.x);
  f[1] = bf16_hi(v.x);
  f[2] = bf16_lo(v.y);
  f[3] = bf16_hi(v.y);
  f[4] = bf16_lo(v.z);
  f[5] = bf16_hi(v.z);
  f[6] = bf16_lo(v.w);
  f[7] = bf16_hi(v.w);
}

// Four fp8 e4m3 values (one 32-bit word, lowest byte first) as f32, at f[at .. at + 3].
__device__ __forceinline__ void fp8x4_to_f32(uint32_t w, float (&f)[8], int at) {
  const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w & 0xffffu), __NV_E4M3);
  const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w >> 16), __NV_E4M3);
  const float2 a = __half22float2(__half2(lo)), b = __half22float2(__half2(hi));
  f[at] = a.x;
  f[at + 1] = a.y;
  f[at + 2] = b.x;
  f[at + 3] = b.y;
}

// How a weight format's 16-byte vector becomes f32: kElems elements, in kElems / 8 chunks of 8
// (the width of one 16-byte load of bf16 x).
struct Bf16Weights {
  static constexpr int kElems = 8;
  static constexpr bool kScaled = false;
  __device__ static void chunk(const uint4& v, int, float (&f)[8]) { bf16x8_to_f32(v, f); }
};
struct Fp8Weights {
  static constexpr int kElems = 16;
  static constexpr bool kScaled = true;
  __device__ static void chunk(const uint4& v, int c, float (&f)[8]) {
    fp8x4_to_f32(c == 0 ? v.x : v.z, f, 0);
    fp8x4_to_f32(c == 0 ? v.y : v.w, f, 4);
  }
};

// kBlock: 128x128 block scales; kSwiglu: the SwiGLU epilogue.
template <class W, int M, int R, int U, bool kBlock, bool kSwiglu>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(GemvParams p) {
  static_assert(M * R <= 32 && (!kSwiglu || R % 2 == 0));
  constexpr int kChunks = W::kElems / 8;
  constexpr int kOuts = kSwiglu ? R / 2 : R;  // outputs per warp and row of x
  const int lane = int(threadIdx.x) & 31;
  const int64_t first = (int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * kOuts;
  const int64_t kv = p.k / W::kElems;  // 16-byte vectors per row
  const int64_t kb = (p.k + 127) / 128;
  const uint8_t* w = static_cast<const uint8_t*>(p.w);
  constexpr int64_t kBytes = 16 / W::kElems;  // bytes per element

  // Weight row of each of the warp's R rows (outputs past n read row n - 1, never written).
  int64_t wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t o = first + (kSwiglu ? r / 2 : r);
    const int64_t oc = o < p.n ? o : p.n - 1;
    wrow[r] = kSwiglu && r % 2 == 1 ? p.n + oc : oc;
  }

  uint4 wv[U][R];
  auto load = [&](int64_t base) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t v = base + 32 * u;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        wv[u][r] = v < kv ? load_stream(w + (wrow[r] * p.k + v * W::kElems) * kBytes)
                          : make_uint4(0, 0, 0, 0);
      }
    }
  };
  // W does not depend on the kernel ahead: its first loads go out before the wait.
  load(lane);
  detail::wait_for_prerequisites();
  detail::launch_dependents();
  if (first >= p.n) return;

  // x row of each of the M rows (rows past m repeat row m - 1 and are never written).
  const __nv_bfloat16* xrow[M];
#pragma unroll
  for (int mm = 0; mm < M; ++mm) xrow[mm] = p.x + (mm < p.m ? mm : p.m - 1) * p.k;

  float acc[M][R];
#pragma unroll
  for (int mm = 0; mm < M; ++mm) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[mm][r] = 0.0f;
  }

  for (int64_t base = lane; base < kv; base += 32 * U) {
    if (base != lane) load(base);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t v = base + 32 * u;
      if (v >= kv) break;
      float part[M][R];
#pragma unroll
      for (int mm = 0; mm < M; ++mm) {
#pragma unroll
        for (int r = 0; r < R; ++r) part[mm][r] = 0.0f;
      }
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        const int64_t at = v * W::kElems + 8 * c;  // first column of this chunk
        float wf[R][8];
#pragma unroll
        for (int r = 0; r < R; ++r) W::chunk(wv[u][r], c, wf[r]);
#pragma unroll
        for (int mm = 0; mm < M; ++mm) {
          float xf[8];
          bf16x8_to_f32(__ldg(reinterpret_cast<const uint4*>(xrow[mm] + at)), xf);
#pragma unroll
          for (int r = 0; r < R; ++r) {
#pragma unroll
            for (int e = 0; e < 8; ++e) part[mm][r] = fmaf(xf[e], wf[r][e], part[mm][r]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        // 8 fp8 vectors per 128-column block.
        const float s = kBlock ? __ldg(p.scales + (wrow[r] / 128) * kb + v / 8) : 1.0f;
#pragma unroll
        for (int mm = 0; mm < M; ++mm) {
          acc[mm][r] = kBlock ? fmaf(part[mm][r], s, acc[mm][r]) : acc[mm][r] + part[mm][r];
        }
      }
    }
  }

  // Every lane ends with every sum; lane mm * kOuts + o keeps output (mm, first + o): the row's
  // sum, and with SwiGLU the up row's sum beside the gate row's.
  float y0 = 0.0f, y1 = 0.0f;
#pragma unroll
  for (int mm = 0; mm < M; ++mm) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float t = detail::warp_sum(acc[mm][r]);
      if (lane == mm * kOuts + (kSwiglu ? r / 2 : r)) {
        if (kSwiglu && r % 2 == 1) {
          y1 = t;
        } else {
          y0 = t;
        }
      }
    }
  }
  if (lane >= M * kOuts) return;
  const int mm = lane / kOuts, o = lane % kOuts;
  const int64_t out = first + o;
  if (mm >= p.m || out >= p.n) return;
  // The row's scale (per channel or per tensor) and bias.
  auto finish = [&](float y, int64_t row) {
    if (W::kScaled && !kBlock) {
      y *= p.scale_kind == ScaleKind::kPerChannel ? p.scales[row] : p.scales[0];
    }
    if (p.bias) y += __bfloat162float(p.bias[row]);
    return y;
  };
  const int64_t at = mm * p.n + out;
  if constexpr (kSwiglu) {
    const float gate = detail::round_bf16(finish(y0, out));
    const float up = detail::round_bf16(finish(y1, p.n + out));
    p.out[at] = __float2bfloat16(detail::silu_mul(gate, up));
  } else {
    const float y = finish(y0, out);
    if (p.out_f32) {
      p.out_f32[at] = p.accumulate ? p.out_f32[at] + y : y;
    } else {
      p.out[at] = __float2bfloat16(p.accumulate ? __bfloat162float(p.out[at]) + y : y);
    }
  }
}

template <class W, int M, int R, int U, bool kBlock, bool kSwiglu>
cudaError_t launch(const GemvParams& p, cudaStream_t stream) {
  constexpr int kOuts = kSwiglu ? R / 2 : R;
  const int64_t warps = (p.n + kOuts - 1) / kOuts;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned((warps + kWarps - 1) / kWarps));
  cfg.blockDim = dim3(kWarps * 32);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = p.programmatic ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, gemv_kernel<W, M, R, U, kBlock, kSwiglu>, p);
}

// Rows per warp and vectors in flight per row by M: more rows per warp as M grows, so that the
// x traffic from L1 per byte of W stays low; R * U = 8 loads in flight per lane, 16 for fp8 at
// M = 1 (R = 4, U = 4). Decode steps of the Qwen3-8B shape on an H100 (PP_GPU_PROFILE=ops,
// docs/perf.md) spend 3.36 ms in their fp8 GEMVs at M = 1 with (4, 4) and 3.49 with (2, 8);
// bf16 5.29 ms with (2, 4) and 5.62 with (2, 8).
template <class W, int M, bool kBlock>
cudaError_t by_fusion(const GemvParams& p, cudaStream_t stream) {
  constexpr bool kWide = W::kElems == 16 && M == 1;
  constexpr int R = M <= 2 && !kWide ? 2 : 4, U = kWide ? 4 : M <= 2 ? 4 : 2;
  return p.swiglu ? launch<W, M, R, U, kBlock, true>(p, stream)
                  : launch<W, M, R, U, kBlock, false>(p, stream);
}

// m is rounded up to 1, 2, 4 or 8 (the extra rows repeat the last and are not written).
template <class W, bool kBlock>
cudaError_t by_rows(const GemvParams& p, cudaStream_t stream) {
  if (p.m == 1) return by_fusion<W, 1, kBlock>(p, stream);
  if (p.m == 2) return by_fusion<W, 2, kBlock>(p, stream);
  if (p.m <= 4) return by_fusion<W, 4, kBlock>(p, stream);
  return by_fusion<W, 8, kBlock>(p, stream);
}

template <int R, int U>
cudaError_t variant(const GemvParams& p, cudaStream_t stream) {
  return p.format == WeightFormat::kFp8E4M3 ? launch<Fp8Weights, 1, R, U, false, false>(p, stream)
                                            : launch<Bf16Weights, 1, R, U, false, false>(p, stream);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool gemv_supported(const GemvParams& p) {
  const bool fp8 = p.format == WeightFormat::kFp8E4M3;
  if (!fp8 && p.format != WeightFormat::kBF16) return false;
  const bool scales_ok = fp8 ? p.scale_kind != ScaleKind::kNone && p.scales != nullptr
                             : p.scale_kind == ScaleKind::kNone;
  return p.m >= 1 && p.m <= kGemvMaxM && p.n > 0 && p.k > 0 && p.k % (fp8 ? 16 : 8) == 0 && p.x &&
         p.w && scales_ok && (p.out == nullptr) != (p.out_f32 == nullptr) && aligned16(p.x) &&
         aligned16(p.w) && (!p.swiglu || (p.out != nullptr && !p.accumulate));
}

cudaError_t gemv(const GemvParams& p, cudaStream_t stream) {
  if (!gemv_supported(p)) return cudaErrorInvalidValue;
  if (p.format == WeightFormat::kBF16) return by_rows<Bf16Weights, false>(p, stream);
  return p.scale_kind == ScaleKind::kBlock128x128 ? by_rows<Fp8Weights, true>(p, stream)
                                                  : by_rows<Fp8Weights, false>(p, stream);
}

cudaError_t gemv_variant(const GemvParams& p, int rows_per_warp, int loads_per_row,
                         cudaStream_t stream) {
  if (!gemv_supported(p) || p.m != 1 || p.swiglu || p.scale_kind == ScaleKind::kBlock128x128) {
    return cudaErrorInvalidValue;
  }
  switch (rows_per_warp * 16 + loads_per_row) {
    case 1 * 16 + 8:
      return variant<1, 8>(p, stream);
    case 2 * 16 + 4:
      return variant<2, 4>(p, stream);
    case 2 * 16 + 8:
      return variant<2, 8>(p, stream);
    case 4 * 16 + 4:
      return variant<4, 4>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace pp::kernels::cuda
