// Private helpers shared by the CUDA kernels: bf16 vector loads and stores, warp and block
// reductions, programmatic dependent launch, the grid-size helper and the compile-time dispatch
// on head_dim.
//
// Only kernels/src/cuda includes this; it is CUDA source (device functions), C++17.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace pp::kernels::cuda::detail {

// Calls f(std::integral_constant<int, D>{}) for the supported head dimensions; returns
// cudaErrorInvalidValue for any other. The lambda sees D as a compile-time constant.
template <typename F>
cudaError_t dispatch_head_dim(int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    case 256:
      return f(std::integral_constant<int, 256>{});
    default:
      return cudaErrorInvalidValue;
  }
}

// 8 bf16 values (16 bytes) moved as one access.
struct alignas(16) Bf16x8 {
  __nv_bfloat162 v[4];
};

__device__ __forceinline__ void load_f32x8(const __nv_bfloat16* p, float (&out)[8]) {
  const Bf16x8 b = *reinterpret_cast<const Bf16x8*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(b.v[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void store_f32x8(__nv_bfloat16* p, const float (&in)[8]) {
  Bf16x8 b;
#pragma unroll
  for (int i = 0; i < 4; ++i) b.v[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
  *reinterpret_cast<Bf16x8*>(p) = b;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Programmatic dependent launch (Hopper): a kernel launched with the programmatic-serialization
// attribute may start before the kernel ahead of it in the stream ends; it must call
// wait_for_prerequisites() (in every thread, before it exits) before reading anything that
// kernel writes, and whatever it does before may not depend on it (the GEMV issues its first
// weight loads there). launch_dependents() lets such a dependent start once every block of this
// kernel has called it or exited; it changes nothing for a dependent launched the ordinary way.
// Both are no-ops below sm_90.
__device__ __forceinline__ void wait_for_prerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// silu(g) * u in f32, as the CPU reference computes it (cpu::swiglu).
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// A bf16 value rounded to nearest and read back as f32.
__device__ __forceinline__ float round_bf16(float v) {
  return __bfloat162float(__float2bfloat16(v));
}

// Blocks for a grid-stride loop over n items: enough to fill the device, no more than needed.
inline unsigned grid_for(int64_t n, int threads, int max_blocks = 132 * 16) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > max_blocks ? max_blocks : b));
}

}  // namespace pp::kernels::cuda::detail
