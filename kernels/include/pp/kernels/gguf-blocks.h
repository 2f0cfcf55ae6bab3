// The GGUF block formats the CPU backend keeps quantized, and their dequantization to f32.
//
// Layouts (GGML's ggml-common.h; f16 scales little-endian, blocks packed without padding):
//   Q4_0  [d f16][qs 16]                      w = d * (q - 8), q 4 bits
//   Q4_1  [d f16][m f16][qs 16]               w = d * q + m
//   Q5_0  [d f16][qh u32][qs 16]              w = d * (q - 16), q 5 bits (fifth bit in qh)
//   Q5_1  [d f16][m f16][qh u32][qs 16]       w = d * q + m
//   Q8_0  [d f16][qs int8 32]                 w = d * q
//   Q4_K  [d f16][dmin f16][scales 12][qs 128]          8 sub-blocks of 32, 6-bit scale and min:
//                                                       w = d * sc * q - dmin * m
//   Q5_K  [d f16][dmin f16][scales 12][qh 32][qs 128]   the same with a fifth bit
//   Q6_K  [ql 128][qh 64][scales int8 16][d f16]        16 sub-blocks of 16: w = d * sc * (q - 32)
// In the 32-value formats, value j < 16 is the low nibble of qs[j] and value j + 16 the high one;
// Q5's fifth bit of value j is bit j of qh. The K formats' orders are in gguf-blocks.cpp.
//
// Dequantization is bit-exact with ggml's reference dequantizers (each product rounded to f32
// before the add).
#pragma once

#include <cstdint>

#include "pp/kernels/weight.h"

namespace pp::kernels {

// Dequantizes n values (a whole number of blocks) of a block format from `src` into `dst`.
void dequantize_blocks(WeightFormat f, const void* src, float* dst, int64_t n);

}  // namespace pp::kernels
