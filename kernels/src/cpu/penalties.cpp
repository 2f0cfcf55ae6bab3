// Repetition, presence and frequency penalties on one row of logits, as vLLM applies them:
// first the repetition penalty on every distinct token of the prompt and the output
// (logit > 0 ? logit / r : logit * r), then logit -= frequency * count + presence for every
// distinct output token (count = its occurrences in the output), subtracted in that order.
//
// Then logit bias and the allowed-token mask (structured output): additions, and -inf outside
// the mask.
//
// The per-token marks live in thread-local tables sized to the vocabulary, grown once and
// cleared after each call by touching only the ids seen, so a call costs O(ids), not O(vocab).
#include <cstddef>
#include <limits>
#include <vector>

#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {

void apply_penalties(const PenaltyParams& p) {
  PP_ASSERT(p.logits && p.n_vocab > 0);
  const bool repetition = p.repetition != 1.0f;
  const bool additive = p.presence != 0.0f || p.frequency != 0.0f;
  if (!repetition && !additive) return;

  thread_local std::vector<int32_t> counts;  // output occurrences; -1 marks "seen, penalised"
  if (int64_t(counts.size()) < p.n_vocab) counts.assign(size_t(p.n_vocab), 0);

  auto check = [&](int32_t id) { PP_ASSERT(id >= 0 && id < p.n_vocab); };
  for (int64_t i = 0; i < p.n_output; ++i) check(p.output_ids[i]);
  for (int64_t i = 0; i < p.n_prompt; ++i) check(p.prompt_ids[i]);

  if (repetition) {
    auto penalise = [&](int32_t id) {
      if (counts[size_t(id)] < 0) return;
      counts[size_t(id)] = -1;
      float& l = p.logits[id];
      l = l > 0.0f ? l / p.repetition : l * p.repetition;
    };
    for (int64_t i = 0; i < p.n_prompt; ++i) penalise(p.prompt_ids[i]);
    for (int64_t i = 0; i < p.n_output; ++i) penalise(p.output_ids[i]);
    for (int64_t i = 0; i < p.n_prompt; ++i) counts[size_t(p.prompt_ids[i])] = 0;
    for (int64_t i = 0; i < p.n_output; ++i) counts[size_t(p.output_ids[i])] = 0;
  }
  if (additive) {
    for (int64_t i = 0; i < p.n_output; ++i) ++counts[size_t(p.output_ids[i])];
    for (int64_t i = 0; i < p.n_output; ++i) {
      const int32_t id = p.output_ids[i];
      const int32_t c = counts[size_t(id)];
      if (c == 0) continue;  // already applied for an earlier occurrence
      float& l = p.logits[id];
      l -= p.frequency * float(c);
      l -= p.presence;
      counts[size_t(id)] = 0;
    }
  }
}

void apply_logit_constraints(float* logits, int64_t n_vocab, const LogitConstraints& c) {
  PP_ASSERT(logits && n_vocab > 0);
  for (int64_t i = 0; i < c.n_bias; ++i) {
    const int32_t id = c.bias_ids[i];
    PP_ASSERT(id >= 0 && id < n_vocab);
    logits[id] += c.bias_values[i];
  }
  if (!c.allowed) return;
  for (int64_t t = 0; t < n_vocab; ++t) {
    if (!((c.allowed[t >> 5] >> (t & 31)) & 1u))
      logits[t] = -std::numeric_limits<float>::infinity();
  }
}

}  // namespace pp::kernels::cpu
