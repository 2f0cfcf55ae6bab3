// GPU test (label gpu): the CUDA sampler against cpu::sample, row by row, on fresh random logits
// (f32 and bf16, vocabularies of 1000, 50257 and 151936): greedy picks the CPU's token (lowest
// id among planted ties); seeded sampling with random temperature / top-k / top-p / min-p picks
// the CPU's token for the same (seed, step); logprobs and the top-N logprobs agree; the chosen
// token always lies inside the filtered set, checked against an independent full sort; heavy
// ties (logits on a coarse grid) resolve as on the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "cuda-test-util.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/cuda/sampling.h"
#include "test-util.h"

namespace {

using pp::kernels::cuda::LogitsType;
using pp::kernels::cuda::SampleRowParams;
using pp::test::DeviceBuffer;

struct Batch {
  std::vector<float> logits;  // [n_rows, n_vocab], exactly representable in the logits type
  std::vector<SampleRowParams> rows;
};

// The set the filters keep, by a full sort: the reference for "never picks a filtered token".
std::vector<bool> kept_set(const float* l, int64_t n, const SampleRowParams& r) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  const float s_max = l[order[0]] / r.temperature;
  int64_t k = r.top_k > 0 ? std::min<int64_t>(r.top_k, n) : n;
  std::vector<double> w(static_cast<size_t>(k));
  double total = 0;
  for (int64_t j = 0; j < k; ++j)
    total += w[size_t(j)] = std::exp(l[order[size_t(j)]] / r.temperature - s_max);
  int64_t keep = k;
  if (r.top_p < 1.0f) {
    double cum = 0;
    for (int64_t j = 0; j < k; ++j) {
      cum += w[size_t(j)];
      if (cum >= double(r.top_p) * total) {
        keep = j + 1;
        break;
      }
    }
  }
  std::vector<bool> kept(size_t(n), false);
  for (int64_t j = 0; j < keep; ++j) {
    if (r.min_p <= 0.0f || w[size_t(j)] >= double(r.min_p) * (1 - 1e-6))
      kept[size_t(order[size_t(j)])] = true;
  }
  return kept;
}

void run_batch(const Batch& b, int64_t n_vocab, LogitsType type, int32_t n_top, bool check_kept_set,
               const std::string& what) {
  const int64_t n_rows = int64_t(b.rows.size());
  DeviceBuffer<SampleRowParams> d_rows(b.rows);
  DeviceBuffer<float> d_f32;
  DeviceBuffer<__nv_bfloat16> d_bf16;
  const void* logits;
  if (type == LogitsType::kF32) {
    d_f32 = DeviceBuffer<float>(b.logits);
    logits = d_f32.get();
  } else {
    d_bf16 = pp::test::upload_bf16(b.logits);
    logits = d_bf16.get();
  }
  DeviceBuffer<int32_t> d_tokens(static_cast<size_t>(n_rows)),
      d_top_ids(size_t(n_rows * std::max(n_top, 1)));
  DeviceBuffer<float> d_logprobs(static_cast<size_t>(n_rows)),
      d_top_lp(size_t(n_rows * std::max(n_top, 1)));
  d_tokens.fill_bytes(0xff);
  pp::kernels::cuda::SampleParams p;
  p.logits = logits;
  p.type = type;
  p.n_rows = n_rows;
  p.n_vocab = n_vocab;
  p.rows = d_rows.get();
  p.n_top_logprobs = n_top;
  p.tokens = d_tokens.get();
  p.logprobs = d_logprobs.get();
  p.top_ids = d_top_ids.get();
  p.top_logprobs = d_top_lp.get();
  PP_CUDA_OK(pp::kernels::cuda::sample(p, nullptr));
  PP_CUDA_OK(cudaDeviceSynchronize());
  const auto tokens = d_tokens.download();
  const auto logprobs = d_logprobs.download();
  const auto top_ids = d_top_ids.download();
  const auto top_lp = d_top_lp.download();

  std::vector<float> scratch;
  for (int64_t r = 0; r < n_rows; ++r) {
    const SampleRowParams& rp = b.rows[size_t(r)];
    const float* l = b.logits.data() + r * n_vocab;
    pp::kernels::cpu::SampleParams c;
    c.logits = l;
    c.n_vocab = n_vocab;
    c.temperature = rp.temperature;
    c.top_k = rp.top_k;
    c.top_p = rp.top_p;
    c.min_p = rp.min_p;
    c.seed = rp.seed;
    c.step = rp.step;
    c.n_top_logprobs = n_top;
    const auto ref = pp::kernels::cpu::sample(c, scratch);
    const std::string row = what + " row " + std::to_string(r) +
                            " T=" + std::to_string(rp.temperature) +
                            " k=" + std::to_string(rp.top_k) + " p=" + std::to_string(rp.top_p) +
                            " min_p=" + std::to_string(rp.min_p);
    ASSERT_EQ(tokens[size_t(r)], ref.token) << row;
    EXPECT_NEAR(logprobs[size_t(r)], ref.logprob, 1e-4 + 1e-5 * std::fabs(ref.logprob)) << row;
    for (int32_t j = 0; j < n_top; ++j) {
      EXPECT_EQ(top_ids[size_t(r * n_top + j)], ref.top[size_t(j)].token) << row << " top " << j;
      EXPECT_NEAR(top_lp[size_t(r * n_top + j)], ref.top[size_t(j)].logprob, 1e-4) << row;
    }
    const bool greedy = rp.temperature <= 0.0f || rp.top_k == 1;
    if (check_kept_set && !greedy) {
      const auto kept = kept_set(l, n_vocab, rp);
      EXPECT_TRUE(kept[size_t(tokens[size_t(r)])]) << row << ": picked a filtered token";
    }
  }
}

