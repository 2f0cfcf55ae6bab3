// Tests of the CPU matmul: accuracy against a float64 reference with a rigorous rounding bound,
// and bitwise batch invariance (a row's output is the same alone, at any position of a batch
// of any size, and under any thread count).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "pp/kernels/cpu.h"
#include "test-util.h"

namespace pp::kernels::cpu {
namespace {

std::vector<float> run_matmul(const std::vector<float>& x, const std::vector<float>& w,
                              const float* bias, int64_t m, int64_t n, int64_t k) {
  std::vector<float> out(static_cast<size_t>(m * n), std::nanf(""));
  matmul({.x = x.data(), .w = w.data(), .bias = bias, .out = out.data(), .m = m, .n = n, .k = k});
  return out;
}

struct Shape {
  int64_t m, n, k;
};

TEST(CpuMatmul, MatchesFloat64Reference) {
  for (const Shape s : {Shape{1, 1, 1}, Shape{3, 5, 7}, Shape{2, 9, 8}, Shape{7, 33, 100},
                        Shape{16, 64, 576}, Shape{33, 17, 1537}, Shape{5, 130, 13}}) {
    for (bool with_bias : {false, true}) {
      SCOPED_TRACE(testing::Message()
                   << "m=" << s.m << " n=" << s.n << " k=" << s.k << " bias=" << with_bias);
      const auto x = test::random_floats(size_t(s.m * s.k));
      const auto w = test::random_floats(size_t(s.n * s.k));
      const auto bias = test::random_floats(size_t(s.n));
      const auto out = run_matmul(x, w, with_bias ? bias.data() : nullptr, s.m, s.n, s.k);
      // Each lane of the 8-wide accumulation sums ceil(k/8) products, then 3 adds across lanes
      // and the bias: the classic bound gamma_j * sum |x_i w_i| with j = k/8 + 5.
      const double gamma = (double(s.k) / 8 + 5) * 0x1p-24 * 1.01;
      for (int64_t i = 0; i < s.m; ++i) {
        for (int64_t j = 0; j < s.n; ++j) {
          double ref = with_bias ? bias[size_t(j)] : 0.0, mag = std::fabs(ref);
          for (int64_t c = 0; c < s.k; ++c) {
            const double prod = double(x[size_t(i * s.k + c)]) * w[size_t(j * s.k + c)];
            ref += prod;
            mag += std::fabs(prod);
          }
          ASSERT_LE(std::fabs(out[size_t(i * s.n + j)] - ref), gamma * mag + 1e-30)
              << "row " << i << " col " << j;
        }
      }
    }
  }
}

TEST(CpuMatmul, BatchInvariantBitwise) {
  const int saved = num_threads();
  for (const Shape s : {Shape{100, 1536, 576}, Shape{100, 77, 100}, Shape{100, 13, 1537}}) {
    const auto x = test::random_floats(size_t(s.m * s.k));
    const auto w = test::random_floats(size_t(s.n * s.k));
    const auto bias = test::random_floats(size_t(s.n));
    // Each row alone, on one thread.
    set_num_threads(1);
    std::vector<float> single(static_cast<size_t>(s.m * s.n));
    for (int64_t i = 0; i < s.m; ++i) {
      std::vector<float> row(x.begin() + i * s.k, x.begin() + (i + 1) * s.k);
      const auto o = run_matmul(row, w, bias.data(), 1, s.n, s.k);
      std::memcpy(single.data() + i * s.n, o.data(), size_t(s.n) * sizeof(float));
    }
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      for (int64_t m : {1, 2, 3, 7, 16, 33, 100}) {
        // Rows taken from an offset so that each row also lands at a new position in its batch.
        const int64_t off = (s.m - m) / 2;
        std::vector<float> xb(x.begin() + off * s.k, x.begin() + (off + m) * s.k);
        const auto o = run_matmul(xb, w, bias.data(), m, s.n, s.k);
        for (int64_t i = 0; i < m; ++i) {
          ASSERT_EQ(0, std::memcmp(o.data() + i * s.n, single.data() + (off + i) * s.n,
                                   size_t(s.n) * sizeof(float)))
              << "n=" << s.n << " k=" << s.k << " threads=" << threads << " m=" << m << " row "
              << i;
        }
      }
    }
  }
  set_num_threads(saved);
}

}  // namespace
}  // namespace pp::kernels::cpu
