// GPU test (label gpu): RoPE fused with the paged KV write against the CPU chain it replaces
// (cpu::rms_norm per head when Qwen3's q/k norms are given, cpu::rope_neox, cpu::kv_write), on
// fresh random q|k|v rows, positions up to 32k, scattered and skipped (negative) slots, for
// head_dim 64/96/128/256, partial rotation, GQA ratios 1/4/8, q in place and to a separate
// buffer. Slots nobody writes must keep their poison.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "cuda-test-util.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/cuda/rope.h"
#include "test-util.h"

namespace {

using pp::test::DeviceBuffer;

struct Case {
  int64_t n_head, n_head_kv, head_dim, rot_dim;
  bool norm, q_out;
};

void run_case(const Case& c) {
  const int64_t n_tokens = 29, dim = c.head_dim, n_kv = c.n_head_kv;
  const int64_t width = (c.n_head + 2 * n_kv) * dim;
  const int64_t block_size = 16, n_blocks = 8, n_slots = block_size * n_blocks;
  auto qkv = pp::test::round_bf16(pp::test::random_floats(size_t(n_tokens * width), -2, 2));
  auto q_norm = pp::test::round_bf16(pp::test::random_floats(size_t(dim), 0.5f, 1.5f));
  auto k_norm = pp::test::round_bf16(pp::test::random_floats(size_t(dim), 0.5f, 1.5f));
  std::vector<int32_t> pos(static_cast<size_t>(n_tokens));
  std::uniform_int_distribution<int32_t> pick_pos(0, 32767);
  for (auto& x : pos) x = pick_pos(pp::test::rng());
  // Distinct scattered slots, a few skipped.
  std::vector<int64_t> perm(static_cast<size_t>(n_slots));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), pp::test::rng());
  std::vector<int64_t> slots(perm.begin(), perm.begin() + n_tokens);
  slots[3] = -1;
  slots[17] = -1;

  pp::kernels::cpu::RopeFreqParams fp;
  fp.rot_dim = c.rot_dim;
  fp.theta = 1000000.0f;
  const auto inv_freq = pp::kernels::cpu::rope_inv_freq(fp);

  // CPU reference.
  std::vector<float> q(static_cast<size_t>(n_tokens * c.n_head * dim)),
      k(size_t(n_tokens * n_kv * dim)), v(k.size());
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* row = qkv.data() + t * width;
    std::copy_n(row, c.n_head * dim, q.data() + t * c.n_head * dim);
    std::copy_n(row + c.n_head * dim, n_kv * dim, k.data() + t * n_kv * dim);
    std::copy_n(row + (c.n_head + n_kv) * dim, n_kv * dim, v.data() + t * n_kv * dim);
  }
  if (c.norm) {
    pp::kernels::cpu::rms_norm(
        {q.data(), nullptr, q_norm.data(), q.data(), n_tokens * c.n_head, dim, 1e-6f});
    pp::kernels::cpu::rms_norm(
        {k.data(), nullptr, k_norm.data(), k.data(), n_tokens * n_kv, dim, 1e-6f});
  }
  pp::kernels::cpu::rope_neox(
      {q.data(), pos.data(), inv_freq.data(), n_tokens, c.n_head, dim, c.rot_dim});
  pp::kernels::cpu::rope_neox(
      {k.data(), pos.data(), inv_freq.data(), n_tokens, n_kv, dim, c.rot_dim});
  const float kPoison = -12288.0f;  // bf16-exact (-1.5 * 2^13)
  std::vector<float> cache_k(size_t(n_slots * n_kv * dim), kPoison), cache_v(cache_k);
  pp::kernels::cpu::kv_write({{cache_k.data(), cache_v.data(), n_blocks, block_size, n_kv, dim},
                              k.data(),
                              v.data(),
                              slots.data(),
                              n_tokens});

  // GPU.
  auto d_qkv = pp::test::upload_bf16(qkv);
  DeviceBuffer<int32_t> d_pos(pos);
  DeviceBuffer<int64_t> d_slots(slots);
  DeviceBuffer<float> d_inv(inv_freq);
  auto d_qn = pp::test::upload_bf16(q_norm);
  auto d_kn = pp::test::upload_bf16(k_norm);
  DeviceBuffer<__nv_bfloat16> d_q(q.size());
  d_q.fill_bytes(0xff);
  auto d_ck = pp::test::upload_bf16(std::vector<float>(cache_k.size(), kPoison));
  auto d_cv = pp::test::upload_bf16(std::vector<float>(cache_k.size(), kPoison));
  pp::kernels::cuda::RopeKvParams p;
  p.qkv = d_qkv.get();
  p.q_out = c.q_out ? d_q.get() : nullptr;
  p.pos = d_pos.get();
  p.slots = d_slots.get();
  p.inv_freq = d_inv.get();
  p.q_norm = c.norm ? d_qn.get() : nullptr;
  p.k_norm = c.norm ? d_kn.get() : nullptr;
  p.kv = {d_ck.get(), d_cv.get(), n_blocks, block_size, n_kv, dim};
  p.n_tokens = n_tokens;
  p.n_head = c.n_head;
  p.rot_dim = c.rot_dim;
  PP_CUDA_OK(pp::kernels::cuda::rope_kv_write(p, nullptr));
  PP_CUDA_OK(cudaDeviceSynchronize());

  std::vector<float> got_q;
  if (c.q_out) {
    got_q = pp::test::download_f32(d_q);
  } else {
    const auto all = pp::test::download_f32(d_qkv);
    for (int64_t t = 0; t < n_tokens; ++t) {
      got_q.insert(got_q.end(), all.begin() + t * width, all.begin() + t * width + c.n_head * dim);
    }
  }
  const std::string what = "head_dim=" + std::to_string(dim) + " rot=" + std::to_string(c.rot_dim) +
                           " heads=" + std::to_string(c.n_head) + "/" + std::to_string(n_kv) +
                           " norm=" + std::to_string(c.norm) + " q_out=" + std::to_string(c.q_out);
  EXPECT_EQ(pp::test::first_mismatch(got_q, q, 2e-2, 1e-2), -1) << "q " << what;
  EXPECT_EQ(pp::test::first_mismatch(pp::test::download_f32(d_ck), cache_k, 2e-2, 1e-2), -1)
      << "k cache " << what;
  EXPECT_EQ(pp::test::first_mismatch(pp::test::download_f32(d_cv), cache_v, 0, 0), -1)
      << "v cache " << what;
}

TEST(CudaRopeKv, MatchesCpuReference) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  const Case cases[] = {
      {32, 8, 128, 128, false, false}, {32, 8, 128, 128, true, false},
      {16, 2, 128, 128, true, true},   {4, 4, 64, 64, false, true},
      {8, 1, 256, 256, true, false},   {12, 3, 96, 96, false, false},
      {8, 2, 128, 64, true, true},     {6, 6, 64, 32, false, false},
  };
  for (const Case& c : cases) run_case(c);
}

}  // namespace
