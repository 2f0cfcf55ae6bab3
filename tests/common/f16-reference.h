// IEEE binary16 conversions made by the hardware (x86 F16C: VCVTPS2PH / VCVTPH2PS), an
// independent reference for pp's own codec in float-convert.h. Not the compiler's _Float16:
// clang 14 has none on x86, and the sanitizer build is clang. Elsewhere (aarch64), _Float16.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace pp::test {

// The f16 bits of x, rounded to nearest even (saturating to infinity as IEEE says).
inline uint16_t f16_reference_bits(float x) {
#if defined(__F16C__)
  return uint16_t(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
#else
  const _Float16 h = static_cast<_Float16>(x);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
#endif
}

// The value of f16 bits h.
inline float f16_reference_value(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
#endif
}

}  // namespace pp::test
