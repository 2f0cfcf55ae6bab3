// The scheduler with prefix caching on, driven by a simulated pipeline whose fake stages keep
// not only each request's mirrored block table but a fake KV store: every slot (block, offset)
// holds a fingerprint of the whole token prefix that wrote it (real KV at a position depends on
// every token up to it). Each entry is checked as a stage would run it: what its attention
// reads (positions before pos_begin, through the mirrored table) must have been written, by an
// earlier plan, for exactly this request's prefix; what it writes must not land in a block any
// other request's table holds. So a shared block that was not yet issued, a wrong table delta, a
// write into a shared block or a cache that survives a lost stage all fail here.
//
// Deterministic scenarios first (two requests sharing a long prefix: the second computes only
// the uncached suffix; the same micro-batch shares nothing; a whole-prompt hit still computes
// the last token), then random workloads built from a few shared "system prompts", with tight
// KV pools (preemption, recompute hitting the cache), cancellations and lost stages, caching on
// and off, every request's tokens checked against the fake model and no block leaked.
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <map>
#include <random>
#include <set>
#include <unordered_map>
#include <vector>

#include "pp/pipeline/scheduler.h"
#include "test-fake-model.h"
#include "test-util.h"

namespace pp::pipeline {
namespace {

using transport::Plan;
using transport::PlanEntry;
using transport::SampledToken;
using transport::Tokens;

constexpr int32_t kVocab = 97;

// What the fake model samples for request `id` at generation step `step`.
int32_t fake_token(uint64_t id, uint64_t step) { return test::fake_token(id, step, kVocab); }
using test::mix;

struct Spec {
  uint64_t id = 0;
  std::vector<int32_t> prompt;
  int64_t max_tokens = 0;
  int64_t arrive_at = 0;  // loop iteration at which it is submitted
  // The whole sequence the fake model gives it (prompt, then max_tokens outputs; eos ignored),
  // and fingerprint[p] of its prefix [0, p].
  std::vector<int32_t> sequence;
  std::vector<uint64_t> fingerprint;
};

void finish_spec(Spec* s) {
  s->sequence = s->prompt;
  for (int64_t k = 0; k < s->max_tokens; ++k) s->sequence.push_back(fake_token(s->id, uint64_t(k)));
  uint64_t fp = 0;
  for (int32_t t : s->sequence) {
    fp = mix(fp ^ uint64_t(uint32_t(t)));
    s->fingerprint.push_back(fp);
  }
}

// The fake stages: mirrored tables (as stage-worker.cpp keeps them) and the fake KV store.
class FakeStages {
 public:
  FakeStages(int32_t n_blocks, int32_t block_size)
      : bs_(block_size), kv_(size_t(n_blocks) * size_t(block_size), 0) {}

  const std::vector<int32_t>& table(uint64_t id) { return tables_[id]; }

  // Runs a plan as every stage would: releases, table deltas, reads, then writes.
  void run(const Plan& p, const std::unordered_map<uint64_t, const Spec*>& spec_of) {
    for (uint64_t id : p.released) tables_.erase(id);
    for (const PlanEntry& e : p.entries) {
      std::vector<int32_t>& t = tables_[e.request_id];
      if (e.reset_table) t.clear();
      t.insert(t.end(), e.new_blocks.begin(), e.new_blocks.end());
      ASSERT_EQ(int64_t(t.size()), (e.pos_begin + e.n_new + bs_ - 1) / bs_)
          << "request " << e.request_id << ": the table covers exactly its KV";
    }
    // Attention reads the KV of every earlier position, written by earlier plans.
    for (const PlanEntry& e : p.entries) {
      const Spec& sp = *spec_of.at(e.request_id);
      const std::vector<int32_t>& t = tables_[e.request_id];
      for (int32_t pos = 0; pos < e.pos_begin; ++pos) {
        ASSERT_EQ(kv_[slot(t, pos)], sp.fingerprint[size_t(pos)])
            << "request " << e.request_id << " reads wrong KV at position " << pos << " (block "
            << t[size_t(pos / bs_)] << ")";
      }
    }
    // Writes land in blocks no other request holds.
    for (const PlanEntry& e : p.entries) {
      const Spec& sp = *spec_of.at(e.request_id);
      const std::vector<int32_t>& t = tables_[e.request_id];
      for (int32_t pos = e.pos_begin; pos < e.pos_begin + e.n_new; ++pos) {
        const int32_t b = t[size_t(pos / bs_)];
        for (const auto& [other, ot] : tables_) {
          ASSERT_TRUE(other == e.request_id || std::find(ot.begin(), ot.end(), b) == ot.end())
              << "request " << e.request_id << " writes block " << b << " that request " << other
              << " holds";
        }
        kv_[slot(t, pos)] = sp.fingerprint[size_t(pos)];
      }
    }
  }
  // A lost stage: every stage restarts empty.
  void lose() {
    tables_.clear();
    std::fill(kv_.begin(), kv_.end(), 0);
  }

