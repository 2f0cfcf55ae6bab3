// Bit-exact conversions between f32 and the smaller float formats on the host: IEEE f16 and
// bfloat16 (f32 -> 16-bit rounds to nearest, ties to even, like numpy's astype(float16) and
// ggml's fp32 -> bf16; NaN stays NaN, quiet), and the OCP fp8 e4m3 ("e4m3fn": finite, no
// infinities) format, bit-identical to CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE,
// __NV_E4M3) (round to nearest even, saturating to +-448, NaN to 0x7f). Shared by the GGUF
// dequantizer, the safetensors reader and writer, the fp8 quantizer and HostWeight. C++20.
//
// e4m3: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits. Normal values 2^-6 .. 448,
// subnormals k * 2^-9 for k = 1..7; 0x7f and 0xff are NaN.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace pp::kernels {

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

inline constexpr float kFp8E4M3Max = 448.0f;

inline float fp8_e4m3_to_float(uint8_t v) {
  const float sign = (v & 0x80) ? -1.0f : 1.0f;
  const int exp = (v >> 3) & 0xf, mant = v & 0x7;
  if (exp == 0xf && mant == 0x7) return std::nanf("");
  if (exp == 0) return sign * std::ldexp(float(mant), -9);  // subnormal: mant * 2^-9
  return sign * std::ldexp(float(8 + mant), exp - 10);      // (1 + mant / 8) * 2^(exp - 7)
}

inline uint8_t fp8_e4m3_from_float(float x) {
  if (std::isnan(x)) return 0x7f;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::fabs(x);
  if (a >= kFp8E4M3Max) return sign | 0x7e;  // saturate (finite)
  if (a < 0x1p-6f) {
    // Subnormal range: a multiple of 2^-9, rounded to nearest even (8 is the smallest normal,
    // whose code is 0x08 too).
    return uint8_t(sign | uint8_t(std::nearbyint(a * 0x1p9f)));
  }
  int e = 0;
  (void)std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
  e -= 1;                   // a = (1 + m) * 2^e, m in [0, 1), e in [-6, 8]
  int q = int(std::nearbyint(std::ldexp(a, -e) * 8.0f)) - 8;  // exact: a power-of-two scaling
  if (q == 8) {
    q = 0;
    ++e;
  }
  const int code = ((e + 7) << 3) | q;
  return uint8_t(sign | (code > 0x7e ? 0x7e : code));
}

}  // namespace pp::kernels
