// Dequantization of the GGUF block formats the CPU backend keeps (gguf-blocks.h). Bit-exact
// with ggml's reference dequantizers and gguf-py's numpy ones: every product is rounded to f32
// before the following add, exactly as numpy evaluates `d * q + m`; the build targets FMA
// hardware, so contraction is turned off here.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "pp/kernels/gguf-blocks.h"

#include "cpu/quant-dot.h"
#include "pp/assert.h"
#include "pp/kernels/float-convert.h"

namespace pp::kernels {
namespace {

using cpu::quant::k_scale_min;

constexpr int kQK = 32;    // elements per block of the legacy formats
constexpr int kQKK = 256;  // elements per super-block of the K formats

// Legacy 32-element formats. Within a block, element j < 16 is the low nibble of qs[j] and
// element j + 16 the high nibble; Q5's fifth bit of element j is bit j of the 32-bit qh.

void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * float(int(qs[j] & 0x0f) - 8);
    y[j + kQK / 2] = d * float(int(qs[j] >> 4) - 8);
  }
}

void dequant_q4_1(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float m = f16_to_f32(load_u16(b + 2));
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = d * float(qs[j] & 0x0f) + m;
    y[j + kQK / 2] = d * float(qs[j] >> 4) + m;
  }
}

void dequant_q5_0(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const uint32_t qh = load_u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (qs[j] & 0x0f) | int((qh >> j) & 1) << 4;
    const int hi = (qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4;
    y[j] = d * float(lo - 16);
    y[j + kQK / 2] = d * float(hi - 16);
  }
}

void dequant_q5_1(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float m = f16_to_f32(load_u16(b + 2));
  const uint32_t qh = load_u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const int lo = (qs[j] & 0x0f) | int((qh >> j) & 1) << 4;
    const int hi = (qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4;
    y[j] = d * float(lo) + m;
    y[j + kQK / 2] = d * float(hi) + m;
  }
}

void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) y[j] = float(qs[j]) * d;
}

// Q4_K: d, dmin, scales[12], qs[128]. Sub-block 2j is the low nibbles of qs[32j..32j+31],
// sub-block 2j+1 the high nibbles.
void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float dmin = f16_to_f32(load_u16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int sub = 0; sub < 8; ++sub) {
    int sc, mn;
    k_scale_min(scales, sub, &sc, &mn);
    const float dl = d * float(sc);
    const float ml = dmin * float(mn);
    const uint8_t* q = qs + (sub / 2) * 32;
    const int shift = (sub % 2) * 4;
    for (int l = 0; l < 32; ++l) y[sub * 32 + l] = dl * float((q[l] >> shift) & 0x0f) - ml;
  }
}

// Q5_K: d, dmin, scales[12], qh[32], qs[128]; the fifth bit of sub-block s is bit s of qh[l].
void dequant_q5_k(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float dmin = f16_to_f32(load_u16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int sub = 0; sub < 8; ++sub) {
    int sc, mn;
    k_scale_min(scales, sub, &sc, &mn);
    const float dl = d * float(sc);
    const float ml = dmin * float(mn);
    const uint8_t* q = qs + (sub / 2) * 32;
    const int shift = (sub % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0f) | ((qh[l] >> sub) & 1) << 4;
      y[sub * 32 + l] = dl * float(v) - ml;
    }
  }
}

// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d. In each half j of
// 128 elements, element j*128 + s*64 + m takes nibble s of ql[j*64 + m], and element
// j*128 + k*32 + l takes bits 2k..2k+1 of qh[j*32 + l]; the value is offset by 32.
void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16_to_f32(load_u16(b + 208));
  for (int i = 0; i < kQKK; ++i) {
    const int j = i / 128, r = i % 128;
    const int lo = (ql[j * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
    const int hi = (qh[j * 32 + r % 32] >> (2 * (r / 32))) & 3;
    const float dl = d * float(scales[i / 16]);
    y[i] = dl * float((lo | hi << 4) - 32);
  }
}

template <void (*kBlock)(const uint8_t*, float*)>
void dequant_blocks(const uint8_t* src, float* dst, int64_t n, int64_t elems, int64_t bytes) {
  for (int64_t i = 0; i < n / elems; ++i) kBlock(src + i * bytes, dst + i * elems);
}

}  // namespace

void dequantize_blocks(WeightFormat f, const void* src_v, float* dst, int64_t n) {
  const auto* src = static_cast<const uint8_t*>(src_v);
  const int64_t e = weight_format_block_elems(f), b = weight_format_block_bytes(f);
  PP_ASSERT(n % e == 0);
  switch (f) {
    case WeightFormat::kQ4_0:
      return dequant_blocks<dequant_q4_0>(src, dst, n, e, b);
    case WeightFormat::kQ4_1:
      return dequant_blocks<dequant_q4_1>(src, dst, n, e, b);
    case WeightFormat::kQ5_0:
      return dequant_blocks<dequant_q5_0>(src, dst, n, e, b);
    case WeightFormat::kQ5_1:
      return dequant_blocks<dequant_q5_1>(src, dst, n, e, b);
    case WeightFormat::kQ8_0:
      return dequant_blocks<dequant_q8_0>(src, dst, n, e, b);
    case WeightFormat::kQ4_K:
      return dequant_blocks<dequant_q4_k>(src, dst, n, e, b);
    case WeightFormat::kQ5_K:
      return dequant_blocks<dequant_q5_k>(src, dst, n, e, b);
    case WeightFormat::kQ6_K:
      return dequant_blocks<dequant_q6_k>(src, dst, n, e, b);
    default:
      PP_ASSERT_MSG(false, "dequantize_blocks of a format without blocks");
  }
}

}  // namespace pp::kernels
