// Tests of cpu::linear on GGUF block weights (kernels/src/cpu/quant-dot.h): for every format,
// with fresh random blocks and inputs,
//   - the result against a float64 reference on the dequantized weights and the 8-bit quantized
//     activations (tight: only f32 rounding differs), and against the f32 activations within the
//     bound that 8-bit activations allow (|w| * d / 2 summed);
//   - every instruction-set variant the CPU has, bitwise against the scalar one;
//   - batch invariance: a row's result, bitwise, alone or at any position of a batch, with one
//     thread or several;
//   - the bias, added after the dot.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "pp/kernels/cpu.h"
#include "pp/kernels/float-convert.h"
#include "pp/kernels/gguf-blocks.h"
#include "pp/kernels/host-weight.h"

namespace pp::kernels::cpu {
namespace {

const WeightFormat kFormats[] = {WeightFormat::kQ4_0, WeightFormat::kQ4_1, WeightFormat::kQ5_0,
                                 WeightFormat::kQ5_1, WeightFormat::kQ8_0, WeightFormat::kQ4_K,
                                 WeightFormat::kQ5_K, WeightFormat::kQ6_K};

void put_f16(std::byte* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// A [rows, cols] weight of random blocks: random bits everywhere, then finite f16 scales of
// either sign where the format has them.
HostWeight random_blocks(WeightFormat f, int64_t rows, int64_t cols, std::mt19937& rng) {
  const int64_t bb = weight_format_block_bytes(f);
  std::vector<std::byte> data(size_t(rows * weight_row_bytes(f, cols)));
  for (std::byte& b : data) b = std::byte(rng() & 0xff);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f), pos(0.001f, 0.02f);
  for (size_t at = 0; at < data.size(); at += size_t(bb)) {
    std::byte* b = data.data() + at;
    switch (f) {
      case WeightFormat::kQ4_1:
      case WeightFormat::kQ5_1:
        put_f16(b + 2, scale(rng));
        [[fallthrough]];
      case WeightFormat::kQ4_0:
      case WeightFormat::kQ5_0:
      case WeightFormat::kQ8_0:
        put_f16(b, scale(rng));
        break;
      case WeightFormat::kQ4_K:
      case WeightFormat::kQ5_K:
        put_f16(b, pos(rng));
        put_f16(b + 2, pos(rng));
        break;
      case WeightFormat::kQ6_K:
        put_f16(b + 208, scale(rng));
        break;
      default:
        break;
    }
  }
  auto w = HostWeight::from_bytes(f, ScaleKind::kNone, rows, cols, std::move(data), {});
  EXPECT_TRUE(w.ok()) << w.status().message();
  return std::move(*w);
}

std::vector<float> random_floats(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// The activations as the kernels quantize them (quant-dot.h): blocks of 32, d = amax / 127,
// q = round-to-nearest-even(x / d); the values d * q.
std::vector<double> quantized(const std::vector<float>& x) {
  std::vector<double> out(x.size());
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0;
    for (size_t j = b; j < b + 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    for (size_t j = b; j < b + 32; ++j) out[j] = double(d) * double(std::nearbyint(x[j] * id));
  }
  return out;
}

struct Case {
  int64_t m = 7, n = 13, k = 512;
};

class QuantLinear : public ::testing::TestWithParam<WeightFormat> {};

TEST_P(QuantLinear, MatchesFloat64ReferenceOnDequantizedWeights) {
  std::mt19937 rng(1234 + int(GetParam()));
  const Case c;
  const HostWeight w = random_blocks(GetParam(), c.n, c.k, rng);
  std::vector<float> wf(size_t(c.n * c.k));
  w.dequantize(wf);
  const std::vector<float> x = random_floats(c.m * c.k, rng);
  std::vector<float> out(size_t(c.m * c.n));
  linear({.x = x.data(), .w = w.view(), .out = out.data(), .m = c.m});
  for (int64_t r = 0; r < c.m; ++r) {
    const std::vector<float> xr(x.begin() + r * c.k, x.begin() + (r + 1) * c.k);
    const std::vector<double> xq = quantized(xr);
    for (int64_t j = 0; j < c.n; ++j) {
      double ref_q = 0, ref = 0, mag = 0, bound = 0;
      for (int64_t i = 0; i < c.k; ++i) {
        const double wv = wf[size_t(j * c.k + i)];
        ref_q += wv * xq[size_t(i)];
        ref += wv * xr[size_t(i)];
        mag += std::fabs(wv * xq[size_t(i)]);
        bound += std::fabs(wv) * std::fabs(xq[size_t(i)] - xr[size_t(i)]);
      }
      const double got = out[size_t(r * c.n + j)];
      EXPECT_NEAR(got, ref_q, 1e-5 * mag + 1e-6) << "row " << r << " col " << j;
      EXPECT_NEAR(got, ref, bound + 1e-5 * mag + 1e-6) << "row " << r << " col " << j;
    }
  }
}

TEST_P(QuantLinear, EveryInstructionSetMatchesScalarBitwise) {
  std::mt19937 rng(99 + int(GetParam()));
  const Case c{.m = 9, .n = 11, .k = 768};
  const HostWeight w = random_blocks(GetParam(), c.n, c.k, rng);
  const std::vector<float> x = random_floats(c.m * c.k, rng);
  const std::vector<float> bias = random_floats(c.n, rng);
  const QuantIsa saved = quant_isa();
  set_quant_isa(QuantIsa::kScalar);
  std::vector<float> want(size_t(c.m * c.n));
  linear({.x = x.data(), .w = w.view(), .bias = bias.data(), .out = want.data(), .m = c.m});
  for (QuantIsa isa : {QuantIsa::kAvx2, QuantIsa::kAvxVnni, QuantIsa::kAvx512Vnni}) {
    if (!quant_isa_supported(isa)) continue;
    set_quant_isa(isa);
    std::vector<float> got(want.size());
    linear({.x = x.data(), .w = w.view(), .bias = bias.data(), .out = got.data(), .m = c.m});
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0)
        << quant_isa_name(isa);
  }
  set_quant_isa(saved);
}

TEST_P(QuantLinear, BatchInvariant) {
  std::mt19937 rng(7 + int(GetParam()));
  const Case c{.m = 11, .n = 37, .k = 256};
  const HostWeight w = random_blocks(GetParam(), c.n, c.k, rng);
  const std::vector<float> x = random_floats(c.m * c.k, rng);
  const int saved = num_threads();
  set_num_threads(2);
  std::vector<float> all(size_t(c.m * c.n));
  linear({.x = x.data(), .w = w.view(), .out = all.data(), .m = c.m});
  set_num_threads(1);
  for (int64_t r = 0; r < c.m; ++r) {
    std::vector<float> one(size_t(c.n));
    linear({.x = x.data() + r * c.k, .w = w.view(), .out = one.data(), .m = 1});
    EXPECT_EQ(std::memcmp(one.data(), all.data() + r * c.n, one.size() * sizeof(float)), 0)
        << "row " << r;
  }
  // The tail rows again as a batch of their own: another grouping of rows into blocks of four.
  std::vector<float> tail(size_t(5 * c.n));
  linear({.x = x.data() + 6 * c.k, .w = w.view(), .out = tail.data(), .m = 5});
  EXPECT_EQ(std::memcmp(tail.data(), all.data() + 6 * c.n, tail.size() * sizeof(float)), 0);
  set_num_threads(saved);
}

TEST_P(QuantLinear, BiasIsAddedAfterTheDot) {
  std::mt19937 rng(55 + int(GetParam()));
  const Case c{.m = 3, .n = 5, .k = 256};
  const HostWeight w = random_blocks(GetParam(), c.n, c.k, rng);
  const std::vector<float> x = random_floats(c.m * c.k, rng);
  const std::vector<float> bias = random_floats(c.n, rng);
  std::vector<float> plain(size_t(c.m * c.n)), biased(plain.size());
  linear({.x = x.data(), .w = w.view(), .out = plain.data(), .m = c.m});
  linear({.x = x.data(), .w = w.view(), .bias = bias.data(), .out = biased.data(), .m = c.m});
  for (int64_t r = 0; r < c.m; ++r) {
    for (int64_t j = 0; j < c.n; ++j) {
      EXPECT_EQ(biased[size_t(r * c.n + j)], plain[size_t(r * c.n + j)] + bias[size_t(j)]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantLinear, ::testing::ValuesIn(kFormats), [](const auto& info) {
  return std::string(weight_format_name(info.param));
});

TEST(QuantLinear, BlockGeometry) {
  EXPECT_EQ(weight_row_bytes(WeightFormat::kQ4_1, 576), 18 * 20);
  EXPECT_EQ(weight_row_bytes(WeightFormat::kQ6_K, 512), 2 * 210);
  EXPECT_EQ(weight_row_bytes(WeightFormat::kF32, 3), 12);
  EXPECT_TRUE(linear_supports(WeightFormat::kQ8_0, ScaleKind::kNone));
  EXPECT_FALSE(linear_supports(WeightFormat::kBF16, ScaleKind::kNone));
  auto bad = HostWeight::from_bytes(WeightFormat::kQ4_K, ScaleKind::kNone, 1, 576,
                                    std::vector<std::byte>(324), {});
  EXPECT_FALSE(bad.ok());
}

}  // namespace
}  // namespace pp::kernels::cpu
