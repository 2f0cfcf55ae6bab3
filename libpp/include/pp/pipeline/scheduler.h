// Scheduler: the coordinator's scheduling state for the asynchronous pipeline, as pure logic (no
// I/O, no clock, no threads: the coordinator loop owns it and calls it from one thread).
//
// It keeps the requests (waiting queue, running requests in M micro-batch groups), the KV cache
// manager, and builds one batch plan per idle group. The coordinator loop:
//
//   submit() / cancel() what arrived;
//   apply_tokens() for every group whose tokens came back (a group is then idle);
//   for g in idle_groups():  if (build_plan(g, &plan)) send plan (token_ids to stage 0 only);
//   take_events() and stream them to the clients.
//
// build_plan(g), for an idle group g:
//  1. g's running requests get their next step, within max_batch_tokens tokens in all: decodes
//     (one token each) first, then prefill chunks in admission order (a long prompt is split
//     across micro-batches; decodes are never held up by a prefill). Then, with the chunked
//     pipeline on (options.chunked_pipeline, the default), prefilling requests of other groups
//     whose previous chunk is in flight get their next chunk here too, oldest first, and move
//     to g: the chunks of one long prompt enter stage 0 one behind the other instead of one per
//     round trip of the ring ("chunked pipeline parallelism"). Chunk i + 1 only reads the KV of
//     chunks up to i, and every stage runs plans in issue order (the CPU stage takes a plan's
//     activations and writes its KV before it looks at the next plan; the GPU stage runs its
//     forwards on one stream), so that KV is there when chunk i + 1 runs. Only the last chunk
//     samples; a decoding request is never in two plans. With dynamic chunking
//     (options.chunk_attention_tokens > 0) a chunk that starts c tokens into the sequence has
//     at most the n tokens that cost what a first chunk of max_batch_tokens costs, with
//     cost(n, c) = n * (1 + (c + n / 2) / chunk_attention_tokens) (linear layers, plus
//     attention over the context), but never fewer than max_batch_tokens / 8: later chunks of a
//     long prompt shrink so that the stages stay balanced as attention grows.
//  2. Waiting requests are admitted FIFO into g (their first chunk) while the token budget is
//     left, running < max_running_requests, g has fewer than max_batch_tokens requests (so its
//     decodes always fit one micro-batch), the blocks for the chunk are free, and g holds fewer
//     than its share of D = min(max_running_requests, running + waiting): floor(D / M), plus
//     one while fewer than D % M other groups hold more than floor(D / M). This spreads the
//     requests evenly over the groups at once (a burst of N arrivals gives each group about
//     N/M, instead of trickling in one per round trip). Admission never preempts (see 3 for
//     when it pauses). With prefix caching on, admission first asks the KV cache manager how
//     much of the request's sequence is cached (whole blocks, never the last token): the table
//     starts with those shared blocks and the first chunk starts after them.
//  3. Each step takes the blocks it needs (blocks_for(n_cached + n) minus those held). When the
//     pool is short, the newest (latest submitted) running request that is not in flight and
//     not already in this plan is preempted by recompute (a request in flight is never a victim;
//     a chunk planned while its request is in flight that finds the pool short is skipped unless
//     a newer request can give way): blocks freed, stages told through
//     Plan.released, requeued at the FRONT of the waiting queue with its outputs kept. When
//     that newest one is the asking request itself but a newer request is in flight, the asker
//     instead skips this step and keeps its blocks (it is "stalled"): the newer request will be
//     the victim when it comes back. So the oldest running request is never preempted (it fits
//     the pool alone: submit() refuses any request whose whole context exceeds the pool) and
//     always makes progress; no request is dropped, and two requests cannot evict each other
//     forever. While any request is stalled, or a build was short of blocks, nothing is
//     admitted.
//  An empty plan is not issued (build_plan returns false / nullopt; releases stay pending).
//
// Plan contents, per entry: pos_begin = n_cached (on admission: the cached prefix, 0 without a
// hit); n_new; token_ids = the n_new new tokens of the sequence prompt ++ output (for stage 0;
// the coordinator strips them for other stages); new_blocks = only the blocks added to the
// request's table by this step, with reset_table on the first chunk after admission or
// preemption (the table restarts from new_blocks: then the whole table, shared blocks first);
// sample when the step ends at the end of the sequence (the last prefill chunk, every decode) with
// sample_step = tokens generated so far (the sampler's RNG counter, so a request's tokens do
// not depend on batching or preemption) and sampling = the request's WireSampling; when the
// request uses penalties, penalty_prompt_ids = the original prompt on reset_table entries and
// penalty_output_ids = all tokens generated so far on every sampling entry (the last stage
// replaces its copy). Plan.released lists requests finished, cancelled or preempted since the
// last plan: a stage forgets their tables BEFORE applying the plan's entries (a preempted
// request can be released and readmitted with reset_table in the same plan). Released ids a
// stage does not know are ignored. Plans carry seq numbers in issue order.
//
// Prefix caching (options.enable_prefix_cache; off by default here, and then nothing of this
// happens; the engine turns it on unless --disable-prefix-cache). Once a plan is built (issued),
// the blocks its entries fill become cached: stages run plans in issue order, so any later plan may
// read them; the plan itself may not (its entries run together), which is why they are committed
// after the whole plan is built. A finished or preempted request's cached blocks stay valid in the
// manager's eviction pool until their memory is needed; a recompute can hit them. preempt_all() (a
// lost stage: every stage's KV is gone) flushes the cache.
//
// apply_tokens(t): the group's plan has come back from the last stage (so every stage is done
// with it). For each entry: n_cached advances; a sampled token is appended (delta event), stop
// conditions are checked (eos unless ignore_eos, stop_token_ids, stop strings on the text,
// max_tokens); finished requests emit their final event, free their blocks and are released
// in the next plan; requests cancelled while in flight are finished (abort) once their last
// plan in flight has come back (no chunk is planned for them meanwhile). The group is then
// idle.
//
// Invariants (checked by the tests): free + referenced + cached-unreferenced blocks == n_blocks
// (with caching off: free + held == n_blocks, a block in at most one table); a block's reference
// count is the number of live requests whose table holds it; a request is in at most one
// group and appears at most once in a plan; a request in several in-flight plans is prefilling
// (none of those steps but the last issued may sample), and with the chunked pipeline off it is
// in at most one; a plan has at most max_batch_tokens tokens; every request ends with exactly
// one final event.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "pp/model/config.h"
#include "pp/model/sampling-params.h"
#include "pp/model/tokenizer.h"
#include "pp/pipeline/kv-cache-manager.h"
#include "pp/pipeline/request.h"
#include "pp/status.h"
#include "pp/transport/messages.h"

