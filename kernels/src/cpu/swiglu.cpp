// SwiGLU over the fused gate|up projection: out = silu(gate) * up, elementwise in f32 as
// PyTorch computes it (silu(g) = g / (1 + exp(-g))).
#include <cmath>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {

void swiglu(const SwigluParams& p) {
  PP_ASSERT(p.gate_up && p.out && p.n_ff > 0);
  const int64_t n_ff = p.n_ff;
#pragma omp parallel for schedule(static) num_threads(detail::pool_size()) if (p.n_tokens > 1)
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const float* gate = p.gate_up + t * 2 * n_ff;
    const float* up = gate + n_ff;
    float* out = p.out + t * n_ff;
    for (int64_t i = 0; i < n_ff; ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  }
}

}  // namespace pp::kernels::cpu
