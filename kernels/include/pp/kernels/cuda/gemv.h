// The skinny GEMM of decode: y[m, n] = x[m, k] * W[n, k]^T (+ bias), m <= 8, f32 accumulation,
// each weight row streamed once, for bf16 weights and fp8 e4m3 weights with per-tensor,
// per-channel or 128x128 block scales (the weight's bytes are converted on the fly; the
// activations stay bf16, so fp8 here is W8A16). cuBLASLt runs these matrix-vector products well
// below the copy rate (the f32-output lm_head at about a third of it, docs/perf.md), so
// Blas::linear takes this kernel up to 8 rows.
//
// A SwiGLU epilogue (`swiglu`) takes a kernel out of each decode layer: W is gate|up [2n, k]
// (gate rows, then up rows) and out[m, n] = silu(gate) * up, gate and up rounded to bf16 first
// as the gate|up output of the unfused pair would be: the same bits as gemv + swiglu. (An RMS
// norm prologue was tried and dropped: every warp re-normalizing x cost more than the kernel it
// saved, docs/perf.md.) And it can be launched as a programmatic dependent (`programmatic`,
// Hopper's PDL): its first weight loads go out before it waits for the kernel ahead of it to
// finish, so a step's chain of small kernels and GEMVs overlaps instead of draining the GPU
// between each pair.
//
// Included only by kernels/ and GPU tests: it names CUDA types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "pp/kernels/weight.h"

namespace pp::kernels::cuda {

// The most activation rows the GEMV takes.
constexpr int64_t kGemvMaxM = 8;

struct GemvParams {
  const __nv_bfloat16* x = nullptr;  // [m, k]
  const void* w = nullptr;           // [n, k], or [2n, k] (gate rows, then up rows) with swiglu
  WeightFormat format = WeightFormat::kBF16;  // kBF16 or kFp8E4M3
  ScaleKind scale_kind = ScaleKind::kNone;    // fp8: per tensor, per channel or 128x128 blocks
  const float* scales = nullptr;              // fp8: scale_count(scale_kind, rows of w, k)
  const __nv_bfloat16* bias = nullptr;        // [rows of w] or nullptr
  bool swiglu = false;                        // out = silu(gate) * up (bf16 out, no accumulate)
  __nv_bfloat16* out = nullptr;               // [m, n] bf16, or
  float* out_f32 = nullptr;                   // [m, n] f32 (set one of the two)
  int64_t m = 0, n = 0, k = 0;                // n: outputs (w has 2n rows with swiglu)
  bool accumulate = false;                    // out += ... instead of out =
  // Launch as a programmatic dependent (sm_90 and later only). The first loads of w precede the
  // wait for the kernel ahead, so w must not be what that kernel writes (weights never are).
  bool programmatic = false;
};

// 1 <= m <= kGemvMaxM; k % 8 == 0 (bf16) or k % 16 == 0 (fp8, with a scale kind and scales; bf16
// has none); x and w 16-byte aligned; one output; swiglu writes bf16 and does not accumulate.
bool gemv_supported(const GemvParams& p);
// cudaErrorInvalidValue when !gemv_supported(p).
cudaError_t gemv(const GemvParams& p, cudaStream_t stream);

// kernel-bench's view of the tuning: the unfused GEMV at m = 1 with R rows per warp and U
// 16-byte loads in flight per row and lane, (R, U) one of (1, 8), (2, 4), (2, 8), (4, 4);
// cudaErrorInvalidValue for others. gemv() picks (4, 4) for fp8 at m = 1, (2, 4) otherwise
// up to m = 2 and (4, 2) beyond.
cudaError_t gemv_variant(const GemvParams& p, int rows_per_warp, int loads_per_row,
                         cudaStream_t stream);

}  // namespace pp::kernels::cuda
