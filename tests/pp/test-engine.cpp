// The asynchronous pipeline end to end: an in-process Engine driving real pp-stage processes
// (PP_BUILD_DIR/tools/pp-stage). Outputs must not depend on the split or the depth: for a mix of
// requests arriving over time, every (stages, depth) gives exactly the single-process Generator's
// tokens, greedy and seeded sampling alike. Also: preemption under a tiny KV budget, cancellation,
// a partition folder, the trace and the run store, and a stage killed mid-run.
#include <signal.h>

#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "pp/partition/shard-writer.h"
#include "pp/store/run-store.h"
#include "test-engine-util.h"
#include "test-partition-model.h"

namespace pp::test {
namespace {

namespace fs = std::filesystem;
using pipeline::Engine;
using pipeline::FinishReason;

// Runs `reqs` on every split of `model` (1..min(4, n_layer) stages) at depths 0..3 and compares
// with the Generator.
void check_all_splits(const fs::path& model, int n_requests, int max_prompt, int max_new,
                      bool load_tokenizer = true) {
  auto src = model::open_model(model);
  ASSERT_TRUE(src.ok()) << src.status().message();
  const int64_t n_layer = src->config.n_layer;
  auto reqs = make_requests(n_requests, src->config.n_vocab, max_prompt, max_new, rng());
  const auto ref = reference_outputs(model, reqs);
  ASSERT_EQ(ref.size(), reqs.size());
  for (int32_t P = 1; P <= std::min<int64_t>(4, n_layer); ++P) {
    for (int32_t D = 0; D <= 3; ++D) {
      SCOPED_TRACE(fmt::format("{}: {} stages, depth {}", model.filename().string(), P, D));
      auto o = engine_options(model, P, D);
      o.load_tokenizer = load_tokenizer;
      const auto t0 = std::chrono::steady_clock::now();
      auto engine = Engine::start(o);
      ASSERT_TRUE(engine.ok()) << engine.status().message();
      const auto t1 = std::chrono::steady_clock::now();
      const auto out = run_requests(**engine, reqs);
      const auto t2 = std::chrono::steady_clock::now();
      if (std::getenv("PP_TEST_VERBOSE")) {
        fmt::print("{} P={} D={}: start {:.3f} s, run {:.3f} s\n", model.filename().string(), P, D,
                   std::chrono::duration<double>(t1 - t0).count(),
                   std::chrono::duration<double>(t2 - t1).count());
      }
      for (size_t i = 0; i < reqs.size(); ++i) {
        ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
        ASSERT_EQ(out[i].error, "") << "request " << i;
        ASSERT_EQ(out[i].tokens, ref[i])
            << "request " << i << " (prompt of " << reqs[i].prompt.size() << ")";
      }
      const auto stats = (*engine)->stats();
      EXPECT_EQ(stats.scheduler.kv_blocks_used, 0);
      EXPECT_EQ(stats.scheduler.n_running, 0);
      ASSERT_EQ(stats.stages.size(), size_t(P));
      for (const auto& s : stats.stages) EXPECT_GT(s.n_micro_batches, 0) << "stage " << s.stage;
      const auto t3 = std::chrono::steady_clock::now();
      EXPECT_TRUE((*engine)->shutdown().ok());
      if (std::getenv("PP_TEST_VERBOSE")) {
        fmt::print("  shutdown {:.3f} s\n",
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t3).count());
      }
    }
  }
}

class EngineTinyModels : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineTinyModels, EverySplitAndDepthGivesTheGeneratorsTokens) {
  check_all_splits(fixture_dir() / "models" / GetParam(), 64, 40, 20);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineTinyModels,
                         ::testing::Values("tiny-llama", "tiny-llama-headdim", "tiny-llama3",
                                           "tiny-mistral", "tiny-qwen2", "tiny-qwen3",
                                           "tiny-llama-fp8-ct", "tiny-qwen3-fp8-block",
                                           "tiny-qwen3-moe", "tiny-mixtral"));

// The fixtures have 2-3 layers; a random 5-layer model covers 4 stages.
TEST(Engine, FourStagesOnADeeperRandomModel) {
  TempDir dir;
  const fs::path model = write_random_llama(dir.path() / "deep", 5, false);
  check_all_splits(model, 64, 40, 20, /*load_tokenizer=*/false);
}

