// GPU test (label gpu): the CUDA embedding gather against cpu::embedding on fresh random tables
// and ids (repeats included), for row lengths on the 16-byte path and off it. Exact.
#include <gtest/gtest.h>

#include <random>

#include "cuda-test-util.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/cuda/embedding.h"
#include "test-util.h"

namespace {

using pp::test::DeviceBuffer;

TEST(CudaEmbedding, MatchesCpuReference) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  for (int64_t n_embd : {64, 1001, 4096}) {
    const int64_t n_vocab = 3000, n_tokens = 77;
    auto table = pp::test::round_bf16(pp::test::random_floats(size_t(n_vocab * n_embd), -3, 3));
    std::vector<int32_t> ids(static_cast<size_t>(n_tokens));
    std::uniform_int_distribution<int32_t> pick(0, int32_t(n_vocab - 1));
    for (auto& id : ids) id = pick(pp::test::rng());
    ids[5] = ids[9];  // a repeated token
    auto d_table = pp::test::upload_bf16(table);
    DeviceBuffer<int32_t> d_ids(ids);
    DeviceBuffer<__nv_bfloat16> d_out(static_cast<size_t>(n_tokens * n_embd));
    d_out.fill_bytes(0xff);
    pp::kernels::cuda::EmbeddingParams p{d_table.get(), d_ids.get(), d_out.get(),
                                         n_vocab,       n_embd,      n_tokens};
    PP_CUDA_OK(pp::kernels::cuda::embedding(p, nullptr));
    PP_CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> ref(static_cast<size_t>(n_tokens * n_embd));
    pp::kernels::cpu::embedding({table.data(), ids.data(), ref.data(), n_vocab, n_embd, n_tokens});
    EXPECT_EQ(pp::test::first_mismatch(pp::test::download_f32(d_out), ref, 0, 0), -1)
        << "n_embd=" << n_embd;
  }
}

}  // namespace
