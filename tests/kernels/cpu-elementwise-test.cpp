// Tests of the CPU per-row kernels (embedding, RMSNorm, RoPE, SwiGLU, KV write) against float64
// references written here, on fresh random inputs and odd sizes; RMSNorm also for bitwise
// batch invariance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <numeric>
#include <vector>

#include "pp/kernels/cpu.h"
#include "test-util.h"

namespace pp::kernels::cpu {
namespace {

void expect_close(const std::vector<float>& got, const std::vector<double>& ref, double atol,
                  double rtol) {
  std::vector<float> reff(ref.begin(), ref.end());
  const int64_t i = test::first_mismatch(got, reff, atol, rtol);
  EXPECT_EQ(i, -1) << "at " << i << ": got " << (i >= 0 ? got[size_t(i)] : 0.0f) << " want "
                   << (i >= 0 ? ref[size_t(i)] : 0.0);
}

TEST(CpuEmbedding, CopiesRows) {
  const int64_t n_vocab = 37, n_embd = 19, n_tokens = 11;
  const auto table = test::random_floats(size_t(n_vocab * n_embd));
  std::vector<int32_t> ids(n_tokens);
  std::uniform_int_distribution<int32_t> d(0, n_vocab - 1);
  for (auto& id : ids) id = d(test::rng());
  std::vector<float> out(static_cast<size_t>(n_tokens * n_embd));
  embedding({table.data(), ids.data(), out.data(), n_vocab, n_embd, n_tokens});
  for (int64_t t = 0; t < n_tokens; ++t) {
    EXPECT_EQ(0, std::memcmp(out.data() + t * n_embd, table.data() + ids[size_t(t)] * n_embd,
                             size_t(n_embd) * sizeof(float)));
  }
}

std::vector<double> rms_norm_ref(const std::vector<float>& x, const std::vector<float>& wt,
                                 int64_t rows, int64_t n, double eps) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(x[size_t(r * n + i)]) * x[size_t(r * n + i)];
    const double inv = 1.0 / std::sqrt(ss / double(n) + eps);
    for (int64_t i = 0; i < n; ++i)
      out[size_t(r * n + i)] = x[size_t(r * n + i)] * inv * wt[size_t(i)];
  }
  return out;
}

TEST(CpuRmsNorm, MatchesFloat64Reference) {
  for (int64_t n : {1, 7, 64, 576, 1001}) {
    for (int64_t rows : {1, 5, 33}) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " rows=" << rows);
      auto x = test::random_floats(size_t(rows * n), -3.0f, 3.0f);
      const auto wt = test::random_floats(size_t(n), 0.5f, 1.5f);
      const float eps = 1e-5f;
      std::vector<float> out(x.size());
      rms_norm({.x = x.data(),
                .weight = wt.data(),
                .out = out.data(),
                .n_rows = rows,
                .n = n,
                .eps = eps});
      expect_close(out, rms_norm_ref(x, wt, rows, n, eps), 1e-6, 2e-6);

      // Fused residual add: residual += x, out = rmsnorm(residual); out aliasing x is allowed.
      auto res = test::random_floats(size_t(rows * n), -3.0f, 3.0f);
      std::vector<float> sum(x.size());
      for (size_t i = 0; i < x.size(); ++i) sum[i] = res[i] + x[i];
      const auto ref = rms_norm_ref(sum, wt, rows, n, eps);
      rms_norm({.x = x.data(),
                .residual = res.data(),
                .weight = wt.data(),
                .out = x.data(),
                .n_rows = rows,
                .n = n,
                .eps = eps});
      EXPECT_EQ(0, std::memcmp(res.data(), sum.data(), sum.size() * sizeof(float)));
      expect_close(x, ref, 1e-6, 2e-6);
    }
  }
}

