// CUDA twin of cpu::swiglu: out = silu(gate) * up over the fused gate|up projection output,
// bf16 in and out, f32 arithmetic. Included only by kernels/ and GPU tests.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pp::kernels::cuda {

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, n_ff + i].
struct SwigluParams {
  const __nv_bfloat16* gate_up = nullptr;  // [n_tokens, 2 * n_ff]
  __nv_bfloat16* out = nullptr;            // [n_tokens, n_ff]
  int64_t n_tokens = 0, n_ff = 0;
};

cudaError_t swiglu(const SwigluParams& p, cudaStream_t stream);

}  // namespace pp::kernels::cuda
