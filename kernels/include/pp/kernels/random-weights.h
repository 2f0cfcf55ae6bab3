// Deterministic pseudo-random weights, the same on the host and on the GPU: value i of the
// stream `key` is a uniform draw in [lo, hi) from a counter-based hash (SplitMix64 of key and i),
// rounded to the nearest bf16. A model with --random-weights holds the same numbers whichever
// backend made them, so the CPU reference checks the GPU at any shape.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#if defined(__CUDACC__)
#define PP_HOST_DEVICE __host__ __device__
#else
#define PP_HOST_DEVICE
#endif

namespace pp::kernels {

PP_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// f32 rounded to the nearest bf16 (ties to even), returned as f32. Finite inputs only.
PP_HOST_DEVICE inline float round_to_bf16(float f) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(f);
#else
  std::memcpy(&u, &f, 4);
#endif
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float r;
  std::memcpy(&r, &u, 4);
  return r;
#endif
}

PP_HOST_DEVICE inline float random_weight_value(uint64_t key, uint64_t i, float lo, float hi) {
  const uint64_t h = splitmix64(key ^ splitmix64(i));
  const float u = float(h >> 40) * (1.0f / 16777216.0f);  // 24 bits: [0, 1)
  return round_to_bf16(lo + (hi - lo) * u);
}

// The key of one tensor of a model: FNV-1a of its name, mixed with the model's seed.
inline uint64_t random_weight_key(uint64_t seed, std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) {
    h ^= uint8_t(c);
    h *= 0x100000001b3ull;
  }
  return splitmix64(h ^ splitmix64(seed));
}

}  // namespace pp::kernels
