// Long prompts through the pipeline with the chunked pipeline on (a prompt's next chunk is planned
// as soon as its previous one has been issued, later chunks smaller) and off: real pp-stage
// processes must give exactly the single-process Generator's greedy tokens either way, for
// several stage counts, depths and chunk sizes; also when a long prompt is cancelled between its
// chunks, and when long prompts preempt each other under a small KV pool.
#include "test-engine-util.h"

namespace pp::test {
namespace {

using pipeline::Engine;
using pipeline::FinishReason;

// Long prompts (most of the context of tiny-llama, 512 tokens) and short ones, greedy.
std::vector<EngineRequest> long_requests(int64_t n_vocab, std::mt19937_64& g) {
  std::vector<EngineRequest> reqs;
  std::uniform_int_distribution<int32_t> id(3, int32_t(n_vocab) - 1);
  for (int len : {300, 7, 180, 420, 12, 95}) {
    EngineRequest r;
    for (int i = 0; i < len; ++i) r.prompt.push_back(id(g));
    r.params.temperature = 0.0f;
    r.params.ignore_eos = true;
    r.params.max_tokens = 6;
    reqs.push_back(std::move(r));
  }
  return reqs;
}

TEST(EngineChunkedPipeline, SameTokensWithAndWithoutForSeveralSplitsDepthsAndChunks) {
  ReferenceRequests r;
  ASSERT_NO_FATAL_FAILURE(make_reference_requests(long_requests, &r));
  struct Case {
    int32_t P, D, chunk;
  };
  for (const Case c : {Case{2, 0, 16}, Case{3, 1, 40}, Case{3, 2, 7}}) {
    for (const bool chunked : {true, false}) {
      SCOPED_TRACE(fmt::format("P={} D={} chunk={} chunked pipeline {}", c.P, c.D, c.chunk,
                               chunked ? "on" : "off"));
      auto o = engine_options(r.model, c.P, c.D);
      o.max_batch_tokens = c.chunk;
      o.chunked_pipeline = chunked;
      auto engine = Engine::start(o);
      ASSERT_TRUE(engine.ok()) << engine.status().message();
      ASSERT_NO_FATAL_FAILURE(expect_reference_tokens(run_requests(**engine, r.reqs), r));
      EXPECT_EQ((*engine)->stats().scheduler.kv_blocks_used, 0);
      EXPECT_TRUE((*engine)->shutdown().ok());
    }
  }
}

// A long prompt cancelled once some of its chunks have run, while short requests go on: it ends
// with one final event (abort), the others with the Generator's tokens, and nothing is held.
TEST(EngineChunkedPipeline, CancelBetweenChunks) {
  ReferenceRequests r;
  ASSERT_NO_FATAL_FAILURE(make_reference_requests(long_requests, &r));
  auto o = engine_options(r.model, 3, 1);
  o.max_batch_tokens = 8;
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  pipeline::EventQueue q;
  model::SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = 4;
  std::vector<int32_t> prompt(480, 17);
  auto victim = (*engine)->submit(prompt, p, q.sink());
  ASSERT_TRUE(victim.ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while ((*engine)->stats().scheduler.n_prefill_tokens < 64 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  (*engine)->cancel(*victim);
  ASSERT_NO_FATAL_FAILURE(expect_reference_tokens(run_requests(**engine, r.reqs), r));
  int n_finals = 0;
  while (auto ev = q.pop(std::chrono::milliseconds(n_finals == 0 ? 10000 : 200))) {
    if (ev->event.kind != pipeline::EventKind::kFinal) continue;
    ++n_finals;
    EXPECT_EQ(ev->event.finish_reason, FinishReason::kAbort);
    EXPECT_EQ(ev->event.n_output_tokens, 0) << "cancelled after its prompt was done";
  }
  EXPECT_EQ(n_finals, 1);
  const auto stats = (*engine)->stats();
  EXPECT_EQ(stats.scheduler.kv_blocks_used, 0);
  EXPECT_EQ(stats.scheduler.n_finished_abort, 1);
}

// Long prompts in a pool that holds little more than one of them: they preempt each other, also
// between chunks, and still give the Generator's tokens.
TEST(EngineChunkedPipeline, PreemptionOfLongPromptsKeepsEveryOutput) {
  ReferenceRequests r;
  ASSERT_NO_FATAL_FAILURE(make_reference_requests(long_requests, &r));
  auto o = engine_options(r.model, 2, 1);
  o.max_batch_tokens = 32;
  o.kv_blocks = 28;  // 448 tokens: the longest request (420 + 6) fits, two long ones do not
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  ASSERT_NO_FATAL_FAILURE(expect_reference_tokens(run_requests(**engine, r.reqs), r));
  const auto stats = (*engine)->stats();
  EXPECT_GT(stats.scheduler.n_preemptions, 0) << "the pool was meant to force preemption";
  EXPECT_EQ(stats.scheduler.kv_blocks_used, 0);
}

}  // namespace
}  // namespace pp::test
