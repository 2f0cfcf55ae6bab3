// Rotary position embedding, NeoX layout (transformers' rotate_half): dimension i < rot_dim/2
// pairs with i + rot_dim/2; dimensions from rot_dim on are left as they are.
//
// Numerics follow transformers in f32: inv_freq[i] = 1 / theta^(2i / rot_dim) (with llama3 or
// linear scaling as in _compute_llama3_parameters / _compute_linear_scaling_rope_parameters),
// angle = float(pos) * inv_freq[i], cos and sin of that f32 angle, and
// out = x * cos + rotate_half(x) * sin with each product rounded before the sum.
#include <array>
#include <cmath>
#include <numbers>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {
namespace {
constexpr int64_t kMaxHalf = 1024;  // rot_dim / 2 we accept; head_dim is at most 256 today
}  // namespace

std::vector<float> rope_inv_freq(const RopeFreqParams& p) {
  PP_ASSERT(p.rot_dim > 0 && p.rot_dim % 2 == 0);
  const int64_t half = p.rot_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float e = float(2 * i) / float(p.rot_dim);
    inv[size_t(i)] = 1.0f / std::pow(p.theta, e);
  }
  switch (p.scaling) {
    case RopeScalingKind::kNone:
      break;
    case RopeScalingKind::kLinear:
      for (float& f : inv) f = f / p.factor;
      break;
    case RopeScalingKind::kLlama3: {
      const float old_ctx = float(p.original_max_position);
      const float low_wavelen = old_ctx / p.low_freq_factor;
      const float high_wavelen = old_ctx / p.high_freq_factor;
      const float two_pi = float(2.0 * std::numbers::pi);
      for (float& f : inv) {
        const float wavelen = two_pi / f;
        // Long wavelengths (low frequencies) are scaled down, short ones kept, and the band in
        // between interpolated smoothly.
        const float scaled = wavelen > low_wavelen ? f / p.factor : f;
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        if (medium) {
          const float smooth =
              (old_ctx / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
          f = (1.0f - smooth) * scaled / p.factor + smooth * scaled;
        } else {
          f = scaled;
        }
      }
      break;
    }
  }
  return inv;
}

void rope_neox(const RopeParams& p) {
  PP_ASSERT(p.x && p.pos && p.inv_freq);
  PP_ASSERT(p.rot_dim > 0 && p.rot_dim % 2 == 0 && p.rot_dim <= p.head_dim);
  const int64_t half = p.rot_dim / 2;
  PP_ASSERT(half <= kMaxHalf);
#pragma omp parallel for schedule(static) num_threads(detail::pool_size()) if (p.n_tokens > 1)
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    std::array<float, kMaxHalf> cos_t, sin_t;
    const float pos = float(p.pos[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * p.inv_freq[i];
      cos_t[size_t(i)] = std::cos(angle);
      sin_t[size_t(i)] = std::sin(angle);
    }
    for (int64_t h = 0; h < p.n_head; ++h) {
      float* x = p.x + (t * p.n_head + h) * p.head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = x[i], x2 = x[i + half];
        const float c = cos_t[size_t(i)], s = sin_t[size_t(i)];
        const float a = x1 * c, b = x2 * s;  // rounded separately, as PyTorch does
        const float d = x2 * c, e = x1 * s;
        x[i] = a - b;
        x[i + half] = d + e;
      }
    }
  }
}

}  // namespace pp::kernels::cpu