TEST(CpuRmsNorm, BatchInvariantBitwise) {
  const int64_t n = 576, rows = 37;
  const auto x = test::random_floats(size_t(rows * n), -2.0f, 2.0f);
  const auto wt = test::random_floats(size_t(n));
  std::vector<float> batched(x.size());
  set_num_threads(2);
  rms_norm({.x = x.data(), .weight = wt.data(), .out = batched.data(), .n_rows = rows, .n = n});
  set_num_threads(1);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> one(static_cast<size_t>(n));
    rms_norm({.x = x.data() + r * n, .weight = wt.data(), .out = one.data(), .n_rows = 1, .n = n});
    ASSERT_EQ(0, std::memcmp(one.data(), batched.data() + r * n, size_t(n) * sizeof(float)))
        << "row " << r;
  }
  set_num_threads(0);
}

// inv_freq in float64, following transformers' formulas.
std::vector<double> inv_freq_ref(const RopeFreqParams& p) {
  const int64_t half = p.rot_dim / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(double(p.theta), double(2 * i) / double(p.rot_dim));
    if (p.scaling == RopeScalingKind::kLinear) f /= p.factor;
    if (p.scaling == RopeScalingKind::kLlama3) {
      const double old_ctx = double(p.original_max_position);
      const double low_wl = old_ctx / p.low_freq_factor, high_wl = old_ctx / p.high_freq_factor;
      const double wl = 2 * std::numbers::pi / f;
      if (wl > low_wl) {
        f /= p.factor;
      } else if (wl >= high_wl) {
        const double smooth =
            (old_ctx / wl - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
        f = (1 - smooth) * f / p.factor + smooth * f;
      }
    }
    inv[size_t(i)] = f;
  }
  return inv;
}

TEST(CpuRope, InvFreqMatchesTransformersFormulas) {
  RopeFreqParams none{.rot_dim = 64, .theta = 10000.0f};
  RopeFreqParams linear{
      .rot_dim = 128, .theta = 10000.0f, .scaling = RopeScalingKind::kLinear, .factor = 4.0f};
  // Llama 3.1's published settings.
  RopeFreqParams llama3{.rot_dim = 128,
                        .theta = 500000.0f,
                        .scaling = RopeScalingKind::kLlama3,
                        .factor = 8.0f,
                        .low_freq_factor = 1.0f,
                        .high_freq_factor = 4.0f,
                        .original_max_position = 8192};
  for (const auto& p : {none, linear, llama3}) {
    const auto got = rope_inv_freq(p);
    ASSERT_EQ(got.size(), size_t(p.rot_dim / 2));
    expect_close(got, inv_freq_ref(p), 0.0, 2e-6);
  }
  // The three llama3 regimes all occur: kept (high freq), interpolated, divided by factor.
  const auto got = rope_inv_freq(llama3);
  const auto plain = rope_inv_freq({.rot_dim = 128, .theta = 500000.0f});
  int kept = 0, divided = 0, between = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double r = double(plain[i]) / got[i];
    if (std::fabs(r - 1) < 1e-6)
      ++kept;
    else if (std::fabs(r - 8) < 1e-5)
      ++divided;
    else if (r > 1 && r < 8)
      ++between;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(between, 0);
  EXPECT_EQ(kept + divided + between, int(got.size()));
}

