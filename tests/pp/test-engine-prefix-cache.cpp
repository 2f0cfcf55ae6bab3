// Prefix caching through real pp-stage processes: requests that share long prefixes (a few
// "system prompts" with different questions, and a conversation whose turns re-send the history)
// must give exactly the single-process Generator's greedy tokens (which never caches) for
// P = 1 and 2 and several depths, with the cache on and off, also in a KV pool so small that
// requests sharing a prefix preempt each other; and for P = 4 (a 4-layer model with random
// weights: the fixtures have fewer layers) the same tokens with the cache on as off. With the cache
// on they must have hit it. After each run no block is referenced (the pool holds only cached,
// unreferenced blocks), a flush while requests run is refused, and a flush afterwards empties it.
//
// Few engines and short outputs: each start costs P stage processes on a 2-core CI machine.
#include <fstream>

#include "test-engine-util.h"

namespace pp::test {
namespace {

namespace fs = std::filesystem;
using pipeline::Engine;

// Three shared prefixes of 40..70 tokens (several 16-token blocks), each followed by a question
// of 1..20 tokens; then the turns of a conversation, each the previous prompt plus more tokens.
std::vector<EngineRequest> shared_prefix_requests(int64_t n_vocab, std::mt19937_64& g) {
  std::uniform_int_distribution<int32_t> id(3, int32_t(n_vocab) - 1);
  auto draw = [&](int n, std::vector<int32_t>* out) {
    for (int i = 0; i < n; ++i) out->push_back(id(g));
  };
  std::vector<std::vector<int32_t>> systems(3);
  for (auto& s : systems) draw(std::uniform_int_distribution<int>(40, 70)(g), &s);
  std::vector<EngineRequest> reqs;
  auto add = [&](std::vector<int32_t> prompt) {
    EngineRequest r;
    r.prompt = std::move(prompt);
    r.params.temperature = 0.0f;
    r.params.ignore_eos = true;
    r.params.max_tokens = std::uniform_int_distribution<int>(2, 5)(g);
    // All at once: they queue, and those admitted after the first chunks of a prefix were
    // issued share it (the small pool also needs the crowd to preempt).
    r.delay_ms = 0;
    reqs.push_back(std::move(r));
  };
  for (int i = 0; i < 9; ++i) {
    std::vector<int32_t> p = systems[size_t(i) % systems.size()];
    draw(std::uniform_int_distribution<int>(1, 20)(g), &p);
    add(std::move(p));
  }
  add(systems[0]);  // a whole cached prompt: its last token is still computed
  std::vector<int32_t> history;
  for (int turn = 0; turn < 3; ++turn) {
    draw(std::uniform_int_distribution<int>(10, 30)(g), &history);
    add(history);
  }
  return reqs;
}

TEST(EnginePrefixCache, SameTokensWithAndWithoutTheCacheForEverySplitAndDepth) {
  ReferenceRequests r;
  ASSERT_NO_FATAL_FAILURE(make_reference_requests(shared_prefix_requests, &r));
  struct Case {
    int32_t P, D;
    bool cache;
    int64_t kv_blocks;  // 0: what the stages hold; small: sharers preempt each other
    int32_t chunk;
  };
  // 8 blocks hold one request whole (at most 70 + 20 + 5 or 90 + 5 tokens) but not many: the
  // requests sharing a prefix are preempted and recomputed, and may hit the cache when they are.
  for (const Case c :
       {Case{1, 0, true, 0, 64}, Case{2, 1, true, 8, 16}, Case{2, 1, false, 8, 16}}) {
    SCOPED_TRACE(fmt::format("P={} D={} cache {} kv_blocks={} chunk={}", c.P, c.D,
                             c.cache ? "on" : "off", c.kv_blocks, c.chunk));
    auto o = engine_options(r.model, c.P, c.D);
    o.prefix_cache = c.cache;
    o.kv_blocks = c.kv_blocks;
    o.max_batch_tokens = c.chunk;
    auto engine = Engine::start(o);
    ASSERT_TRUE(engine.ok()) << engine.status().message();
    ASSERT_NO_FATAL_FAILURE(expect_reference_tokens(run_requests(**engine, r.reqs), r));
    const pipeline::SchedulerStats s = (*engine)->stats().scheduler;
    const pipeline::KvCacheStats& kv = s.kv_cache;
    if (c.cache) {
      EXPECT_GT(kv.n_hit_tokens, 0) << "shared prefixes never hit the cache";
    } else {
      EXPECT_EQ(kv.n_queries, 0);
      EXPECT_EQ(kv.n_cached_blocks, 0);
    }
    if (c.kv_blocks > 0) EXPECT_GT(s.n_preemptions, 0) << "the pool was meant to force preemption";
    // No leak: nothing referenced, every cached block unreferenced.
    EXPECT_EQ(s.kv_blocks_used, 0);
    EXPECT_EQ(kv.n_pooled_blocks, kv.n_cached_blocks);
    EXPECT_TRUE((*engine)->flush_cache().ok());
    EXPECT_EQ((*engine)->stats().scheduler.kv_cache.n_cached_blocks, 0);
    EXPECT_TRUE((*engine)->shutdown().ok());
    EXPECT_EQ((*engine)->flush_cache().code(), StatusCode::kUnavailable);
  }
}

TEST(EnginePrefixCache, FourStagesGiveTheSameTokensWithTheCacheAsWithout) {
  TempDir tmp;
  fs::create_directories(tmp.path() / "m");
  {
    std::ofstream f(tmp.path() / "m" / "config.json");
    f << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
             "intermediate_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 320, "max_position_embeddings": 256,
             "rms_norm_eps": 1e-5, "rope_theta": 10000, "tie_word_embeddings": false})";
  }
  const auto reqs = shared_prefix_requests(320, rng());
  std::vector<std::vector<int32_t>> without;
  for (const bool cache : {false, true}) {
    SCOPED_TRACE(cache ? "cache on" : "cache off");
    auto o = engine_options(tmp.path() / "m" / "config.json", 4, 2);
    o.random_weights = rng_seed();
    o.prefix_cache = cache;
    o.max_batch_tokens = 24;
    auto engine = Engine::start(o);
    ASSERT_TRUE(engine.ok()) << engine.status().message();
    const auto out = run_requests(**engine, reqs);
    for (size_t i = 0; i < reqs.size(); ++i) {
      ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
      ASSERT_EQ(out[i].error, "") << "request " << i;
      ASSERT_EQ(int64_t(out[i].tokens.size()), reqs[i].params.max_tokens) << "request " << i;
      if (cache) {
        EXPECT_EQ(out[i].tokens, without[i]) << "request " << i;
      } else {
        without.push_back(out[i].tokens);
      }
    }
    const pipeline::SchedulerStats s = (*engine)->stats().scheduler;
    EXPECT_EQ(s.kv_blocks_used, 0);
    if (cache) EXPECT_GT(s.kv_cache.n_hit_tokens, 0);
    EXPECT_TRUE((*engine)->shutdown().ok());
  }
}

