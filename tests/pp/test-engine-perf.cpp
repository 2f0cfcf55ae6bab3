// A measurement, not a test (disabled; run with --gtest_also_run_disabled_tests
// --gtest_filter='*EnginePerf*'): the default model on the CPU through 2 stages at async depth
// 0, 1 and 2: generated tokens per second and each stage's idle fraction from its StageTimings.
// Speed is not asserted (STYLE.md); the numbers are printed. Knobs: PP_PERF_REQUESTS,
// PP_PERF_TOKENS, PP_PERF_THREADS (per stage), PP_PERF_STRATEGY (even, cost), PP_PERF_TRACE
// (a path prefix: writes PREFIX-dD.json).
#include "test-engine-util.h"

namespace pp::test {
namespace {

TEST(EnginePerf, DISABLED_DefaultModelTwoStagesByDepth) {
  const std::filesystem::path model = default_model_path();
  if (!std::filesystem::exists(model)) GTEST_SKIP() << "default model missing";
  const int n_requests =
      std::getenv("PP_PERF_REQUESTS") ? std::atoi(std::getenv("PP_PERF_REQUESTS")) : 32;
  const int n_new = std::getenv("PP_PERF_TOKENS") ? std::atoi(std::getenv("PP_PERF_TOKENS")) : 32;
  const int threads =
      std::getenv("PP_PERF_THREADS") ? std::atoi(std::getenv("PP_PERF_THREADS")) : 1;
  std::vector<EngineRequest> reqs(static_cast<size_t>(n_requests));
  std::uniform_int_distribution<int32_t> id(100, 20000);
  for (EngineRequest& r : reqs) {
    for (int i = 0; i < 32; ++i) r.prompt.push_back(id(rng()));
    r.params.temperature = 0.0f;
    r.params.ignore_eos = true;
    r.params.max_tokens = n_new;
  }
  for (int32_t D = 0; D <= 2; ++D) {
    auto o = engine_options(model, 2, D);
    o.threads_per_stage = threads;
    o.kv_blocks = 1024;
    o.keep_timings = true;
    if (const char* st = std::getenv("PP_PERF_STRATEGY")) {
      auto parsed = partition::parse_strategy(st);
      ASSERT_TRUE(parsed.ok()) << parsed.status().message();
      o.strategy = *parsed;
    }
    if (std::getenv("PP_PERF_TRACE"))
      o.trace_path = fmt::format("{}-d{}.json", std::getenv("PP_PERF_TRACE"), D);
    auto engine = pipeline::Engine::start(o);
    ASSERT_TRUE(engine.ok()) << engine.status().message();
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t t0_us = pipeline::trace_now_us();
    const auto out = run_requests(**engine, reqs);
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t t1_us = pipeline::trace_now_us();
    int64_t n_tokens = 0;
    for (const auto& x : out) n_tokens += int64_t(x.tokens.size());
    const auto timings = (*engine)->timings();
    const auto busy = pipeline::stage_busy(timings, 2, t0_us, t1_us);
    fmt::print("P=2 D={} ({} groups): {} requests x {} tokens, {:.2f} s, {:.1f} generated tok/s;",
               D, (*engine)->n_groups(), n_requests, n_new, wall, double(n_tokens) / wall);
    for (const auto& b : busy) {
      fmt::print(" stage {} idle {:.1f}% ({} micro-batches)", b.stage, 100.0 * b.idle_fraction(),
                 b.n_micro_batches);
    }
    fmt::print("\n");
    EXPECT_TRUE((*engine)->shutdown().ok());
  }
}

}  // namespace
}  // namespace pp::test
