// CUDA twin of cpu::sample over a batch of rows: greedy argmax, or temperature with top-k,
// top-p and min-p and one Philox4x32-10 draw keyed by (seed, step), plus the chosen token's
// logprob and the top-N logprobs. Included only by kernels/ and GPU tests: it names CUDA types.
//
// The filters and the draw follow cpu.h exactly: ties order by lower id, top-p keeps the
// shortest most-likely prefix reaching top_p of the (top-k) mass, the draw walks the kept
// tokens in ascending id order and takes the first whose running sum exceeds u * total with
// u = cpu::philox_uniform(seed, step). Masses are summed in 2^-40 fixed point (integer sums:
// deterministic, independent of thread order), so a seed gives the CPU's token whenever the
// two backends' filtered distributions agree to that precision.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pp::kernels::cuda {

enum class LogitsType : uint8_t { kF32, kBf16 };

// One row's sampling parameters (device memory, one per row); fields as in cpu::SampleParams.
struct SampleRowParams {
  float temperature = 1.0f;  // <= 0: greedy
  int32_t top_k = 0;         // 0 = off; 1 = greedy
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  uint64_t seed = 0;
  uint64_t step = 0;  // index of the token being generated in its request
};

constexpr int32_t kMaxTopLogprobs = 64;

struct SampleParams {
  const void* logits = nullptr;  // [n_rows, row_stride] f32 or bf16, after penalties
  LogitsType type = LogitsType::kF32;
  int64_t n_rows = 0, n_vocab = 0;
  int64_t row_stride = 0;                 // elements between rows; 0 = n_vocab
  const SampleRowParams* rows = nullptr;  // [n_rows], device memory
  int32_t n_top_logprobs = 0;             // 0 .. kMaxTopLogprobs, the same for every row
  int32_t* tokens = nullptr;              // [n_rows]
  float* logprobs = nullptr;              // [n_rows]: log_softmax(raw logits) at the token
  int32_t* top_ids = nullptr;             // [n_rows, n_top_logprobs], most likely first
  float* top_logprobs = nullptr;          // [n_rows, n_top_logprobs]
};

cudaError_t sample(const SampleParams& p, cudaStream_t stream);

}  // namespace pp::kernels::cuda
