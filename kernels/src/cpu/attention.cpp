// Causal paged attention with GQA: each (query token, head) pair is one independent task.
//
// Query head h reads KV head h / (n_head / n_head_kv) (a tensor-parallel rank's slice of the heads:
// see AttentionParams::head_begin). The keys of a query at position q are the
// positions 0..q of its sequence, found through the sequence's block table. Softmax is online
// over the keys in position order: a running max, a running sum (f64) and an f32 accumulator
// rescaled whenever the max grows. Scores are fixed-order dot products (cpu-common.h). So a
// pair's result depends only on its query and its sequence's keys, never on which other tokens
// or sequences share the call, how the prompt was chunked, or the thread count.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {
namespace {
constexpr int64_t kMaxHeadDim = 1024;
}  // namespace

void attention(const AttentionParams& p) {
  PP_ASSERT(p.q && p.out && p.kv.k && p.kv.v && p.seq_start && p.q_pos && p.block_tables);
  PP_ASSERT(p.n_head > 0 && p.kv.n_head_kv > 0);
  PP_ASSERT(p.group > 0 || (p.head_begin == 0 && p.n_head % p.kv.n_head_kv == 0));
  const int64_t head_dim = p.kv.head_dim;
  PP_ASSERT(head_dim > 0 && head_dim <= kMaxHeadDim);
  PP_ASSERT(p.seq_start[0] == 0 && p.seq_start[p.n_seq] == p.n_tokens);
  const int64_t group = p.group > 0 ? p.group : p.n_head / p.kv.n_head_kv;
  const int64_t kv_head_begin = p.head_begin / group;
  PP_ASSERT((p.head_begin + p.n_head - 1) / group - kv_head_begin < p.kv.n_head_kv);
  const int64_t block_size = p.kv.block_size;
  const int64_t kv_row = p.kv.n_head_kv * head_dim;  // floats per slot
  const int64_t n_pairs = p.n_tokens * p.n_head;

#pragma omp parallel for schedule(dynamic, 4) num_threads(detail::pool_size()) if (n_pairs > 1)
  for (int64_t pair = 0; pair < n_pairs; ++pair) {
    const int64_t t = pair / p.n_head, h = pair % p.n_head;
    // The sequence holding token t: the last s with seq_start[s] <= t.
    const int64_t s =
        std::upper_bound(p.seq_start, p.seq_start + p.n_seq + 1, int32_t(t)) - p.seq_start - 1;
    const int32_t* table = p.block_tables + s * p.max_blocks;
    const int64_t kvh = (p.head_begin + h) / group - kv_head_begin;
    const int64_t q_pos = p.q_pos[t];
    PP_ASSERT(q_pos >= 0 && q_pos < p.max_blocks * block_size);
    const float* q = p.q + pair * head_dim;

    std::array<float, kMaxHeadDim> acc;
    std::fill_n(acc.begin(), head_dim, 0.0f);
    float max_score = -std::numeric_limits<float>::infinity();
    double sum = 0.0;
    for (int64_t pos = 0; pos <= q_pos; ++pos) {
      const int64_t block = table[pos / block_size];
      PP_ASSERT(block >= 0 && block < p.kv.n_blocks);
      const int64_t slot = block * block_size + pos % block_size;
      const float* key = p.kv.k + slot * kv_row + kvh * head_dim;
      const float* val = p.kv.v + slot * kv_row + kvh * head_dim;
      const float score = detail::dot(q, key, head_dim) * p.scale;
      if (score > max_score) {
        const float corr = std::exp(max_score - score);  // 0 on the first key
        sum *= double(corr);
        for (int64_t d = 0; d < head_dim; ++d) acc[size_t(d)] *= corr;
        max_score = score;
      }
      const float w = std::exp(score - max_score);
      sum += double(w);
      for (int64_t d = 0; d < head_dim; ++d) acc[size_t(d)] += w * val[d];
    }
    const float inv = float(1.0 / sum);
    float* out = p.out + pair * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) out[d] = acc[size_t(d)] * inv;
  }
}

}  // namespace pp::kernels::cpu
