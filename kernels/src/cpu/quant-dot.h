// Private to the quantized linear (quant-linear.cpp and the quant-dot-*.cpp variants): the 8-bit
// activation blocks, the per-block headers every variant shares, and the table of dot kernels.
//
// How a dot product of a weight row (GGUF blocks) and an activation row is taken, the same in
// every variant so that they agree bitwise:
//   - the activation row is cut into blocks of 32 and each block quantized to int8 with one f32
//     scale (Q8Block: d = amax / 127, q = round-to-nearest-even(x / d), s = d * sum(q));
//   - the weight's 32 values facing an activation block are ints w[0..31] with an int scale for
//     each half (sc_lo for w[0..15], sc_hi for w[16..31]) and two floats: fd, the factor of the
//     integer sum, and fm, the factor of s (the block's offset or min; 0 when the format has none);
//   - eight int32 lanes: lane i = sc * sum_{j = 4i..4i+3} w[j] * q[j] (exact: no overflow, no
//     saturation for any format);
//   - acc[i] = fma(fd * d, float(lane i), acc[i]) over the blocks in order, and one scalar
//     accm = fma(fm, s, accm) for formats with an offset;
//   - the result is hsum(acc) (cpu-common.h's order) + accm.
// Integer sums are exact and the float steps are the same operations in the same order, so the
// scalar, AVX2 and VNNI variants give the same bits; a row's result depends on nothing but its
// own values (batch invariance).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "pp/kernels/weight.h"

namespace pp::kernels::cpu::quant {

constexpr int kQ = 32;  // values per activation block

// One activation block of 32 values.
struct Q8Block {
  float d;       // scale: value ~= d * q
  float s;       // d * sum(q), the factor of a weight block's offset
  int8_t q[kQ];  // in [-127, 127]
};

// Quantizes k values (k % 32 == 0) into k / 32 blocks. Deterministic: a pure function of x.
void quantize_row(const float* x, int64_t k, Q8Block* out);

// The float side of the weight values facing one activation block.
struct SubHead {
  float fd = 0;       // factor of the integer sum (times the activation's d)
  float fm = 0;       // factor of the activation's s
  int32_t sc_lo = 1;  // int scale of values 0..15
  int32_t sc_hi = 1;  // int scale of values 16..31
};

// Helpers below have internal linkage: the VNNI variants compile with wider ISA flags, and an
// inline function shared across object files could be kept in its AVX-512 form for every caller.
namespace {

inline float f16(const uint8_t* p) {
  uint16_t h;
  __builtin_memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// The 6-bit scale and min of sub-block `sub` (0..7) of a Q4_K or Q5_K super-block's 12 scale
// bytes.
inline void k_scale_min(const uint8_t* s, int sub, int* sc, int* mn) {
  if (sub < 4) {
    *sc = s[sub] & 63;
    *mn = s[sub + 4] & 63;
  } else {
    *sc = (s[sub + 4] & 0x0f) | ((s[sub - 4] >> 6) << 4);
    *mn = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
  }
}

// The head of sub-block t (0 for the 32-value formats, 0..7 for the K formats) of block b.
template <WeightFormat F>
inline SubHead sub_head(const uint8_t* b, int t) {
  SubHead h;
  if constexpr (F == WeightFormat::kQ4_0 || F == WeightFormat::kQ5_0 || F == WeightFormat::kQ8_0) {
    h.fd = f16(b);
  } else if constexpr (F == WeightFormat::kQ4_1 || F == WeightFormat::kQ5_1) {
    h.fd = f16(b);
    h.fm = f16(b + 2);
  } else if constexpr (F == WeightFormat::kQ4_K || F == WeightFormat::kQ5_K) {
    int sc, mn;
    k_scale_min(b + 4, t, &sc, &mn);
    h.fd = f16(b);
    h.fm = -(f16(b + 2) * float(mn));
    h.sc_lo = h.sc_hi = sc;
  } else {
    static_assert(F == WeightFormat::kQ6_K);
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
    h.fd = f16(b + 208);
    h.sc_lo = sc[2 * t];
    h.sc_hi = sc[2 * t + 1];
  }
  return h;
}

template <WeightFormat F>
constexpr bool kHasMin = F == WeightFormat::kQ4_1 || F == WeightFormat::kQ5_1 ||
                         F == WeightFormat::kQ4_K || F == WeightFormat::kQ5_K;

// Sub-blocks of 32 values per weight block.
template <WeightFormat F>
constexpr int kSubs = F >= WeightFormat::kQ4_K ? 8 : 1;

}  // namespace

// out[r * ldo] = dot(weight row w, activation row x + r * x_stride) for r < n_rows (<= 4); nb is
// the number of activation blocks in a row (k / 32).
using DotFn = void (*)(const uint8_t* w, const Q8Block* x, int64_t x_stride, int64_t nb, int n_rows,
                       float* out, int64_t ldo);

constexpr int kMaxRows = 4;

// The variants' tables: the kernel for a format, nullptr for a format without one.
DotFn scalar_dot(WeightFormat f);
DotFn avx2_dot(WeightFormat f);
DotFn avxvnni_dot(WeightFormat f);
DotFn avx512vnni_dot(WeightFormat f);

}  // namespace pp::kernels::cpu::quant