TEST(CpuRope, RotatesNeoxPairs) {
  struct Case {
    int64_t n_tokens, n_head, head_dim, rot_dim;
  };
  for (const Case c :
       {Case{5, 3, 64, 64}, Case{1, 9, 64, 64}, Case{7, 2, 80, 32}, Case{3, 4, 6, 6}}) {
    SCOPED_TRACE(testing::Message() << "head_dim=" << c.head_dim << " rot_dim=" << c.rot_dim);
    const auto inv = rope_inv_freq({.rot_dim = c.rot_dim, .theta = 10000.0f});
    auto x = test::random_floats(size_t(c.n_tokens * c.n_head * c.head_dim));
    std::vector<int32_t> pos(static_cast<size_t>(c.n_tokens));
    std::uniform_int_distribution<int32_t> d(0, 5000);
    for (auto& v : pos) v = d(test::rng());
    const int64_t half = c.rot_dim / 2;
    std::vector<double> ref(x.begin(), x.end());
    for (int64_t t = 0; t < c.n_tokens; ++t) {
      for (int64_t h = 0; h < c.n_head; ++h) {
        const size_t base = size_t((t * c.n_head + h) * c.head_dim);
        for (int64_t i = 0; i < half; ++i) {
          // transformers forms the angle in f32; the rest in f64 here.
          const double angle = float(pos[size_t(t)]) * inv[size_t(i)];
          const double x1 = x[base + i], x2 = x[base + i + half];
          ref[base + i] = x1 * std::cos(angle) - x2 * std::sin(angle);
          ref[base + i + half] = x2 * std::cos(angle) + x1 * std::sin(angle);
        }
      }
    }
    const auto x0 = x;
    rope_neox({x.data(), pos.data(), inv.data(), c.n_tokens, c.n_head, c.head_dim, c.rot_dim});
    expect_close(x, ref, 2e-6, 1e-6);
    for (size_t i = 0; i < x.size(); ++i) {
      if (int64_t(i) % c.head_dim >= c.rot_dim) {
        ASSERT_EQ(x[i], x0[i]) << "unrotated dim " << i;
      }
    }
  }
}

TEST(CpuSwiglu, MatchesFloat64Reference) {
  for (int64_t n_ff : {1, 13, 1536}) {
    const int64_t n_tokens = 6;
    const auto gu = test::random_floats(size_t(n_tokens * 2 * n_ff), -6.0f, 6.0f);
    std::vector<float> out(static_cast<size_t>(n_tokens * n_ff));
    swiglu({gu.data(), out.data(), n_tokens, n_ff});
    std::vector<double> ref(out.size());
    for (int64_t t = 0; t < n_tokens; ++t) {
      for (int64_t i = 0; i < n_ff; ++i) {
        const double g = gu[size_t(t * 2 * n_ff + i)], u = gu[size_t(t * 2 * n_ff + n_ff + i)];
        ref[size_t(t * n_ff + i)] = g / (1 + std::exp(-g)) * u;
      }
    }
    expect_close(out, ref, 1e-6, 1e-6);
  }
}

TEST(CpuKvWrite, WritesSlotsAndSkipsPadding) {
  PagedKv kv{.n_blocks = 6, .block_size = 4, .n_head_kv = 3, .head_dim = 5};
  const int64_t row = kv.n_head_kv * kv.head_dim, n_slots = kv.n_blocks * kv.block_size;
  auto kpool = test::random_floats(size_t(n_slots * row));
  auto vpool = test::random_floats(size_t(n_slots * row));
  const auto k0 = kpool, v0 = vpool;
  kv.k = kpool.data();
  kv.v = vpool.data();
  std::vector<int64_t> perm(static_cast<size_t>(n_slots));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), test::rng());
  const int64_t n_tokens = 9;
  std::vector<int64_t> slots(perm.begin(), perm.begin() + n_tokens);
  slots[3] = -1;  // padding
  const auto k = test::random_floats(size_t(n_tokens * row));
  const auto v = test::random_floats(size_t(n_tokens * row));
  kv_write({kv, k.data(), v.data(), slots.data(), n_tokens});
  for (int64_t s = 0; s < n_slots; ++s) {
    const auto it = std::find(slots.begin(), slots.end(), s);
    const float* want_k =
        it == slots.end() ? &k0[size_t(s * row)] : &k[size_t((it - slots.begin()) * row)];
    const float* want_v =
        it == slots.end() ? &v0[size_t(s * row)] : &v[size_t((it - slots.begin()) * row)];
    EXPECT_EQ(0, std::memcmp(&kpool[size_t(s * row)], want_k, size_t(row) * sizeof(float))) << s;
    EXPECT_EQ(0, std::memcmp(&vpool[size_t(s * row)], want_v, size_t(row) * sizeof(float))) << s;
  }
}

}  // namespace
}  // namespace pp::kernels::cpu