namespace pp::pipeline {

struct SchedulerOptions {
  int32_t n_groups = 2;                // M = P + async depth: micro-batch groups
  int32_t max_running_requests = 256;  // running requests at most, all groups together
  int32_t max_batch_tokens = 512;      // tokens of one micro-batch at most (prefill chunk size)
  int32_t block_size = 16;             // tokens per KV block
  int32_t n_blocks = 0;                // KV blocks in the pool (minimum over stages)
  int64_t max_context = 2048;          // the model's context length, tokens
  int64_t n_vocab = 0;                 // > 0: prompt ids and stop_token_ids must be below it
  std::vector<int32_t> eos_ids;        // the model's end-of-sequence ids
  std::optional<uint64_t> seed;        // seeds the seeds of requests without one (absent: random)
  bool enable_prefix_cache = false;    // share cached full KV blocks (EngineOptions: on)
  // Chunked pipeline: a prefilling request's next chunk is planned as soon as its previous one
  // has been issued (in another group's plan). false: one plan in flight per request.
  bool chunked_pipeline = true;
  // Dynamic chunking: tokens of context at which attention costs a new token as much as its
  // linear layers (see chunk_attention_tokens_for); later chunks of a long prompt shrink to keep
  // the cost of a chunk about that of the first. 0: every chunk up to max_batch_tokens.
  int64_t chunk_attention_tokens = 0;

