// Tests of cpu::linear, the typed-weight linear: an f32 weight gives bitwise the matmul's result
// (with and without bias), a HostWeight's view describes its storage, and a weight of any other
// format (or with scales) is refused with a message naming it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "pp/kernels/cpu.h"
#include "pp/kernels/host-weight.h"
#include "test-util.h"

namespace pp::kernels::cpu {
namespace {

TEST(CpuLinear, F32IsTheMatmulBitwise) {
  std::uniform_int_distribution<int64_t> dim(1, 70);
  for (int round = 0; round < 20; ++round) {
    const int64_t m = dim(test::rng()), n = dim(test::rng()), k = dim(test::rng());
    SCOPED_TRACE(testing::Message() << "m=" << m << " n=" << n << " k=" << k);
    const auto x = test::random_floats(size_t(m * k));
    const auto bias = test::random_floats(size_t(n));
    HostWeight w = HostWeight::f32(n, k);
    const auto values = test::random_floats(size_t(n * k));
    std::copy(values.begin(), values.end(), w.f32_rows(0, n).begin());
    const WeightView v = w.view();
    EXPECT_EQ(v.format, WeightFormat::kF32);
    EXPECT_EQ(v.rows, n);
    EXPECT_EQ(v.cols, k);
    EXPECT_EQ(v.bytes(), size_t(n * k) * 4);
    EXPECT_EQ(v.as<float>(), w.f32_data());
    for (const float* b : {static_cast<const float*>(nullptr), bias.data()}) {
      std::vector<float> got(size_t(m * n), std::nanf("")), want(size_t(m * n), std::nanf(""));
      linear({.x = x.data(), .w = v, .bias = b, .out = got.data(), .m = m});
      matmul({.x = x.data(),
              .w = values.data(),
              .bias = b,
              .out = want.data(),
              .m = m,
              .n = n,
              .k = k});
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
    }
  }
}

TEST(CpuLinear, HostWeightRows) {
  HostWeight w = HostWeight::f32(5, 3);
  EXPECT_EQ(w.numel(), 15);
  std::span<float> r = w.f32_rows(2, 2);
  EXPECT_EQ(r.size(), 6u);
  EXPECT_EQ(r.data(), w.f32_data() + 6);
  for (float& f : r) f = 1.5f;
  EXPECT_EQ(w.f32_data()[5], 0.0f);
  EXPECT_EQ(w.f32_data()[6], 1.5f);
  EXPECT_EQ(w.f32_data()[12], 0.0f);
  EXPECT_TRUE(HostWeight().empty());
  EXPECT_TRUE(HostWeight().view().empty());
}

TEST(CpuLinearDeathTest, RefusesOtherFormats) {
  std::vector<float> x(4, 1.0f), out(4);
  std::vector<uint16_t> bits(16, 0x3f80);  // bf16 ones
  const float scale = 1.0f;
  WeightView bf16{.format = WeightFormat::kBF16, .data = bits.data(), .rows = 4, .cols = 4};
  EXPECT_DEATH(linear({.x = x.data(), .w = bf16, .out = out.data(), .m = 1}), "bf16");
  WeightView fp8{.format = WeightFormat::kFp8E4M3,
                 .data = bits.data(),
                 .rows = 4,
                 .cols = 4,
                 .scale_kind = ScaleKind::kPerTensor,
                 .scales = &scale};
  EXPECT_DEATH(linear({.x = x.data(), .w = fp8, .out = out.data(), .m = 1}), "fp8_e4m3");
  std::vector<float> w(16, 1.0f);
  WeightView scaled{.format = WeightFormat::kF32,
                    .data = w.data(),
                    .rows = 4,
                    .cols = 4,
                    .scale_kind = ScaleKind::kPerChannel,
                    .scales = w.data()};
  EXPECT_DEATH(linear({.x = x.data(), .w = scaled, .out = out.data(), .m = 1}), "per-channel");
}

TEST(WeightFormat, NamesSizesAndScaleCounts) {
  EXPECT_STREQ(weight_format_name(WeightFormat::kF32), "f32");
  EXPECT_STREQ(weight_format_name(WeightFormat::kBF16), "bf16");
  EXPECT_STREQ(weight_format_name(WeightFormat::kF16), "f16");
  EXPECT_STREQ(weight_format_name(WeightFormat::kFp8E4M3), "fp8_e4m3");
  EXPECT_EQ(weight_format_bytes(WeightFormat::kF32), 4);
  EXPECT_EQ(weight_format_bytes(WeightFormat::kBF16), 2);
  EXPECT_EQ(weight_format_bytes(WeightFormat::kF16), 2);
  EXPECT_EQ(weight_format_bytes(WeightFormat::kFp8E4M3), 1);
  EXPECT_EQ(scale_count(ScaleKind::kNone, 300, 200), 0);
  EXPECT_EQ(scale_count(ScaleKind::kPerTensor, 300, 200), 1);
  EXPECT_EQ(scale_count(ScaleKind::kPerChannel, 300, 200), 300);
  EXPECT_EQ(scale_count(ScaleKind::kBlock128x128, 300, 200), 3 * 2);
  EXPECT_EQ(scale_count(ScaleKind::kBlock128x128, 256, 128), 2 * 1);
}

}  // namespace
}  // namespace pp::kernels::cpu
