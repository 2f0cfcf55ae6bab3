// The coordinator's scheduler (see scheduler.h for the policy and the plan format). Hot path:
// build_plan and apply_tokens for a few hundred decoding requests; they walk the group's members
// once, reuse the caller's Plan and their scratch vectors, and look nothing up by id (an
// in-flight plan keeps pointers to its requests). Preemption scans all running requests, which
// is fine: it is rare and the scan is short.
#include "pp/pipeline/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "pp/assert.h"

namespace pp::pipeline {

namespace {

uint64_t splitmix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The prefix cache's extra key of a request: what its KV depends on besides its token ids. Plain
// text depends on nothing else; a LoRA adapter's id or a multimodal input's hash would go here.
uint64_t cache_key(const Request&) { return kKvNoExtraKey; }

}  // namespace

Status SchedulerOptions::validate() const {
  if (n_groups < 1) return invalid_argument("n_groups must be >= 1, got {}", n_groups);
  if (max_running_requests < 1) {
    return invalid_argument("max_running_requests must be >= 1, got {}", max_running_requests);
  }
  if (max_batch_tokens < 1) {
    return invalid_argument("max_batch_tokens must be >= 1, got {}", max_batch_tokens);
  }
  if (block_size < 1) return invalid_argument("block_size must be >= 1, got {}", block_size);
  if (n_blocks < 1) return invalid_argument("n_blocks must be >= 1, got {}", n_blocks);
  if (max_context < 2) return invalid_argument("max_context must be >= 2, got {}", max_context);
  if (n_vocab < 0) return invalid_argument("n_vocab must be >= 0, got {}", n_vocab);
  if (chunk_attention_tokens < 0) {
    return invalid_argument("chunk_attention_tokens must be >= 0, got {}", chunk_attention_tokens);
  }
  return ok_status();
}

int64_t chunk_attention_tokens_for(const model::ModelConfig& c) {
  // The weights of one decoder layer that every token multiplies: q, k, v, o and a gated MLP.
  const int64_t linear =
      c.n_embd * (c.q_dim() + 2 * c.kv_dim()) + c.q_dim() * c.n_embd + 3 * c.n_embd * c.n_ff;
  // Per context token, attention does q_dim multiply-adds for the scores and q_dim for the
  // values: 2 * q_dim against the linear layers' `linear`.
  if (c.q_dim() <= 0 || linear <= 0) return 0;
  return std::max<int64_t>(1, linear / (2 * c.q_dim()));
}

transport::WireSampling to_wire_sampling(const model::SamplingParams& p, uint64_t seed) {
  transport::WireSampling w;
  w.temperature = p.temperature;
  w.top_p = p.top_p;
  w.min_p = p.min_p;
  w.top_k = std::max(p.top_k, 0);
  w.presence_penalty = p.presence_penalty;
  w.frequency_penalty = p.frequency_penalty;
  w.repetition_penalty = p.repetition_penalty;
  w.seed = seed;
  w.top_logprobs = p.logprobs ? p.top_logprobs : -1;
  p.split_logit_bias(&w.bias_ids, &w.bias_values);
  return w;
}

Result<int64_t> resolve_max_tokens(int64_t n_prompt, int64_t max_tokens, int64_t max_context,
                                   int64_t n_blocks, int32_t block_size) {
  PP_ASSERT(block_size > 0);
  if (n_prompt < 1) return invalid_argument("empty prompt");
  if (max_tokens < 0) return invalid_argument("max_tokens must be >= 0, got {}", max_tokens);
  const int64_t ctx = max_context, pool = n_blocks * int64_t(block_size);
  if (n_prompt >= ctx) {
    return make_error(StatusCode::kOutOfRange,
                      "prompt of {} tokens leaves no room in the context of {} tokens", n_prompt,
                      ctx);
  }
  if (max_tokens > 0 && n_prompt + max_tokens > ctx) {
    return make_error(StatusCode::kOutOfRange,
                      "prompt of {} tokens plus max_tokens {} exceeds the context of {} tokens",
                      n_prompt, max_tokens, ctx);
  }
  const auto blocks_for = [&](int64_t n) { return (n + block_size - 1) / block_size; };
  if (n_prompt > pool) {
    return make_error(StatusCode::kResourceExhausted,
                      "prompt of {} tokens needs {} KV blocks of {} tokens but the whole KV pool "
                      "has only {} ({} tokens)",
                      n_prompt, blocks_for(n_prompt), block_size, n_blocks, pool);
  }
  // Unlimited: what the context and the pool leave (the last token needs no KV, hence + 1).
  const int64_t limit = max_tokens > 0 ? max_tokens : std::min(ctx, pool + 1) - n_prompt;
  const int64_t n_kv = n_prompt + limit - 1;
  if (n_kv > pool) {
    return make_error(StatusCode::kResourceExhausted,
                      "prompt of {} tokens plus max_tokens {} needs {} KV blocks of {} tokens but "
                      "the whole KV pool has only {} ({} tokens); lower max_tokens to at most {}",
                      n_prompt, max_tokens, blocks_for(n_kv), block_size, n_blocks, pool,
                      pool + 1 - n_prompt);
  }
  return limit;
}

Scheduler::Scheduler(SchedulerOptions options, const model::Tokenizer* tokenizer)
    : options_(std::move(options)),
      tokenizer_(tokenizer),
      blocks_(options_.n_blocks, options_.block_size, options_.enable_prefix_cache) {
  const Status s = options_.validate();
  PP_ASSERT_MSG(s.ok(), s.message().c_str());
  groups_.resize(size_t(options_.n_groups));
  for (size_t g = 0; g < groups_.size(); ++g) groups_[g].idle_since = g;
  idle_clock_ = groups_.size();
  seed_state_ = options_.seed ? *options_.seed
                              : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  counters_.kv_blocks_total = options_.n_blocks;
}

Scheduler::~Scheduler() = default;

uint64_t Scheduler::next_seed() { return splitmix64(&seed_state_); }

Status Scheduler::submit(uint64_t id, std::vector<int32_t> prompt_ids, model::SamplingParams params,
                         double arrival_s, std::unique_ptr<GrammarMatcher> grammar) {
  if (requests_.count(id)) return make_error(StatusCode::kAlreadyExists, "request {} exists", id);
  if (prompt_ids.empty()) return invalid_argument("request {}: empty prompt", id);
  const int64_t n_vocab =
      options_.n_vocab > 0 ? options_.n_vocab : std::numeric_limits<int32_t>::max();
  PP_RETURN_IF_ERROR(params.validate(n_vocab).with_context(fmt::format("request {}", id)));
  for (int32_t t : prompt_ids) {
    if (t < 0 || t >= n_vocab) {
      return make_error(StatusCode::kOutOfRange,
                        "request {}: prompt token id {} is outside the vocabulary [0, {})", id, t,
                        n_vocab);
    }
  }
  if (!params.stop.empty() && !tokenizer_) {
    return invalid_argument("request {}: stop strings need a tokenizer", id);
  }
  if (params.grammar.active() && !grammar) {
    return invalid_argument("request {}: its {} grammar was not compiled", id,
                            model::grammar_kind_name(params.grammar.kind));
  }
  Result<int64_t> limit =
      resolve_max_tokens(int64_t(prompt_ids.size()), params.max_tokens, options_.max_context,
                         blocks_.n_blocks(), blocks_.block_size());
  if (!limit.ok()) return limit.status().with_context(fmt::format("request {}", id));

  auto r = std::make_unique<Request>();
  r->id = id;
  r->prompt_ids = std::move(prompt_ids);
  if (!params.seed) params.seed = next_seed();
  r->stop_checker = StopChecker(params.stop);
  r->params = std::move(params);
  r->max_tokens = *limit;
  r->grammar = std::move(grammar);
  r->arrival_s = arrival_s;
  r->arrival_index = next_arrival_++;
  if (tokenizer_) {
    r->detok =
        std::make_unique<model::IncrementalDetokenizer>(*tokenizer_, r->params.skip_special_tokens);
  }
  waiting_.push_back(r.get());
  requests_.emplace(id, std::move(r));
  return ok_status();
}

Status Scheduler::cancel(uint64_t id) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return not_found("request {} not found", id);
  Request* r = it->second.get();
  switch (r->state) {
    case RequestState::kWaiting:
      waiting_.erase(std::find(waiting_.begin(), waiting_.end(), r));
      count_finished(FinishReason::kAbort);
      r->finish(FinishReason::kAbort, &events_);
      requests_.erase(it);
      return ok_status();
    case RequestState::kRunning:
      if (r->in_flight()) {
        r->cancel_requested = true;
      } else {
        finish_running(r, FinishReason::kAbort);
      }
      return ok_status();
    case RequestState::kFinished:
      break;
  }
  return not_found("request {} not found", id);
}

