// A weight is data plus a number format plus its scales. WeightView is the non-owning face every
// linear op takes and dispatches on (cpu::linear, gpu::Blas::linear); HostWeight (host-weight.h)
// owns a weight in host memory (the CPU backend's layers hold these). This header is C++17 (CUDA
// sources include it through gpu.h). GPU weights live as slices of one device
// allocation per stage, so the GPU model holds views only.
//
// Layout: a 2-D weight is [rows, cols] row-major in Hugging Face order ([out, in] for a linear); a
// vector (a norm's gain, a bias) is [rows, 1]. Scales, when the format has them, are f32:
// per-tensor [1], per-channel [rows], 128x128 blocks [ceil(rows / 128), ceil(cols / 128)].
//
// Adding a number format adds an enumerator here, a case in the linear ops' dispatch (with its
// kernels) and a loader path; no model code changes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pp::kernels {

// How a weight's elements are stored. The GGUF block types (the CPU backend's quantized weights)
// store a row as whole blocks of several values, each block with its own scales inside
// (layouts in gguf-blocks.h); a row of such a weight holds a whole number of blocks.
enum class WeightFormat : uint8_t {
  kF32,      // IEEE float32: the CPU backend's reference format
  kBF16,     // bfloat16: the GPU backend's weights
  kF16,      // IEEE float16
  kFp8E4M3,  // OCP fp8 e4m3 (finite), with scales
  kQ4_0,     // GGML Q4_0: 32 values in 18 bytes
  kQ4_1,     // GGML Q4_1: 32 values in 20 bytes
  kQ5_0,     // GGML Q5_0: 32 values in 22 bytes
  kQ5_1,     // GGML Q5_1: 32 values in 24 bytes
  kQ8_0,     // GGML Q8_0: 32 values in 34 bytes
  kQ4_K,     // GGML Q4_K: 256 values in 144 bytes
  kQ5_K,     // GGML Q5_K: 256 values in 176 bytes
  kQ6_K,     // GGML Q6_K: 256 values in 210 bytes
};

// How the stored values are scaled back to real ones: real = stored * scale.
enum class ScaleKind : uint8_t {
  kNone,          // stored values are the real ones
  kPerTensor,     // one f32 scale
  kPerChannel,    // one f32 scale per row (output channel)
  kBlock128x128,  // one f32 scale per 128 x 128 tile (DeepSeek-V3 / Qwen3 FP8 checkpoints)
};

// "f32", "bf16", "f16", "fp8_e4m3", "q4_0", ..., "q6_k"
const char* weight_format_name(WeightFormat f);
const char* scale_kind_name(ScaleKind s);  // "none", "per-tensor", "per-channel", "128x128"
// Bytes of one element of a plain format (f32, bf16, f16, fp8); a bug to ask of a block format.
int64_t weight_format_bytes(WeightFormat f);
// Values per block (1 for a plain format) and bytes per block.
int64_t weight_format_block_elems(WeightFormat f);
int64_t weight_format_block_bytes(WeightFormat f);
// Whether the format stores blocks of several values (a GGUF block type).
inline bool is_block_format(WeightFormat f) { return f >= WeightFormat::kQ4_0; }
// Bytes of a row of `cols` values (cols a multiple of the block size).
int64_t weight_row_bytes(WeightFormat f, int64_t cols);
// Scales a weight of [rows, cols] carries with `s` (0 for kNone).
int64_t scale_count(ScaleKind s, int64_t rows, int64_t cols);

// A weight somewhere in memory (host or device, the op knows which), not owned.
struct WeightView {
  WeightFormat format = WeightFormat::kF32;
  const void* data = nullptr;  // [rows, cols] in `format`
  int64_t rows = 0;            // output features of a linear (n)
  int64_t cols = 0;            // input features of a linear (k); 1 for a vector
  ScaleKind scale_kind = ScaleKind::kNone;
  const float* scales = nullptr;  // scale_count(scale_kind, rows, cols) floats, or nullptr

  bool empty() const { return data == nullptr; }
  int64_t numel() const { return rows * cols; }
  size_t bytes() const { return size_t(rows * weight_row_bytes(format, cols)); }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

}  // namespace pp::kernels
