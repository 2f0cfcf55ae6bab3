// Stage faults through the Engine and real pp-stage processes (tests/fixtures/models/tiny-llama,
// P = 3): a stage killed with SIGKILL (the first, the middle and the last in turn, in one run)
// or stopped with SIGSTOP (a hang) under a load of short requests is noticed, restarted, and
// every request completes with exactly the tokens of the single-process reference (greedy, and
// seeded sampling continuing from (seed, step)), streamed once each; the run store has the
// events. When no restart is left the requests fail with kAbort and a clear error.
#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "pp/pipeline/engine.h"
#include "pp/pipeline/launcher.h"
#include "pp/store/run-store.h"
#include "pp/transport/activation.h"
#include "test-engine-util.h"
#include "test-util.h"

namespace pp::test {
namespace {

namespace fs = std::filesystem;
using pipeline::Engine;
using pipeline::FinishReason;
using namespace std::chrono_literals;

struct Fault {
  int32_t stage;
  int signal;            // SIGKILL or SIGSTOP
  int64_t after_tokens;  // generated tokens (all requests) before the fault
};

// Injects the faults in order, each once the engine has generated `after_tokens` tokens and is
// not recovering; records the pids it hit. Stops early when `done` is set.
void inject(Engine& engine, const std::vector<Fault>& faults, const std::atomic<bool>& done,
            std::vector<int32_t>* hit) {
  for (const Fault& f : faults) {
    for (;;) {
      if (done.load()) return;
      const pipeline::EngineStats s = engine.stats();
      const bool settled = !s.recovering && int32_t(hit->size()) == s.n_recoveries;
      if (settled && s.scheduler.n_generated_tokens >= f.after_tokens) {
        const int32_t pid = s.stage_pids.at(size_t(f.stage));
        ASSERT_GT(pid, 0);
        ASSERT_EQ(::kill(pid, f.signal), 0) << "stage " << f.stage << " pid " << pid;
        hit->push_back(pid);
        break;
      }
      std::this_thread::sleep_for(2ms);
    }
  }
}

std::vector<test::EngineRequest> short_requests(int n, uint64_t seed) {
  std::mt19937_64 g(seed);
  auto reqs = test::make_requests(n, 256, 12, 16, g);
  for (auto& r : reqs) r.delay_ms = 0;
  return reqs;
}

// Runs the requests with the faults injected meanwhile; checks that every request completes as
// in the reference and that each fault was recovered from.
void run_with_faults(const std::vector<Fault>& faults, int n_requests, uint64_t seed,
                     std::chrono::milliseconds stage_timeout = 5000ms) {
  const fs::path model = test::fixture_dir() / "models" / "tiny-llama";
  const auto reqs = short_requests(n_requests, seed);
  const auto ref = test::reference_outputs(model, reqs);
  ASSERT_EQ(ref.size(), reqs.size());

  TempDir dir;
  auto o = test::engine_options(model, 3, 1);
  o.db_path = dir.path() / "runs.db";
  o.stage_restarts = int32_t(faults.size());
  o.stage_timeout = stage_timeout;
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  const std::vector<int32_t> first_pids = (*engine)->stats().stage_pids;

  std::atomic<bool> done{false};
  std::vector<int32_t> hit;
  std::thread injector([&] { inject(**engine, faults, done, &hit); });
  const auto t0 = std::chrono::steady_clock::now();
  const auto out = test::run_requests(**engine, reqs, 50000ms);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  done = true;
  injector.join();
  ASSERT_EQ(hit.size(), faults.size()) << "the load ended before every fault was injected";

  int n_recomputed = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
    ASSERT_EQ(out[i].error, "") << "request " << i;
    EXPECT_NE(out[i].reason, FinishReason::kAbort) << "request " << i;
    // The streamed deltas, concatenated: no token twice, none missing.
    ASSERT_EQ(out[i].tokens, ref[i])
        << "request " << i << " (temperature " << reqs[i].params.temperature << ")";
    n_recomputed += out[i].n_preemptions > 0 ? 1 : 0;
  }
  EXPECT_GT(n_recomputed, 0) << "no request was in flight at a fault";

  const pipeline::EngineStats s = (*engine)->stats();
  EXPECT_EQ(s.n_stage_restarts, int32_t(faults.size()));
  EXPECT_EQ(s.n_recoveries, int32_t(faults.size()));
  EXPECT_FALSE(s.recovering);
  EXPECT_TRUE((*engine)->health().ok()) << (*engine)->health().message();
  EXPECT_EQ(s.scheduler.kv_blocks_used, 0);
  for (size_t k = 0; k < faults.size(); ++k) {
    // Restarted: a new process; the old one is gone (reaped), a stopped one too.
    EXPECT_NE(s.stage_pids[size_t(faults[k].stage)], hit[k]);
    EXPECT_NE(::kill(hit[k], 0), 0) << "pid " << hit[k] << " of stage " << faults[k].stage;
  }
  if (std::getenv("PP_TEST_VERBOSE")) {
    fmt::print("{} requests, {} faults: {:.2f} s, {} recomputed\n", reqs.size(), faults.size(),
               seconds, n_recomputed);
  }
  const std::vector<int32_t> last_pids = s.stage_pids;
  EXPECT_TRUE((*engine)->shutdown().ok());
  for (int32_t pid : last_pids) EXPECT_NE(::kill(pid, 0), 0) << "stage pid " << pid;
  for (int32_t pid : first_pids) EXPECT_NE(::kill(pid, 0), 0) << "stage pid " << pid;