void Scheduler::count_finished(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      ++counters_.n_finished_stop;
      break;
    case FinishReason::kLength:
      ++counters_.n_finished_length;
      break;
    case FinishReason::kAbort:
      ++counters_.n_finished_abort;
      break;
    case FinishReason::kNone:
      PP_ASSERT(false);
  }
}

void Scheduler::remove_from_group(Request* r) {
  PP_ASSERT(r->group >= 0);
  std::erase(prefilling_, r);
  std::vector<Request*>& m = groups_[size_t(r->group)].members;
  auto it = std::find(m.begin(), m.end(), r);
  PP_ASSERT(it != m.end());
  m.erase(it);
  r->group = -1;
  --n_running_;
  if (r->stalled) {
    r->stalled = false;
    --n_stalled_;
  }
}

void Scheduler::move_to_group(Request* r, int32_t group) {
  std::vector<Request*>& from = groups_[size_t(r->group)].members;
  auto it = std::find(from.begin(), from.end(), r);
  PP_ASSERT(it != from.end());
  from.erase(it);
  groups_[size_t(group)].members.push_back(r);
  r->group = group;
}

void Scheduler::finish_running(Request* r, FinishReason reason) {
  PP_ASSERT(r->state == RequestState::kRunning && !r->in_flight());
  blocks_.free(r->block_table);
  r->block_table.clear();
  r->block_hashes.clear();
  remove_from_group(r);
  pending_released_.push_back(r->id);
  count_finished(reason);
  r->finish(reason, &events_);
  requests_.erase(r->id);
}