  // kInvalidArgument naming the first bad field.
  Status validate() const;
};

// A snapshot for metrics.
struct SchedulerStats {
  int64_t n_waiting = 0;    // queued (new or preempted)
  int64_t n_running = 0;    // in a group (in flight or at the coordinator)
  int64_t n_in_flight = 0;  // requests in plans that have not come back
  int32_t n_groups_in_flight = 0;
  int32_t kv_blocks_total = 0;
  int32_t kv_blocks_used = 0;  // referenced by running requests (not the cached unreferenced)
  double kv_usage = 0.0;       // kv_blocks_used / kv_blocks_total
  int64_t n_preemptions = 0;   // since construction
  int64_t n_finished_stop = 0;
  int64_t n_finished_length = 0;
  int64_t n_finished_abort = 0;
  int64_t n_plans = 0;             // plans issued
  int64_t n_prefill_tokens = 0;    // tokens scheduled in steps that were not decodes
  int64_t n_decode_tokens = 0;     // tokens scheduled in decode steps (one per step)
  int64_t n_generated_tokens = 0;  // tokens appended from apply_tokens
  KvCacheStats kv_cache;           // prefix cache: blocks cached now, queries, hits, evictions
};

// The context length, in tokens, at which attention costs a new token as many FLOPs as the
// linear layers of its decoder layer: 4 * q_dim multiply-adds per context token against
// 2 * (the layer's weights). For dynamic chunking (SchedulerOptions::chunk_attention_tokens).
int64_t chunk_attention_tokens_for(const model::ModelConfig& config);

// The sampling parameters as the last stage needs them.
transport::WireSampling to_wire_sampling(const model::SamplingParams& p, uint64_t seed);

// Admission's size check, shared by Scheduler::submit and the engine's submit (which answers
// the caller at once): the generation limit of a request of n_prompt tokens asking for
// max_tokens (0: until the context or the KV pool is full) in a pool of n_blocks blocks of
// block_size tokens. The last generated token is never fed back, so a request needs KV for
// n_prompt + limit - 1 tokens. Errors: kInvalidArgument (an empty prompt, a negative
// max_tokens), kOutOfRange (the prompt fills the context, or prompt +
// max_tokens exceeds it), kResourceExhausted (prompt + max_tokens, or the prompt alone, needs
// more blocks than the whole pool: it could never run, so it must not wait).
Result<int64_t> resolve_max_tokens(int64_t n_prompt, int64_t max_tokens, int64_t max_context,
                                   int64_t n_blocks, int32_t block_size);

class Scheduler {
 public:
  // Options must be valid (a bug otherwise: call validate() first). `tokenizer` may be null:
  // then no text is streamed and requests with stop strings are refused. It must outlive this.
  Scheduler(SchedulerOptions options, const model::Tokenizer* tokenizer);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. Errors, the request id in the message: kAlreadyExists (id in use),
  // kInvalidArgument (empty prompt, bad sampling parameters, stop strings without a tokenizer),
  // kOutOfRange (a prompt id outside the vocabulary; prompt + max_tokens beyond max_context, or
  // a prompt that fills it), kResourceExhausted (its whole context needs more KV blocks than the
  // pool has: it could never run; see resolve_max_tokens). An absent params.seed is resolved
  // here. max_tokens 0 means until the context or the KV pool is full.
  // With params.grammar active, `grammar` is its matcher (GrammarCompiler::compile), else
  // kInvalidArgument.
  Status submit(uint64_t id, std::vector<int32_t> prompt_ids, model::SamplingParams params,
                double arrival_s = 0.0, std::unique_ptr<GrammarMatcher> grammar = nullptr);

  // The caller's clock (the one arrival_s is on), read when a request is first admitted to a
  // group: the final event's queue_s is that minus arrival_s. Call before build_plan.
  void set_now(double now_s) { now_s_ = now_s; }

  // Cancels a request: a waiting one, or a running one whose group is at the coordinator, is
  // finished now (final event, abort; blocks freed and released in the next plan); one in
  // flight is marked and finished when its group comes back. kNotFound for an unknown or
  // already finished id.
  Status cancel(uint64_t id);

  // Builds the next plan of an idle group into *plan (its vectors are reused: pass the same
  // Plan each time to avoid allocations). Returns false, leaving the group idle, when there is
  // nothing to run; otherwise the group is in flight until apply_tokens. Calling it for a group
  // in flight is a bug.
  bool build_plan(int32_t group, transport::Plan* plan);
  std::optional<transport::Plan> build_plan(int32_t group);

  // The sampled tokens of the group's plan (one per entry with sample set, matched by
  // request_id; tokens of requests cancelled meanwhile are ignored). kFailedPrecondition when
  // the group has no plan in flight with that seq (a stale or duplicate message), kDataLoss
  // when a token is missing; in both cases nothing changes.
  Status apply_tokens(const transport::Tokens& tokens);

  // Recovery after a stage was lost (every stage's KV is gone): forgets every plan in flight
  // (their tokens will be refused as stale), finishes requests cancelled in flight, preempts
  // every running request for recompute, oldest at the front of the queue, and flushes the
  // prefix cache. Returns how many were requeued.
  int64_t preempt_all();