// The default model: 64 requests of varied lengths arriving over time give the single-process
// Generator's tokens for every split N = 1..4 and async depth D = 0..3.
TEST(Engine, DefaultModelEverySplitAndDepth) {
  const fs::path model = default_model_path();
  if (!fs::exists(model)) GTEST_SKIP() << "default model missing: " << model;
  auto src = model::open_model(model);
  ASSERT_TRUE(src.ok()) << src.status().message();
  auto reqs = make_requests(64, src->config.n_vocab, 24, 8, rng());
  const auto ref = reference_outputs(model, reqs);
  ASSERT_EQ(ref.size(), reqs.size());
  // Every stage count, each at a depth drawn afresh (the tiny models' test covers every pair):
  // four engines rather than sixteen keeps this test's minutes out of CI.
  for (int32_t P = 1; P <= 4; ++P) {
    for (int32_t D : {int32_t(test::random_int(0, 3))}) {
      SCOPED_TRACE(fmt::format("{} stages, depth {}", P, D));
      auto o = engine_options(model, P, D);
      o.threads_per_stage = 0;
      o.kv_blocks = 512;
      auto engine = Engine::start(o);
      ASSERT_TRUE(engine.ok()) << engine.status().message();
      ASSERT_NE((*engine)->tokenizer(), nullptr);
      const auto out = run_requests(**engine, reqs);
      for (size_t i = 0; i < reqs.size(); ++i) {
        ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
        EXPECT_EQ(out[i].tokens, ref[i]) << "request " << i;
      }
      EXPECT_EQ((*engine)->stats().scheduler.kv_blocks_used, 0);
    }
  }
}

TEST(Engine, PreemptionUnderATinyKvBudgetKeepsEveryOutput) {
  const fs::path model = fixture_dir() / "models" / "tiny-llama";
  auto src = model::open_model(model);
  ASSERT_TRUE(src.ok());
  auto reqs = make_requests(32, src->config.n_vocab, 40, 24, rng());
  for (auto& r : reqs) r.delay_ms = 0;  // all at once: the pool runs out
  const auto ref = reference_outputs(model, reqs);
  auto o = engine_options(model, 2, 1);
  o.kv_blocks = 5;  // 80 tokens: the largest request (40 + 24) fits, two rarely do
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  const auto out = run_requests(**engine, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
    EXPECT_EQ(out[i].tokens, ref[i]) << "request " << i;
  }
  const auto stats = (*engine)->stats();
  EXPECT_GT(stats.scheduler.n_preemptions, 0) << "the budget was meant to force preemption";
  EXPECT_EQ(stats.scheduler.kv_blocks_used, 0);
}

TEST(Engine, CancellationFreesEverything) {
  const fs::path model = fixture_dir() / "models" / "tiny-llama";
  auto engine = Engine::start(engine_options(model, 2, 1));
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  pipeline::EventQueue q;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 16; ++i) {
    model::SamplingParams p;
    p.temperature = 0.0f;
    p.ignore_eos = true;
    p.max_tokens = 400;
    std::vector<int32_t> prompt(size_t(5 + i), int32_t(10 + i));
    auto id = (*engine)->submit(prompt, p, q.sink());
    ASSERT_TRUE(id.ok()) << id.status().message();
    ids.push_back(*id);
  }
  // Cancel every request once it has streamed something (some in flight, some not).
  std::set<uint64_t> cancelled, finished;
  std::map<uint64_t, int64_t> n_tokens;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (finished.size() < ids.size() && std::chrono::steady_clock::now() < deadline) {
    auto ev = q.pop(std::chrono::milliseconds(100));
    if (!ev) continue;
    const uint64_t id = ev->event.request_id;
    n_tokens[id] += int64_t(ev->event.token_ids.size());
    if (ev->event.kind == pipeline::EventKind::kFinal) {
      EXPECT_TRUE(finished.insert(id).second) << "two final events for " << id;
      EXPECT_EQ(ev->event.finish_reason, FinishReason::kAbort) << "request " << id;
    } else if (cancelled.insert(id).second) {
      (*engine)->cancel(id);
    }
  }
  ASSERT_EQ(finished.size(), ids.size());
  for (uint64_t id : ids) EXPECT_LT(n_tokens[id], 400) << "request " << id;
  const auto stats = (*engine)->stats();
  EXPECT_EQ(stats.scheduler.kv_blocks_used, 0);
  EXPECT_EQ(stats.scheduler.n_running, 0);
  EXPECT_EQ(stats.scheduler.n_waiting, 0);
  EXPECT_EQ(stats.scheduler.n_finished_abort, int64_t(ids.size()));
  (*engine)->cancel(ids[0]);  // already finished: ignored
  EXPECT_TRUE((*engine)->health().ok());
}