void Scheduler::preempt(Request* r) {
  PP_ASSERT(r->state == RequestState::kRunning && !r->in_flight());
  blocks_.free(r->block_table);
  r->block_table.clear();
  r->block_hashes.clear();
  r->n_cached = 0;
  remove_from_group(r);
  r->state = RequestState::kWaiting;
  ++r->n_preemptions;
  ++counters_.n_preemptions;
  waiting_.push_front(r);
  pending_released_.push_back(r->id);
}

bool Scheduler::reserve_blocks(Request* r, int64_t n, bool* short_of_blocks) {
  // Blocks freed while a request is stalled go to it before another chunk of a prefill in
  // flight.
  if (r->in_flight() && n_stalled_ > 0) return false;
  const int32_t need =
      blocks_.blocks_for(r->n_cached + r->n_scheduled + n) - int32_t(r->block_table.size());
  while (need > blocks_.n_available()) {
    *short_of_blocks = true;
    // The victim: the newest running request that is neither in flight nor already in this
    // plan (whose entries are marked in flight as they are added); `r` itself qualifies unless
    // an earlier chunk of it is in flight.
    Request* victim = nullptr;
    bool newer_in_flight = false;
    for (const Group& g : groups_) {
      for (Request* q : g.members) {
        if (q->in_flight()) {
          newer_in_flight |= q->arrival_index > r->arrival_index;
        } else if (!victim || q->arrival_index > victim->arrival_index) {
          victim = q;
        }
      }
    }
    // A chunk planned behind one in flight waits for its request to come back rather than
    // take an older request's blocks.
    if (r->in_flight() && (!victim || victim->arrival_index < r->arrival_index)) return false;
    PP_ASSERT(victim != nullptr);
    if (victim == r && newer_in_flight) {
      // Newer requests in flight hold blocks: rather than give up its own KV, `r` skips this
      // step and waits; the newer ones are preempted when they come back and ask. Preempting
      // `r` here instead lets two requests evict each other forever, each one's recompute
      // being in flight whenever the other asks.
      if (!r->stalled) {
        r->stalled = true;
        ++n_stalled_;
      }
      return false;
    }
    preempt(victim);
    if (victim == r) return false;
  }
  const bool allocated = blocks_.allocate(std::max(need, 0), &r->block_table);
  PP_ASSERT(allocated);
  if (r->stalled) {
    r->stalled = false;
    --n_stalled_;
  }
  return true;
}

