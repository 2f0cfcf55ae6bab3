// CUDA twin of cpu::rms_norm: bf16 activations and weights, f32 accumulation. With `residual`
// set, residual += x (stored back in bf16) and out = rmsnorm(residual) * weight, in one pass.
// Included only by kernels/ and GPU tests: it names CUDA types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pp::kernels::cuda {

struct RmsNormParams {
  const __nv_bfloat16* x = nullptr;       // [n_rows, n]
  __nv_bfloat16* residual = nullptr;      // [n_rows, n] or nullptr
  const __nv_bfloat16* weight = nullptr;  // [n]
  __nv_bfloat16* out = nullptr;           // [n_rows, n]; may alias x
  int64_t n_rows = 0, n = 0;
  float eps = 1e-6f;
};

cudaError_t rms_norm(const RmsNormParams& p, cudaStream_t stream);

}  // namespace pp::kernels::cuda
