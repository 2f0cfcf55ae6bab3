// The SIMD quantized dot products, one template for every x86 variant: AVX2 (maddubs + madd),
// AVX-VNNI and AVX-512 VNNI (dpbusd on 256-bit registers). Each quant-dot-<isa>.cpp includes this
// file once, compiled with its own ISA flags; everything here has internal linkage so that no
// wider-ISA copy of a function can be shared with a narrower object file.
//
// Bitwise with the scalar variant (quant-dot.h): the weight's 32 values of a sub-block sit in one
// register in value order, so int32 lane i of maddubs + madd (or dpbusd) sums values 4i..4i+3;
// signed values go through the sign trick (|w| * sign(x, w)), which maddubs cannot saturate with
// |w| <= 128 and |x| <= 127.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "quant-dot.h"

namespace pp::kernels::cpu::quant {
namespace {

enum class Isa { kAvx2, kAvxVnni, kAvx512Vnni };

template <WeightFormat F>
constexpr bool kSigned = F == WeightFormat::kQ4_0 || F == WeightFormat::kQ5_0 ||
                         F == WeightFormat::kQ8_0 || F == WeightFormat::kQ6_K;
template <WeightFormat F>
constexpr bool kScaled = F >= WeightFormat::kQ4_K;

inline __m256i nibbles(const uint8_t* qs) {  // 16 bytes: low nibbles, then high nibbles
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
}

// Byte j = 0x10 when bit j of the 32 bits at p is set, else 0.
inline __m256i fifth_bits(const uint8_t* p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101,
                                          0x0202020202020202, 0x0303030303030303);
  const __m256i bits = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
  const __m256i v =
      _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(int32_t(x)), shuf), bits);
  return _mm256_and_si256(_mm256_cmpeq_epi8(v, bits), _mm256_set1_epi8(0x10));
}

inline __m256i shr16(__m256i v, int n) { return _mm256_srl_epi16(v, _mm_cvtsi32_si128(n)); }

// The 32 integer weight values of sub-block t of block b, one per byte in value order.
template <WeightFormat F>
inline __m256i sub_values(const uint8_t* b, int t) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  if constexpr (F == WeightFormat::kQ4_0) {
    return _mm256_sub_epi8(nibbles(b + 2), _mm256_set1_epi8(8));
  } else if constexpr (F == WeightFormat::kQ4_1) {
    return nibbles(b + 4);
  } else if constexpr (F == WeightFormat::kQ5_0) {
    return _mm256_sub_epi8(_mm256_or_si256(nibbles(b + 6), fifth_bits(b + 2)),
                           _mm256_set1_epi8(16));
  } else if constexpr (F == WeightFormat::kQ5_1) {
    return _mm256_or_si256(nibbles(b + 8), fifth_bits(b + 4));
  } else if constexpr (F == WeightFormat::kQ8_0) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
  } else if constexpr (F == WeightFormat::kQ4_K || F == WeightFormat::kQ5_K) {
    const bool q5 = F == WeightFormat::kQ5_K;
    const __m256i q =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + (q5 ? 48 : 16) + (t / 2) * 32));
    __m256i v = _mm256_and_si256(shr16(q, (t % 2) * 4), m4);
    if (q5) {
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
      const __m256i hb = _mm256_and_si256(shr16(qh, t), _mm256_set1_epi8(1));
      v = _mm256_or_si256(v, _mm256_slli_epi16(hb, 4));
    }
    return v;
  } else {
    static_assert(F == WeightFormat::kQ6_K);
    const int half = t / 4, u = t % 4;
    const __m256i ql =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + half * 64 + (u % 2) * 32));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + half * 32));
    const __m256i lo = _mm256_and_si256(shr16(ql, 4 * (u / 2)), m4);
    const __m256i hi = _mm256_and_si256(shr16(qh, 2 * u), _mm256_set1_epi8(3));
    return _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
  }
}