  // The run store: the run ended ok, with each loss, restart and recovery as an event.
  auto store = RunStore::open(*o.db_path, RunStore::OpenMode::kReadOnly);
  ASSERT_TRUE(store.ok()) << store.status().message();
  auto runs = (*store)->list_serving_runs();
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 1u);
  EXPECT_EQ(runs->front().outcome, RunOutcome::kOk);
  EXPECT_EQ(runs->front().stages.size(), 3u + faults.size()) << "each new stage process joins";
  auto events = (*store)->list_events(runs->front().id);
  ASSERT_TRUE(events.ok());
  std::map<std::string, int> kinds;
  for (const auto& e : *events) ++kinds[e.kind];
  EXPECT_EQ(kinds["stage_lost"], int(faults.size()));
  EXPECT_EQ(kinds["stage_restarted"], int(faults.size()));
  EXPECT_EQ(kinds["recovery"], int(faults.size()));
  EXPECT_EQ(kinds["recovered"], int(faults.size()));
  for (const Fault& f : faults) {
    bool found = false;
    for (const auto& e : *events) found |= e.kind == "stage_lost" && e.stage == f.stage;
    EXPECT_TRUE(found) << "a stage_lost event for stage " << f.stage;
  }
}

TEST(EngineFaults, KillingTheFirstMiddleAndLastStageLosesNoRequest) {
  run_with_faults({{0, SIGKILL, 150}, {1, SIGKILL, 500}, {2, SIGKILL, 850}}, 200, test::rng()());
}

TEST(EngineFaults, AHungStageIsKilledAndRestarted) {
  // SIGSTOP: the process lives on with its sockets open but answers nothing. The transport's
  // heartbeats drop its connection; the coordinator kills it (SIGKILL works on a stopped
  // process) and starts another.
  run_with_faults({{1, SIGSTOP, 150}}, 80, test::rng()(), 1000ms);
}

TEST(EngineFaults, NoRestartLeftFailsTheRequestsWithAbort) {
  const fs::path model = test::fixture_dir() / "models" / "tiny-llama";
  auto reqs = short_requests(60, test::rng()());
  for (auto& r : reqs) r.params.max_tokens = 200, r.params.ignore_eos = true;
  auto o = test::engine_options(model, 3, 1);
  o.stage_restarts = 1;
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  std::atomic<bool> done{false};
  std::vector<int32_t> hit;
  // The first loss is restarted; the second finds no restart left.
  std::thread injector([&] {
    inject(**engine, {{2, SIGKILL, 100}, {0, SIGKILL, 300}}, done, &hit);
  });
  const auto out = test::run_requests(**engine, reqs, 50000ms);
  done = true;
  injector.join();
  ASSERT_EQ(hit.size(), 2u);
  int n_aborted = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
    if (out[i].reason == FinishReason::kAbort) {
      ++n_aborted;
      EXPECT_NE(out[i].error.find("no stage restart left"), std::string::npos) << out[i].error;
      EXPECT_NE(out[i].error.find("stage 0"), std::string::npos) << out[i].error;
    }
  }
  EXPECT_GT(n_aborted, 0);
  const Status h = (*engine)->health();
  EXPECT_FALSE(h.ok());
  EXPECT_FALSE((*engine)->recovering());
  EXPECT_NE(h.message().find("no stage restart left"), std::string::npos) << h.message();
  EXPECT_EQ((*engine)->stats().n_stage_restarts, 1);
  EXPECT_FALSE((*engine)->shutdown().ok());
}