  // Empties the prefix cache (KvCacheManager::flush): true when done, false (nothing changed)
  // while running requests hold blocks.
  bool flush_prefix_cache() { return blocks_.flush(); }

  // Moves the events emitted since the last call into *out (cleared first; swaps buffers, so
  // passing the same vector each time reuses its storage).
  void take_events(std::vector<RequestEvent>* out);

  // Groups at the coordinator, the longest idle first (the order to fill them in).
  std::vector<int32_t> idle_groups() const;
  void idle_groups(std::vector<int32_t>* out) const;
  bool is_idle(int32_t group) const;
  // Requests waiting or running (in flight or not).
  bool has_work() const { return !waiting_.empty() || n_running_ > 0; }

  SchedulerStats stats() const;
  // A live (waiting or running) request, or null.
  const Request* find(uint64_t id) const;
  // Running requests of a group, in admission order.
  std::span<Request* const> group_members(int32_t group) const;
  // Ids to be sent in the next plan's released list.
  std::span<const uint64_t> pending_released() const { return pending_released_; }
  const KvCacheManager& kv_cache() const { return blocks_; }
  const SchedulerOptions& options() const { return options_; }

 private:
  double now_s_ = 0.0;  // set_now(): the caller's clock
  struct Flight {
    Request* request;
    int64_t n_new;
    bool sample;
  };
  struct Group {
    std::vector<Request*> members;  // admission order
    bool in_flight = false;
    uint64_t seq = 0;            // of the plan in flight
    std::vector<Flight> flight;  // the entries of the plan in flight
    uint64_t idle_since = 0;     // idle clock when it last came back
  };

  uint64_t next_seed();
  // Takes the blocks `r` needs for n more tokens, preempting as needed. False when `r` itself
  // was preempted or has to wait (stalled); *short_of_blocks is set when the pool was short.
  bool reserve_blocks(Request* r, int64_t n, bool* short_of_blocks);
  // The most tokens of a prefill chunk that starts `context` tokens into its sequence.
  int64_t chunk_limit(int64_t context) const;
  // Whether `r` may get a step in a plan now: running, not cancelled, tokens left to plan, and
  // not in flight (or prefilling with the chunked pipeline on).
  bool can_step(const Request& r) const;
  void move_to_group(Request* r, int32_t group);
  void add_entry(Group& g, Request* r, int64_t n, size_t first_new_block, bool reset,
                 transport::Plan* plan, size_t* n_entries);
  // Admission with caching on: takes the cached prefix of `r`'s sequence into its (empty)
  // table when the blocks for its first chunk of at most `budget` tokens can then be allocated
  // too, and returns the prefix length in tokens (0 on a miss); -1, changing nothing, when they
  // cannot.
  int64_t take_cached_prefix(Request* r, int64_t budget);
  // With caching on: commits the blocks of `r` that are full once its first n_kv tokens have KV.
  void commit_full_blocks(Request* r, int64_t n_kv);
  // r's token sequence (prompt ++ output) as one span (copied into seq_scratch_ when needed).
  std::span<const int32_t> sequence(const Request& r);
  void preempt(Request* r);
  void remove_from_group(Request* r);
  // Finishes a running request that is not in flight: blocks freed, released, final event.
  void finish_running(Request* r, FinishReason reason);
  void count_finished(FinishReason reason);

  SchedulerOptions options_;
  const model::Tokenizer* tokenizer_;
  KvCacheManager blocks_;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> requests_;  // live requests
  std::deque<Request*> waiting_;
  std::vector<Group> groups_;
  int64_t n_running_ = 0;
  int64_t n_stalled_ = 0;  // running requests waiting for blocks (Request::stalled)
  std::vector<uint64_t> pending_released_;
  std::vector<RequestEvent> events_;
  uint64_t next_plan_seq_ = 0;
  uint64_t next_arrival_ = 0;
  uint64_t idle_clock_ = 0;
  uint64_t seed_state_ = 0;
  SchedulerStats counters_;  // the cumulative fields
  // In flight with chunks left to plan (chunked pipeline); may hold ones no longer so, never
  // requests that left their group.
  std::vector<Request*> prefilling_;
  std::vector<Request*> order_;       // scratch: the order of a group's steps
  std::vector<int32_t> match_;        // scratch: token index of each in-flight entry
  std::vector<int32_t> seq_scratch_;  // scratch: a request's sequence, or tokens of full blocks
};

}  // namespace pp::pipeline