TEST(Engine, RefusesBadRequestsAtSubmit) {
  const fs::path model = fixture_dir() / "models" / "tiny-llama";
  auto o = engine_options(model, 1, 0);
  o.kv_blocks = 4;
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  pipeline::EventQueue q;
  model::SamplingParams p;
  p.max_tokens = 4;
  EXPECT_EQ((*engine)->submit({}, p, q.sink()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*engine)->submit({1, 100000}, p, q.sink()).status().code(), StatusCode::kOutOfRange);
  p.max_tokens = 100;  // 100 tokens of KV > 4 blocks of 16
  EXPECT_EQ((*engine)->submit({1, 2, 3}, p, q.sink()).status().code(),
            StatusCode::kResourceExhausted);
  p.max_tokens = 4;
  p.stop = {"x"};  // no tokenizer in the fixture
  EXPECT_EQ((*engine)->submit({1, 2, 3}, p, q.sink()).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(Engine, PartitionFolderTraceAndRunStore) {
  TempDir dir;
  const fs::path model = fixture_model_with_tokenizer("tiny-qwen2", dir.path());
  auto src = model::open_model(model);
  ASSERT_TRUE(src.ok()) << src.status().message();
  partition::PlanOptions po;
  po.n_stages = 3;
  po.dtype = model::DType::kF32;
  auto plan = partition::make_plan(src->config, po);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  const fs::path part = dir.path() / "part";
  partition::WriteOptions wo;
  wo.out_dir = part;
  auto manifest = partition::write_partition(*src, *plan, wo);
  ASSERT_TRUE(manifest.ok()) << manifest.status().message();

  auto reqs = make_requests(24, src->config.n_vocab, 30, 12, rng());
  const auto ref = reference_outputs(model, reqs);
  auto o = engine_options(part, 0, 2);  // the stage count comes from the partition
  o.load_tokenizer = false;  // (the test tokenizer's Whitespace pre-tokenizer is not supported)
  o.trace_path = dir.path() / "trace.json";
  o.db_path = dir.path() / "runs.db";
  o.config_json = R"({"test": true})";
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  EXPECT_EQ((*engine)->stages().size(), 3u);
  EXPECT_EQ((*engine)->n_groups(), 5);
  const auto out = run_requests(**engine, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
    EXPECT_EQ(out[i].tokens, ref[i]) << "request " << i;
  }
  std::vector<int32_t> pids;
  for (const auto& s : (*engine)->stages()) pids.push_back(s.pid);
  ASSERT_TRUE((*engine)->shutdown().ok());
  // No stage outlives the engine.
  for (int32_t pid : pids) EXPECT_NE(::kill(pid, 0), 0) << "stage pid " << pid << " still runs";

  // The trace: complete events for every stage, compute lanes with seq/group/n_tokens.
  std::ifstream f(o.trace_path);
  ASSERT_TRUE(f.good());
  const auto trace = nlohmann::json::parse(f);
  ASSERT_TRUE(trace.is_array());
  std::set<int64_t> stages_seen;
  int64_t n_compute = 0;
  for (const auto& e : trace) {
    if (e["ph"] != "X" || e["name"] != "compute") continue;
    ++n_compute;
    stages_seen.insert(e["pid"].get<int64_t>());
    EXPECT_GE(e["dur"].get<int64_t>(), 0);
    EXPECT_GT(e["args"]["n_tokens"].get<int64_t>(), 0);
  }
  EXPECT_EQ(stages_seen, (std::set<int64_t>{0, 1, 2}));
  EXPECT_GE(n_compute, 3);

  // The run store: one run, ended ok, with its three stages and their pids.
  auto store = RunStore::open(*o.db_path, RunStore::OpenMode::kReadOnly);
  ASSERT_TRUE(store.ok()) << store.status().message();
  auto runs = (*store)->list_serving_runs();
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 1u);
  const ServingRunRecord& run = runs->front();
  EXPECT_EQ(run.outcome, RunOutcome::kOk);
  EXPECT_EQ(run.pp, 3);
  EXPECT_EQ(run.async_depth, 2);
  EXPECT_TRUE(run.ended_at_ms.has_value());
  ASSERT_EQ(run.stages.size(), 3u);
  for (const auto& s : run.stages) {
    EXPECT_EQ(s.pid, pids[size_t(s.stage)]);
    EXPECT_EQ(s.layer_begin, manifest->plan.stages[size_t(s.stage)].layers.begin);
  }
}

TEST(Engine, AKilledStageFailsTheEngineCleanly) {
  const fs::path model = fixture_dir() / "models" / "tiny-llama";
  TempDir dir;
  auto o = engine_options(model, 3, 1);
  o.db_path = dir.path() / "runs.db";
  o.stage_restarts = 0;  // no restart: the engine fails (test-engine-faults.cpp: restarts)
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  pipeline::EventQueue q;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 8; ++i) {
    model::SamplingParams p;
    p.temperature = 0.0f;
    p.ignore_eos = true;
    p.max_tokens = 480;
    auto id = (*engine)->submit({5, 6, int32_t(7 + i)}, p, q.sink());
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  // Once tokens flow, kill the middle stage.
  auto first = q.pop(std::chrono::seconds(30));
  ASSERT_TRUE(first.has_value());
  const int32_t pid = (*engine)->stages()[1].pid;
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  std::set<uint64_t> finals;
  const auto t0 = std::chrono::steady_clock::now();
  while (finals.size() < ids.size() &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20)) {
    auto ev = q.pop(std::chrono::milliseconds(100));
    if (!ev || ev->event.kind != pipeline::EventKind::kFinal) continue;
    finals.insert(ev->event.request_id);
    EXPECT_FALSE(ev->error.ok()) << "request " << ev->event.request_id;
    EXPECT_EQ(ev->event.finish_reason, FinishReason::kAbort);
  }
  EXPECT_EQ(finals.size(), ids.size()) << "every request hears of the failure";
  EXPECT_FALSE((*engine)->health().ok());
  EXPECT_NE((*engine)->health().message().find("stage 1"), std::string::npos)
      << (*engine)->health().message();
  model::SamplingParams p;
  EXPECT_EQ((*engine)->submit({1, 2}, p, q.sink()).status().code(), StatusCode::kUnavailable);
  std::vector<int32_t> pids;
  for (const auto& s : (*engine)->stages()) pids.push_back(s.pid);
  EXPECT_FALSE((*engine)->shutdown().ok());
  for (int32_t other : pids) EXPECT_NE(::kill(other, 0), 0) << "stage pid " << other;

  auto store = RunStore::open(*o.db_path, RunStore::OpenMode::kReadOnly);
  ASSERT_TRUE(store.ok());
  auto runs = (*store)->list_serving_runs();
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 1u);
  EXPECT_EQ(runs->front().outcome, RunOutcome::kError);
  auto events = (*store)->list_events(runs->front().id);
  ASSERT_TRUE(events.ok());
  bool lost = false;
  for (const auto& e : *events) lost |= e.kind == "stage_lost" && e.stage == 1;
  EXPECT_TRUE(lost) << "a stage_lost event for stage 1";
}

TEST(Engine, StartFailsCleanlyOnABadModel) {
  auto o = engine_options(fixture_dir() / "models" / "no-such-model", 2, 1);
  auto engine = Engine::start(o);
  EXPECT_FALSE(engine.ok());
  auto o2 = engine_options(fixture_dir() / "models" / "tiny-llama", 2, 1);
  o2.stage_binary = "/nonexistent/pp-stage";
  auto engine2 = Engine::start(o2);
  ASSERT_FALSE(engine2.ok());
  EXPECT_NE(engine2.status().message().find("pp-stage"), std::string::npos)
      << engine2.status().message();
}

}  // namespace
}  // namespace pp::test
