// HostWeight: a weight in host memory that owns its bytes and scales (weight.h says what a
// weight is). The CPU backend's layers hold these (f32); their views go to cpu::linear. Loaders
// return them in the stored format (a checkpoint's fp8 with its scales), the quantizer makes fp8
// ones from f32 values, and dequantize() turns any of them back into real f32 values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "pp/kernels/weight.h"
#include "pp/status.h"

namespace pp::kernels {

// A weight in host memory that owns its bytes (and scales). Move-only, so views stay valid.
class HostWeight {
 public:
  HostWeight() = default;
  HostWeight(HostWeight&&) noexcept = default;
  HostWeight& operator=(HostWeight&&) noexcept = default;
  HostWeight(const HostWeight&) = delete;
  HostWeight& operator=(const HostWeight&) = delete;

  // A zeroed f32 weight of [rows, cols].
  static HostWeight f32(int64_t rows, int64_t cols);
  // A zeroed weight of [rows, cols] in f32 or a block format (cols whole blocks), to be filled
  // through row_bytes.
  static HostWeight zeros(WeightFormat format, int64_t rows, int64_t cols);
  // A weight from its stored bytes and scales. kInvalidArgument when the sizes disagree with
  // the format and scale kind (bytes: rows * weight_row_bytes; scales: scale_count),
  // or the format takes no scales and some are given.
  static Result<HostWeight> from_bytes(WeightFormat format, ScaleKind scale_kind, int64_t rows,
                                       int64_t cols, std::vector<std::byte> data,
                                       std::vector<float> scales);
  // Quantizes f32 values [rows, cols] to fp8 e4m3 with one scale per group (the whole tensor,
  // each row, or each 128 x 128 tile; `scale_kind` not kNone): scale = amax / 448 (1 for an
  // all-zero group), stored = fp8(value / scale). The GPU's quantizer gives the same bytes.
  static HostWeight quantize_fp8(std::span<const float> values, int64_t rows, int64_t cols,
                                 ScaleKind scale_kind);

  WeightView view() const;
  bool empty() const { return data_.empty(); }
  WeightFormat format() const { return format_; }
  ScaleKind scale_kind() const { return scale_kind_; }
  std::span<const std::byte> bytes() const { return data_; }
  std::span<const float> scales() const { return scales_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t numel() const { return rows_ * cols_; }
  // The values of an f32 weight (a bug to ask of another format), all or rows [row, row + n).
  const float* f32_data() const;
  std::span<float> f32_rows(int64_t row, int64_t n);
  // The stored bytes of rows [row, row + n), any format without scales.
  std::span<std::byte> row_bytes(int64_t row, int64_t n);
  // The real values (stored * scale) as f32, any format; `out` holds numel() floats.
  void dequantize(std::span<float> out) const;
  // The same weight as f32 (a copy for an f32 weight).
  HostWeight to_f32() const;

 private:
  WeightFormat format_ = WeightFormat::kF32;
  ScaleKind scale_kind_ = ScaleKind::kNone;
  int64_t rows_ = 0, cols_ = 0;
  std::vector<std::byte> data_;  // [rows, cols] in format_
  std::vector<float> scales_;    // scale_count(scale_kind_, rows_, cols_)
};

}  // namespace pp::kernels
