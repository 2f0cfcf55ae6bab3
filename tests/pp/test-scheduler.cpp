// The scheduler driven by a simulated pipeline: a fake "model" whose sampled token is a hash of
// (request id, step), and fake stages that mirror every request's block table and KV length
// from the plans alone, checking each plan as a stage would see it (positions, tokens fed,
// block deltas, no block shared by two requests). Random workloads, random group counts, token
// budgets and KV budgets (down to a pool that holds two requests), with the chunked pipeline on
// or off and fixed or dynamic chunks, must all give every request exactly the fake model's
// tokens, with block accounting exact at every step.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "pp/model/tokenizer.h"
#include "pp/pipeline/scheduler.h"
#include "test-fake-model.h"
#include "test-util.h"

namespace pp::pipeline {
namespace {

using transport::Plan;
using transport::PlanEntry;
using transport::SampledToken;
using transport::Tokens;

using test::fake_token;
using test::mix;

struct Spec {
  uint64_t id = 0;
  std::vector<int32_t> prompt;
  int64_t max_tokens = 0;
  bool ignore_eos = false;
  bool logprobs = false;
  int64_t arrive_at = 0;  // loop iteration at which it is submitted
};

// The tokens the fake model gives `s`: up to max_tokens, or up to and including an eos.
std::vector<int32_t> expected_output(const Spec& s, const std::vector<int32_t>& eos,
                                     int32_t n_vocab) {
  std::vector<int32_t> out;
  for (int64_t k = 0; k < s.max_tokens; ++k) {
    out.push_back(fake_token(s.id, uint64_t(k), n_vocab));
    if (!s.ignore_eos && std::count(eos.begin(), eos.end(), out.back())) break;
  }
  return out;
}

struct Collected {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  int n_final = 0;
  RequestEvent final;
};

struct SimConfig {
  SchedulerOptions opt;
  double cancel_prob = 0.0;      // per loop iteration: cancel a random live request
  double stage_loss_prob = 0.0;  // per loop iteration: lose a stage (preempt_all)
  bool shuffle_tokens = false;   // return sampled tokens out of entry order
};

struct SimResult {
  std::map<uint64_t, Collected> got;
  std::set<uint64_t> cancelled;  // cancel() returned ok
  SchedulerStats stats;
  int64_t n_plans = 0;
  int64_t n_stage_losses = 0;
  int64_t n_cancel_waiting = 0, n_cancel_at_coordinator = 0, n_cancel_in_flight = 0;
  int64_t n_pipelined = 0;          // entries of a request that was already in a plan in flight
  int64_t n_mid_prefill_stops = 0;  // released with part of its prompt's KV on the stages
};

// One fake stage's view: a mirror of each request's block table and KV length.
struct Mirror {
  std::vector<int32_t> table;
  int64_t kv_len = 0;
};

// Drives the scheduler to completion; every check that can be made on a plan is made here.
SimResult simulate(const SimConfig& cfg, const std::vector<Spec>& specs, int32_t n_vocab,
                   std::mt19937_64& rng) {
  SimResult res;
  const SchedulerOptions& o = cfg.opt;
  Scheduler s(o, nullptr);
  std::unordered_map<uint64_t, const Spec*> spec_of;
  for (const Spec& sp : specs) spec_of[sp.id] = &sp;
  std::unordered_map<uint64_t, Mirror> mirror;
  std::deque<Plan> in_flight;
  std::set<uint64_t> live;  // submitted, no final event yet
  std::vector<RequestEvent> events;
  std::vector<int32_t> idle;
  Plan plan;
  size_t next_spec = 0;
  int64_t iter = 0;

  auto expected_token = [&](const Spec& sp, int64_t pos) {
    const int64_t p = int64_t(sp.prompt.size());
    return pos < p ? sp.prompt[size_t(pos)] : fake_token(sp.id, uint64_t(pos - p), n_vocab);
  };

  auto check_plan = [&](const Plan& p) {
    // A stage forgets released tables before applying the entries.
    for (uint64_t id : p.released) {
      auto it = mirror.find(id);
      if (it == mirror.end()) continue;
      const int64_t n_prompt = int64_t(spec_of[id]->prompt.size());
      if (it->second.kv_len > 0 && it->second.kv_len < n_prompt) ++res.n_mid_prefill_stops;
      mirror.erase(it);
    }
    int64_t n_tokens = 0;
    std::set<uint64_t> ids;
    for (const PlanEntry& e : p.entries) {
      ASSERT_TRUE(ids.insert(e.request_id).second) << "request twice in one plan";
      // Several plans in flight only for a prefill, each chunk continuing the one before.
      bool pipelined = false;
      for (const Plan& q : in_flight) {
        for (const PlanEntry& f : q.entries) {
          if (f.request_id != e.request_id) continue;
          ASSERT_TRUE(o.chunked_pipeline) << "request in two plans in flight";
          ASSERT_FALSE(f.sample) << "a step behind one that samples";
          ASSERT_FALSE(e.reset_table) << "a table reset while a chunk is in flight";
          pipelined = true;
        }
      }
      res.n_pipelined += pipelined ? 1 : 0;
      ASSERT_TRUE(spec_of.count(e.request_id));
      const Spec& sp = *spec_of[e.request_id];
      n_tokens += e.n_new;
      ASSERT_GT(e.n_new, 0);
      Mirror& m = mirror[e.request_id];
      if (e.reset_table) {
        ASSERT_EQ(e.pos_begin, 0);
        m = Mirror{};
      } else {
        ASSERT_FALSE(m.table.empty()) << "continuation of a table the stage does not know";
        ASSERT_EQ(e.pos_begin, m.kv_len);
      }
      m.table.insert(m.table.end(), e.new_blocks.begin(), e.new_blocks.end());
      m.kv_len += e.n_new;
      ASSERT_EQ(int64_t(m.table.size()), (m.kv_len + o.block_size - 1) / o.block_size);
      ASSERT_EQ(int64_t(e.token_ids.size()), int64_t(e.n_new));
      for (int32_t i = 0; i < e.n_new; ++i) {
        ASSERT_EQ(e.token_ids[size_t(i)], expected_token(sp, e.pos_begin + i))
            << "request " << e.request_id << " pos " << e.pos_begin + i;
      }
      // The scheduler's view, to tell a recompute chunk from the step that must sample.
      const Request* r = s.find(e.request_id);
      ASSERT_NE(r, nullptr);
      ASSERT_EQ(e.sample, m.kv_len == r->n_tokens()) << "sample iff the step ends the sequence";
      ASSERT_LE(m.kv_len, r->n_tokens());
      if (e.sample) {
        ASSERT_EQ(int64_t(e.sample_step), r->n_generated());
        ASSERT_EQ(e.sampling.top_logprobs, sp.logprobs ? 0 : -1);
        ASSERT_EQ(e.sampling.seed, *r->params.seed);
      }
    }
    ASSERT_LE(n_tokens, o.max_batch_tokens);
    // No block belongs to two requests in the stage's mirror.
    std::vector<int> owner(size_t(o.n_blocks), 0);
    for (const auto& [id, m] : mirror) {
      for (int32_t b : m.table) {
        ASSERT_TRUE(b >= 0 && b < o.n_blocks);
        ASSERT_EQ(owner[size_t(b)]++, 0) << "block " << b << " shared";
      }
    }
  };

  auto check_accounting = [&]() {
    int64_t held = 0;
    std::set<uint64_t> in_group;
    for (int32_t g = 0; g < o.n_groups; ++g) {
      ASSERT_LE(int64_t(s.group_members(g).size()), int64_t(o.max_batch_tokens));
      for (const Request* r : s.group_members(g)) {
        ASSERT_TRUE(in_group.insert(r->id).second) << "request in two groups";
        ASSERT_EQ(r->group, g);
        ASSERT_EQ(r->state, RequestState::kRunning);
      }
    }
    for (uint64_t id : live) {
      const Request* r = s.find(id);
      ASSERT_NE(r, nullptr);
      held += int64_t(r->block_table.size());
      if (r->state == RequestState::kWaiting) {
        ASSERT_TRUE(r->block_table.empty());
      }
      ASSERT_EQ(r->state == RequestState::kRunning, in_group.count(id) == 1);
    }
    ASSERT_EQ(held + s.kv_cache().n_free(), o.n_blocks);
    ASSERT_LE(s.stats().n_running, o.max_running_requests);
  };

  auto drain = [&]() {
    s.take_events(&events);
    for (RequestEvent& ev : events) {
      Collected& c = res.got[ev.request_id];
      ASSERT_EQ(c.n_final, 0) << "event after the final one";
      if (ev.kind == EventKind::kDelta) {
        c.tokens.insert(c.tokens.end(), ev.token_ids.begin(), ev.token_ids.end());
        c.logprobs.insert(c.logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
      } else {
        ++c.n_final;
        c.final = ev;
        live.erase(ev.request_id);
      }
    }
  };

  for (;; ++iter) {
    // Arrivals.
    while (next_spec < specs.size() && specs[next_spec].arrive_at <= iter) {
      const Spec& sp = specs[next_spec++];
      model::SamplingParams p;
      p.max_tokens = sp.max_tokens;
      p.ignore_eos = sp.ignore_eos;
      p.logprobs = sp.logprobs;
      EXPECT_TRUE(s.submit(sp.id, sp.prompt, p, double(iter)).ok());
      live.insert(sp.id);
    }
    // Cancellations of anything live: waiting, running or in flight.
    if (!live.empty() && std::uniform_real_distribution<>(0, 1)(rng) < cfg.cancel_prob) {
      auto it = live.begin();
      std::advance(it, std::ptrdiff_t(rng() % live.size()));
      const uint64_t id = *it;
      const Request* r = s.find(id);
      if (!r) {
        ADD_FAILURE() << "live request " << id << " unknown to the scheduler";
        return res;
      }
      if (r->state == RequestState::kWaiting) {
        ++res.n_cancel_waiting;
      } else if (r->in_flight()) {
        ++res.n_cancel_in_flight;
      } else {
        ++res.n_cancel_at_coordinator;
      }
      EXPECT_TRUE(s.cancel(id).ok());
      res.cancelled.insert(id);
      drain();
    }
    // Fill every idle group, longest idle first.
    s.idle_groups(&idle);
    bool built_any = false, lost = false;
    for (int32_t g : idle) {
      if (s.build_plan(g, &plan)) {
        built_any = true;
        EXPECT_EQ(plan.group, g);
        EXPECT_EQ(plan.seq, uint64_t(res.n_plans));
        check_plan(plan);
        if (::testing::Test::HasFatalFailure()) return res;
        in_flight.push_back(plan);
        ++res.n_plans;
      }
    }
    // A stage is lost: every stage restarts empty; plans in flight never come back.
    if (!in_flight.empty() && std::uniform_real_distribution<>(0, 1)(rng) < cfg.stage_loss_prob) {
      s.preempt_all();
      ++res.n_stage_losses;
      lost = true;
      Tokens stale;
      stale.seq = in_flight.front().seq;
      stale.group = in_flight.front().group;
      EXPECT_EQ(s.apply_tokens(stale).code(), StatusCode::kFailedPrecondition);
      in_flight.clear();
      mirror.clear();
      drain();
    }
    check_accounting();
    if (::testing::Test::HasFatalFailure()) return res;
    if (in_flight.empty()) {
      if (next_spec == specs.size()) {
        if (!s.has_work()) break;
        if (!built_any && !lost) {
          ADD_FAILURE() << "work left but nothing scheduled: a deadlock";
          break;
        }
      }
      continue;
    }
    // The last stage returns plans in issue order; sometimes several at once.
    const size_t n_back = 1 + rng() % std::min<size_t>(in_flight.size(), 3);
    for (size_t k = 0; k < n_back; ++k) {
      const Plan& p = in_flight.front();
      Tokens t;
      t.seq = p.seq;
      t.group = p.group;
      for (const PlanEntry& e : p.entries) {
        if (!e.sample) continue;
        SampledToken st;
        st.request_id = e.request_id;
        st.token = fake_token(e.request_id, e.sample_step, n_vocab);
        st.logprob = -float(st.token % 7) / 8.0f;
        if (e.sampling.top_logprobs >= 0) {
          st.top_ids = {st.token};
          st.top_logprobs = {st.logprob};
        }
        t.tokens.push_back(st);
      }
      if (cfg.shuffle_tokens) std::shuffle(t.tokens.begin(), t.tokens.end(), rng);
      EXPECT_TRUE(s.apply_tokens(t).ok());
      EXPECT_EQ(s.apply_tokens(t).code(), StatusCode::kFailedPrecondition) << "duplicate accepted";
      in_flight.pop_front();
      drain();
      check_accounting();
      if (::testing::Test::HasFatalFailure()) return res;
    }
    if (iter > 200000) {
      ADD_FAILURE() << "simulation does not finish";
      break;
    }
  }
  drain();
  EXPECT_TRUE(live.empty());
  EXPECT_EQ(s.kv_cache().n_free(), o.n_blocks);
  res.stats = s.stats();
  return res;
}

std::vector<Spec> random_specs(std::mt19937_64& rng, int n, int32_t n_vocab, int64_t max_prompt,
                               int64_t max_gen, int64_t max_context) {
  std::vector<Spec> specs;
  int64_t t = 0;
  for (int i = 0; i < n; ++i) {
    Spec sp;
    sp.id = 1000 + uint64_t(i) * 7 + rng() % 5;
    const int64_t len = 1 + int64_t(rng() % uint64_t(max_prompt));
    for (int64_t k = 0; k < len; ++k) sp.prompt.push_back(int32_t(rng() % uint64_t(n_vocab)));
    sp.max_tokens = std::min<int64_t>(1 + int64_t(rng() % uint64_t(max_gen)), max_context - len);
    sp.ignore_eos = rng() % 4 == 0;
    sp.logprobs = rng() % 3 == 0;
    t += int64_t(rng() % 3);  // bursts and gaps
    sp.arrive_at = t;
    specs.push_back(std::move(sp));
  }
  return specs;
}

void check_outputs(const SimResult& res, const std::vector<Spec>& specs,
                   const std::vector<int32_t>& eos, int32_t n_vocab) {
  for (const Spec& sp : specs) {
    auto it = res.got.find(sp.id);
    ASSERT_NE(it, res.got.end()) << "request " << sp.id << " has no events";
    const Collected& c = it->second;
    ASSERT_EQ(c.n_final, 1) << "request " << sp.id;
    const std::vector<int32_t> want = expected_output(sp, eos, n_vocab);
    if (res.cancelled.count(sp.id)) {
      EXPECT_EQ(c.final.finish_reason, FinishReason::kAbort);
      ASSERT_LE(c.tokens.size(), want.size());
      EXPECT_TRUE(std::equal(c.tokens.begin(), c.tokens.end(), want.begin()))
          << "request " << sp.id;
      continue;
    }
    ASSERT_EQ(c.tokens, want) << "request " << sp.id;
    const bool hit_eos = !sp.ignore_eos && std::count(eos.begin(), eos.end(), want.back());
    EXPECT_EQ(c.final.finish_reason, hit_eos ? FinishReason::kStop : FinishReason::kLength);
    if (hit_eos) {
      EXPECT_EQ(c.final.stop_token, want.back());
    }
    EXPECT_EQ(c.final.n_output_tokens, int64_t(want.size()));
    EXPECT_EQ(c.final.n_prompt_tokens, int64_t(sp.prompt.size()));
    if (sp.logprobs) {
      ASSERT_EQ(c.logprobs.size(), want.size());
      for (size_t k = 0; k < want.size(); ++k) {
        EXPECT_EQ(c.logprobs[k].logprob, -float(want[k] % 7) / 8.0f);
        EXPECT_EQ(c.logprobs[k].top_ids, std::vector<int32_t>{want[k]});
      }
    } else {
      EXPECT_TRUE(c.logprobs.empty());
    }
  }
}

SchedulerOptions base_options(std::mt19937_64& rng) {
  SchedulerOptions o;
  o.n_groups = 1 + int32_t(rng() % 5);
  o.max_running_requests = 4 + int32_t(rng() % 40);
  o.max_batch_tokens = 8 + int32_t(rng() % 300);
  const int32_t sizes[] = {1, 4, 16};
  o.block_size = sizes[rng() % 3];
  o.max_context = 256;
  o.n_vocab = 97;
  o.eos_ids = {5, 11};
  o.seed = rng();
  o.chunked_pipeline = rng() % 4 != 0;
  o.chunk_attention_tokens = rng() % 2 == 0 ? 0 : 8 + int64_t(rng() % 200);
  return o;
}

TEST(Scheduler, RandomWorkloadsGiveTheModelsTokens) {
  std::mt19937_64& rng = test::rng();
  int64_t n_pipelined = 0;
  for (int trial = 0; trial < 12; ++trial) {
    SimConfig cfg;
    cfg.opt = base_options(rng);
    cfg.shuffle_tokens = trial % 3 == 0;
    // From a generous pool down to barely one whole context.
    const int32_t one_ctx =
        int32_t((cfg.opt.max_context + cfg.opt.block_size - 1) / cfg.opt.block_size);
    const int32_t factors[] = {40, 8, 3, 1};
    cfg.opt.n_blocks = one_ctx * factors[trial % 4];
    const std::vector<Spec> specs = random_specs(rng, 40, 97, 180, 60, cfg.opt.max_context);
    SCOPED_TRACE(::testing::Message()
                 << "trial " << trial << " M=" << cfg.opt.n_groups
                 << " budget=" << cfg.opt.max_batch_tokens << " bs=" << cfg.opt.block_size
                 << " blocks=" << cfg.opt.n_blocks << " seed=" << test::rng_seed());
    const SimResult res = simulate(cfg, specs, 97, rng);
    if (HasFatalFailure()) return;
    check_outputs(res, specs, cfg.opt.eos_ids, 97);
    EXPECT_EQ(res.stats.n_finished_stop + res.stats.n_finished_length, int64_t(specs.size()));
    EXPECT_EQ(res.stats.n_running + res.stats.n_waiting, 0);
    n_pipelined += res.n_pipelined;
  }
  EXPECT_GT(n_pipelined, 0) << "no chunk was planned behind another in flight";
}

TEST(Scheduler, TinyKvBudgetPreemptsAndStillCompletes) {
  std::mt19937_64& rng = test::rng();
  int64_t n_pipelined = 0, n_mid_prefill = 0;
  for (int trial = 0; trial < 4; ++trial) {
    SimConfig cfg;
    cfg.opt = base_options(rng);
    cfg.opt.n_groups = 2 + trial % 3;
    cfg.opt.max_running_requests = 50;
    cfg.opt.max_batch_tokens = 64 + int32_t(rng() % 200);
    cfg.opt.max_context = 200;
    std::vector<Spec> specs = random_specs(rng, 50, 97, 120, 60, cfg.opt.max_context);
    int64_t longest = 0;
    for (Spec& sp : specs) {
      sp.ignore_eos = true;  // long generations: more pressure
      sp.arrive_at = 0;      // all at once
      longest = std::max<int64_t>(longest, int64_t(sp.prompt.size()) + sp.max_tokens);
    }
    // Room for the contexts of about two requests.
    cfg.opt.n_blocks = int32_t(2 * ((longest + cfg.opt.block_size - 1) / cfg.opt.block_size));
    SCOPED_TRACE(::testing::Message() << "trial " << trial << " blocks=" << cfg.opt.n_blocks
                                      << " seed=" << test::rng_seed());
    const SimResult res = simulate(cfg, specs, 97, rng);
    if (HasFatalFailure()) return;
    check_outputs(res, specs, cfg.opt.eos_ids, 97);
    EXPECT_GT(res.stats.n_preemptions, 0);
    EXPECT_EQ(res.stats.n_finished_length, int64_t(specs.size()));
    n_pipelined += res.n_pipelined;
    n_mid_prefill += res.n_mid_prefill_stops;
  }
  // Requests were preempted between chunks of their prompt, with chunks pipelined.
  EXPECT_GT(n_pipelined, 0);
  EXPECT_GT(n_mid_prefill, 0);
}

TEST(Scheduler, RandomCancellationsFreeEverything) {
  std::mt19937_64& rng = test::rng();
  int64_t n_waiting = 0, n_at_coordinator = 0, n_in_flight = 0, n_completed = 0;
  for (int trial = 0; trial < 6; ++trial) {
    SimConfig cfg;
    cfg.opt = base_options(rng);
    cfg.opt.n_blocks = 40 + int32_t(rng() % 100);
    cfg.opt.max_context = std::min<int64_t>(256, cfg.opt.n_blocks * cfg.opt.block_size);
    cfg.cancel_prob = 0.3;
    const std::vector<Spec> specs = random_specs(
        rng, 40, 97, std::min<int64_t>(100, cfg.opt.max_context / 2), 60, cfg.opt.max_context);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << " seed=" << test::rng_seed());
    const SimResult res = simulate(cfg, specs, 97, rng);
    if (HasFatalFailure()) return;
    check_outputs(res, specs, cfg.opt.eos_ids, 97);
    EXPECT_EQ(res.stats.n_finished_abort, int64_t(res.cancelled.size()));
    EXPECT_EQ(res.stats.n_finished_abort + res.stats.n_finished_stop + res.stats.n_finished_length,
              int64_t(specs.size()));
    n_waiting += res.n_cancel_waiting;
    n_at_coordinator += res.n_cancel_at_coordinator;
    n_in_flight += res.n_cancel_in_flight;
    n_completed += res.stats.n_finished_stop + res.stats.n_finished_length;
  }
  // Every kind of cancellation happened, and not everything was cancelled.
  EXPECT_GT(n_waiting, 0);
  EXPECT_GT(n_at_coordinator, 0);
  EXPECT_GT(n_in_flight, 0);
  EXPECT_GT(n_completed, 0);
}

TEST(Scheduler, StageLossRecomputesEverything) {
  std::mt19937_64& rng = test::rng();
  int64_t n_losses = 0;
  for (int trial = 0; trial < 4; ++trial) {
    SimConfig cfg;
    cfg.opt = base_options(rng);
    cfg.opt.n_blocks = 200;
    cfg.opt.max_context = std::min<int64_t>(256, cfg.opt.n_blocks * cfg.opt.block_size);
    cfg.stage_loss_prob = 0.03;
    cfg.cancel_prob = 0.05;
    const std::vector<Spec> specs = random_specs(rng, 30, 97, 100, 60, cfg.opt.max_context);
    SCOPED_TRACE(::testing::Message() << "trial " << trial << " seed=" << test::rng_seed());
    const SimResult res = simulate(cfg, specs, 97, rng);
    if (HasFatalFailure()) return;
    check_outputs(res, specs, cfg.opt.eos_ids, 97);
    n_losses += res.n_stage_losses;
  }
  EXPECT_GT(n_losses, 0);
}

// --- Deterministic scenarios.

SchedulerOptions small_options() {
  SchedulerOptions o;
  o.n_groups = 2;
  o.max_running_requests = 16;
  o.max_batch_tokens = 32;
  o.block_size = 4;
  o.n_blocks = 64;
  o.max_context = 128;
  o.n_vocab = 100;
  o.seed = 7;
  return o;
}

std::vector<int32_t> random_prompt(size_t n) {
  std::vector<int32_t> p;
  for (size_t i = 0; i < n; ++i) p.push_back(int32_t(test::rng()() % 100));
  return p;
}

Tokens tokens_for(const Plan& p, int32_t n_vocab = 100) {
  Tokens t;
  t.seq = p.seq;
  t.group = p.group;
  for (const PlanEntry& e : p.entries) {
    if (e.sample)
      t.tokens.push_back(
          {e.request_id, fake_token(e.request_id, e.sample_step, n_vocab), 0.0f, {}, {}});
  }
  return t;
}

TEST(Scheduler, SubmitRefusesWhatCanNeverRun) {
  SchedulerOptions o = small_options();
  o.n_blocks = 10;  // 40 tokens of KV
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  p.max_tokens = 10;
  EXPECT_EQ(s.submit(1, {}, p).code(), StatusCode::kInvalidArgument);
  // 31 prompt + 10 generated: 40 tokens of KV (the last token needs none): fits exactly.
  EXPECT_TRUE(s.submit(2, random_prompt(31), p).ok());
  EXPECT_EQ(s.submit(2, random_prompt(3), p).code(), StatusCode::kAlreadyExists);
  const Status big = s.submit(3, random_prompt(32), p);
  EXPECT_EQ(big.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(big.message().find("request 3"), std::string::npos) << big.message();
  p.max_tokens = 100;
  EXPECT_EQ(s.submit(4, random_prompt(30), p).code(), StatusCode::kOutOfRange);  // > context
  p.max_tokens = 0;  // until the context or the pool is full: a 41-token prompt alone > pool
  EXPECT_EQ(s.submit(5, random_prompt(41), p).code(), StatusCode::kResourceExhausted);
  p.max_tokens = 4;
  EXPECT_EQ(s.submit(6, random_prompt(128), p).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(s.submit(7, {1, 2, 100}, p).code(), StatusCode::kOutOfRange);  // id >= n_vocab
  p.stop = {"x"};
  EXPECT_EQ(s.submit(8, {1, 2}, p).code(), StatusCode::kInvalidArgument);  // no tokenizer
  p.stop.clear();
  p.temperature = -1;
  EXPECT_EQ(s.submit(9, {1, 2}, p).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.stats().n_waiting, 1);
  // The one accepted runs to completion in this small pool.
  Plan plan;
  int guard = 0;
  while (s.has_work() && ++guard < 1000) {
    for (int32_t g : s.idle_groups()) {
      if (s.build_plan(g, &plan)) {
        ASSERT_TRUE(s.apply_tokens(tokens_for(plan)).ok());
      }
    }
  }
  EXPECT_FALSE(s.has_work());
  EXPECT_EQ(s.stats().n_finished_length, 1);
}

// queue_s on the final event: from submission (arrival_s) to the first admission (set_now),
// not reset by later steps; a request that never ran reports -1.
TEST(Scheduler, FinalEventCarriesQueueTime) {
  Scheduler s(small_options(), nullptr);
  model::SamplingParams p;
  p.max_tokens = 3;
  const double arrival = 10.0 + double(test::rng()() % 1000) / 8.0;
  const double admitted = arrival + 0.125 + double(test::rng()() % 100) / 16.0;
  ASSERT_TRUE(s.submit(1, random_prompt(5), p, arrival).ok());
  ASSERT_TRUE(s.submit(2, random_prompt(5), p, arrival).ok());
  ASSERT_TRUE(s.cancel(2).ok());  // never admitted
  s.set_now(admitted);
  Plan plan;
  int guard = 0;
  while (s.has_work() && ++guard < 100) {
    for (int32_t g : s.idle_groups()) {
      if (s.build_plan(g, &plan)) {
        ASSERT_TRUE(s.apply_tokens(tokens_for(plan)).ok());
      }
    }
    s.set_now(admitted + 100.0 + guard);  // later steps must not move the admission time
  }
  std::vector<RequestEvent> events;
  s.take_events(&events);
  int n_final = 0;
  for (const RequestEvent& e : events) {
    if (e.kind != EventKind::kFinal) continue;
    ++n_final;
    if (e.request_id == 1) {
      EXPECT_DOUBLE_EQ(e.queue_s, admitted - arrival);
    } else {
      EXPECT_EQ(e.request_id, 2u);
      EXPECT_EQ(e.queue_s, -1.0);
    }
  }
  EXPECT_EQ(n_final, 2);
}

TEST(Scheduler, SeedIsResolvedAtSubmission) {
  Scheduler s(small_options(), nullptr);
  model::SamplingParams p;
  ASSERT_TRUE(s.submit(1, {1, 2}, p).ok());
  ASSERT_TRUE(s.submit(2, {1, 2}, p).ok());
  p.seed = 1234;
  ASSERT_TRUE(s.submit(3, {1, 2}, p).ok());
  ASSERT_TRUE(s.find(1)->params.seed.has_value());
  EXPECT_NE(*s.find(1)->params.seed, *s.find(2)->params.seed);
  EXPECT_EQ(*s.find(3)->params.seed, 1234u);
  auto plan = s.build_plan(0);
  ASSERT_TRUE(plan.has_value());
  for (const PlanEntry& e : plan->entries) {
    EXPECT_TRUE(e.sample);
    EXPECT_EQ(e.sampling.seed, *s.find(e.request_id)->params.seed);
  }
}

TEST(Scheduler, ChunksLongPromptsAndServesDecodesFirst) {
  SchedulerOptions o = small_options();
  o.n_groups = 1;
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  p.max_tokens = 20;
  p.ignore_eos = true;
  ASSERT_TRUE(s.submit(1, random_prompt(5), p).ok());
  auto plan = s.build_plan(0);
  ASSERT_TRUE(plan && plan->entries.size() == 1);
  ASSERT_TRUE(s.apply_tokens(tokens_for(*plan)).ok());
  // A 70-token prompt arrives while request 1 decodes: chunks of 31, 31, 8 after its decode.
  const std::vector<int32_t> long_prompt = random_prompt(70);
  ASSERT_TRUE(s.submit(2, long_prompt, p).ok());
  std::vector<int32_t> fed;
  for (int step = 0; step < 3; ++step) {
    plan = s.build_plan(0);
    ASSERT_TRUE(plan.has_value());
    ASSERT_EQ(plan->entries.size(), 2u);
    EXPECT_EQ(plan->entries[0].request_id, 1u);  // the decode first
    EXPECT_EQ(plan->entries[0].n_new, 1);
    EXPECT_TRUE(plan->entries[0].sample);
    const PlanEntry& e = plan->entries[1];
    EXPECT_EQ(e.request_id, 2u);
    EXPECT_EQ(e.pos_begin, int32_t(fed.size()));
    EXPECT_EQ(e.n_new, step < 2 ? 31 : 8);
    EXPECT_EQ(e.reset_table, step == 0);
    EXPECT_EQ(e.sample, step == 2);
    fed.insert(fed.end(), e.token_ids.begin(), e.token_ids.end());
    ASSERT_TRUE(s.apply_tokens(tokens_for(*plan)).ok());
  }
  EXPECT_EQ(fed, long_prompt);
  EXPECT_EQ(s.find(2)->n_generated(), 1);
}

// Chunked pipeline: a long prompt's chunks go out in plans of consecutive groups, one behind
// the other, before the first comes back; only the last samples; decoding then keeps one plan in
// flight. Off, each chunk waits for the one before to come back.
TEST(Scheduler, ChunkedPipelinePlansTheNextChunkBehindTheFirst) {
  for (const bool on : {true, false}) {
    SCOPED_TRACE(on ? "chunked pipeline on" : "chunked pipeline off");
    SchedulerOptions o = small_options();
    o.n_groups = 3;
    o.chunked_pipeline = on;
    Scheduler s(o, nullptr);
    model::SamplingParams p;
    p.max_tokens = 4;
    p.ignore_eos = true;
    const std::vector<int32_t> prompt = random_prompt(100);
    ASSERT_TRUE(s.submit(1, prompt, p).ok());
    std::deque<Plan> flight;
    auto issue = [&] {
      for (int32_t g : s.idle_groups()) {
        if (auto plan = s.build_plan(g)) flight.push_back(*plan);
      }
    };
    issue();
    ASSERT_EQ(flight.size(), on ? 3u : 1u);
    for (size_t i = 0; i < flight.size(); ++i) {
      ASSERT_EQ(flight[i].entries.size(), 1u);
      const PlanEntry& e = flight[i].entries[0];
      EXPECT_EQ(e.pos_begin, int32_t(32 * i));
      EXPECT_EQ(e.n_new, 32);
      EXPECT_EQ(e.reset_table, i == 0);
      EXPECT_FALSE(e.sample);
    }
    EXPECT_EQ(s.find(1)->n_in_flight, int32_t(flight.size()));
    EXPECT_EQ(s.find(1)->group, flight.back().group);  // it moves with its latest chunk
    EXPECT_EQ(s.stats().n_in_flight, 1);
    // To the end, plans coming back in issue order: positions follow each other, only the
    // step that ends the sequence samples, and no step follows one that samples in flight.
    std::vector<int32_t> fed, out;
    std::vector<RequestEvent> ev;
    int32_t next_pos = 0;
    for (const Plan& q : flight) next_pos += q.entries[0].n_new;
    while (!flight.empty()) {
      const Plan back = flight.front();
      flight.pop_front();
      for (const PlanEntry& e : back.entries) {
        if (e.pos_begin < 100) fed.insert(fed.end(), e.token_ids.begin(), e.token_ids.end());
      }
      ASSERT_TRUE(s.apply_tokens(tokens_for(back)).ok());
      s.take_events(&ev);
      for (const RequestEvent& e : ev)
        out.insert(out.end(), e.token_ids.begin(), e.token_ids.end());
      const size_t before = flight.size();
      issue();
      int n_sampling = 0;
      for (size_t i = before; i < flight.size(); ++i) {
        const PlanEntry& e = flight[i].entries.at(0);
        EXPECT_EQ(e.pos_begin, next_pos);
        next_pos += e.n_new;
      }
      for (const Plan& q : flight) n_sampling += q.entries.at(0).sample ? 1 : 0;
      EXPECT_LE(n_sampling, 1);
      if (n_sampling == 1) EXPECT_TRUE(flight.back().entries.at(0).sample);
    }
    EXPECT_EQ(fed, prompt);
    std::vector<int32_t> want;
    for (uint64_t k = 0; k < 4; ++k) want.push_back(fake_token(1, k, 100));
    EXPECT_EQ(out, want);
    EXPECT_FALSE(s.has_work());
    EXPECT_EQ(s.kv_cache().n_free(), o.n_blocks);
  }
}

// While a long prompt's chunks are pipelined through every group, a decoding request still gets
// its token in each of its group's plans: the chunks take what its decode leaves of the budget.
TEST(Scheduler, PipelinedChunksDoNotStarveDecodes) {
  SchedulerOptions o = small_options();
  o.n_groups = 3;
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  p.max_tokens = 40;
  p.ignore_eos = true;
  ASSERT_TRUE(s.submit(1, random_prompt(4), p).ok());
  std::deque<Plan> flight;
  auto issue = [&] {
    for (int32_t g : s.idle_groups()) {
      if (auto plan = s.build_plan(g)) flight.push_back(*plan);
    }
  };
  issue();
  ASSERT_EQ(flight.size(), 1u);
  ASSERT_TRUE(s.apply_tokens(tokens_for(flight.front())).ok());
  flight.pop_front();
  p.max_tokens = 8;
  ASSERT_TRUE(s.submit(2, random_prompt(110), p).ok());
  int64_t n_decodes = 0, n_pipelined = 0;
  for (int round = 0; round < 12; ++round) {
    issue();
    ASSERT_FALSE(flight.empty());
    const Plan back = flight.front();
    flight.pop_front();
    int64_t n_tokens = 0;
    for (const PlanEntry& e : back.entries) {
      n_tokens += e.n_new;
      if (e.request_id == 1) ++n_decodes;
    }
    EXPECT_LE(n_tokens, o.max_batch_tokens);
    ASSERT_TRUE(s.apply_tokens(tokens_for(back)).ok());
    n_pipelined = std::max<int64_t>(n_pipelined, s.find(2) ? s.find(2)->n_in_flight : 0);
  }
  // Request 1 decodes in every round trip of its group.
  EXPECT_GE(n_decodes, 12 / 3);
  EXPECT_GE(n_pipelined, 2) << "request 2's chunks were not pipelined";
}

// A prompt cancelled while three of its chunks are in flight: no further chunk is planned, and
// it finishes (one final event, every block freed) when the last of them comes back.
TEST(Scheduler, CancelBetweenPipelinedChunks) {
  SchedulerOptions o = small_options();
  o.n_groups = 3;
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  p.max_tokens = 4;
  ASSERT_TRUE(s.submit(1, random_prompt(120), p).ok());
  std::vector<Plan> flight;
  for (int32_t g : s.idle_groups()) {
    if (auto plan = s.build_plan(g)) flight.push_back(*plan);
  }
  ASSERT_EQ(flight.size(), 3u);
  ASSERT_TRUE(s.cancel(1).ok());
  std::vector<RequestEvent> ev;
  for (size_t i = 0; i < 3; ++i) {
    s.take_events(&ev);
    EXPECT_TRUE(ev.empty()) << "finished before its last chunk came back";
    ASSERT_TRUE(s.apply_tokens(tokens_for(flight[i])).ok());
    for (int32_t g : s.idle_groups()) EXPECT_FALSE(s.build_plan(g).has_value());
  }
  s.take_events(&ev);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, EventKind::kFinal);
  EXPECT_EQ(ev[0].finish_reason, FinishReason::kAbort);
  EXPECT_EQ(s.kv_cache().n_free(), o.n_blocks);
  EXPECT_FALSE(s.has_work());
  EXPECT_EQ(std::vector<uint64_t>(s.pending_released().begin(), s.pending_released().end()),
            std::vector<uint64_t>{1});
}

// Dynamic chunking: later chunks of a long prompt shrink so that each costs about what the first
// does, cost(n, c) = n * (1 + (c + n / 2) / K), never below max_batch_tokens / 8.
TEST(Scheduler, DynamicChunksShrinkAsTheContextGrows) {
  SchedulerOptions o = small_options();
  o.n_groups = 1;
  o.max_batch_tokens = 64;
  o.max_context = 2048;
  o.n_blocks = 512;
  o.chunk_attention_tokens = 128;
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  p.max_tokens = 1;
  ASSERT_TRUE(s.submit(1, random_prompt(1500), p).ok());
  const double K = 128.0, first = 64.0 * (1.0 + 32.0 / K);
  std::vector<int32_t> sizes;
  int64_t fed = 0;
  while (auto plan = s.build_plan(0)) {
    const PlanEntry& e = plan->entries.at(0);
    EXPECT_EQ(e.pos_begin, fed);
    sizes.push_back(e.n_new);
    const double cost = e.n_new * (1.0 + (double(e.pos_begin) + e.n_new / 2.0) / K);
    if (e.n_new > 8 && !e.sample) EXPECT_LE(cost, first * 1.001) << "chunk at " << e.pos_begin;
    if (!e.sample) EXPECT_GT(cost + (1.0 + (e.pos_begin + e.n_new) / K), first * 0.999);
    fed += e.n_new;
    ASSERT_TRUE(s.apply_tokens(tokens_for(*plan)).ok());
  }
  EXPECT_EQ(fed, 1500);
  ASSERT_GT(sizes.size(), 3u);
  EXPECT_EQ(sizes[0], 64);
  for (size_t i = 1; i + 1 < sizes.size(); ++i) {
    EXPECT_LE(sizes[i], sizes[i - 1]);
    EXPECT_GE(sizes[i], 8);
  }
  EXPECT_LT(sizes[sizes.size() - 2], 32);
}

TEST(Scheduler, BurstIsSpreadOverGroups) {
  SchedulerOptions o = small_options();
  o.n_groups = 4;
  o.max_batch_tokens = 256;
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  for (uint64_t id = 1; id <= 10; ++id) ASSERT_TRUE(s.submit(id, random_prompt(3), p).ok());
  for (int32_t g : s.idle_groups()) ASSERT_TRUE(s.build_plan(g).has_value());
  std::vector<size_t> sizes;
  for (int32_t g = 0; g < 4; ++g) sizes.push_back(s.group_members(g).size());
  EXPECT_EQ(sizes, (std::vector<size_t>{3, 3, 2, 2}));
  EXPECT_TRUE(s.idle_groups().empty());
}

TEST(Scheduler, CancelWaitingRunningAndInFlight) {
  SchedulerOptions o = small_options();
  o.n_groups = 2;
  o.max_running_requests = 2;
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  p.max_tokens = 10;
  p.ignore_eos = true;
  ASSERT_TRUE(s.submit(1, random_prompt(6), p).ok());
  ASSERT_TRUE(s.submit(2, random_prompt(6), p).ok());
  ASSERT_TRUE(s.submit(3, random_prompt(6), p).ok());  // waits: running limit 2
  auto p0 = s.build_plan(0);
  auto p1 = s.build_plan(1);
  ASSERT_TRUE(p0 && p1);
  ASSERT_EQ(s.find(1)->group, 0);
  ASSERT_EQ(s.find(2)->group, 1);
  ASSERT_EQ(s.find(3)->state, RequestState::kWaiting);
  ASSERT_TRUE(s.apply_tokens(tokens_for(*p0)).ok());  // group 0 back: request 1 at coordinator
  const int32_t used = s.kv_cache().n_used();
  EXPECT_GT(used, 0);

  std::vector<RequestEvent> ev;
  s.take_events(&ev);
  ASSERT_EQ(ev.size(), 1u);  // request 1's first token
  EXPECT_EQ(ev[0].kind, EventKind::kDelta);

  ASSERT_TRUE(s.cancel(3).ok());  // waiting
  ASSERT_TRUE(s.cancel(1).ok());  // running, at the coordinator
  ASSERT_TRUE(s.cancel(2).ok());  // in flight
  EXPECT_EQ(s.cancel(3).code(), StatusCode::kNotFound);
  s.take_events(&ev);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].request_id, 3u);
  EXPECT_EQ(ev[1].request_id, 1u);
  for (const RequestEvent& e : ev) {
    EXPECT_EQ(e.kind, EventKind::kFinal);
    EXPECT_EQ(e.finish_reason, FinishReason::kAbort);
  }
  EXPECT_EQ(std::vector<uint64_t>(s.pending_released().begin(), s.pending_released().end()),
            std::vector<uint64_t>{1});
  EXPECT_NE(s.find(2), nullptr);  // still in flight
  ASSERT_TRUE(s.apply_tokens(tokens_for(*p1)).ok());
  s.take_events(&ev);
  ASSERT_EQ(ev.size(), 1u);  // no delta for the cancelled request, only its final
  EXPECT_EQ(ev[0].request_id, 2u);
  EXPECT_EQ(ev[0].kind, EventKind::kFinal);
  EXPECT_EQ(ev[0].finish_reason, FinishReason::kAbort);
  EXPECT_EQ(s.kv_cache().n_free(), o.n_blocks);
  EXPECT_FALSE(s.has_work());
  EXPECT_EQ(s.stats().n_finished_abort, 3);
  EXPECT_EQ(s.pending_released().size(), 2u);  // 1 and 2, for the next plan
}

TEST(Scheduler, PreemptionRequeuesNewestAtFrontAndKeepsOutputs) {
  SchedulerOptions o = small_options();
  o.n_groups = 1;
  o.block_size = 4;
  o.n_blocks = 6;  // 24 tokens
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  p.max_tokens = 12;
  p.ignore_eos = true;
  ASSERT_TRUE(s.submit(1, random_prompt(8), p).ok());
  ASSERT_TRUE(s.submit(2, random_prompt(8), p).ok());
  std::vector<RequestEvent> ev;
  std::vector<int32_t> out2;
  bool saw_preempt = false;
  Plan plan;
  while (s.has_work()) {
    const bool was_running = s.find(2) && s.find(2)->state == RequestState::kRunning;
    ASSERT_TRUE(s.build_plan(0, &plan));
    for (const PlanEntry& e : plan.entries) {
      if (e.request_id == 2 && e.reset_table && s.find(2)->n_preemptions > 0) {
        // Recompute: prompt and the tokens generated so far, sampling the next step.
        EXPECT_EQ(e.pos_begin, 0);
        EXPECT_EQ(e.n_new, int32_t(8 + out2.size()));
        EXPECT_TRUE(e.sample);
        EXPECT_EQ(e.sample_step, out2.size());
        saw_preempt = true;
      }
    }
    if (was_running && s.find(2)->state == RequestState::kWaiting) {
      // Preempted by this build: the stages hear of it in this plan, and the older one runs on.
      EXPECT_NE(std::find(plan.released.begin(), plan.released.end(), 2u), plan.released.end());
      EXPECT_EQ(s.find(1)->state, RequestState::kRunning);
      EXPECT_EQ(s.find(2)->block_table.size(), 0u);
    }
    ASSERT_TRUE(s.apply_tokens(tokens_for(plan)).ok());
    s.take_events(&ev);
    for (const RequestEvent& e : ev) {
      if (e.request_id == 2 && e.kind == EventKind::kDelta) {
        out2.insert(out2.end(), e.token_ids.begin(), e.token_ids.end());
      }
    }
  }
  EXPECT_TRUE(saw_preempt);
  std::vector<int32_t> want;
  for (uint64_t k = 0; k < 12; ++k) want.push_back(fake_token(2, k, 100));
  EXPECT_EQ(out2, want);  // nothing streamed twice, nothing lost
}

TEST(Scheduler, PenaltyIdsAreSent) {
  Scheduler s(small_options(), nullptr);
  model::SamplingParams p;
  p.max_tokens = 5;
  p.ignore_eos = true;
  p.repetition_penalty = 1.3f;
  const std::vector<int32_t> prompt = random_prompt(40);  // two chunks of 32 + 8
  ASSERT_TRUE(s.submit(1, prompt, p).ok());
  std::vector<int32_t> outputs;
  for (int step = 0; step < 5; ++step) {
    auto plan = s.build_plan(0);
    ASSERT_TRUE(plan && plan->entries.size() == 1);
    const PlanEntry& e = plan->entries[0];
    EXPECT_EQ(e.penalty_prompt_ids, step == 0 ? prompt : std::vector<int32_t>{});
    if (e.sample) {
      EXPECT_EQ(e.penalty_output_ids, outputs);
      EXPECT_FLOAT_EQ(e.sampling.repetition_penalty, 1.3f);
    }
    const Tokens t = tokens_for(*plan);
    for (const SampledToken& st : t.tokens) outputs.push_back(st.token);
    ASSERT_TRUE(s.apply_tokens(t).ok());
  }
}

TEST(Scheduler, MissingTokenIsAnErrorAndChangesNothing) {
  Scheduler s(small_options(), nullptr);
  model::SamplingParams p;
  ASSERT_TRUE(s.submit(1, {1, 2, 3}, p).ok());
  ASSERT_TRUE(s.submit(2, {1, 2, 3}, p).ok());
  auto plan = s.build_plan(0);
  ASSERT_TRUE(plan.has_value());
  Tokens t = tokens_for(*plan);
  t.tokens.pop_back();
  EXPECT_EQ(s.apply_tokens(t).code(), StatusCode::kDataLoss);
  EXPECT_FALSE(s.is_idle(0));
  EXPECT_EQ(s.find(1)->n_generated(), 0);
  EXPECT_TRUE(s.apply_tokens(tokens_for(*plan)).ok());
  EXPECT_TRUE(s.is_idle(0));
}

// Stop strings through a real tokenizer: the fake model "generates" a known text token by token.
TEST(Scheduler, StopStringAcrossTokensWithTokenizer) {
  auto tok = model::Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers/gpt2/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const std::string text =
      "Hello world, this is the stop test. The END is near, caf\xc3\xa9 after.";
  const std::vector<int32_t> ids = (*tok)->encode(text);
  ASSERT_GT(ids.size(), 8u);
  struct Case {
    std::vector<std::string> stop;
    int64_t max_tokens;
    std::string want_text;
    FinishReason want_reason;
  };
  const size_t end_at = text.find("END");
  const std::vector<Case> cases = {
      {{"e END i"}, int64_t(ids.size()), text.substr(0, end_at - 2), FinishReason::kStop},
      {{"stop t", "zzz"},
       int64_t(ids.size()),
       text.substr(0, text.find("stop t")),
       FinishReason::kStop},
      {{"never"}, int64_t(ids.size()), text, FinishReason::kLength},
      {{}, int64_t(ids.size()), text, FinishReason::kLength},
  };
  for (const Case& c : cases) {
    SchedulerOptions o = small_options();
    o.n_vocab = (*tok)->vocab_size();
    Scheduler s(o, tok->get());
    model::SamplingParams p;
    p.max_tokens = c.max_tokens;
    p.ignore_eos = true;
    p.stop = c.stop;
    ASSERT_TRUE(s.submit(1, {ids[0]}, p).ok());
    std::string streamed;
    RequestEvent final;
    std::vector<RequestEvent> ev;
    Plan plan;
    while (s.has_work()) {
      ASSERT_TRUE(s.build_plan(0, &plan));
      Tokens t;
      t.seq = plan.seq;
      t.group = plan.group;
      for (const PlanEntry& e : plan.entries) {
        t.tokens.push_back({e.request_id, ids[e.sample_step], 0.0f, {}, {}});
      }
      ASSERT_TRUE(s.apply_tokens(t).ok());
      s.take_events(&ev);
      for (const RequestEvent& e : ev) {
        if (e.kind == EventKind::kFinal) {
          final = e;
          continue;
        }
        streamed += e.text;
        // Never anything beyond the final text, so nothing needs taking back.
        ASSERT_EQ(c.want_text.compare(0, streamed.size(), streamed), 0) << streamed;
      }
    }
    EXPECT_EQ(streamed, c.want_text);
    EXPECT_EQ(final.finish_reason, c.want_reason);
    if (c.want_reason == FinishReason::kStop) {
      EXPECT_EQ(final.stop_string, c.stop[0]);
    }
  }
}

// How long the coordinator spends per micro-batch of 256 decoding requests (printed, not
// asserted: speed is measured by pp-bench).
TEST(Scheduler, DecodeStepCost) {
  SchedulerOptions o;
  o.n_groups = 2;
  o.max_running_requests = 512;
  o.max_batch_tokens = 512;
  o.block_size = 16;
  o.n_blocks = 65536;
  o.max_context = 4096;
  o.n_vocab = 1000;
  o.seed = 1;
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  p.max_tokens = 2000;
  p.ignore_eos = true;
  for (uint64_t id = 0; id < 512; ++id) ASSERT_TRUE(s.submit(id, random_prompt(100), p).ok());
  Plan plan;
  Tokens t;
  auto step = [&](int32_t g) {
    ASSERT_TRUE(s.build_plan(g, &plan));
    t.seq = plan.seq;
    t.group = g;
    t.tokens.clear();
    for (const PlanEntry& e : plan.entries) {
      if (!e.sample) continue;
      SampledToken& st = t.tokens.emplace_back();
      st.request_id = e.request_id;
      st.token = int32_t(mix(e.request_id + e.sample_step) % 1000);
    }
    ASSERT_TRUE(s.apply_tokens(t).ok());
  };
  std::vector<RequestEvent> ev;
  for (int i = 0; i < 400; ++i) {  // prefills, then into decode
    step(i % 2);
    s.take_events(&ev);
  }
  ASSERT_EQ(s.group_members(0).size(), 256u);
  const int n = 2000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    step(i % 2);
    s.take_events(&ev);
  }
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / n;
  ASSERT_EQ(plan.entries.size(), 256u);
  std::printf("[ scheduler ] build_plan + apply_tokens + events, 256 decoding requests: %.1f us\n",
              us);
}

}  // namespace
}  // namespace pp::pipeline