SampleRowParams random_row(bool allow_greedy) {
  auto& g = pp::test::rng();
  SampleRowParams r;
  const float temps[] = {0.6f, 1.0f, 1.3f};
  const int32_t ks[] = {0, 0, 5, 50, 1000};
  const float ps[] = {1.0f, 1.0f, 0.9f, 0.63f, 0.3f};
  const float min_ps[] = {0.0f, 0.0f, 0.05f};
  r.temperature = temps[g() % 3];
  r.top_k = ks[g() % 5];
  r.top_p = ps[g() % 5];
  r.min_p = min_ps[g() % 3];
  if (allow_greedy && g() % 6 == 0) r.temperature = 0.0f;
  r.seed = g();
  r.step = g() % 4096;
  return r;
}

Batch random_batch(int64_t n_rows, int64_t n_vocab, LogitsType type, float spread) {
  Batch b;
  std::normal_distribution<float> nd(0.0f, spread);
  b.logits.resize(size_t(n_rows * n_vocab));
  for (auto& x : b.logits) x = nd(pp::test::rng());
  if (type == LogitsType::kBf16) b.logits = pp::test::round_bf16(b.logits);
  for (int64_t r = 0; r < n_rows; ++r) b.rows.push_back(random_row(true));
  return b;
}

TEST(CudaSampling, GreedyMatchesCpuWithTies) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  for (LogitsType type : {LogitsType::kF32, LogitsType::kBf16}) {
    const int64_t n_vocab = 151936, n_rows = 16;
    Batch b = random_batch(n_rows, n_vocab, type, 3.0f);
    for (int64_t r = 0; r < n_rows; ++r) {
      b.rows[size_t(r)].temperature = r % 2 ? 0.0f : 1.0f;
      b.rows[size_t(r)].top_k = r % 2 ? 0 : 1;
      float* l = b.logits.data() + r * n_vocab;
      const float top = *std::max_element(l, l + n_vocab) + 1.0f;
      for (int64_t id : {int64_t(150000), int64_t(7 + r * 100), int64_t(90000)}) l[id] = top;
    }
    if (type == LogitsType::kBf16) b.logits = pp::test::round_bf16(b.logits);
    run_batch(b, n_vocab, type, 5, false, "greedy");
  }
}

TEST(CudaSampling, SeededMatchesCpu) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  for (LogitsType type : {LogitsType::kF32, LogitsType::kBf16}) {
    for (int64_t n_vocab : {int64_t(1000), int64_t(50257), int64_t(151936)}) {
      const int64_t n_rows = n_vocab > 100000 ? 64 : 96;
      for (float spread : {1.0f, 4.0f}) {
        const Batch b = random_batch(n_rows, n_vocab, type, spread);
        run_batch(b, n_vocab, type, n_vocab > 100000 ? 3 : 0, n_vocab <= 50257,
                  "vocab " + std::to_string(n_vocab) + " spread " + std::to_string(spread));
      }
    }
  }
}

TEST(CudaSampling, HeavyTiesMatchCpu) {
  ASSERT_TRUE(pp::test::have_gpu()) << "no CUDA device";
  const int64_t n_vocab = 1000, n_rows = 128;
  Batch b;
  std::uniform_int_distribution<int> level(-8, 8);
  b.logits.resize(size_t(n_rows * n_vocab));
  for (auto& x : b.logits) x = 0.5f * float(level(pp::test::rng()));
  for (int64_t r = 0; r < n_rows; ++r) {
    SampleRowParams rp = random_row(false);
    rp.top_p = 1.0f;  // exact top-p boundaries on a grid are rounding coin flips on either side
    rp.top_k = int32_t(1 + pp::test::rng()() % 40);
    b.rows.push_back(rp);
  }
  run_batch(b, n_vocab, LogitsType::kF32, 7, true, "ties");
}

}  // namespace
