// Private helpers shared by the CPU kernels: the thread count every OpenMP region uses, and
// fixed-order vector reductions.
//
// Batch invariance rests on these reductions: a dot product or a sum over n floats is always
// taken in the same order (8 lanes of fused multiply-adds over the elements in order, a masked
// load for the tail, then one fixed horizontal sum), whoever calls it and on whichever thread.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace pp::kernels::cpu {
struct LinearParams;
}

namespace pp::kernels::cpu::detail {

// The thread count for OpenMP regions, set by set_num_threads (a process-wide value, unlike
// omp_set_num_threads, which only affects the calling thread).
int pool_size();

// cpu::linear for a GGUF block weight (quant-linear.cpp).
void quant_linear(const LinearParams& p);

// Lane mask for the last n % 8 elements of a row of n (all lanes off when n % 8 == 0).
inline __m256i tail_mask(int64_t n) {
  const int64_t rem = n & 7;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(rem)), lane);
}

// Sum of the 8 lanes in a fixed order: (lo + hi) pairwise, then across.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// sum_i a[i] * b[i] in the fixed order described above.
inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  const int64_t n8 = n & ~int64_t(7);
  for (int64_t i = 0; i < n8; i += 8) {
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  }
  if (n8 < n) {
    const __m256i m = tail_mask(n);
    acc = _mm256_fmadd_ps(_mm256_maskload_ps(a + n8, m), _mm256_maskload_ps(b + n8, m), acc);
  }
  return hsum(acc);
}

// sum_i a[i]^2 in the same fixed order.
inline float sum_squares(const float* a, int64_t n) { return dot(a, a, n); }

}  // namespace pp::kernels::cpu::detail