 private:
  size_t slot(const std::vector<int32_t>& t, int32_t pos) const {
    return size_t(t[size_t(pos / bs_)]) * size_t(bs_) + size_t(pos % bs_);
  }

  int32_t bs_;
  std::unordered_map<uint64_t, std::vector<int32_t>> tables_;
  std::vector<uint64_t> kv_;  // [n_blocks * block_size] fingerprint of the writer's prefix
};

Tokens answer(const Plan& p) {
  Tokens t;
  t.seq = p.seq;
  t.group = p.group;
  for (const PlanEntry& e : p.entries) {
    if (e.sample)
      t.tokens.push_back({e.request_id, fake_token(e.request_id, e.sample_step), 0.0f, {}, {}});
  }
  return t;
}

// The scheduler's block accounting against its live requests: each block referenced exactly
// as often as tables hold it, and free + referenced + pooled == n_blocks.
void check_blocks(const Scheduler& s, const std::set<uint64_t>& live) {
  const KvCacheManager& m = s.kv_cache();
  std::map<int32_t, int32_t> holders;
  for (uint64_t id : live) {
    const Request* r = s.find(id);
    ASSERT_NE(r, nullptr);
    for (int32_t b : r->block_table) ++holders[b];
  }
  for (int32_t b = 0; b < m.n_blocks(); ++b) {
    const auto it = holders.find(b);
    ASSERT_EQ(m.ref_count(b), it == holders.end() ? 0 : it->second) << "block " << b;
  }
  ASSERT_EQ(m.n_used(), int32_t(holders.size()));
  ASSERT_EQ(m.n_free() + m.n_used() + m.n_cached_unreferenced(), m.n_blocks());
  if (!m.caching()) {
    ASSERT_EQ(m.n_cached_unreferenced(), 0);
  }
}

struct SimResult {
  std::map<uint64_t, std::vector<int32_t>> tokens;  // streamed
  std::map<uint64_t, FinishReason> finish;
  std::set<uint64_t> cancelled;
  SchedulerStats stats;
  int64_t n_recompute_hits = 0;  // reset entries of preempted requests that started past 0
};

// Drives the scheduler to completion with plans returned in issue order.
SimResult simulate(const SchedulerOptions& o, std::vector<Spec>& specs, double cancel_prob,
                   double stage_loss_prob, std::mt19937_64& rng) {
  SimResult res;
  Scheduler s(o, nullptr);
  FakeStages stages(o.n_blocks, o.block_size);
  std::unordered_map<uint64_t, const Spec*> spec_of;
  for (const Spec& sp : specs) spec_of[sp.id] = &sp;
  std::deque<Plan> in_flight;
  std::set<uint64_t> live;
  std::vector<RequestEvent> events;
  Plan plan;
  size_t next = 0;
  auto drain = [&] {
    s.take_events(&events);
    for (const RequestEvent& ev : events) {
      auto& got = res.tokens[ev.request_id];
      got.insert(got.end(), ev.token_ids.begin(), ev.token_ids.end());
      if (ev.kind == EventKind::kFinal) {
        res.finish[ev.request_id] = ev.finish_reason;
        live.erase(ev.request_id);
      }
    }
  };
  for (int64_t iter = 0; iter < 100000; ++iter) {
    while (next < specs.size() && specs[next].arrive_at <= iter) {
      const Spec& sp = specs[next++];
      model::SamplingParams p;
      p.max_tokens = sp.max_tokens;
      p.ignore_eos = true;
      EXPECT_TRUE(s.submit(sp.id, sp.prompt, p).ok());
      live.insert(sp.id);
    }
    if (!live.empty() && std::uniform_real_distribution<>(0, 1)(rng) < cancel_prob) {
      const uint64_t id = *std::next(live.begin(), std::ptrdiff_t(rng() % live.size()));
      EXPECT_TRUE(s.cancel(id).ok());
      res.cancelled.insert(id);
      drain();
    }
    for (int32_t g : s.idle_groups()) {
      if (!s.build_plan(g, &plan)) continue;
      for (const PlanEntry& e : plan.entries) {
        EXPECT_LT(e.pos_begin + e.n_new, int32_t(spec_of[e.request_id]->sequence.size()) + 1);
        if (!o.enable_prefix_cache) {
          EXPECT_TRUE(!e.reset_table || e.pos_begin == 0);
        }
        if (e.reset_table && e.pos_begin > 0 && s.find(e.request_id)->n_preemptions > 0) {
          ++res.n_recompute_hits;
        }
        for (int32_t i = 0; i < e.n_new; ++i) {
          EXPECT_EQ(e.token_ids[size_t(i)],
                    spec_of[e.request_id]->sequence[size_t(e.pos_begin + i)]);
        }
      }
      // Every stage runs plans in issue order, so running it now is what they would see.
      stages.run(plan, spec_of);
      if (::testing::Test::HasFatalFailure()) return res;
      in_flight.push_back(plan);
    }
    if (!in_flight.empty() && std::uniform_real_distribution<>(0, 1)(rng) < stage_loss_prob) {
      s.preempt_all();
      EXPECT_EQ(s.kv_cache().stats().n_cached_blocks, 0) << "a lost stage's KV stays cached";
      in_flight.clear();
      stages.lose();
      drain();
    }
    if (!in_flight.empty()) {
      EXPECT_TRUE(s.apply_tokens(answer(in_flight.front())).ok());
      in_flight.pop_front();
      drain();
    }
    check_blocks(s, live);
    if (::testing::Test::HasFatalFailure()) return res;
    if (next == specs.size() && !s.has_work() && in_flight.empty()) break;
  }
  EXPECT_TRUE(live.empty()) << "simulation does not finish";
  res.stats = s.stats();
  // No leak: nothing referenced; with caching off every block is free, with caching on the rest
  // is cached, and a flush frees it.
  const KvCacheManager& m = s.kv_cache();
  EXPECT_EQ(m.n_used(), 0);
  if (o.enable_prefix_cache) {
    EXPECT_EQ(m.n_free() + m.n_cached_unreferenced(), o.n_blocks);
    EXPECT_TRUE(s.flush_prefix_cache());
  } else {
    EXPECT_EQ(m.n_cached_unreferenced(), 0);
  }
  EXPECT_EQ(m.n_free(), o.n_blocks);
  return res;
}

SchedulerOptions small_options(bool caching) {
  SchedulerOptions o;
  o.n_groups = 2;
  o.max_running_requests = 16;
  o.max_batch_tokens = 64;
  o.block_size = 4;
  o.n_blocks = 64;
  o.max_context = 128;
  o.n_vocab = kVocab;
  o.seed = 7;
  o.enable_prefix_cache = caching;
  return o;
}

std::vector<int32_t> random_tokens(size_t n) {
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = int32_t(test::rng()() % kVocab);
  return t;
}

Spec make_spec(uint64_t id, std::vector<int32_t> prompt, int64_t max_tokens) {
  Spec s;
  s.id = id;
  s.prompt = std::move(prompt);
  s.max_tokens = max_tokens;
  finish_spec(&s);
  return s;
}

// Two requests sharing a 40-token prefix (10 blocks of 4), the second submitted after the plan
// that fills the prefix was issued: it computes only its 5-token suffix, and its table starts
// with the first request's 10 blocks.
TEST(SchedulerPrefixCache, SecondRequestComputesOnlyTheUncachedSuffix) {
  const std::vector<int32_t> shared = random_tokens(40);
  std::vector<int32_t> p1 = shared, p2 = shared;
  const std::vector<int32_t> tail1 = random_tokens(3), tail2 = random_tokens(5);
  p1.insert(p1.end(), tail1.begin(), tail1.end());
  p2.insert(p2.end(), tail2.begin(), tail2.end());
  for (bool caching : {false, true}) {
    SCOPED_TRACE(caching ? "caching on" : "caching off");
    const SchedulerOptions o = small_options(caching);
    Scheduler s(o, nullptr);
    std::vector<Spec> specs = {make_spec(1, p1, 4), make_spec(2, p2, 4)};
    std::unordered_map<uint64_t, const Spec*> spec_of = {{1, &specs[0]}, {2, &specs[1]}};
    FakeStages stages(o.n_blocks, o.block_size);
    model::SamplingParams p;
    p.max_tokens = 4;
    p.ignore_eos = true;
    ASSERT_TRUE(s.submit(1, p1, p).ok());
    auto plan1 = s.build_plan(0);
    ASSERT_TRUE(plan1 && plan1->entries.size() == 1);
    const PlanEntry& e1 = plan1->entries[0];
    EXPECT_EQ(e1.pos_begin, 0);
    EXPECT_EQ(e1.n_new, 43);
    ASSERT_EQ(e1.new_blocks.size(), 11u);
    stages.run(*plan1, spec_of);

    ASSERT_TRUE(s.submit(2, p2, p).ok());  // plan 1, which fills the prefix, is issued
    auto plan2 = s.build_plan(1);
    ASSERT_TRUE(plan2 && plan2->entries.size() == 1);
    const PlanEntry& e2 = plan2->entries[0];
    EXPECT_TRUE(e2.reset_table);
    EXPECT_TRUE(e2.sample);
    ASSERT_EQ(e2.new_blocks.size(), 12u);  // the whole table: 45 tokens
    stages.run(*plan2, spec_of);
    if (HasFatalFailure()) return;
    const std::vector<int32_t>& t1 = stages.table(1);
    const std::vector<int32_t>& t2 = stages.table(2);
    if (caching) {
      EXPECT_EQ(e2.pos_begin, 40);
      EXPECT_EQ(e2.n_new, 5);
      EXPECT_EQ(e2.token_ids, tail2);
      EXPECT_TRUE(std::equal(t1.begin(), t1.begin() + 10, t2.begin()));
      EXPECT_EQ(std::count(t1.begin(), t1.end(), t2[10]), 0);
      EXPECT_EQ(std::count(t1.begin(), t1.end(), t2[11]), 0);
      for (int k = 0; k < 10; ++k) EXPECT_EQ(s.kv_cache().ref_count(t1[size_t(k)]), 2);
      EXPECT_EQ(s.kv_cache().stats().n_hit_tokens, 40);
      EXPECT_EQ(s.stats().kv_cache.n_hits, 1);
      EXPECT_EQ(s.stats().n_prefill_tokens, 43 + 5);
    } else {
      EXPECT_EQ(e2.pos_begin, 0);
      EXPECT_EQ(e2.n_new, 45);
      EXPECT_EQ(e2.token_ids, p2);
      EXPECT_EQ(s.kv_cache().stats().n_queries, 0);
    }
    // Both run to the fake model's tokens; then nothing is referenced.
    std::deque<Plan> in_flight = {*plan1, *plan2};
    std::vector<RequestEvent> ev;
    std::map<uint64_t, std::vector<int32_t>> out;
    std::map<uint64_t, int64_t> cached_tokens;
    for (int guard = 0; guard < 100 && (s.has_work() || !in_flight.empty()); ++guard) {
      if (!in_flight.empty()) {
        ASSERT_TRUE(s.apply_tokens(answer(in_flight.front())).ok());
        in_flight.pop_front();
      }
      for (int32_t g : s.idle_groups()) {
        if (auto next = s.build_plan(g)) {
          stages.run(*next, spec_of);
          if (HasFatalFailure()) return;
          in_flight.push_back(*next);
        }
      }
      s.take_events(&ev);
      for (const RequestEvent& e : ev) {
        out[e.request_id].insert(out[e.request_id].end(), e.token_ids.begin(), e.token_ids.end());
        if (e.kind == EventKind::kFinal) cached_tokens[e.request_id] = e.n_cached_tokens;
      }
    }
    for (const Spec& sp : specs) {
      EXPECT_EQ(out[sp.id], std::vector<int32_t>(sp.sequence.begin() + int64_t(sp.prompt.size()),
                                                 sp.sequence.end()));
    }
    EXPECT_EQ(cached_tokens[1], 0);
    EXPECT_EQ(cached_tokens[2], caching ? 40 : 0);
    EXPECT_EQ(s.kv_cache().n_used(), 0);
    EXPECT_EQ(s.kv_cache().n_free() + s.kv_cache().n_cached_unreferenced(), o.n_blocks);
    EXPECT_TRUE(s.flush_prefix_cache());
    EXPECT_EQ(s.kv_cache().n_free(), o.n_blocks);
  }
}

// Requests admitted into the same micro-batch share nothing (the blocks are written by that very
// plan); the next plan's request shares what the first one filled.
TEST(SchedulerPrefixCache, NoSharingWithinOnePlan) {
  const std::vector<int32_t> prompt = random_tokens(20);
  SchedulerOptions o = small_options(true);
  o.n_groups = 1;
  Scheduler s(o, nullptr);
  model::SamplingParams p;
  p.max_tokens = 2;
  ASSERT_TRUE(s.submit(1, prompt, p).ok());
  ASSERT_TRUE(s.submit(2, prompt, p).ok());
  auto plan = s.build_plan(0);
  ASSERT_TRUE(plan && plan->entries.size() == 2);
  for (const PlanEntry& e : plan->entries) {
    EXPECT_EQ(e.pos_begin, 0);
    EXPECT_EQ(e.n_new, 20);
  }
  // The second copy stays private: 5 blocks cached, not 10.
  EXPECT_EQ(s.kv_cache().stats().n_cached_blocks, 5);
  ASSERT_TRUE(s.apply_tokens(answer(*plan)).ok());
  ASSERT_TRUE(s.submit(3, prompt, p).ok());
  auto next = s.build_plan(0);
  ASSERT_TRUE(next && next->entries.size() == 3);
  const PlanEntry& e3 = next->entries[2];
  ASSERT_EQ(e3.request_id, 3u);
  // A whole-prompt hit: the last token is still computed, so 4 of its 5 blocks are shared.
  EXPECT_TRUE(e3.reset_table);
  EXPECT_EQ(e3.pos_begin, 16);
  EXPECT_EQ(e3.n_new, 4);
  ASSERT_EQ(e3.new_blocks.size(), 5u);
  EXPECT_TRUE(std::equal(plan->entries[0].new_blocks.begin(),
                         plan->entries[0].new_blocks.begin() + 4, e3.new_blocks.begin()));
  EXPECT_EQ(s.find(3)->block_table, e3.new_blocks);
}

// A lost stage empties the cache: recompute starts from position 0.
TEST(SchedulerPrefixCache, StageLossFlushesTheCache) {
  const std::vector<int32_t> prompt = random_tokens(30);
  Scheduler s(small_options(true), nullptr);
  model::SamplingParams p;
  p.max_tokens = 3;
  ASSERT_TRUE(s.submit(1, prompt, p).ok());
  ASSERT_TRUE(s.build_plan(0).has_value());
  EXPECT_GT(s.kv_cache().stats().n_cached_blocks, 0);
  EXPECT_EQ(s.preempt_all(), 1);
  EXPECT_EQ(s.kv_cache().stats().n_cached_blocks, 0);
  EXPECT_EQ(s.kv_cache().n_free(), s.kv_cache().n_blocks());
  auto plan = s.build_plan(0);
  ASSERT_TRUE(plan && plan->entries.size() == 1);
  EXPECT_EQ(plan->entries[0].pos_begin, 0);
  EXPECT_TRUE(plan->entries[0].reset_table);
}

TEST(SchedulerPrefixCache, FlushIsRefusedWhileRequestsHoldBlocks) {
  Scheduler s(small_options(true), nullptr);
  model::SamplingParams p;
  p.max_tokens = 3;
  ASSERT_TRUE(s.submit(1, random_tokens(12), p).ok());
  ASSERT_TRUE(s.build_plan(0).has_value());
  EXPECT_FALSE(s.flush_prefix_cache());
  EXPECT_GT(s.kv_cache().stats().n_cached_blocks, 0);
}

// Random workloads: prompts are cuts of a few shared system prompts plus their own tails.
std::vector<Spec> shared_prefix_specs(std::mt19937_64& rng, int n, int64_t max_context) {
  auto uniform = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  std::vector<std::vector<int32_t>> docs(size_t(uniform(1, 4)));
  for (auto& d : docs) {
    d.resize(size_t(uniform(8, 120)));
    for (int32_t& t : d) t = int32_t(rng() % kVocab);
  }
  std::vector<Spec> specs;
  int64_t t = 0;
  for (int i = 0; i < n; ++i) {
    const auto& d = docs[size_t(uniform(0, int64_t(docs.size()) - 1))];
    std::vector<int32_t> prompt(d.begin(), d.begin() + uniform(1, int64_t(d.size())));
    for (int64_t k = uniform(0, 3) == 0 ? 0 : uniform(1, 40); k > 0; --k) {
      prompt.push_back(int32_t(rng() % kVocab));
    }
    const int64_t max_tokens =
        std::min<int64_t>(uniform(1, 40), max_context - int64_t(prompt.size()));
    Spec sp = make_spec(2000 + uint64_t(i) * 3, std::move(prompt), max_tokens);
    t += uniform(0, 3);
    sp.arrive_at = t;
    specs.push_back(std::move(sp));
  }
  return specs;
}

TEST(SchedulerPrefixCache, RandomWorkloadsReadTheRightKv) {
  std::mt19937_64& rng = test::rng();
  int64_t n_hit_tokens = 0, n_recompute_hits = 0, n_preemptions = 0;
  for (int trial = 0; trial < 16; ++trial) {
    SchedulerOptions o;
    o.n_groups = 1 + int32_t(rng() % 4);
    o.max_running_requests = 4 + int32_t(rng() % 20);
    o.max_batch_tokens = 16 + int32_t(rng() % 200);
    const int32_t sizes[] = {1, 4, 16};
    o.block_size = sizes[rng() % 3];
    o.max_context = 200;
    o.n_vocab = kVocab;
    o.seed = rng();
    o.enable_prefix_cache = trial % 4 != 3;
    // From a generous pool down to about two whole contexts (preemption).
    const int32_t one_ctx = int32_t((o.max_context + o.block_size - 1) / o.block_size);
    const int32_t factors[] = {20, 6, 2};
    o.n_blocks = one_ctx * factors[trial % 3];
    const double cancel_prob = trial % 5 == 1 ? 0.1 : 0.0;
    const double loss_prob = trial % 5 == 2 ? 0.02 : 0.0;
    std::vector<Spec> specs = shared_prefix_specs(rng, 40, o.max_context);
    SCOPED_TRACE(::testing::Message()
                 << "trial " << trial << " caching=" << o.enable_prefix_cache << " M=" << o.n_groups
                 << " budget=" << o.max_batch_tokens << " bs=" << o.block_size
                 << " blocks=" << o.n_blocks << " seed=" << test::rng_seed());
    const SimResult res = simulate(o, specs, cancel_prob, loss_prob, rng);
    if (HasFatalFailure()) return;
    for (const Spec& sp : specs) {
      const std::vector<int32_t> want(sp.sequence.begin() + int64_t(sp.prompt.size()),
                                      sp.sequence.end());
      const std::vector<int32_t>& got = res.tokens.at(sp.id);
      if (res.cancelled.count(sp.id)) {
        ASSERT_LE(got.size(), want.size());
        EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << "request " << sp.id;
      } else {
        EXPECT_EQ(got, want) << "request " << sp.id;
        EXPECT_EQ(res.finish.at(sp.id), FinishReason::kLength);
      }
    }
    if (!o.enable_prefix_cache) {
      EXPECT_EQ(res.stats.kv_cache.n_queries, 0);
    }
    n_hit_tokens += res.stats.kv_cache.n_hit_tokens;
    n_recompute_hits += res.n_recompute_hits;
    n_preemptions += res.stats.n_preemptions;
  }
  // The workloads exercised what they are for.
  EXPECT_GT(n_hit_tokens, 0);
  EXPECT_GT(n_preemptions, 0);
  EXPECT_GT(n_recompute_hits, 0);
}

}  // namespace
}  // namespace pp::pipeline