int64_t Scheduler::chunk_limit(int64_t context) const {
  const int64_t T = options_.max_batch_tokens, K = options_.chunk_attention_tokens;
  if (K <= 0 || context <= 0) return T;
  // The n with cost(n, c) = cost(T, 0), cost(n, c) = n * (1 + (c + n / 2) / K):
  // n^2 / (2K) + n (1 + c / K) - cost(T, 0) = 0.
  const double k = double(K), a = 1.0 + double(context) / k;
  const double budget = double(T) * (1.0 + double(T) / (2.0 * k));
  const double n = k * (std::sqrt(a * a + 2.0 * budget / k) - a);
  return std::clamp<int64_t>(int64_t(n), std::max<int64_t>(1, T / 8), T);
}

bool Scheduler::can_step(const Request& r) const {
  if (r.state != RequestState::kRunning || r.cancel_requested ||
      r.finish_reason != FinishReason::kNone || r.n_unscheduled() <= 0) {
    return false;
  }
  return !r.in_flight() || options_.chunked_pipeline;
}

void Scheduler::add_entry(Group& g, Request* r, int64_t n, size_t first_new_block, bool reset,
                          transport::Plan* plan, size_t* n_entries) {
  if (*n_entries == plan->entries.size()) plan->entries.emplace_back();
  transport::PlanEntry& e = plan->entries[(*n_entries)++];
  const int64_t begin = r->n_cached + r->n_scheduled;
  const bool sample = begin + n == r->n_tokens();
  e.request_id = r->id;
  e.pos_begin = int32_t(begin);
  e.n_new = int32_t(n);
  e.new_blocks.assign(r->block_table.begin() + std::ptrdiff_t(first_new_block),
                      r->block_table.end());
  e.reset_table = reset;
  e.sample = sample;
  e.sample_step = uint64_t(r->n_generated());
  e.sampling = sample ? to_wire_sampling(r->params, *r->params.seed) : transport::WireSampling{};
  // (Entries are reused from plan to plan: every field is set, the mask included.)
  if (sample && r->grammar) {
    // After the request's last token was accepted (its plan comes back before this one is
    // built), so the mask is that of the token this step samples.
    r->grammar->fill_next_mask(e.allowed_tokens);
  } else {
    e.allowed_tokens.clear();
  }
  e.token_ids.clear();
  r->copy_tokens(begin, n, &e.token_ids);
  e.penalty_prompt_ids.clear();
  e.penalty_output_ids.clear();
  if (r->params.has_penalties()) {
    if (reset) e.penalty_prompt_ids = r->prompt_ids;
    if (sample) e.penalty_output_ids = r->output_ids;
  }
  ++r->n_in_flight;
  r->n_scheduled += n;
  g.flight.push_back({r, n, sample});
  if (options_.chunked_pipeline && !sample &&
      std::find(prefilling_.begin(), prefilling_.end(), r) == prefilling_.end()) {
    prefilling_.push_back(r);
  }
  if (n == 1 && sample && r->n_generated() > 0) {
    ++counters_.n_decode_tokens;
  } else {
    counters_.n_prefill_tokens += n;
  }
}

