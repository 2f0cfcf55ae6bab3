// Names and sizes of the weight formats, and the host-owned weight.
#include "pp/kernels/host-weight.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>

#include "pp/assert.h"
#include "pp/kernels/float-convert.h"
#include "pp/kernels/gguf-blocks.h"

namespace pp::kernels {

// Names in the order of the enumerators.
const char* weight_format_name(WeightFormat f) {
  static constexpr const char* kNames[] = {"f32",  "bf16", "f16",  "fp8_e4m3", "q4_0", "q4_1",
                                           "q5_0", "q5_1", "q8_0", "q4_k",     "q5_k", "q6_k"};
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
    default:
      break;
  }
  PP_ASSERT_MSG(false, "weight_format_bytes of a block format");
}

int64_t weight_format_block_elems(WeightFormat f) {
  if (!is_block_format(f)) return 1;
  return f >= WeightFormat::kQ4_K ? 256 : 32;
}

int64_t weight_format_block_bytes(WeightFormat f) {
  switch (f) {
    case WeightFormat::kQ4_0:
      return 18;
    case WeightFormat::kQ4_1:
      return 20;
    case WeightFormat::kQ5_0:
      return 22;
    case WeightFormat::kQ5_1:
      return 24;
    case WeightFormat::kQ8_0:
      return 34;
    case WeightFormat::kQ4_K:
      return 144;
    case WeightFormat::kQ5_K:
      return 176;
    case WeightFormat::kQ6_K:
      return 210;
    default:
      return weight_format_bytes(f);
  }
}

int64_t weight_row_bytes(WeightFormat f, int64_t cols) {
  const int64_t e = weight_format_block_elems(f);
  PP_ASSERT_MSG(cols % e == 0, "a row of a block format holds whole blocks");
  return cols / e * weight_format_block_bytes(f);
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

Result<HostWeight> HostWeight::from_bytes(WeightFormat format, ScaleKind scale_kind, int64_t rows,
                                          int64_t cols, std::vector<std::byte> data,
                                          std::vector<float> scales) {
  if (rows < 0 || cols < 0) return invalid_argument("weight of shape [{}, {}]", rows, cols);
  if (cols % weight_format_block_elems(format) != 0) {
    return invalid_argument("a {} weight's rows hold whole blocks of {}; got {} columns",
                            weight_format_name(format), weight_format_block_elems(format), cols);
  }
  const size_t want = size_t(rows * weight_row_bytes(format, cols));
  if (data.size() != want) {
    return invalid_argument("a {} weight of [{}, {}] takes {} bytes, got {}",
                            weight_format_name(format), rows, cols, want, data.size());
  }
  if (format != WeightFormat::kFp8E4M3 && scale_kind != ScaleKind::kNone) {
    return invalid_argument("a {} weight carries no scales ({} given)", weight_format_name(format),
                            scale_kind_name(scale_kind));
  }
  if (format == WeightFormat::kFp8E4M3 && scale_kind == ScaleKind::kNone) {
    return invalid_argument("an fp8 weight needs scales");
  }
  const size_t n_scales = size_t(scale_count(scale_kind, rows, cols));
  if (scales.size() != n_scales) {
    return invalid_argument("{} scales of a [{}, {}] weight are {} floats, got {}",
                            scale_kind_name(scale_kind), rows, cols, n_scales, scales.size());
  }
  HostWeight w;
  w.format_ = format;
  w.scale_kind_ = scale_kind;
  w.rows_ = rows;
  w.cols_ = cols;
  w.data_ = std::move(data);
  w.scales_ = std::move(scales);
  return w;
}

namespace {

// The index of the scale of element (r, c).
int64_t scale_index(ScaleKind s, int64_t r, int64_t c, int64_t cols) {
  switch (s) {
    case ScaleKind::kNone:
    case ScaleKind::kPerTensor:
      return 0;
    case ScaleKind::kPerChannel:
      return r;
    case ScaleKind::kBlock128x128:
      return (r / 128) * ((cols + 127) / 128) + c / 128;
  }
  PP_ASSERT_MSG(false, "unknown scale kind");
}

}  // namespace

HostWeight HostWeight::quantize_fp8(std::span<const float> values, int64_t rows, int64_t cols,
                                    ScaleKind scale_kind) {
  PP_ASSERT(scale_kind != ScaleKind::kNone && int64_t(values.size()) == rows * cols);
  HostWeight w;
  w.format_ = WeightFormat::kFp8E4M3;
  w.scale_kind_ = scale_kind;
  w.rows_ = rows;
  w.cols_ = cols;
  w.data_.resize(size_t(rows * cols));
  w.scales_.assign(size_t(scale_count(scale_kind, rows, cols)), 0.0f);
  // Each group's absolute maximum, then its scale.
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      float& amax = w.scales_[size_t(scale_index(scale_kind, r, c, cols))];
      amax = std::max(amax, std::fabs(values[size_t(r * cols + c)]));
    }
  }
  for (float& s : w.scales_) s = s > 0.0f ? s / kFp8E4M3Max : 1.0f;
  auto* out = reinterpret_cast<uint8_t*>(w.data_.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float s = w.scales_[size_t(scale_index(scale_kind, r, c, cols))];
      out[r * cols + c] = fp8_e4m3_from_float(values[size_t(r * cols + c)] / s);
    }
  }
  return w;
}

void HostWeight::dequantize(std::span<float> out) const {
  PP_ASSERT(int64_t(out.size()) == numel());
  const auto* p = reinterpret_cast<const uint8_t*>(data_.data());
  switch (format_) {
    case WeightFormat::kF32:
      if (!data_.empty()) std::memcpy(out.data(), p, data_.size());
      return;
    case WeightFormat::kBF16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_to_f32(load_u16(p + 2 * i));
      return;
    case WeightFormat::kF16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = f16_to_f32(load_u16(p + 2 * i));
      return;
    case WeightFormat::kFp8E4M3:
      for (int64_t r = 0; r < rows_; ++r) {
        for (int64_t c = 0; c < cols_; ++c) {
          const int64_t i = r * cols_ + c;
          out[size_t(i)] =
              fp8_e4m3_to_float(p[i]) * scales_[size_t(scale_index(scale_kind_, r, c, cols_))];
        }
      }
      return;
    default:
      dequantize_blocks(format_, p, out.data(), numel());
      return;
  }
}

HostWeight HostWeight::to_f32() const {
  HostWeight w = f32(rows_, cols_);
  dequantize(w.f32_rows(0, rows_));
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

HostWeight HostWeight::zeros(WeightFormat format, int64_t rows, int64_t cols) {
  PP_ASSERT(rows >= 0 && cols >= 0 && (format == WeightFormat::kF32 || is_block_format(format)));
  HostWeight w;
  w.format_ = format;
  w.rows_ = rows;
  w.cols_ = cols;
  w.data_.resize(size_t(rows * weight_row_bytes(format, cols)));
  return w;
}

std::span<std::byte> HostWeight::row_bytes(int64_t row, int64_t n) {
  PP_ASSERT(row >= 0 && n >= 0 && row + n <= rows_);
  const int64_t rb = weight_row_bytes(format_, cols_);
  return {data_.data() + row * rb, size_t(n * rb)};
}

std::span<float> HostWeight::f32_rows(int64_t row, int64_t n) {
  PP_ASSERT_MSG(format_ == WeightFormat::kF32, "f32 values asked of a weight of another format");
  PP_ASSERT(row >= 0 && n >= 0 && row + n <= rows_);
  float* base = reinterpret_cast<float*>(data_.data());
  return {base + row * cols_, size_t(n * cols_)};
}

}  // namespace pp::kernels
