// The scalar variant of the quantized dot products and the activation quantizer: the reference
// the SIMD variants must match bit for bit (quant-dot.h says how a dot is taken), and the
// fallback on a CPU without them. Plain C++; only the f16 scale conversion uses F16C, which the
// x86-64-v3 baseline has.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant-dot.h"

namespace pp::kernels::cpu::quant {
namespace {

// The 32 integer weight values of sub-block t of block b, in value order.
template <WeightFormat F>
void sub_values(const uint8_t* b, int t, int8_t* v) {
  auto u32 = [](const uint8_t* p) {
    uint32_t x;
    std::memcpy(&x, p, 4);
    return x;
  };
  if constexpr (F == WeightFormat::kQ4_0 || F == WeightFormat::kQ4_1) {
    const uint8_t* qs = b + (F == WeightFormat::kQ4_0 ? 2 : 4);
    const int off = F == WeightFormat::kQ4_0 ? 8 : 0;
    for (int j = 0; j < 16; ++j) {
      v[j] = int8_t((qs[j] & 0x0f) - off);
      v[j + 16] = int8_t((qs[j] >> 4) - off);
    }
  } else if constexpr (F == WeightFormat::kQ5_0 || F == WeightFormat::kQ5_1) {
    const bool q50 = F == WeightFormat::kQ5_0;
    const uint32_t qh = u32(b + (q50 ? 2 : 4));
    const uint8_t* qs = b + (q50 ? 6 : 8);
    const int off = q50 ? 16 : 0;
    for (int j = 0; j < 16; ++j) {
      v[j] = int8_t(((qs[j] & 0x0f) | int((qh >> j) & 1) << 4) - off);
      v[j + 16] = int8_t(((qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4) - off);
    }
  } else if constexpr (F == WeightFormat::kQ8_0) {
    std::memcpy(v, b + 2, 32);
  } else if constexpr (F == WeightFormat::kQ4_K || F == WeightFormat::kQ5_K) {
    const bool q5 = F == WeightFormat::kQ5_K;
    const uint8_t* qs = b + (q5 ? 48 : 16) + (t / 2) * 32;
    const int shift = (t % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      int x = (qs[l] >> shift) & 0x0f;
      if (q5) x |= ((b[16 + l] >> t) & 1) << 4;
      v[l] = int8_t(x);
    }
  } else {
    static_assert(F == WeightFormat::kQ6_K);
    const int half = t / 4, u = t % 4;
    const uint8_t* ql = b + half * 64 + (u % 2) * 32;
    const uint8_t* qh = b + 128 + half * 32;
    for (int l = 0; l < 32; ++l) {
      const int lo = (ql[l] >> (4 * (u / 2))) & 0x0f;
      const int hi = (qh[l] >> (2 * u)) & 3;
      v[l] = int8_t((lo | hi << 4) - 32);
    }
  }
}

// cpu-common.h's horizontal order: lanes i and i + 4, then pairs across, then the last two.
float hsum8(const float* a) {
  const float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
  return (s0 + s2) + (s1 + s3);
}

template <WeightFormat F>
void dot(const uint8_t* w, const Q8Block* x, int64_t x_stride, int64_t nb, int n_rows, float* out,
         int64_t ldo) {
  constexpr int S = kSubs<F>;
  const int64_t block_bytes = weight_format_block_bytes(F);
  for (int r = 0; r < n_rows; ++r) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float accm = 0;
    for (int64_t ib = 0; ib < nb; ++ib) {
      const uint8_t* b = w + (ib / S) * block_bytes;
      const int t = int(ib % S);
      const SubHead h = sub_head<F>(b, t);
      int8_t v[kQ];
      sub_values<F>(b, t, v);
      const Q8Block& a = x[r * x_stride + ib];
      const float f = h.fd * a.d;
      for (int i = 0; i < 8; ++i) {
        int32_t l = 0;
        for (int j = 4 * i; j < 4 * i + 4; ++j) l += int32_t(v[j]) * int32_t(a.q[j]);
        l *= i < 4 ? h.sc_lo : h.sc_hi;
        acc[i] = std::fma(f, float(l), acc[i]);
      }
      if constexpr (kHasMin<F>) accm = std::fma(h.fm, a.s, accm);
    }
    out[r * ldo] = hsum8(acc) + accm;
  }
}

}  // namespace

void quantize_row(const float* x, int64_t k, Q8Block* out) {
  for (int64_t ib = 0; ib < k / kQ; ++ib) {
    const float* xb = x + ib * kQ;
    float amax = 0;
    for (int j = 0; j < kQ; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    Q8Block& o = out[ib];
    int32_t sum = 0;
    for (int j = 0; j < kQ; ++j) {
      const float q = std::nearbyint(xb[j] * id);
      const int32_t qi = int32_t(std::min(127.0f, std::max(-127.0f, q)));
      o.q[j] = int8_t(qi);
      sum += qi;
    }
    o.d = d;
    o.s = d * float(sum);
  }
}

DotFn scalar_dot(WeightFormat f) {
  switch (f) {
    case WeightFormat::kQ4_0:
      return dot<WeightFormat::kQ4_0>;
    case WeightFormat::kQ4_1:
      return dot<WeightFormat::kQ4_1>;
    case WeightFormat::kQ5_0:
      return dot<WeightFormat::kQ5_0>;
    case WeightFormat::kQ5_1:
      return dot<WeightFormat::kQ5_1>;
    case WeightFormat::kQ8_0:
      return dot<WeightFormat::kQ8_0>;
    case WeightFormat::kQ4_K:
      return dot<WeightFormat::kQ4_K>;
    case WeightFormat::kQ5_K:
      return dot<WeightFormat::kQ5_K>;
    case WeightFormat::kQ6_K:
      return dot<WeightFormat::kQ6_K>;
    default:
      return nullptr;
  }
}

}  // namespace pp::kernels::cpu::quant