bool Scheduler::build_plan(int32_t group, transport::Plan* plan) {
  PP_ASSERT(group >= 0 && group < options_.n_groups);
  Group& g = groups_[size_t(group)];
  PP_ASSERT_MSG(!g.in_flight, "build_plan for a group in flight");
  g.flight.clear();
  size_t n_entries = 0;
  int64_t budget = options_.max_batch_tokens;
  bool short_of_blocks = false;

  // 1. The group's running requests: decodes first, then prefill chunks, in admission order.
  order_.clear();
  for (Request* r : g.members) {
    if (r->n_unscheduled() == 1) order_.push_back(r);
  }
  for (Request* r : g.members) {
    if (r->n_unscheduled() > 1) order_.push_back(r);
  }
  // Then the next chunks of prefills in flight in other groups, oldest first.
  if (options_.chunked_pipeline && !prefilling_.empty()) {
    std::erase_if(prefilling_, [&](const Request* r) { return !r->in_flight() || !can_step(*r); });
    const size_t own = order_.size();
    for (Request* r : prefilling_) {
      if (r->group != group) order_.push_back(r);
    }
    std::sort(
        order_.begin() + std::ptrdiff_t(own), order_.end(),
        [](const Request* a, const Request* b) { return a->arrival_index < b->arrival_index; });
  }
  for (Request* r : order_) {
    if (budget == 0) break;
    if (!can_step(*r)) continue;  // preempted above, or waits for its plan in flight
    PP_ASSERT(0 < r->n_cached + r->n_scheduled);
    const int64_t begin = r->n_cached + r->n_scheduled;
    const int64_t n = std::min({r->n_unscheduled(), budget, chunk_limit(begin)});
    const size_t first_new = r->block_table.size();
    if (!reserve_blocks(r, n, &short_of_blocks)) continue;  // stalled, preempted or waits
    if (r->group != group) move_to_group(r, group);
    add_entry(g, r, n, first_new, false, plan, &n_entries);
    budget -= n;
  }

  // 2. Admission, FIFO, into this group up to its share; not while running requests lack blocks.
  if (!short_of_blocks && n_stalled_ == 0 && !waiting_.empty()) {
    // This group's share of the demand: floor(demand / M), plus one while fewer than
    // demand % M other groups already hold more than that.
    const int64_t demand =
        std::min<int64_t>(options_.max_running_requests, n_running_ + int64_t(waiting_.size()));
    const int64_t base = demand / options_.n_groups, extra = demand % options_.n_groups;
    int64_t n_big = 0;
    for (const Group& other : groups_) {
      if (&other != &g && int64_t(other.members.size()) > base) ++n_big;
    }
    const int64_t share = base + (n_big < extra ? 1 : 0);
    while (!waiting_.empty() && budget > 0 && n_running_ < options_.max_running_requests &&
           int64_t(g.members.size()) < std::min<int64_t>(share, options_.max_batch_tokens)) {
      Request* r = waiting_.front();
      PP_ASSERT(r->n_cached == 0 && r->block_table.empty() && r->block_hashes.empty());
      int64_t n_hit = 0;
      if (blocks_.caching()) {
        n_hit = take_cached_prefix(r, budget);
        if (n_hit < 0) break;
      }
      const int64_t n = std::min({r->n_tokens() - n_hit, budget, chunk_limit(n_hit)});
      const int32_t need = blocks_.blocks_for(n_hit + n) - int32_t(r->block_table.size());
      if (!blocks_.allocate(need, &r->block_table)) break;
      r->n_cached = n_hit;
      waiting_.pop_front();
      if (r->scheduled_s < 0.0) {
        r->scheduled_s = now_s_;
        r->n_prompt_cached = n_hit;
      }
      r->state = RequestState::kRunning;
      r->group = group;
      g.members.push_back(r);
      ++n_running_;
      add_entry(g, r, n, 0, true, plan, &n_entries);
      budget -= n;
    }
  }

  if (n_entries == 0) {
    PP_ASSERT(g.flight.empty());
    return false;
  }
  plan->entries.resize(n_entries);
  plan->seq = next_plan_seq_++;
  plan->group = group;
  plan->released.assign(pending_released_.begin(), pending_released_.end());
  pending_released_.clear();
  g.in_flight = true;
  g.seq = plan->seq;
  ++counters_.n_plans;
  // The plan is issued: later plans may share the blocks it fills (not this one: see the top).
  if (blocks_.caching()) {
    for (const Flight& f : g.flight) {
      commit_full_blocks(f.request, f.request->n_cached + f.request->n_scheduled);
    }
  }
  return true;
}

