// Names and sizes of the weight formats, and the host-owned weight.
#include "pp/kernels/host-weight.h"

#include <iterator>

#include "pp/assert.h"

namespace pp::kernels {

// Names in the order of the enumerators.
const char* weight_format_name(WeightFormat f) {
  static constexpr const char* kNames[] = {"f32", "bf16", "f16", "fp8_e4m3"};
  return size_t(f) < std::size(kNames) ? kNames[size_t(f)] : "?";
}

const char* scale_kind_name(ScaleKind s) {
  static constexpr const char* kNames[] = {"none", "per-tensor", "per-channel", "128x128"};
  return size_t(s) < std::size(kNames) ? kNames[size_t(s)] : "?";
}

int64_t weight_format_bytes(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32:
      return 4;
    case WeightFormat::kBF16:
    case WeightFormat::kF16:
      return 2;
    case WeightFormat::kFp8E4M3:
      return 1;
  }
  PP_ASSERT_MSG(false, "unknown weight format");
}

int64_t scale_count(ScaleKind s, int64_t rows, int64_t cols) {
  switch (s) {
    case ScaleKind::kNone:
      return 0;
    case ScaleKind::kPerTensor:
      return 1;
    case ScaleKind::kPerChannel:
      return rows;
    case ScaleKind::kBlock128x128:
      return ((rows + 127) / 128) * ((cols + 127) / 128);
  }
  PP_ASSERT_MSG(false, "unknown scale kind");
}

HostWeight HostWeight::f32(int64_t rows, int64_t cols) {
  PP_ASSERT(rows >= 0 && cols >= 0);
  HostWeight w;
  w.format_ = WeightFormat::kF32;
  w.rows_ = rows;
  w.cols_ = cols;
  w.data_.resize(size_t(rows * cols) * sizeof(float));
  return w;
}

WeightView HostWeight::view() const {
  return {.format = format_,
          .data = data_.empty() ? nullptr : data_.data(),
          .rows = rows_,
          .cols = cols_,
          .scale_kind = scale_kind_,
          .scales = scales_.empty() ? nullptr : scales_.data()};
}

const float* HostWeight::f32_data() const {
  PP_ASSERT_MSG(format_ == WeightFormat::kF32, "f32 values asked of a weight of another format");
  return reinterpret_cast<const float*>(data_.data());
}

std::span<float> HostWeight::f32_rows(int64_t row, int64_t n) {
  PP_ASSERT_MSG(format_ == WeightFormat::kF32, "f32 values asked of a weight of another format");
  PP_ASSERT(row >= 0 && n >= 0 && row + n <= rows_);
  float* base = reinterpret_cast<float*>(data_.data());
  return {base + row * cols_, size_t(n * cols_)};
}

}  // namespace pp::kernels
