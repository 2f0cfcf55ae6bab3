// Device-side fills: deterministic random weights (random-weights.h) and the penalty update of
// logit rows. Included only by kernels/ and GPU tests: it names CUDA types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace pp::kernels::cuda {

// out[i] = random_weight_value(key, i, lo, hi) for i < n.
cudaError_t fill_random(__nv_bfloat16* out, size_t n, uint64_t key, float lo, float hi,
                        cudaStream_t stream);

// Keeps the stream busy for about `microseconds` (one spinning thread on the global timer).
cudaError_t busy_wait(int64_t microseconds, cudaStream_t stream);

// One distinct (row, id) pair of a penalised row; see gpu::PenaltyEntry.
struct PenaltyEntry {
  int32_t row = 0, id = 0;
  int32_t seen = 0;
  int32_t output_count = 0;
};
struct PenaltyRow {
  float repetition = 1.0f, presence = 0.0f, frequency = 0.0f;
};

// For each entry: l = logits[row * row_stride + id]; with `seen` the repetition penalty
// (l > 0 ? l / r : l * r), then with output_count > 0: l -= frequency * count; l -= presence.
// Entries must name distinct (row, id) pairs; ids outside [0, n_vocab) are skipped.
cudaError_t apply_penalties(float* logits, int64_t row_stride, int64_t n_vocab,
                            const PenaltyEntry* entries, int64_t n_entries, const PenaltyRow* rows,
                            cudaStream_t stream);

// One logit bias of a row; see gpu::LogitBias.
struct LogitBias {
  int32_t row = 0, id = 0;
  float value = 0.0f;
};

// After the penalties: logits[row * row_stride + id] += value for each bias (distinct (row, id)
// pairs; ids outside [0, n_vocab) skipped); then for each masked row k (row mask_rows[k], mask
// masks[k * words ..], words = ceil(n_vocab / 32)) every id whose bit is clear becomes -inf.
cudaError_t apply_logit_constraints(float* logits, int64_t row_stride, int64_t n_vocab,
                                    const LogitBias* bias, int64_t n_bias, const uint32_t* masks,
                                    const int32_t* mask_rows, int64_t n_masked,
                                    cudaStream_t stream);

}  // namespace pp::kernels::cuda