std::span<const int32_t> Scheduler::sequence(const Request& r) {
  if (r.output_ids.empty()) return r.prompt_ids;
  seq_scratch_.clear();
  r.copy_tokens(0, r.n_tokens(), &seq_scratch_);
  return seq_scratch_;
}

int64_t Scheduler::take_cached_prefix(Request* r, int64_t budget) {
  const uint64_t key = cache_key(*r);
  const std::span<const int32_t> seq = sequence(*r);
  const PrefixProbe probe = blocks_.probe_prefix(seq, key);
  const int64_t n = std::min({r->n_tokens() - probe.n_tokens, budget, chunk_limit(probe.n_tokens)});
  const int32_t need = blocks_.blocks_for(probe.n_tokens + n) - blocks_.blocks_for(probe.n_tokens);
  // Sharing takes the unreferenced blocks of the prefix out of what allocate can hand out.
  if (need + probe.n_unreferenced > blocks_.n_available()) return -1;
  const int64_t n_hit = blocks_.match_prefix(seq, key, &r->block_table, &r->block_hashes);
  PP_ASSERT(n_hit == probe.n_tokens);
  return n_hit;
}

void Scheduler::commit_full_blocks(Request* r, int64_t n_kv) {
  const int64_t bs = blocks_.block_size();
  const int64_t first = int64_t(r->block_hashes.size()), n_full = n_kv / bs;
  if (n_full <= first) return;
  seq_scratch_.clear();
  r->copy_tokens(first * bs, (n_full - first) * bs, &seq_scratch_);
  blocks_.commit_full(r->block_table, seq_scratch_, cache_key(*r), &r->block_hashes);
}

std::optional<transport::Plan> Scheduler::build_plan(int32_t group) {
  transport::Plan plan;
  if (!build_plan(group, &plan)) return std::nullopt;
  return plan;
}

Status Scheduler::apply_tokens(const transport::Tokens& tokens) {
  if (tokens.group < 0 || tokens.group >= options_.n_groups) {
    return make_error(StatusCode::kFailedPrecondition, "tokens of plan {} for unknown group {}",
                      tokens.seq, tokens.group);
  }
  Group& g = groups_[size_t(tokens.group)];
  if (!g.in_flight || g.seq != tokens.seq) {
    return make_error(StatusCode::kFailedPrecondition,
                      "tokens of plan {} for group {}, which has no such plan in flight",
                      tokens.seq, tokens.group);
  }
  // Match the tokens to the sampling entries before changing anything. The last stage sends
  // them in entry order; anything else falls back to a search.
  match_.clear();
  size_t cursor = 0;
  for (const Flight& f : g.flight) {
    int32_t at = -1;
    if (f.sample) {
      if (cursor < tokens.tokens.size() && tokens.tokens[cursor].request_id == f.request->id) {
        at = int32_t(cursor++);
      } else {
        for (size_t i = 0; i < tokens.tokens.size(); ++i) {
          if (tokens.tokens[i].request_id == f.request->id) at = int32_t(i);
        }
      }
      if (at < 0 && !f.request->cancel_requested) {
        return data_loss("tokens of plan {} have no token for request {}", tokens.seq,
                         f.request->id);
      }
    }
    match_.push_back(at);
  }

  for (size_t i = 0; i < g.flight.size(); ++i) {
    const Flight& f = g.flight[i];
    Request* r = f.request;
    PP_ASSERT(r->n_in_flight > 0 && r->n_scheduled >= f.n_new);
    --r->n_in_flight;
    r->n_scheduled -= f.n_new;
    r->n_cached += f.n_new;
    // A request finishes once no plan of it is in flight (plans come back in issue order, so
    // that is at once unless a caller returns them out of order).
    if (r->finish_reason != FinishReason::kNone || r->cancel_requested) {
      if (!r->in_flight()) {
        finish_running(
            r, r->finish_reason != FinishReason::kNone ? r->finish_reason : FinishReason::kAbort);
      }
      continue;
    }
    if (!f.sample) continue;
    ++counters_.n_generated_tokens;
    if (r->append_token(tokens.tokens[size_t(match_[i])], options_.eos_ids, &events_) &&
        !r->in_flight()) {
      finish_running(r, r->finish_reason);
    }
  }
  g.flight.clear();
  g.in_flight = false;
  g.idle_since = idle_clock_++;
  return ok_status();
}

