// GPU test (label gpu): the cuBLASLt linear layer (y = x W^T + bias, bf16 in and out, f32
// compute) against cpu::matmul on fresh random inputs, with and without bias, for several
// shapes (odd m included) and a repeated shape (the cached plan).
#include <gtest/gtest.h>

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
