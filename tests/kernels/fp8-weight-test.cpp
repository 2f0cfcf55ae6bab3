// Tests of the host fp8 e4m3 codec (float-convert.h) and of HostWeight's fp8 side: every code
// decodes and encodes back to itself, f32 -> fp8 rounds to nearest with ties to even, saturates
// at +-448 and keeps NaN; quantize_fp8 picks amax / 448 per tensor, row or 128 x 128 tile and
// stays within half an fp8 step (times the scale) of the values; from_bytes checks its sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "pp/kernels/float-convert.h"
#include "pp/kernels/host-weight.h"
#include "test-util.h"

namespace pp::kernels {
namespace {

bool is_nan_code(int c) { return (c & 0x7f) == 0x7f; }

TEST(Fp8Codec, EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    SCOPED_TRACE(testing::Message() << "code 0x" << std::hex << c);
    const float v = fp8_e4m3_to_float(uint8_t(c));
    if (is_nan_code(c)) {
      EXPECT_TRUE(std::isnan(v));
      continue;
    }
    EXPECT_TRUE(std::isfinite(v));
    EXPECT_EQ(fp8_e4m3_from_float(v), c);
  }
  EXPECT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x01), 0x1p-9f);  // the smallest subnormal
  EXPECT_EQ(fp8_e4m3_to_float(0x08), 0x1p-6f);  // the smallest normal
  EXPECT_EQ(fp8_e4m3_to_float(0x38), 1.0f);     // exponent 7 = bias
  EXPECT_EQ(fp8_e4m3_to_float(0xb8), -1.0f);
  EXPECT_TRUE(std::signbit(fp8_e4m3_to_float(0x80)));  // -0
}

TEST(Fp8Codec, DecodedValuesAscend) {
  // Positive codes 0x00..0x7e are the finite non-negative values in increasing order.
  for (int c = 1; c < 0x7f; ++c) {
    EXPECT_LT(fp8_e4m3_to_float(uint8_t(c - 1)), fp8_e4m3_to_float(uint8_t(c))) << c;
  }
}

TEST(Fp8Codec, RoundsToNearestTiesToEven) {
  for (int c = 0; c + 1 < 0x7f; ++c) {
    for (const float sign : {1.0f, -1.0f}) {
      const float lo = fp8_e4m3_to_float(uint8_t(c)), hi = fp8_e4m3_to_float(uint8_t(c + 1));
      const float mid = 0.5f * (lo + hi);  // exact: 5 significant bits
      const uint8_t s = sign < 0 ? 0x80 : 0;
      SCOPED_TRACE(testing::Message() << "between codes " << c << " and " << c + 1);
      // The code's parity is its mantissa's: the even neighbour wins a tie.
      EXPECT_EQ(fp8_e4m3_from_float(sign * mid), s | uint8_t(c % 2 == 0 ? c : c + 1));
      EXPECT_EQ(fp8_e4m3_from_float(sign * std::nextafter(mid, 0.0f)), s | uint8_t(c));
      EXPECT_EQ(fp8_e4m3_from_float(sign * std::nextafter(mid, 1000.0f)), s | uint8_t(c + 1));
    }
  }
  // Below half the smallest subnormal: zero, keeping the sign.
  EXPECT_EQ(fp8_e4m3_from_float(0x1p-10f), 0x00);
  EXPECT_EQ(fp8_e4m3_from_float(-0x1p-10f), 0x80);
  EXPECT_EQ(fp8_e4m3_from_float(0x1p-30f), 0x00);
}

TEST(Fp8Codec, SaturatesAtTheLargestFinite) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const float v : {448.0f, 449.0f, 464.0f, 480.0f, 1e6f, 3e38f, inf}) {
    EXPECT_EQ(fp8_e4m3_from_float(v), 0x7e) << v;
    EXPECT_EQ(fp8_e4m3_from_float(-v), 0xfe) << -v;
  }
  EXPECT_EQ(fp8_e4m3_from_float(447.0f), 0x7e);  // rounds to 448 anyway
  EXPECT_EQ(fp8_e4m3_from_float(431.0f), 0x7d);  // below the 432 midpoint: 416
}

TEST(Fp8Codec, NanStaysNan) {
  EXPECT_EQ(fp8_e4m3_from_float(std::nanf("")), 0x7f);
  EXPECT_EQ(fp8_e4m3_from_float(-std::nanf("")), 0x7f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7f)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0xff)));
}

