// Admission under overload, at the scheduler: a request that can never fit the KV pool (prompt +
// max_tokens beyond the pool, or the prompt alone) is refused at submit, never queued; an
// unlimited one (max_tokens 0) is limited to what the context and the pool leave; and many
// requests that each fit the pool alone but not together queue and all finish, in a bounded
// number of plans (no livelock), with every block back in the pool. Sizes are fresh random
// each run (PP_TEST_SEED repeats one).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <vector>

#include "pp/pipeline/scheduler.h"
#include "test-util.h"

namespace pp::pipeline {
namespace {

using transport::Plan;
using transport::PlanEntry;
using transport::Tokens;

constexpr int32_t kVocab = 97;

std::vector<int32_t> random_prompt(int64_t n, std::mt19937_64& rng) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int32_t& t : p) t = int32_t(rng() % kVocab);
  return p;
}

int64_t uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // [lo, hi]
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// The last stage's answer to a plan: one token per sampling entry, never an eos.
Tokens answer(const Plan& plan, std::mt19937_64& rng) {
  Tokens t;
  t.seq = plan.seq;
  t.group = plan.group;
  for (const PlanEntry& e : plan.entries) {
    if (e.sample) t.tokens.push_back({e.request_id, int32_t(rng() % kVocab), 0.0f, {}, {}});
  }
  return t;
}

struct Outcome {
  std::map<uint64_t, RequestEvent> finals;
  std::map<uint64_t, int64_t> n_tokens;
  int64_t n_plans = 0;
  int64_t max_waiting = 0;  // the longest the queue got
  bool finished = false;    // every request ended within the step limit
};

// Drives the scheduler like the coordinator does, returning the plans of in-flight groups in a
// random order (stages take their time), until nothing is left or `max_steps` loop turns.
Outcome drive(Scheduler& s, int64_t max_steps, std::mt19937_64& rng) {
  Outcome out;
  std::vector<Plan> in_flight;
  std::vector<RequestEvent> events;
  for (int64_t step = 0; step < max_steps; ++step) {
    if (!in_flight.empty()) {
      const size_t i = size_t(rng() % in_flight.size());
      const Status st = s.apply_tokens(answer(in_flight[i], rng));
      EXPECT_TRUE(st.ok()) << st.message();
      in_flight.erase(in_flight.begin() + std::ptrdiff_t(i));
    }
    for (int32_t g : s.idle_groups()) {
      Plan p;
      if (s.build_plan(g, &p)) {
        ++out.n_plans;
        in_flight.push_back(std::move(p));
      }
    }
    const SchedulerStats st = s.stats();
    EXPECT_LE(st.kv_blocks_used, st.kv_blocks_total);
    out.max_waiting = std::max(out.max_waiting, st.n_waiting);
    s.take_events(&events);
    for (const RequestEvent& e : events) {
      out.n_tokens[e.request_id] += int64_t(e.token_ids.size());
      if (e.kind == EventKind::kFinal) {
        EXPECT_TRUE(out.finals.emplace(e.request_id, e).second)
            << "two finals for " << e.request_id;
      }
    }
    if (!s.has_work() && in_flight.empty()) {
      out.finished = true;
      break;
    }
  }
  return out;
}

SchedulerOptions random_options(std::mt19937_64& rng) {
  SchedulerOptions o;
  o.n_groups = int32_t(uniform(rng, 1, 5));
  o.max_running_requests = int32_t(uniform(rng, 2, 64));
  o.max_batch_tokens = int32_t(uniform(rng, 8, 96));
  o.block_size = int32_t(uniform(rng, 1, 16));
  o.n_blocks = int32_t(uniform(rng, 2, 40));
  o.max_context = uniform(rng, 32, 1024);
  o.n_vocab = kVocab;
  o.seed = rng();
  return o;
}

TEST(SchedulerAdmission, ResolveMaxTokensMatchesThePoolAndTheContext) {
  std::mt19937_64& rng = test::rng();
  for (int trial = 0; trial < 5000; ++trial) {
    const int32_t bs = int32_t(uniform(rng, 1, 32));
    const int64_t n_blocks = uniform(rng, 1, 64), pool = n_blocks * bs;
    const int64_t ctx = uniform(rng, 2, 2 * pool + 8);
    const int64_t n = uniform(rng, 1, std::max<int64_t>(ctx + 2, pool + 2));
    const int64_t max_tokens = rng() % 3 == 0 ? 0 : uniform(rng, 1, ctx + 4);
    SCOPED_TRACE(::testing::Message() << "bs=" << bs << " n_blocks=" << n_blocks << " ctx=" << ctx
                                      << " n=" << n << " max_tokens=" << max_tokens);
    const Result<int64_t> r = resolve_max_tokens(n, max_tokens, ctx, n_blocks, bs);
    if (n >= ctx || (max_tokens > 0 && n + max_tokens > ctx)) {
      EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange);
    } else if (n > pool || (max_tokens > 0 && n + max_tokens - 1 > pool)) {
      EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
      EXPECT_NE(r.status().message().find("KV pool"), std::string::npos) << r.status().message();
    } else {
      ASSERT_TRUE(r.ok()) << r.status().message();
      if (max_tokens > 0) {
        EXPECT_EQ(*r, max_tokens);
      } else {
        // As many as fit both: one more would overflow the context or the pool.
        EXPECT_GE(*r, 1);
        EXPECT_LE(n + *r, ctx);
        EXPECT_LE(n + *r - 1, pool);
        EXPECT_TRUE(n + *r + 1 > ctx || n + *r > pool);
      }
    }
  }
}

