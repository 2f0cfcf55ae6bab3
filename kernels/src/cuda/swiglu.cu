// SwiGLU on the GPU: a grid-stride elementwise kernel, 8 outputs (16 bytes) per thread and step
// when n_ff % 8 == 0, so gate, up and out move in full 16-byte accesses; one element per step
// otherwise. silu(g) = g / (1 + exp(-g)) in f32 as the CPU reference computes it.
#include "cuda-common.h"
#include "pp/kernels/cuda/swiglu.h"

namespace pp::kernels::cuda {
namespace {

constexpr int kThreads = 256;

using detail::silu_mul;

__global__ void swiglu_vec_kernel(SwigluParams p) {
  detail::launch_dependents();
  const int64_t per_row = p.n_ff / 8;
  const int64_t n = p.n_tokens * per_row;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t t = i / per_row, c = (i % per_row) * 8;
    const __nv_bfloat16* gate = p.gate_up + t * 2 * p.n_ff + c;
    float g[8], u[8], o[8];
    detail::load_f32x8(gate, g);
    detail::load_f32x8(gate + p.n_ff, u);
#pragma unroll
    for (int j = 0; j < 8; ++j) o[j] = silu_mul(g[j], u[j]);
    detail::store_f32x8(p.out + t * p.n_ff + c, o);
  }
}

__global__ void swiglu_scalar_kernel(SwigluParams p) {
  detail::launch_dependents();
  const int64_t n = p.n_tokens * p.n_ff;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t t = i / p.n_ff, c = i % p.n_ff;
    const __nv_bfloat16* gate = p.gate_up + t * 2 * p.n_ff + c;
    p.out[i] =
        __float2bfloat16(silu_mul(__bfloat162float(gate[0]), __bfloat162float(gate[p.n_ff])));
  }
}

}  // namespace

cudaError_t swiglu(const SwigluParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return cudaSuccess;
  if (!p.gate_up || !p.out || p.n_ff <= 0) return cudaErrorInvalidValue;
  const bool vec = p.n_ff % 8 == 0 && (reinterpret_cast<uintptr_t>(p.gate_up) % 16) == 0 &&
                   (reinterpret_cast<uintptr_t>(p.out) % 16) == 0;
  if (vec) {
    const int64_t n = p.n_tokens * (p.n_ff / 8);
    swiglu_vec_kernel<<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(p);
  } else {
    const int64_t n = p.n_tokens * p.n_ff;
    swiglu_scalar_kernel<<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace pp::kernels::cuda