// Half an fp8 step at |v| (in the scaled domain): steps are 2^(e-3) in the binade [2^e, 2^e+1)
// and 2^-9 among the subnormals.
double half_step(double v) {
  v = std::fabs(v);
  if (v < 0x1p-6) return 0x1p-10;
  return std::ldexp(1.0, int(std::floor(std::log2(v))) - 4);
}

int64_t tile_of(int64_t r, int64_t c, int64_t cols) {
  return (r / 128) * ((cols + 127) / 128) + c / 128;
}

void check_quantized(const HostWeight& w, std::span<const float> values, ScaleKind kind) {
  const int64_t rows = w.rows(), cols = w.cols();
  ASSERT_EQ(w.format(), WeightFormat::kFp8E4M3);
  ASSERT_EQ(w.scale_kind(), kind);
  ASSERT_EQ(int64_t(w.bytes().size()), rows * cols);
  ASSERT_EQ(int64_t(w.scales().size()), scale_count(kind, rows, cols));
  // Each group's scale is its amax / 448.
  std::vector<float> amax(w.scales().size(), 0.0f);
  auto group = [&](int64_t r, int64_t c) -> size_t {
    switch (kind) {
      case ScaleKind::kPerChannel:
        return size_t(r);
      case ScaleKind::kBlock128x128:
        return size_t(tile_of(r, c, cols));
      default:
        return 0;
    }
  };
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      amax[group(r, c)] = std::max(amax[group(r, c)], std::fabs(values[size_t(r * cols + c)]));
    }
  }
  for (size_t g = 0; g < amax.size(); ++g) {
    EXPECT_FLOAT_EQ(w.scales()[g], amax[g] / 448.0f) << "group " << g;
  }
  std::vector<float> deq(size_t(rows * cols));
  w.dequantize(deq);
  const auto* codes = reinterpret_cast<const uint8_t*>(w.bytes().data());
  int64_t n_bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = size_t(r * cols + c);
      const double s = w.scales()[group(r, c)];
      EXPECT_EQ(deq[i], fp8_e4m3_to_float(codes[i]) * float(s));
      const double err = std::fabs(double(deq[i]) - values[i]);
      // Half a step of the scaled value, plus the rounding of value / scale and of the product.
      const double bound = half_step(values[i] / s) * s + 1e-6 * std::fabs(values[i]);
      if (err > bound && n_bad++ < 5) {
        ADD_FAILURE() << "(" << r << ", " << c << "): " << values[i] << " -> " << deq[i]
                      << ", error " << err << " > " << bound;
      }
    }
  }
  EXPECT_EQ(n_bad, 0);
}

TEST(HostWeightFp8, QuantizeIsWithinHalfAStep) {
  std::uniform_int_distribution<int64_t> dim(1, 300);
  for (const ScaleKind kind :
       {ScaleKind::kPerTensor, ScaleKind::kPerChannel, ScaleKind::kBlock128x128}) {
    for (int round = 0; round < 4; ++round) {
      const int64_t rows = dim(test::rng()), cols = dim(test::rng());
      SCOPED_TRACE(testing::Message() << scale_kind_name(kind) << " [" << rows << ", " << cols
                                      << "] seed " << test::rng_seed());
      // Values over several binades, so subnormals and saturation-free tops both occur.
      std::vector<float> values = test::random_floats(size_t(rows * cols), -2.0f, 2.0f);
      for (size_t i = 0; i < values.size(); i += 7) values[i] *= 1e-3f;
      check_quantized(HostWeight::quantize_fp8(values, rows, cols, kind), values, kind);
    }
  }
}

TEST(HostWeightFp8, BlockScalesFollowTheTiles) {
  // [300, 200]: tiles of 3 x 2, the last row and column of tiles partial. Each tile's amax is
  // set apart so that a wrong tile index shows.
  const int64_t rows = 300, cols = 200;
  std::vector<float> values = test::random_floats(size_t(rows * cols), -0.5f, 0.5f);
  for (int64_t tr = 0; tr < 3; ++tr) {
    for (int64_t tc = 0; tc < 2; ++tc) {
      const int64_t r = std::min(rows - 1, tr * 128 + 5), c = std::min(cols - 1, tc * 128 + 3);
      values[size_t(r * cols + c)] = float(1 + tr * 2 + tc);
    }
  }
  const HostWeight w = HostWeight::quantize_fp8(values, rows, cols, ScaleKind::kBlock128x128);
  ASSERT_EQ(w.scales().size(), 6u);
  for (int64_t t = 0; t < 6; ++t) EXPECT_FLOAT_EQ(w.scales()[size_t(t)], float(1 + t) / 448.0f);
  check_quantized(w, values, ScaleKind::kBlock128x128);
}

