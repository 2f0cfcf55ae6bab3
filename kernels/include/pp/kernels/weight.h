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

// How a weight's elements are stored. Room is left after kFp8E4M3 for GGUF block types on the
// CPU (Q4_K, Q6_K, ...), whose "element" is a block of several values.
enum class WeightFormat : uint8_t {
  kF32,      // IEEE float32: the CPU backend's only format (the reference)
  kBF16,     // bfloat16: the GPU backend's weights
  kF16,      // IEEE float16
  kFp8E4M3,  // OCP fp8 e4m3 (finite), with scales
};

// How the stored values are scaled back to real ones: real = stored * scale.
enum class ScaleKind : uint8_t {
  kNone,          // stored values are the real ones
  kPerTensor,     // one f32 scale
  kPerChannel,    // one f32 scale per row (output channel)
  kBlock128x128,  // one f32 scale per 128 x 128 tile (DeepSeek-V3 / Qwen3 FP8 checkpoints)
};

const char* weight_format_name(WeightFormat f);  // "f32", "bf16", "f16", "fp8_e4m3"
const char* scale_kind_name(ScaleKind s);        // "none", "per-tensor", "per-channel", "128x128"
// Bytes of one element (every format so far stores whole bytes per element).
int64_t weight_format_bytes(WeightFormat f);
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
  size_t bytes() const { return size_t(numel() * weight_format_bytes(format)); }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

}  // namespace pp::kernels
