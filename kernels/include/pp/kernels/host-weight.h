// HostWeight: a weight in host memory that owns its bytes and scales (weight.h says what a
// weight is). The CPU backend's layers hold these; their views go to cpu::linear.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "pp/kernels/weight.h"

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

  WeightView view() const;
  bool empty() const { return data_.empty(); }
  WeightFormat format() const { return format_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t numel() const { return rows_ * cols_; }
  // The values of an f32 weight (a bug to ask of another format), all or rows [row, row + n).
  const float* f32_data() const;
  std::span<float> f32_rows(int64_t row, int64_t n);

 private:
  WeightFormat format_ = WeightFormat::kF32;
  ScaleKind scale_kind_ = ScaleKind::kNone;
  int64_t rows_ = 0, cols_ = 0;
  std::vector<std::byte> data_;  // [rows, cols] in format_
  std::vector<float> scales_;    // scale_count(scale_kind_, rows_, cols_)
};

}  // namespace pp::kernels
