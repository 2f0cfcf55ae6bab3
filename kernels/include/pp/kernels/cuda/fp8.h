// FP8 (e4m3) kernels: the quantizers (activations per token, weights per channel) and the
// fp8 -> bf16 dequantizer (the GEMV that streams fp8 weights for decode is gemv.h's). Blas::linear
// (linear.h) dispatches to these on a weight's format; the model never calls them directly
// except the weight quantizer (random weights quantized on load). Included only by kernels/
// and GPU tests: it names CUDA types.
//
// Scales follow weight.h: real = stored * scale, per-tensor [1], per-channel [rows], 128x128
// blocks [ceil(rows / 128), ceil(cols / 128)] row-major. Every quantizer computes
// scale = amax / 448 (1 for an all-zero group) and stored = fp8(value / scale) with IEEE
// division and __NV_SATFINITE rounding, so its bytes equal HostWeight::quantize_fp8's.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "pp/kernels/weight.h"

namespace pp::kernels::cuda {

// Quantizes bf16 x[rows, cols] to fp8 with one scale per row (group = 0) or one per row and
// 128-column group (group = 128): q[rows, cols] fp8 e4m3; scales at
// scales[g * scale_ld + r] when `group_major` (group g of row r: the layout cuBLASLt's VEC128
// activation scales take, scale_ld >= rows), else scales[r * ceil(cols / 128) + g] (group = 128)
// or scales[r] (group = 0). The weight quantizer per channel is group = 0.
struct QuantizeFp8Params {
  const __nv_bfloat16* x = nullptr;  // [rows, cols]
  uint8_t* q = nullptr;              // [rows, cols]
  float* scales = nullptr;
  int64_t rows = 0, cols = 0;
  int group = 0;  // 0 (per row) or 128
  bool group_major = false;
  int64_t scale_ld = 0;  // with group_major
};
cudaError_t quantize_fp8(const QuantizeFp8Params& p, cudaStream_t stream);

// out[r, c] = bf16(float(w[r, c]) * scale(r, c)) for any scale kind.
cudaError_t dequantize_fp8(const uint8_t* w, ScaleKind scale_kind, const float* scales,
                           int64_t rows, int64_t cols, __nv_bfloat16* out, cudaStream_t stream);

// out[i] = *scale for i < n (a per-tensor scale as per-channel ones).
cudaError_t broadcast_scale(const float* scale, float* out, int64_t n, cudaStream_t stream);

// Copies 128x128 block scales [row_blocks, col_blocks] row-major to rows of `ld` floats
// (cuBLASLt wants each row block's scales at a 16-byte aligned stride).
cudaError_t pad_block_scales(const float* scales, int64_t row_blocks, int64_t col_blocks,
                             int64_t ld, float* out, cudaStream_t stream);

// The epilogue of a GEMM done into f32 scratch: y = acc (+ bias), written as bf16 or f32, or
// added to what out holds (accumulate).
struct Fp8EpilogueParams {
  const float* acc = nullptr;               // [m, n], or
  const __nv_bfloat16* acc_bf16 = nullptr;  // [m, n] (set one of the two)
  const __nv_bfloat16* bias = nullptr;      // [n] or nullptr
  __nv_bfloat16* out = nullptr;             // [m, n], or
  float* out_f32 = nullptr;
  int64_t m = 0, n = 0;
  bool accumulate = false;
};
cudaError_t linear_epilogue(const Fp8EpilogueParams& p, cudaStream_t stream);

}  // namespace pp::kernels::cuda
