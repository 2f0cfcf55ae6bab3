// GPU test (label gpu): the cuBLASLt linear layer (y = x W^T + bias, bf16 in and out, f32
// compute) against cpu::matmul on fresh random inputs, with and without bias, for several
// shapes (odd m included) and a repeated shape (the cached plan).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "cuda-test-util.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/cuda/linear.h"
#include "test-util.h"

namespace {

using pp::test::DeviceBuffer;

TEST(CudaLinear, MatchesCpuReference) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  auto blas = pp::kernels::cuda::Blas::create();
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  struct Shape {
    int64_t m, n, k;
  };
  for (Shape s : {Shape{1, 256, 128}, Shape{37, 1000, 1024}, Shape{64, 4096, 4096},
                  Shape{37, 1000, 1024}, Shape{300, 152, 896}}) {
    for (bool with_bias : {false, true}) {
      auto x = pp::test::round_bf16(pp::test::random_floats(size_t(s.m * s.k), -1, 1));
      auto w = pp::test::round_bf16(pp::test::random_floats(size_t(s.n * s.k), -1, 1));
      auto b = pp::test::round_bf16(pp::test::random_floats(size_t(s.n), -2, 2));
      auto dx = pp::test::upload_bf16(x);
      auto dw = pp::test::upload_bf16(w);
      auto db = pp::test::upload_bf16(b);
      DeviceBuffer<__nv_bfloat16> dy(static_cast<size_t>(s.m * s.n));
      dy.fill_bytes(0xff);
      pp::kernels::cuda::LinearParams p{.x = dx.get(),
                                        .w = dw.get(),
                                        .bias = with_bias ? db.get() : nullptr,
                                        .out = dy.get(),
                                        .m = s.m,
                                        .n = s.n,
                                        .k = s.k};
      auto st = (*blas)->linear(p, nullptr);
      ASSERT_TRUE(st.ok()) << st.message();
      PP_CUDA_OK(cudaDeviceSynchronize());
      std::vector<float> ref(static_cast<size_t>(s.m * s.n));
      pp::kernels::cpu::matmul(
          {x.data(), w.data(), with_bias ? b.data() : nullptr, ref.data(), s.m, s.n, s.k});
      EXPECT_EQ(pp::test::first_mismatch(pp::test::download_f32(dy), ref, 2e-2, 1e-2), -1)
          << "m=" << s.m << " n=" << s.n << " k=" << s.k << " bias=" << with_bias;
    }
  }
}

// out_f32 (logits) and accumulate (the residual add fused into the GEMM): y = h + x W^T.
TEST(CudaLinear, AccumulatesAndWritesF32) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  auto blas = pp::kernels::cuda::Blas::create();
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  const int64_t m = 19, n = 520, k = 256;
  auto x = pp::test::round_bf16(pp::test::random_floats(size_t(m * k), -1, 1));
  auto w = pp::test::round_bf16(pp::test::random_floats(size_t(n * k), -1, 1));
  auto h = pp::test::round_bf16(pp::test::random_floats(size_t(m * n), -4, 4));
  auto dx = pp::test::upload_bf16(x);
  auto dw = pp::test::upload_bf16(w);
  auto dh = pp::test::upload_bf16(h);
  DeviceBuffer<float> df(static_cast<size_t>(m * n));
  std::vector<float> ref(static_cast<size_t>(m * n));
  pp::kernels::cpu::matmul({x.data(), w.data(), nullptr, ref.data(), m, n, k});
  ASSERT_TRUE(
      (*blas)
          ->linear({.x = dx.get(), .w = dw.get(), .out_f32 = df.get(), .m = m, .n = n, .k = k},
                   nullptr)
          .ok());
  ASSERT_TRUE((*blas)
                  ->linear({.x = dx.get(),
                            .w = dw.get(),
                            .out = dh.get(),
                            .m = m,
                            .n = n,
                            .k = k,
                            .accumulate = true},
                           nullptr)
                  .ok());
  PP_CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(pp::test::first_mismatch(df.download(), ref, 1e-3, 1e-4), -1);
  for (size_t i = 0; i < ref.size(); ++i) ref[i] += h[i];
  EXPECT_EQ(pp::test::first_mismatch(pp::test::download_f32(dh), ref, 3e-2, 1e-2), -1);
}

}  // namespace

