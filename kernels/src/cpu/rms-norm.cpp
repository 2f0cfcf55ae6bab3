// RMSNorm, as transformers' LlamaRMSNorm computes it in f32: var = mean(x^2);
// y = weight * (x * rsqrt(var + eps)). The optional fused residual add (residual += x first,
// then normalise the new residual) serves pre-norm decoders. The sum of squares uses the
// fixed-order reduction of cpu-common.h, so a row's result does not depend on its batch.
#include <cmath>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {

void rms_norm(const RmsNormParams& p) {
  PP_ASSERT(p.x && p.weight && p.out && p.n > 0);
  const int64_t n = p.n;
#pragma omp parallel for schedule(static) num_threads(detail::pool_size()) if (p.n_rows > 1)
  for (int64_t r = 0; r < p.n_rows; ++r) {
    const float* x = p.x + r * n;
    float* out = p.out + r * n;
    const float* src = x;
    if (p.residual) {
      float* res = p.residual + r * n;
      for (int64_t i = 0; i < n; ++i) res[i] += x[i];
      src = res;
    }
    const float var = detail::sum_squares(src, n) / float(n);
    const float inv = 1.0f / std::sqrt(var + p.eps);
    for (int64_t i = 0; i < n; ++i) out[i] = p.weight[i] * (src[i] * inv);
  }
}

}  // namespace pp::kernels::cpu