int64_t Scheduler::preempt_all() {
  for (Group& g : groups_) {
    for (const Flight& f : g.flight) {
      f.request->n_in_flight = 0;
      f.request->n_scheduled = 0;
    }
    g.flight.clear();
    if (g.in_flight) {
      g.in_flight = false;
      g.idle_since = idle_clock_++;
    }
  }
  std::vector<Request*> running;
  for (const Group& g : groups_) running.insert(running.end(), g.members.begin(), g.members.end());
  // Newest first, so that pushing each to the front leaves the oldest at the front.
  std::sort(running.begin(), running.end(),
            [](const Request* a, const Request* b) { return a->arrival_index > b->arrival_index; });
  int64_t n_requeued = 0;
  for (Request* r : running) {
    if (r->finish_reason != FinishReason::kNone) {
      finish_running(r, r->finish_reason);
    } else if (r->cancel_requested) {
      finish_running(r, FinishReason::kAbort);
    } else {
      preempt(r);
      ++n_requeued;
    }
  }
  // Every stage's KV is gone, so no cached block holds anything any more.
  const bool flushed = blocks_.flush();
  PP_ASSERT(flushed);
  return n_requeued;
}

void Scheduler::take_events(std::vector<RequestEvent>* out) {
  out->clear();
  std::swap(*out, events_);
}

void Scheduler::idle_groups(std::vector<int32_t>* out) const {
  out->clear();
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (!groups_[g].in_flight) out->push_back(int32_t(g));
  }
  std::sort(out->begin(), out->end(), [&](int32_t a, int32_t b) {
    return groups_[size_t(a)].idle_since < groups_[size_t(b)].idle_since;
  });
}

std::vector<int32_t> Scheduler::idle_groups() const {
  std::vector<int32_t> out;
  idle_groups(&out);
  return out;
}

bool Scheduler::is_idle(int32_t group) const {
  PP_ASSERT(group >= 0 && group < options_.n_groups);
  return !groups_[size_t(group)].in_flight;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s = counters_;
  s.n_waiting = int64_t(waiting_.size());
  s.n_running = n_running_;
  s.n_in_flight = 0;
  s.n_groups_in_flight = 0;
  for (const Group& g : groups_) {
    for (const Request* r : g.members) s.n_in_flight += r->in_flight() ? 1 : 0;
    s.n_groups_in_flight += g.in_flight ? 1 : 0;
  }
  s.kv_blocks_total = blocks_.n_blocks();
  s.kv_blocks_used = blocks_.n_used();
  s.kv_usage = blocks_.usage();
  s.kv_cache = blocks_.stats();
  return s;
}

const Request* Scheduler::find(uint64_t id) const {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

std::span<Request* const> Scheduler::group_members(int32_t group) const {
  PP_ASSERT(group >= 0 && group < options_.n_groups);
  return groups_[size_t(group)].members;
}

}  // namespace pp::pipeline
