// Tests of CPU sampling, the Philox generator and the penalties: greedy ties, seed
// reproducibility, frequencies against softmax probabilities (chi-square), filters never
// letting a filtered token through, logprobs against float64 log_softmax, penalties against a
// float64 reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "pp/kernels/cpu.h"
#include "test-util.h"

namespace pp::kernels::cpu {
namespace {

std::vector<double> log_softmax(const std::vector<float>& l, double temperature = 1.0) {
  double mx = -INFINITY;
  for (float x : l) mx = std::max(mx, double(x) / temperature);
  double sum = 0;
  for (float x : l) sum += std::exp(double(x) / temperature - mx);
  std::vector<double> out;
  for (float x : l) out.push_back(double(x) / temperature - mx - std::log(sum));
  return out;
}

TEST(CpuPhilox, KnownAnswerVectors) {
  // From Random123's kat_vectors (philox4x32, 10 rounds).
  using W4 = std::array<uint32_t, 4>;
  EXPECT_EQ(philox4x32_10({0, 0, 0, 0}, {0, 0}),
            (W4{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32_10({~0u, ~0u, ~0u, ~0u}, {~0u, ~0u}),
            (W4{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(
      philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
      (W4{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(CpuPhilox, UniformIsInRangeAndUniform) {
  const uint64_t seed = test::rng()();
  const int n = 100000, bins = 10;
  std::vector<int> hist(bins);
  for (int i = 0; i < n; ++i) {
    const float u = philox_uniform(seed, uint64_t(i));
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ++hist[size_t(u * bins)];
  }
  double chi2 = 0;
  for (int h : hist) chi2 += (h - n / bins) * double(h - n / bins) / (n / bins);
  EXPECT_LT(chi2, 40.0);  // df 9: p < 1e-5
  EXPECT_EQ(philox_uniform(seed, 7), philox_uniform(seed, 7));
  EXPECT_NE(philox_uniform(seed, 7), philox_uniform(seed + 1, 7));
}

TEST(CpuSample, GreedyPicksArgmaxLowestIdOnTies) {
  std::vector<float> scratch;
  auto l = test::random_floats(1000, -5.0f, 5.0f);
  l[417] = 9.0f;
  l[733] = 9.0f;
  for (const SampleParams base : {SampleParams{.temperature = 0.0f}, SampleParams{.top_k = 1}}) {
    SampleParams p = base;
    p.logits = l.data();
    p.n_vocab = int64_t(l.size());
    p.seed = test::rng()();
    EXPECT_EQ(sample(p, scratch).token, 417);
  }
}

TEST(CpuSample, LogprobsMatchFloat64LogSoftmax) {
  std::vector<float> scratch;
  for (int64_t n_vocab : {3, 1000, 151936}) {
    const auto l = test::random_floats(size_t(n_vocab), -10.0f, 10.0f);
    const auto ref = log_softmax(l);
    SampleParams p{.logits = l.data(),
                   .n_vocab = n_vocab,
                   .temperature = 0.8f,
                   .top_p = 0.9f,
                   .seed = test::rng()(),
                   .n_top_logprobs = 5};
    const auto r = sample(p, scratch);
    EXPECT_NEAR(r.logprob, ref[size_t(r.token)], 1e-5);
    std::vector<int32_t> order(static_cast<size_t>(n_vocab));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
    ASSERT_EQ(r.top.size(), size_t(std::min<int64_t>(5, n_vocab)));
    for (size_t i = 0; i < r.top.size(); ++i) {
      EXPECT_EQ(r.top[i].token, order[i]);
      EXPECT_NEAR(r.top[i].logprob, ref[size_t(order[i])], 1e-5);
    }
  }
}

TEST(CpuSample, SeedReproducesAndSeedsDiffer) {
  std::vector<float> scratch;
  const auto l = test::random_floats(64, -1.0f, 1.0f);
  SampleParams p{.logits = l.data(), .n_vocab = 64, .temperature = 1.0f};
  std::set<int32_t> seen;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    p.seed = seed * 0x9E3779B97F4A7C15ull + test::rng_seed();
    p.step = 3;
    const int32_t a = sample(p, scratch).token;
    std::vector<float> other(scratch.size(), 123.0f);  // scratch content must not matter
    EXPECT_EQ(a, sample(p, other).token);
    seen.insert(a);
  }
  EXPECT_GT(seen.size(), 20u);  // 200 draws over 64 near-uniform tokens
}

// Draws n tokens with steps 0..n-1 and checks frequencies against `probs` (chi-square, with
// cells of small expectation pooled). Tokens with probability 0 must never appear.
void check_frequencies(SampleParams p, const std::vector<double>& probs, int n) {
  std::vector<float> scratch;
  std::vector<int> count(probs.size());
  for (int i = 0; i < n; ++i) {
    p.step = uint64_t(i);
    const int32_t t = sample(p, scratch).token;
    ASSERT_GT(probs[size_t(t)], 0.0) << "filtered token " << t << " drawn";
    ++count[size_t(t)];
  }
  double chi2 = 0, pooled_e = 0, pooled_o = 0;
  int df = -1;
  for (size_t i = 0; i < probs.size(); ++i) {
    const double e = probs[i] * n;
    if (e == 0) continue;
    if (e < 5) {
      pooled_e += e;
      pooled_o += count[i];
      continue;
    }
    chi2 += (count[i] - e) * (count[i] - e) / e;
    ++df;
  }
  if (pooled_e > 0) {
    chi2 += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
    ++df;
  }
  // Generous: mean df, sd sqrt(2 df); 6 sd plus slack.
  EXPECT_LT(chi2, df + 6 * std::sqrt(2.0 * df) + 10) << "df " << df;
}

TEST(CpuSample, TemperatureFrequenciesMatchSoftmax) {
  const auto l = test::random_floats(12, -2.0f, 2.0f);
  const float temperature = 0.7f;
  const auto lp = log_softmax(l, temperature);
  std::vector<double> probs;
  for (double x : lp) probs.push_back(std::exp(x));
  check_frequencies(
      {.logits = l.data(), .n_vocab = 12, .temperature = temperature, .seed = test::rng()()}, probs,
      20000);
}

// Probabilities after top-k / top-p / min-p, computed in float64 from the definitions.
std::vector<double> filtered_probs(const std::vector<float>& l, float temperature, int top_k,
                                   double top_p, double min_p) {
  const auto lp = log_softmax(l, temperature);
  std::vector<int32_t> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  size_t keep = top_k > 0 ? std::min(l.size(), size_t(top_k)) : l.size();
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += std::exp(lp[size_t(order[i])]);
  double cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += std::exp(lp[size_t(order[i])]) / total;
    if (cum >= top_p) {
      keep = i + 1;
      break;
    }
  }
  std::vector<double> probs(l.size(), 0.0);
  const double pmax = std::exp(lp[size_t(order[0])]);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    const double pr = std::exp(lp[size_t(order[i])]);
    if (pr >= min_p * pmax) sum += (probs[size_t(order[i])] = pr);
  }
  for (double& pr : probs) pr /= sum;
  return probs;
}

TEST(CpuSample, FiltersNeverPassFilteredTokensAndRenormalise) {
  struct Case {
    int top_k;
    float top_p, min_p;
  };
  for (const Case c : {Case{5, 1.0f, 0.0f}, Case{0, 0.6f, 0.0f}, Case{0, 1.0f, 0.3f},
                       Case{8, 0.8f, 0.1f}, Case{0, 0.0f, 0.0f}}) {
    SCOPED_TRACE(testing::Message()
                 << "top_k=" << c.top_k << " top_p=" << c.top_p << " min_p=" << c.min_p);
    const auto l = test::random_floats(40, -3.0f, 3.0f);
    const float temperature = 0.9f;
    const auto probs = filtered_probs(l, temperature, c.top_k, c.top_p, c.min_p);
    check_frequencies({.logits = l.data(),
                       .n_vocab = 40,
                       .temperature = temperature,
                       .top_k = c.top_k,
                       .top_p = c.top_p,
                       .min_p = c.min_p,
                       .seed = test::rng()()},
                      probs, 8000);
  }
}

TEST(CpuSample, LargeVocabNucleusStaysInNucleus) {
  std::vector<float> scratch;
  const int64_t n_vocab = 151936;
  auto l = test::random_floats(size_t(n_vocab), -4.0f, 4.0f);
  for (int i = 0; i < 20; ++i) l[size_t(test::rng()() % n_vocab)] += 12.0f;  // a peaked head
  const auto probs = filtered_probs(l, 1.0f, 0, 0.9, 0.0);
  for (int i = 0; i < 200; ++i) {
    const auto r = sample({.logits = l.data(),
                           .n_vocab = n_vocab,
                           .top_p = 0.9f,
                           .seed = test::rng_seed(),
                           .step = uint64_t(i)},
                          scratch);
    ASSERT_GT(probs[size_t(r.token)], 0.0) << r.token;
  }
}

// sample_with_penalties: the same draw as apply_penalties on a copy then sample, the caller's
// row untouched; with no penalty set, the plain sample of the row.
TEST(CpuSample, WithPenaltiesEqualsPenalizeThenSample) {
  const int64_t V = 500;
  std::vector<float> scratch, penalized;
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> row = test::random_floats(size_t(V), -4.0f, 4.0f);
    std::vector<int32_t> prompt(7), output(11);
    for (auto& t : prompt) t = int32_t(test::rng()() % uint64_t(V));
    for (auto& t : output) t = int32_t(test::rng()() % uint64_t(V));
    PenaltyParams pen{.prompt_ids = prompt.data(),
                      .n_prompt = int64_t(prompt.size()),
                      .output_ids = output.data(),
                      .n_output = int64_t(output.size()),
                      .repetition = trial % 2 ? 1.3f : 1.0f,
                      .presence = trial % 3 ? 0.5f : 0.0f,
                      .frequency = trial % 5 ? 0.25f : 0.0f};
    SampleParams sp{.logits = row.data(),
                    .n_vocab = V,
                    .temperature = 0.8f,
                    .top_k = 40,
                    .seed = test::rng()(),
                    .step = uint64_t(trial),
                    .n_top_logprobs = 3};
    const std::vector<float> before = row;
    SampleResult got = sample_with_penalties(pen, sp, penalized, scratch);
    EXPECT_EQ(row, before) << "the caller's row was modified";
    std::vector<float> copy = row;
    PenaltyParams ref_pen = pen;
    ref_pen.logits = copy.data();
    ref_pen.n_vocab = V;
    apply_penalties(ref_pen);
    SampleParams ref_sp = sp;
    ref_sp.logits = copy.data();
    std::vector<float> ref_scratch;
    SampleResult want = sample(ref_sp, ref_scratch);
    EXPECT_EQ(got.token, want.token) << "trial " << trial;
    EXPECT_EQ(got.logprob, want.logprob) << "trial " << trial;
    ASSERT_EQ(got.top.size(), want.top.size());
    for (size_t i = 0; i < got.top.size(); ++i) EXPECT_EQ(got.top[i].token, want.top[i].token);
  }
}

TEST(CpuPenalties, MatchFloat64Reference) {
  const int64_t n_vocab = 50;
  auto l = test::random_floats(size_t(n_vocab), -3.0f, 3.0f);
  std::uniform_int_distribution<int32_t> d(0, 19);  // ids collide often
  std::vector<int32_t> prompt(30), output(25);
  for (auto& x : prompt) x = d(test::rng());
  for (auto& x : output) x = d(test::rng()) + 10;
  const float rep = 1.3f, presence = 0.4f, frequency = 0.25f;
  std::vector<double> ref(l.begin(), l.end());
  std::set<int32_t> seen(prompt.begin(), prompt.end());
  seen.insert(output.begin(), output.end());
  for (int32_t id : seen)
    ref[size_t(id)] = ref[size_t(id)] > 0 ? ref[size_t(id)] / rep : ref[size_t(id)] * rep;
  std::map<int32_t, int> counts;
  for (int32_t id : output) ++counts[id];
  for (auto [id, c] : counts) ref[size_t(id)] -= frequency * c + presence;
  apply_penalties({.logits = l.data(),
                   .n_vocab = n_vocab,
                   .prompt_ids = prompt.data(),
                   .n_prompt = int64_t(prompt.size()),
                   .output_ids = output.data(),
                   .n_output = int64_t(output.size()),
                   .repetition = rep,
                   .presence = presence,
                   .frequency = frequency});
  std::vector<float> reff(ref.begin(), ref.end());
  EXPECT_EQ(test::first_mismatch(l, reff, 1e-6, 1e-6), -1);
  // A second call starts from clean internal state: penalties apply again, exactly once each.
  auto l2 = test::random_floats(size_t(n_vocab), -3.0f, 3.0f);
  const auto before = l2;
  apply_penalties({.logits = l2.data(),
                   .n_vocab = n_vocab,
                   .output_ids = output.data(),
                   .n_output = 1,
                   .presence = presence});
  for (int64_t i = 0; i < n_vocab; ++i) {
    const float want = i == output[0] ? before[size_t(i)] - presence : before[size_t(i)];
    EXPECT_EQ(l2[size_t(i)], want) << i;
  }
}

// Bias adds to its ids only; a mask sends every token outside it to -inf and nothing else moves.
TEST(CpuLogitConstraints, BiasAddsAndMaskBans) {
  const int64_t V = 200 + test::random_int(0, 100);
  const auto l = test::random_floats(size_t(V), -5.0f, 5.0f);
  std::vector<int32_t> ids = {int32_t(test::random_int(0, V / 2 - 1)),
                              int32_t(test::random_int(V / 2, V - 1))};
  const std::vector<float> values = test::random_floats(2, -100.0f, 100.0f);
  std::vector<uint32_t> mask(size_t((V + 31) / 32));
  for (auto& w : mask) w = uint32_t(test::rng()());
  std::vector<float> got = l;
  apply_logit_constraints(
      got.data(), V,
      {.bias_ids = ids.data(), .bias_values = values.data(), .n_bias = 2, .allowed = mask.data()});
  for (int64_t t = 0; t < V; ++t) {
    const bool allowed = (mask[size_t(t / 32)] >> (t % 32)) & 1u;
    float want = l[size_t(t)];
    for (int k = 0; k < 2; ++k) {
      if (ids[size_t(k)] == t) want += values[size_t(k)];
    }
    if (!allowed) {
      EXPECT_TRUE(std::isinf(got[size_t(t)]) && got[size_t(t)] < 0) << t;
    } else {
      EXPECT_EQ(got[size_t(t)], want) << t;
    }
  }
}

// Sampling under a mask (greedy and random, with top-k/top-p, with penalties) only ever draws
// allowed tokens, and the row itself is left untouched.
TEST(CpuLogitConstraints, SamplingDrawsOnlyAllowedTokens) {
  const int64_t V = 500;
  const auto l = test::random_floats(size_t(V), -4.0f, 4.0f);
  std::vector<float> penalized, scratch;
  const std::vector<int32_t> out_ids = {1, 2, 3, 3, 7};
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<uint32_t> mask(size_t((V + 31) / 32), 0u);
    const int n_allowed = int(test::random_int(1, 6));
    std::set<int32_t> allowed;
    for (int k = 0; k < n_allowed; ++k) {
      const int32_t t = int32_t(test::random_int(0, V - 1));
      allowed.insert(t);
      mask[size_t(t / 32)] |= 1u << (t % 32);
    }
    const std::vector<float> before = l;
    SampleResult r = sample_constrained(
        {.output_ids = out_ids.data(), .n_output = int64_t(out_ids.size()), .presence = 0.5f},
        {.allowed = mask.data()},
        {.logits = l.data(),
         .n_vocab = V,
         .temperature = trial % 3 == 0 ? 0.0f : 1.5f,
         .top_k = trial % 2 ? 50 : 0,
         .top_p = trial % 5 ? 0.9f : 1.0f,
         .seed = test::rng()(),
         .step = uint64_t(trial),
         .n_top_logprobs = 3},
        penalized, scratch);
    EXPECT_TRUE(allowed.count(r.token)) << "trial " << trial << " drew " << r.token;
    EXPECT_TRUE(std::isfinite(r.logprob));
    EXPECT_EQ(l, before);
  }
}

}  // namespace
}  // namespace pp::kernels::cpu
