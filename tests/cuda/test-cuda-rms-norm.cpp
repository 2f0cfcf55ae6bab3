// GPU test (label gpu): the CUDA RMSNorm, plain and fused with the residual add, against the CPU
// reference on fresh random inputs of several row lengths, within bf16 tolerance.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "pp/kernels/cpu.h"
#include "pp/kernels/cuda/rms-norm.h"
#include "pp/kernels/device.h"
#include "test-util.h"

namespace {

std::vector<float> round_bf16(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = __bfloat162float(__float2bfloat16(v[i]));
  return r;
}

std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = __float2bfloat16(v[i]);
  return r;
}

__nv_bfloat16* upload(const std::vector<__nv_bfloat16>& h) {
  __nv_bfloat16* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, h.size() * sizeof(h[0])), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d, h.data(), h.size() * sizeof(h[0]), cudaMemcpyHostToDevice), cudaSuccess);
  return d;
}

std::vector<float> download(const __nv_bfloat16* d, size_t n) {
  std::vector<__nv_bfloat16> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(h[0]), cudaMemcpyDeviceToHost), cudaSuccess);
  std::vector<float> r(n);
  for (size_t i = 0; i < n; ++i) r[i] = __bfloat162float(h[i]);
  return r;
}

TEST(CudaRmsNorm, MatchesCpuReference) {
  ASSERT_FALSE(pp::kernels::cuda_devices().empty()) << "no CUDA device";
  for (int64_t n : {64, 576, 1000, 1001, 4096, 5120, 8191}) {
    for (bool fused : {false, true}) {
      const int64_t rows = 37;
      auto x = round_bf16(pp::test::random_floats(size_t(rows * n), -2, 2));
      auto r = round_bf16(pp::test::random_floats(size_t(rows * n), -2, 2));
      auto w = round_bf16(pp::test::random_floats(size_t(n), 0.5f, 1.5f));
      auto dx = upload(to_bf16(x));
      auto dr = upload(to_bf16(r));
      auto dw = upload(to_bf16(w));
      __nv_bfloat16* dout = nullptr;
      ASSERT_EQ(cudaMalloc(&dout, size_t(rows * n) * 2), cudaSuccess);
      pp::kernels::cuda::RmsNormParams p{dx, fused ? dr : nullptr, dw, dout, rows, n, 1e-6f};
      ASSERT_EQ(pp::kernels::cuda::rms_norm(p, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      auto got = download(dout, size_t(rows * n));

      std::vector<float> ref(size_t(rows * n)), res = r;
      if (fused) {  // the GPU stores the residual sum in bf16 before normalising it
        for (size_t i = 0; i < res.size(); ++i) res[i] = res[i] + x[i];
        res = round_bf16(res);
      }
      pp::kernels::cpu::RmsNormParams c{
          fused ? res.data() : x.data(), nullptr, w.data(), ref.data(), rows, n, 1e-6f};
      pp::kernels::cpu::rms_norm(c);
      EXPECT_EQ(pp::test::first_mismatch(got, ref, 1e-2, 1e-2), -1) << "n=" << n;
      if (fused) {
        auto got_res = download(dr, size_t(rows * n));
        EXPECT_EQ(pp::test::first_mismatch(got_res, res, 0, 0), -1) << "residual n=" << n;
      }
      cudaFree(dx);
      cudaFree(dr);
      cudaFree(dw);
      cudaFree(dout);
    }
  }
}

}  // namespace