TEST(HostWeightFp8, PerChannelScalesFollowTheRows) {
  const int64_t rows = 5, cols = 33;
  std::vector<float> values = test::random_floats(size_t(rows * cols), -0.5f, 0.5f);
  for (int64_t r = 0; r < rows; ++r) values[size_t(r * cols + r)] = float(r + 1) * 10.0f;
  const HostWeight w = HostWeight::quantize_fp8(values, rows, cols, ScaleKind::kPerChannel);
  for (int64_t r = 0; r < rows; ++r) EXPECT_FLOAT_EQ(w.scales()[size_t(r)], (r + 1) * 10.0f / 448);
  // The row's largest value is stored as 448 exactly and comes back exactly.
  std::vector<float> deq(values.size());
  w.dequantize(deq);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(uint8_t(w.bytes()[size_t(r * cols + r)]), 0x7e);
    EXPECT_FLOAT_EQ(deq[size_t(r * cols + r)], values[size_t(r * cols + r)]);
  }
}

TEST(HostWeightFp8, AllZeroGroupHasScaleOne) {
  std::vector<float> values(2 * 4, 0.0f);
  values[4] = 3.0f;  // row 1 only
  const HostWeight w = HostWeight::quantize_fp8(values, 2, 4, ScaleKind::kPerChannel);
  EXPECT_EQ(w.scales()[0], 1.0f);
  EXPECT_FLOAT_EQ(w.scales()[1], 3.0f / 448);
  std::vector<float> deq(values.size());
  w.dequantize(deq);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(deq[i], 0.0f);
}

TEST(HostWeightFp8, FromBytesChecksSizes) {
  std::vector<std::byte> b(6, std::byte{0x38});  // 1.0
  auto ok =
      HostWeight::from_bytes(WeightFormat::kFp8E4M3, ScaleKind::kPerChannel, 2, 3, b, {2.0f, 0.5f});
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->scale_kind(), ScaleKind::kPerChannel);
  const HostWeight f = ok->to_f32();
  EXPECT_EQ(f.format(), WeightFormat::kF32);
  EXPECT_EQ(std::vector<float>(f.f32_data(), f.f32_data() + 6),
            (std::vector<float>{2, 2, 2, 0.5f, 0.5f, 0.5f}));

  auto bad_bytes =
      HostWeight::from_bytes(WeightFormat::kFp8E4M3, ScaleKind::kPerTensor, 2, 4, b, {1.0f});
  EXPECT_EQ(bad_bytes.status().code(), StatusCode::kInvalidArgument);
  auto bad_scales =
      HostWeight::from_bytes(WeightFormat::kFp8E4M3, ScaleKind::kPerChannel, 2, 3, b, {1.0f});
  EXPECT_EQ(bad_scales.status().code(), StatusCode::kInvalidArgument);
  auto no_scales = HostWeight::from_bytes(WeightFormat::kFp8E4M3, ScaleKind::kNone, 2, 3, b, {});
  EXPECT_EQ(no_scales.status().code(), StatusCode::kInvalidArgument);
  auto scaled_f32 = HostWeight::from_bytes(WeightFormat::kF32, ScaleKind::kPerTensor, 1, 1,
                                           std::vector<std::byte>(4), {1.0f});
  EXPECT_EQ(scaled_f32.status().code(), StatusCode::kInvalidArgument);
  // A block-scaled [200, 130] weight takes 2 x 2 scales.
  auto block = HostWeight::from_bytes(WeightFormat::kFp8E4M3, ScaleKind::kBlock128x128, 200, 130,
                                      std::vector<std::byte>(200 * 130), {1, 2, 3, 4});
  EXPECT_TRUE(block.ok()) << block.status().message();
}

}  // namespace
}  // namespace pp::kernels
