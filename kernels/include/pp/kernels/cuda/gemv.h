// The bf16 skinny GEMM of decode: y[m, n] = x[m, k] * w[n, k]^T (+ bias), m <= 8, f32
// accumulation, each weight row streamed once. cuBLASLt runs these matrix-vector products well
// below the copy rate (the f32-output lm_head at about a third of it, docs/perf.md); this one
// keeps 8 loads of 16 bytes in flight per lane. Blas::linear takes it for bf16 weights up to 8
// rows. Included only by kernels/ and GPU tests: it names CUDA types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pp::kernels::cuda {

// The most activation rows the bf16 GEMV takes.
constexpr int64_t kBf16GemvMaxM = 8;

struct Bf16GemvParams {
  const __nv_bfloat16* x = nullptr;     // [m, k]
  const __nv_bfloat16* w = nullptr;     // [n, k]
  const __nv_bfloat16* bias = nullptr;  // [n] or nullptr
  __nv_bfloat16* out = nullptr;         // [m, n] bf16, or
  float* out_f32 = nullptr;             // [m, n] f32 (set one of the two)
  int64_t m = 0, n = 0, k = 0;
  bool accumulate = false;  // out += ... instead of out =
};

// 1 <= m <= kBf16GemvMaxM, k % 8 == 0, x and w 16-byte aligned, one output.
bool bf16_gemv_supported(const Bf16GemvParams& p);
// cudaErrorInvalidValue when !bf16_gemv_supported(p).
cudaError_t bf16_gemv(const Bf16GemvParams& p, cudaStream_t stream);

}  // namespace pp::kernels::cuda