// Eight int32 lanes: lane i = sum of u[j] * s[j] over j = 4i..4i+3, times the lane's scale
// (sc16: the scale in every int16 of the lane, for maddubs + madd; sc32: in the int32 lane).
template <Isa I, bool kScale>
inline __m256i lanes(__m256i u, __m256i s, __m256i sc16, __m256i sc32) {
  if constexpr (I == Isa::kAvx2) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), sc16);
  } else {
    __m256i l;
    if constexpr (I == Isa::kAvxVnni) {
      l = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
    } else {
      l = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
    }
    if constexpr (kScale) l = _mm256_mullo_epi32(l, sc32);
    return l;
  }
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <Isa I, WeightFormat F, int R>
void dot_rows(const uint8_t* w, const Q8Block* x, int64_t x_stride, int64_t nb, float* out,
              int64_t ldo) {
  constexpr int S = kSubs<F>;
  const int64_t block_bytes = weight_format_block_bytes(F);
  __m256 acc[R];
  float accm[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    accm[r] = 0;
  }
  __m256i sc16 = _mm256_set1_epi16(1), sc32 = _mm256_set1_epi32(1);
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* b = w + (ib / S) * block_bytes;
    const int t = int(ib % S);
    const SubHead h = sub_head<F>(b, t);
    const __m256i v = sub_values<F>(b, t);
    if constexpr (kScaled<F>) {
      sc16 = _mm256_set_m128i(_mm_set1_epi16(int16_t(h.sc_hi)), _mm_set1_epi16(int16_t(h.sc_lo)));
      sc32 = _mm256_set_m128i(_mm_set1_epi32(h.sc_hi), _mm_set1_epi32(h.sc_lo));
    }
    const __m256i u = kSigned<F> ? _mm256_abs_epi8(v) : v;
    for (int r = 0; r < R; ++r) {
      const Q8Block& a = x[r * x_stride + ib];
      __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q));
      if constexpr (kSigned<F>) q = _mm256_sign_epi8(q, v);
      const __m256i l = lanes<I, kScaled<F>>(u, q, sc16, sc32);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(h.fd * a.d), _mm256_cvtepi32_ps(l), acc[r]);
      if constexpr (kHasMin<F>) accm[r] = std::fma(h.fm, a.s, accm[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * ldo] = hsum(acc[r]) + accm[r];
}

template <Isa I, WeightFormat F>
void dot(const uint8_t* w, const Q8Block* x, int64_t x_stride, int64_t nb, int n_rows, float* out,
         int64_t ldo) {
  static_assert(kMaxRows == 4);
  switch (n_rows) {
    case 1:
      return dot_rows<I, F, 1>(w, x, x_stride, nb, out, ldo);
    case 2:
      return dot_rows<I, F, 2>(w, x, x_stride, nb, out, ldo);
    case 3:
      return dot_rows<I, F, 3>(w, x, x_stride, nb, out, ldo);
    default:
      return dot_rows<I, F, 4>(w, x, x_stride, nb, out, ldo);
  }
}

template <Isa I>
DotFn dot_table(WeightFormat f) {
  switch (f) {
    case WeightFormat::kQ4_0:
      return dot<I, WeightFormat::kQ4_0>;
    case WeightFormat::kQ4_1:
      return dot<I, WeightFormat::kQ4_1>;
    case WeightFormat::kQ5_0:
      return dot<I, WeightFormat::kQ5_0>;
    case WeightFormat::kQ5_1:
      return dot<I, WeightFormat::kQ5_1>;
    case WeightFormat::kQ8_0:
      return dot<I, WeightFormat::kQ8_0>;
    case WeightFormat::kQ4_K:
      return dot<I, WeightFormat::kQ4_K>;
    case WeightFormat::kQ5_K:
      return dot<I, WeightFormat::kQ5_K>;
    case WeightFormat::kQ6_K:
      return dot<I, WeightFormat::kQ6_K>;
    default:
      return nullptr;
  }
}

}  // namespace
}  // namespace pp::kernels::cpu::quant