TEST(SchedulerAdmission, NeverFittingRequestsAreRefusedAtSubmit) {
  std::mt19937_64& rng = test::rng();
  for (int trial = 0; trial < 50; ++trial) {
    SchedulerOptions o = random_options(rng);
    const int64_t pool = int64_t(o.n_blocks) * o.block_size;
    o.max_context = pool + uniform(rng, 10, 200);  // the pool binds, not the context
    Scheduler s(o, nullptr);
    model::SamplingParams p;
    p.ignore_eos = true;
    // One block too many: refused, queue untouched.
    const int64_t n = uniform(rng, 1, pool);
    p.max_tokens = pool - n + 2;  // n + max_tokens - 1 = pool + 1 tokens of KV
    const Status big = s.submit(1, random_prompt(n, rng), p);
    EXPECT_EQ(big.code(), StatusCode::kResourceExhausted) << big.message();
    EXPECT_NE(big.message().find("request 1"), std::string::npos) << big.message();
    // The prompt alone beyond the pool, whatever max_tokens.
    p.max_tokens = 0;
    EXPECT_EQ(s.submit(2, random_prompt(pool + uniform(rng, 1, 8), rng), p).code(),
              StatusCode::kResourceExhausted);
    EXPECT_EQ(s.stats().n_waiting, 0);
    EXPECT_FALSE(s.has_work());
    // Exactly the pool: accepted, and runs to the end alone.
    p.max_tokens = pool - n + 1;
    ASSERT_TRUE(s.submit(3, random_prompt(n, rng), p).ok());
    // Unlimited: limited to what the pool leaves, not refused.
    const int64_t n4 = uniform(rng, 1, pool);
    p.max_tokens = 0;
    ASSERT_TRUE(s.submit(4, random_prompt(n4, rng), p).ok());
    EXPECT_EQ(s.find(4)->max_tokens, pool + 1 - n4);
    const Outcome out = drive(s, 100000, rng);
    ASSERT_TRUE(out.finished) << "trial " << trial;
    ASSERT_EQ(out.finals.size(), 2u);
    EXPECT_EQ(out.finals.at(3).finish_reason, FinishReason::kLength);
    EXPECT_EQ(out.n_tokens.at(3), pool - n + 1);
    EXPECT_EQ(out.finals.at(4).finish_reason, FinishReason::kLength);
    EXPECT_EQ(out.n_tokens.at(4), pool + 1 - n4);
    EXPECT_EQ(s.stats().kv_blocks_used, 0);
  }
}

// Many requests, each fitting the pool alone, together needing several times it: they queue (or
// are preempted and recomputed) and every one finishes with all its tokens; the number of plans
// stays within a fixed multiple of the work, so nothing livelocks.
TEST(SchedulerAdmission, ManyThatFitAloneButNotTogetherQueueAndAllFinish) {
  std::mt19937_64& rng = test::rng();
  int64_t n_queued_trials = 0;
  for (int trial = 0; trial < 40; ++trial) {
    SchedulerOptions o = random_options(rng);
    const int64_t pool = int64_t(o.n_blocks) * o.block_size;
    o.max_context = std::max<int64_t>(o.max_context, pool + 2);
    Scheduler s(o, nullptr);
    const int n_requests = int(uniform(rng, 4, 40));
    std::map<uint64_t, int64_t> want;
    int64_t work = 0;  // tokens to compute if nothing were recomputed
    for (int i = 0; i < n_requests; ++i) {
      const int64_t n = uniform(rng, 1, std::max<int64_t>(1, pool / 2));
      model::SamplingParams p;
      p.ignore_eos = true;
      p.temperature = 0.0f;
      // Between half the pool and all of it: two or three of them never fit together.
      p.max_tokens = std::max<int64_t>(1, uniform(rng, pool / 2, pool) - n + 1);
      if (rng() % 4 == 0) p.max_tokens = 0;  // unlimited: up to the pool
      const uint64_t id = uint64_t(100 + i);
      const Status st = s.submit(id, random_prompt(n, rng), p);
      ASSERT_TRUE(st.ok()) << st.message();
      want[id] = s.find(id)->max_tokens;
      work += n + want[id];
    }
    SCOPED_TRACE(::testing::Message() << "trial " << trial << " pool " << pool << " groups "
                                      << o.n_groups << " requests " << n_requests);
    // Each step issues at least one token unless waiting on a group in flight; recompute after
    // preemption at most re-does a request's whole context, once per newer request.
    const int64_t max_steps = 50 * work * int64_t(o.n_groups) + 1000;
    const Outcome out = drive(s, max_steps, rng);
    ASSERT_TRUE(out.finished) << "not done after " << max_steps << " steps: livelock";
    ASSERT_EQ(out.finals.size(), want.size());
    for (const auto& [id, n] : want) {
      EXPECT_EQ(out.finals.at(id).finish_reason, FinishReason::kLength) << "request " << id;
      EXPECT_EQ(out.n_tokens.at(id), n) << "request " << id;
    }
    const SchedulerStats st = s.stats();
    EXPECT_EQ(st.kv_blocks_used, 0);
    EXPECT_EQ(st.n_waiting, 0);
    EXPECT_EQ(st.n_running, 0);
    EXPECT_EQ(st.n_finished_length, n_requests);
    if (out.max_waiting > 0) ++n_queued_trials;
  }
  EXPECT_GT(n_queued_trials, 0) << "the workloads were meant to overflow the pool";
}

}  // namespace
}  // namespace pp::pipeline
