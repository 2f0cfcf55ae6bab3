// Bit-exact conversions between f32 and the 16-bit float formats (IEEE f16, bfloat16), shared by
// the GGUF dequantizer and the safetensors reader and writer. f32 -> 16-bit rounds to nearest,
// ties to even, like numpy's astype(float16) and ggml's fp32 -> bf16; NaN stays NaN (quiet).
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace pp::model::detail {

static_assert(std::endian::native == std::endian::little,
              "weight files are little-endian and are read in place");

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf or NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal: normalize. value = mant * 2^-24.
    int e = 113;
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (uint32_t(e) << 23) | ((mant & 0x3ff) << 13);
  }
  return std::bit_cast<float>(bits);
}

inline uint16_t f32_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {
    if (ax == 0x7f800000u) return sign | 0x7c00;
    return uint16_t(sign | 0x7c00 | 0x200 | ((ax >> 13) & 0x3ff));  // quiet NaN
  }
  if (ax >= 0x477ff000u) return sign | 0x7c00;  // 65520 and above round to infinity
  if (ax < 0x38800000u) {
    // Below the smallest normal f16 (2^-14): a subnormal or zero. 2^-25 is the tie with zero.
    if (ax <= 0x33000000u) return sign;
    const uint32_t e = ax >> 23;
    const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t m = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (m & 1))) ++m;
    return uint16_t(sign | m);  // m == 0x400 is the smallest normal, which is right
  }
  uint32_t h = ((ax >> 23) - 112) << 10 | ((ax >> 13) & 0x3ff);
  const uint32_t rem = ax & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;  // a carry moves into the exponent
  return uint16_t(sign | h);
}

inline float bf16_to_f32(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

inline uint16_t f32_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40);  // quiet NaN
  const uint64_t r = (uint64_t(x) + 0x7fff + ((x >> 16) & 1)) >> 16;
  return uint16_t(r);
}

}  // namespace pp::model::detail