// The n_cached_tokens of the next final event on `q`; -1 when none comes within 60 s.
int64_t final_cached_tokens(pipeline::EventQueue& q) {
  while (auto ev = q.pop(std::chrono::milliseconds(60000))) {
    if (ev->event.kind == pipeline::EventKind::kFinal) return ev->event.n_cached_tokens;
  }
  return -1;
}

// A flush while a request runs changes nothing and says so; once it has finished, the flush
// empties the cache, and the same prompt then misses.
TEST(EnginePrefixCache, FlushIsRefusedWhileRequestsRun) {
  const fs::path model = fixture_dir() / "models" / "tiny-llama";
  auto o = engine_options(model, 1, 0);
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  std::vector<int32_t> prompt;
  std::uniform_int_distribution<int32_t> id(3, 200);
  for (int i = 0; i < 50; ++i) prompt.push_back(id(rng()));
  model::SamplingParams p;
  p.temperature = 0.0f;
  p.ignore_eos = true;
  p.max_tokens = 200;
  pipeline::EventQueue q;
  ASSERT_TRUE((*engine)->submit(prompt, p, q.sink()).ok());
  EXPECT_EQ((*engine)->flush_cache().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(final_cached_tokens(q), 0);
  // The same prompt again: its 3 full blocks (48 tokens) come from the cache.
  p.max_tokens = 2;
  ASSERT_TRUE((*engine)->submit(prompt, p, q.sink()).ok());
  EXPECT_EQ(final_cached_tokens(q), 48);
  EXPECT_TRUE((*engine)->flush_cache().ok());
  ASSERT_TRUE((*engine)->submit(prompt, p, q.sink()).ok());
  EXPECT_EQ(final_cached_tokens(q), 0) << "the flush left the prompt cached";
}

}  // namespace
}  // namespace pp::test