// Remote stages (tcp, started here, not by the engine): a lost one is not restarted but waited
// for; while it is away health() says recovering. `rejoin`: a new pp-stage takes its place.
void run_remote_loss(bool rejoin) {
  const fs::path model = fixture_dir() / "models" / "tiny-llama";
  auto reqs = short_requests(rejoin ? 80 : 40, rng()());
  if (!rejoin) {
    for (auto& r : reqs) r.params.max_tokens = 200, r.params.ignore_eos = true;
  }
  const auto ref = reference_outputs(model, reqs);
  auto o = engine_options(model, 3, 1);
  o.listen = "tcp://127.0.0.1:0";
  o.launch_local_stages = false;
  o.stage_timeout = rejoin ? 20000ms : 1500ms;
  std::string endpoint;
  auto launch = [&](int32_t k) {
    pipeline::StageLaunch l;
    l.binary = stage_binary();
    l.coordinator = endpoint;
    l.stage = k;
    l.threads = 1;
    l.log_level = "warn";
    return pipeline::StageProcess::spawn(l);
  };
  std::vector<pipeline::StageProcess> stages;
  o.on_listening = [&](const std::string& ep) {
    endpoint = ep;
    for (int32_t k = 0; k < 3; ++k) {
      auto p = launch(k);
      if (p.ok()) stages.push_back(std::move(*p));
    }
  };
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  ASSERT_EQ(stages.size(), 3u);

  std::vector<EngineOutput> out;
  std::thread runner([&] { out = run_requests(**engine, reqs, 50000ms); });
  const auto t0 = std::chrono::steady_clock::now();
  while ((*engine)->stats().scheduler.n_generated_tokens < 60 &&
         std::chrono::steady_clock::now() - t0 < 30s) {
    std::this_thread::sleep_for(2ms);
  }
  stages[1].signal(SIGKILL);
  bool recovering = false;
  for (int i = 0; i < 200 && !recovering; ++i) {
    std::this_thread::sleep_for(10ms);
    recovering = (*engine)->recovering();
  }
  ASSERT_TRUE(recovering) << "not noticed within 2 s";
  const Status h = (*engine)->health();
  EXPECT_FALSE(h.ok());
  EXPECT_NE(h.message().find("recovering"), std::string::npos) << h.message();
  EXPECT_NE(h.message().find("stage 1"), std::string::npos) << h.message();
  std::optional<pipeline::StageProcess> again;
  if (rejoin) {
    std::this_thread::sleep_for(300ms);
    EXPECT_TRUE((*engine)->recovering()) << "a remote stage is waited for, not restarted";
    auto p = launch(1);  // from this thread, which outlives it (PR_SET_PDEATHSIG)
    ASSERT_TRUE(p.ok()) << p.status().message();
    again.emplace(std::move(*p));
  }
  runner.join();
  ASSERT_EQ(out.size(), reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
    if (rejoin) {
      ASSERT_EQ(out[i].error, "") << "request " << i;
      ASSERT_EQ(out[i].tokens, ref[i]) << "request " << i;
    } else if (out[i].reason == FinishReason::kAbort) {
      EXPECT_NE(out[i].error.find("did not recover"), std::string::npos) << out[i].error;
    }
  }
  const pipeline::EngineStats s = (*engine)->stats();
  EXPECT_EQ(s.n_stage_restarts, 0);
  EXPECT_EQ(s.n_recoveries, 1);
  if (rejoin) {
    EXPECT_TRUE((*engine)->health().ok()) << (*engine)->health().message();
    EXPECT_EQ(s.stage_pids[1], again->pid());
    EXPECT_TRUE((*engine)->shutdown().ok());
  } else {
    EXPECT_FALSE((*engine)->health().ok());
    EXPECT_FALSE((*engine)->recovering());
    EXPECT_FALSE((*engine)->shutdown().ok());
  }
  for (auto& p : stages) EXPECT_TRUE(p.wait(10000ms)) << "stage pid " << p.pid();
  if (again) {
    EXPECT_TRUE(again->wait(10000ms));
  }
}

// What lets a stage survive a recovery: activations of forgotten plans (an earlier seq) that
// are still queued are dropped, while a later seq is still an error.
TEST(StaleActivation, AnEarlierSeqIsDroppedALaterOneIsAnError) {
  TempDir dir;
  auto rx = transport::ActivationReceiver::bind("ipc://" + (dir.path() / "rx").string());
  ASSERT_TRUE(rx.ok()) << rx.status().message();
  auto tx = transport::ActivationSender::connect(rx->endpoint());
  ASSERT_TRUE(tx.ok()) << tx.status().message();
  const auto stale = random_floats(4 * 8), data = random_floats(4 * 8);
  std::vector<float> out(4 * 8);
  ASSERT_TRUE(tx->send({.seq = 3, .group = 0, .n_tokens = 4, .n_embd = 8}, stale).ok());
  ASSERT_TRUE(tx->send({.seq = 4, .group = 1, .n_tokens = 4, .n_embd = 8}, stale).ok());
  ASSERT_TRUE(tx->send({.seq = 9, .group = 2, .n_tokens = 4, .n_embd = 8}, data).ok());
  auto h = rx->receive(9, out, 5000ms);
  ASSERT_TRUE(h.ok()) << h.status().message();
  ASSERT_TRUE(h->has_value());
  EXPECT_EQ((*h)->seq, 9u);
  EXPECT_EQ(out, data);
  ASSERT_TRUE(tx->send({.seq = 12, .group = 0, .n_tokens = 4, .n_embd = 8}, data).ok());
  h = rx->receive(10, out, 5000ms);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kDataLoss);
}

TEST(EngineFaults, ALostRemoteStageThatRejoinsLosesNoRequest) { run_remote_loss(true); }

TEST(EngineFaults, ALostRemoteStageThatDoesNotRejoinFailsTheRequests) { run_remote_loss(false); }

}  // namespace
}  // namespace pp::test
