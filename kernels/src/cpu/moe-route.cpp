// Mixture-of-experts routing: per token, softmax over the router logits, top k by probability
// (ties to the lower expert index), optional renormalisation of the chosen probabilities. Each
// row is computed alone in a fixed order, so the result is batch-invariant.
#include <cmath>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {

void moe_route(const MoeRouteParams& p) {
  PP_ASSERT(p.logits && p.ids && p.weights);
  PP_ASSERT(p.n_expert > 0 && p.k > 0 && p.k <= p.n_expert);
  const int64_t n_expert = p.n_expert, k = p.k;
#pragma omp parallel for schedule(static) num_threads(detail::pool_size()) if (p.n_tokens > 1)
  for (int64_t t = 0; t < p.n_tokens; ++t) {
    const float* logits = p.logits + t * n_expert;
    int32_t* ids = p.ids + t * k;
    float* weights = p.weights + t * k;
    float max = logits[0];
    for (int64_t e = 1; e < n_expert; ++e) max = std::fmax(max, logits[e]);
    float sum = 0.0f;
    for (int64_t e = 0; e < n_expert; ++e) sum += std::exp(logits[e] - max);
    // Selection by k scans: n_expert is small (8 to 256) and k smaller. The strict comparison
    // keeps the lower index on a tie. Probabilities are compared as the softmax gives them, so
    // two logits that round to one probability tie as they do in torch.
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      float best_p = 0.0f;
      for (int64_t e = 0; e < n_expert; ++e) {
        bool taken = false;
        for (int64_t i = 0; i < j; ++i) taken = taken || ids[i] == int32_t(e);
        if (taken) continue;
        const float prob = std::exp(logits[e] - max) / sum;
        if (best < 0 || prob > best_p) {
          best = e;
          best_p = prob;
        }
      }
      ids[j] = int32_t(best);
      weights[j] = best_p;
    }
    if (p.renormalize) {
      float top = 0.0f;
      for (int64_t j = 0; j < k; ++j) top += weights[j];
      for (int64_t j = 0; j < k; ++j) weights[j] /= top;
    }
  }
}

}  // namespace pp::kernels::cpu
