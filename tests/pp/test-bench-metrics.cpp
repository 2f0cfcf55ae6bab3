// pp-bench's metric math on synthetic timings with known answers: numpy-style percentiles and
// standard deviation, TTFT and ITL from chunk arrival times (chunks carrying several tokens
// included), TPOT, throughputs and concurrency, and the printed table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "pp/bench/metrics.h"
#include "test-util.h"

namespace pp::bench {
namespace {

bool close(double a, double ref, double atol = 1e-9, double rtol = 1e-9) {
  return std::fabs(a - ref) <= atol + rtol * std::fabs(ref);
}

TEST(BenchMetrics, PercentileMatchesNumpy) {
  const std::vector<double> v = {4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(percentile(v, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile(v, 90), 3.7);   // np.percentile([1,2,3,4], 90)
  EXPECT_DOUBLE_EQ(percentile(v, 99), 3.97);  // np.percentile([1,2,3,4], 99)
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 4);
  EXPECT_TRUE(std::isnan(percentile(std::vector<double>{}, 50)));
  EXPECT_DOUBLE_EQ(percentile(std::vector<double>{7.5}, 99), 7.5);

  // A shuffled arithmetic sequence a + b*i: the q-th percentile is a + b*(q/100)*(n-1) exactly.
  auto& g = test::rng();
  for (int trial = 0; trial < 20; ++trial) {
    const int n = std::uniform_int_distribution<int>(2, 300)(g);
    const double a = std::uniform_real_distribution<double>(-50, 50)(g);
    const double b = std::uniform_real_distribution<double>(0.01, 10)(g);
    std::vector<double> x(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) x[size_t(i)] = a + b * i;
    std::shuffle(x.begin(), x.end(), g);
    const double q = std::uniform_real_distribution<double>(0, 100)(g);
    EXPECT_TRUE(close(percentile(x, q), a + b * (q / 100.0) * (n - 1), 1e-9, 1e-9))
        << "n " << n << " q " << q << " seed " << test::rng_seed();
  }
}

TEST(BenchMetrics, SummaryIsPopulationStd) {
  Summary s = summarize(std::vector<double>{2, 4, 4, 4, 5, 5, 7, 9});
  EXPECT_EQ(s.n, 8u);
  EXPECT_DOUBLE_EQ(s.mean, 5);
  EXPECT_DOUBLE_EQ(s.std, 2);  // ddof 0, as numpy
  EXPECT_DOUBLE_EQ(s.median, 4.5);
  EXPECT_DOUBLE_EQ(s.max, 9);
  Summary e = summarize(std::vector<double>{});
  EXPECT_EQ(e.n, 0u);
  EXPECT_TRUE(std::isnan(e.mean));
  EXPECT_TRUE(std::isnan(e.p99));
}

TEST(BenchMetrics, ChunkTimerSplitsMultiTokenChunks) {
  ChunkTimer t(10.0);
  EXPECT_FALSE(t.has_first());
  t.on_content(10.1, 2);   // first chunk, 2 tokens: TTFT only
  t.on_content(10.3, 4);   // 4 tokens in 0.2 s: four gaps of 0.05
  t.on_content(10.4, -1);  // unknown count: one gap of 0.1
  t.on_content(10.45, 0);  // no new token: ignored entirely
  t.on_content(10.6, 1);   // 0.2 since the last counted chunk
  ASSERT_TRUE(t.has_first());
  EXPECT_NEAR(t.ttft_s(), 0.1, 1e-12);
  const std::vector<double> want = {0.05, 0.05, 0.05, 0.05, 0.1, 0.2};
  ASSERT_EQ(t.itl_s().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(t.itl_s()[i], want[i], 1e-12) << i;
}

TEST(BenchMetrics, RandomStreamsGiveTheTruePerTokenDelay) {
  // Streams whose chunks carry 1..5 tokens, each token costing `d` after the first chunk.
  auto& g = test::rng();
  for (int trial = 0; trial < 10; ++trial) {
    const double start = std::uniform_real_distribution<double>(0, 100)(g);
    const double ttft = std::uniform_real_distribution<double>(0.01, 2)(g);
    const double d = std::uniform_real_distribution<double>(0.001, 0.1)(g);
    const int n = std::uniform_int_distribution<int>(2, 200)(g);
    ChunkTimer t(start);
    int sent = 0;
    double now = start + ttft;
    int first = 0;
    while (sent < n) {
      const int k = std::min(std::uniform_int_distribution<int>(1, 5)(g), n - sent);
      if (sent == 0) {
        first = k;
      } else {
        now += k * d;
      }
      t.on_content(now, k);
      sent += k;
    }
    EXPECT_NEAR(t.ttft_s(), ttft, 1e-9);
    ASSERT_EQ(int(t.itl_s().size()), n - first);
    for (double x : t.itl_s()) EXPECT_NEAR(x, d, 1e-9);

    RequestResult r;
    r.success = true;
    r.prompt_len = 7;
    r.output_len = n;
    r.ttft_s = t.ttft_s();
    r.latency_s = now - start;
    r.itl_s = t.itl_s();
    BenchMetrics m = compute_metrics(std::vector<RequestResult>{r}, r.latency_s);
    // TPOT = (latency - ttft) / (n - 1), SGLang's definition.
    EXPECT_NEAR(m.tpot_ms.mean, (n - first) * d / (n - 1) * 1e3, 1e-6);
    if (n > first) {
      EXPECT_NEAR(m.itl_ms.median, d * 1e3, 1e-6);
    }
    EXPECT_NEAR(m.concurrency, 1.0, 1e-12);
  }
}

TEST(BenchMetrics, RunMetricsKnownAnswers) {
  std::vector<RequestResult> rs(3);
  rs[0].success = true;
  rs[0].prompt_len = 10;
  rs[0].output_len = 5;
  rs[0].ttft_s = 0.1;
  rs[0].latency_s = 0.5;
  rs[0].itl_s = {0.1, 0.1, 0.1, 0.1};
  rs[0].output_len_retokenized = 6;
  rs[1].success = true;
  rs[1].prompt_len = 20;
  rs[1].output_len = 1;  // no TPOT
  rs[1].ttft_s = 0.2;
  rs[1].latency_s = 0.2;
  rs[1].output_len_retokenized = 1;
  rs[2].success = false;  // counted only as failed
  rs[2].prompt_len = 30;
  rs[2].output_len = 9;
  rs[2].latency_s = 9;
  BenchMetrics m = compute_metrics(rs, 2.0);
  EXPECT_EQ(m.completed, 2);
  EXPECT_EQ(m.failed, 1);
  EXPECT_EQ(m.total_input, 30);
  EXPECT_EQ(m.total_output, 6);
  EXPECT_EQ(m.total_output_retokenized, 7);
  EXPECT_DOUBLE_EQ(m.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(m.input_throughput, 15.0);
  EXPECT_DOUBLE_EQ(m.output_throughput, 3.0);
  EXPECT_DOUBLE_EQ(m.total_throughput, 18.0);
  EXPECT_NEAR(m.concurrency, 0.35, 1e-12);
  EXPECT_NEAR(m.ttft_ms.mean, 150, 1e-9);
  EXPECT_NEAR(m.ttft_ms.std, 50, 1e-9);
  EXPECT_EQ(m.tpot_ms.n, 1u);
  EXPECT_NEAR(m.tpot_ms.mean, 100, 1e-9);
  EXPECT_NEAR(m.itl_ms.mean, 100, 1e-9);
  EXPECT_EQ(m.itl_ms.n, 4u);
  EXPECT_NEAR(m.e2e_ms.median, 350, 1e-9);
  EXPECT_NEAR(m.e2e_ms.p99, 200 + 300 * 0.99, 1e-9);

  auto map = metric_map(m);
  EXPECT_EQ(map.at("output_throughput").unit, "tok/s");
  EXPECT_DOUBLE_EQ(map.at("output_throughput").value, 3.0);
  EXPECT_NEAR(map.at("median_ttft_ms").value, 150, 1e-9);
  EXPECT_EQ(map.at("p90_itl_ms").unit, "ms");
  EXPECT_DOUBLE_EQ(map.at("failed").value, 1);

  const std::string table = format_result_table(m, {{"Backend", "openai"}});
  EXPECT_NE(table.find("============ Serving Benchmark Result ============"), std::string::npos)
      << table;
  EXPECT_NE(table.find("Backend:                                 openai"), std::string::npos);
  EXPECT_NE(table.find("Mean TTFT (ms):                          150.00"), std::string::npos)
      << table;
  EXPECT_NE(table.find("Output token throughput (tok/s):         3.00"), std::string::npos);
  EXPECT_NE(table.find("Failed requests:                         1"), std::string::npos);
  EXPECT_NE(table.find("Total generated tokens (retokenized):    7"), std::string::npos);
}

TEST(BenchMetrics, NoSuccessGivesNaNLatencies) {
  std::vector<RequestResult> rs(2);
  rs[0].error = "HTTP 500";
  rs[1].error = "refused";
  BenchMetrics m = compute_metrics(rs, 1.0);
  EXPECT_EQ(m.completed, 0);
  EXPECT_EQ(m.failed, 2);
  EXPECT_TRUE(std::isnan(m.ttft_ms.mean));
  EXPECT_EQ(m.total_output_retokenized, -1);
  const std::string table = format_result_table(m, {});
  EXPECT_NE(table.find("Mean TTFT (ms):                          n/a"), std::string::npos) << table;
}

}  // namespace
}  // namespace pp::bench
