// GPU test (label gpu): the CUDA SwiGLU against cpu::swiglu on fresh random gate|up rows, for
// widths on the 16-byte path (multiples of 8) and off it, within bf16 output rounding.
#include <gtest/gtest.h>

#include "cuda-test-util.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/cuda/swiglu.h"
#include "test-util.h"

namespace {

using pp::test::DeviceBuffer;

TEST(CudaSwiglu, MatchesCpuReference) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  for (int64_t n_ff : {8, 1001, 12288}) {
    for (int64_t n_tokens : {1, 37}) {
      auto gu = pp::test::round_bf16(pp::test::random_floats(size_t(n_tokens * 2 * n_ff), -6, 6));
      auto d_gu = pp::test::upload_bf16(gu);
      DeviceBuffer<__nv_bfloat16> d_out(static_cast<size_t>(n_tokens * n_ff));
      d_out.fill_bytes(0xff);
      PP_CUDA_OK(pp::kernels::cuda::swiglu({d_gu.get(), d_out.get(), n_tokens, n_ff}, nullptr));
      PP_CUDA_OK(cudaDeviceSynchronize());
      std::vector<float> ref(static_cast<size_t>(n_tokens * n_ff));
      pp::kernels::cpu::swiglu({gu.data(), ref.data(), n_tokens, n_ff});
      EXPECT_EQ(pp::test::first_mismatch(pp::test::download_f32(d_out), ref, 1e-3, 8e-3), -1)
          << "n_ff=" << n_ff << " n_tokens=" << n_tokens;
    }
  }
}

}  // namespace