namespace {

// Up to 8 rows, Blas::linear takes the bf16 GEMV: every m, odd n (rows past a warp's last),
// k from one vector to many, every variant (bias, accumulate, f32 out), against float64.
TEST(CudaLinear, GemvEveryRowCountAndVariantMatchesFloat64) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  auto blas = pp::kernels::cuda::Blas::create();
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  std::uniform_int_distribution<int64_t> pick_n(1, 700), pick_kv(1, 300);
  for (int64_t m = 1; m <= 9; ++m) {
    for (int variant = 0; variant < 8; ++variant) {
      const bool bias = variant & 1, accumulate = variant & 2, f32 = variant & 4;
      const int64_t n = pick_n(pp::test::rng()), k = 8 * pick_kv(pp::test::rng());
      SCOPED_TRACE(testing::Message() << "m=" << m << " n=" << n << " k=" << k << " bias=" << bias
                                      << " accumulate=" << accumulate << " f32=" << f32);
      auto x = pp::test::round_bf16(pp::test::random_floats(size_t(m * k), -1, 1));
      auto w = pp::test::round_bf16(pp::test::random_floats(size_t(n * k), -1, 1));
      auto b = pp::test::round_bf16(pp::test::random_floats(size_t(n), -2, 2));
      auto h = pp::test::round_bf16(pp::test::random_floats(size_t(m * n), -4, 4));
      auto dx = pp::test::upload_bf16(x);
      auto dw = pp::test::upload_bf16(w);
      auto db = pp::test::upload_bf16(b);
      DeviceBuffer<__nv_bfloat16> dy(size_t(m * n));
      DeviceBuffer<float> df(size_t(m * n));
      if (accumulate) {
        dy.upload(pp::test::to_bf16(h));
        df.upload(h);
      } else {
        dy.fill_bytes(0xff);
        df.fill_bytes(0xff);
      }
      const pp::kernels::cuda::LinearParams p{.x = dx.get(),
                                              .w = dw.get(),
                                              .bias = bias ? db.get() : nullptr,
                                              .out = f32 ? nullptr : dy.get(),
                                              .out_f32 = f32 ? df.get() : nullptr,
                                              .m = m,
                                              .n = n,
                                              .k = k,
                                              .accumulate = accumulate};
      auto path = (*blas)->path_for(p);
      ASSERT_TRUE(path.ok());
      EXPECT_EQ(*path, m <= 8 ? pp::kernels::gpu::LinearPath::kBf16Gemv
                              : pp::kernels::gpu::LinearPath::kBf16);
      ASSERT_TRUE((*blas)->linear(p, nullptr).ok());
      PP_CUDA_OK(cudaDeviceSynchronize());
      const std::vector<float> got = f32 ? df.download() : pp::test::download_f32(dy);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < n; ++c) {
          double ref = 0, mag = 0;
          for (int64_t i = 0; i < k; ++i) {
            const double t = double(x[size_t(r * k + i)]) * double(w[size_t(c * k + i)]);
            ref += t;
            mag += std::fabs(t);
          }
          if (bias) ref += b[size_t(c)];
          if (accumulate) ref += h[size_t(r * n + c)];
          // f32 sums of bf16 products, then the output's rounding (bf16: 2^-8 relative; twice
          // for cuBLASLt beyond 8 rows, whose bias epilogue rounds before and after the bias).
          const double out_eps = f32 ? 1e-6 : (m <= 8 ? 1.0 : 2.0) / 256;
          const double tol = 1e-5 * mag + out_eps * (std::fabs(ref) + 4) + 1e-6;
          ASSERT_NEAR(got[size_t(r * n + c)], ref, tol) << "row " << r << " col " << c;
        }
      }
    }
  }
}

}  // namespace
