// Request: one generation request as the coordinator's scheduler sees it, from submission to its
// final event, and RequestEvent: what the scheduler streams out for it.
//
// Lifecycle: kWaiting (queued; holds no KV block) -> kRunning (in one micro-batch group, holds
// blocks for its KV) -> kFinished. A preempted request goes back to kWaiting with its blocks
// freed and its outputs kept; when it runs again its prompt plus the tokens generated so far are
// prefilled again (recompute; with prefix caching on, from the end of its cached prefix) and
// generation carries on where it stopped.
//
// The token sequence of a request is prompt_ids followed by output_ids. n_cached tokens of it
// have KV on every stage and n_scheduled more are in plans in flight; the next micro-batch feeds
// tokens [n_cached + n_scheduled, ... + n) of it. When the step reaches the end of the sequence
// the last stage samples the next output token: during decode every step is one token and
// samples; a prefill samples only with its last chunk. A decoding request is in at most one plan
// in flight; a prefilling one may be in several (chunked pipeline: chunk i + 1 is planned once
// chunk i has been issued, see scheduler.h). So a running request that is not in flight always
// has n_cached < n_tokens().
//
// Streaming: each sampled token gives a delta event (the token, its logprobs, and the text that
// became final). The text goes through an IncrementalDetokenizer (never broken UTF-8) and a
// StopChecker (holds back what could be the start of a stop string); a stop string is cut from
// the text. Deltas never repeat: a preempted request's recompute streams nothing, since its
// tokens were streamed when first sampled. The last event of every request is a kFinal event.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "pp/model/detokenizer.h"
#include "pp/model/sampling-params.h"
#include "pp/pipeline/grammar.h"
#include "pp/pipeline/stop-checker.h"
#include "pp/transport/messages.h"

namespace pp::pipeline {

enum class RequestState : uint8_t {
  kWaiting,   // queued for admission (new, or preempted)
  kRunning,   // in a micro-batch group, holding KV blocks
  kFinished,  // done; its final event has been emitted
};
const char* request_state_name(RequestState s);  // "waiting", "running", "finished"

enum class FinishReason : uint8_t {
  kNone,    // still running
  kStop,    // an eos id, a stop token id or a stop string
  kLength,  // max_tokens generated, or the context is full
  kAbort,   // cancelled (client went away, server shutting down)
};
const char* finish_reason_name(FinishReason r);  // "", "stop", "length", "abort" (OpenAI names)

// The logprobs of one generated token (when the request asked for them).
struct TokenLogprob {
  float logprob = 0.0f;             // of the chosen token
  std::vector<int32_t> top_ids;     // [top_logprobs] most likely alternatives, best first
  std::vector<float> top_logprobs;  // [top_logprobs] their logprobs
};

enum class EventKind : uint8_t {
  kDelta,  // new tokens (and text) of a running request
  kFinal,  // the request has finished; always its last event
};

struct RequestEvent {
  uint64_t request_id = 0;
  EventKind kind = EventKind::kDelta;
  // kDelta: the new generated ids (one per sampled token, eos / stop token included), their
  // logprobs (parallel to token_ids, only when params.logprobs), and the text that became final
  // (may be empty; the stop string and the text of eos / stop tokens are left out).
  std::vector<int32_t> token_ids;
  std::vector<TokenLogprob> logprobs;
  std::string text;
  // kFinal: why it ended and what it used.
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_string;            // the stop string that matched (kStop by string)
  std::optional<int32_t> stop_token;  // the eos or stop token id that matched (kStop by id)
  int64_t n_prompt_tokens = 0;
  int64_t n_output_tokens = 0;  // generated tokens (completion_tokens)
  int32_t n_preemptions = 0;
  double queue_s = -1.0;  // seconds from submission to first admission; -1: never admitted
  // Prompt tokens found in the prefix cache at first admission (not computed; always 0 with
  // prefix caching off). OpenAI's usage.prompt_tokens_details.cached_tokens.
  int64_t n_cached_tokens = 0;
};

struct Request {
  // --- given at submission
  uint64_t id = 0;
  std::vector<int32_t> prompt_ids;
  model::SamplingParams params;  // params.seed is always set (resolved at submission)
  int64_t max_tokens = 0;        // resolved limit: params.max_tokens, or what the context leaves
  double arrival_s = 0.0;        // caller's clock, for metrics only
  double scheduled_s = -1.0;     // caller's clock when first admitted to a group; -1: not yet
  uint64_t arrival_index = 0;    // submission order; larger = newer (preemption picks newest)

  // --- scheduling state
  RequestState state = RequestState::kWaiting;
  std::vector<int32_t> output_ids;     // generated so far
  std::vector<TokenLogprob> logprobs;  // parallel to output_ids when params.logprobs
  int64_t n_cached = 0;                // tokens whose KV exists on every stage
  int64_t n_scheduled = 0;             // tokens in the plans now in flight (0 when not in flight)
  std::vector<int32_t> block_table;    // KV block ids, blocks_for(n_cached + n_scheduled) of them
  int32_t group = -1;       // micro-batch group while running (that of its latest plan), else -1
  int32_t n_in_flight = 0;  // plans holding a step of it that have not come back
  bool cancel_requested = false;  // cancelled while in flight: released when it comes back
  bool stalled = false;  // running, but waiting for blocks held by newer requests in flight
  int32_t n_preemptions = 0;
  // Prefix caching only (empty and 0 with caching off): the chained hashes of the table's first
  // blocks, those full and committed or shared at admission; and the prompt tokens shared from
  // the cache at first admission. A shared prefix counts in n_cached at once: the plan that
  // fills it was issued earlier, so its KV is on every stage before any later plan runs.
  std::vector<uint64_t> block_hashes;
  int64_t n_prompt_cached = 0;

  // --- result
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_string;
  std::optional<int32_t> stop_token;
  std::string text;  // the text streamed so far (concatenation of the deltas' text)

  // --- structured output: where the output stands in its grammar (null: free text). Advanced
  // with each sampled token; its next-token mask goes with each plan that samples.
  std::unique_ptr<GrammarMatcher> grammar;

  // --- streaming machinery (detok is null without a tokenizer: then no text)
  std::unique_ptr<model::IncrementalDetokenizer> detok;
  StopChecker stop_checker;

  int64_t n_prompt() const { return int64_t(prompt_ids.size()); }
  int64_t n_generated() const { return int64_t(output_ids.size()); }
  // Length of the token sequence: prompt and output.
  int64_t n_tokens() const { return n_prompt() + n_generated(); }
  bool in_flight() const { return n_in_flight > 0; }
  // Tokens of the sequence in no plan yet: where its next step starts is n_tokens() minus this.
  int64_t n_unscheduled() const { return n_tokens() - n_cached - n_scheduled; }
  // Token i of the sequence (prompt, then output).
  int32_t token_at(int64_t i) const {
    return i < n_prompt() ? prompt_ids[size_t(i)] : output_ids[size_t(i - n_prompt())];
  }
  // Appends tokens [begin, begin + n) of the sequence to *out.
  void copy_tokens(int64_t begin, int64_t n, std::vector<int32_t>* out) const;
  // Upper bound of the tokens that ever get KV: the last generated token is never fed.
  int64_t max_kv_tokens() const { return n_prompt() + max_tokens - 1; }

  // Appends a sampled token, emits its delta event and applies the stop conditions in order:
  // eos (unless ignore_eos) and stop_token_ids, the grammar's end (a stop token after a complete
  // match, even with ignore_eos), stop strings on the text, then max_tokens.
  // Returns true when the request has finished (finish_reason set; the final event is not
  // emitted here: see emit_final).
  bool append_token(const transport::SampledToken& t, std::span<const int32_t> eos_ids,
                    std::vector<RequestEvent>* events);
  // Sets state kFinished and emits the final event. For kAbort, held-back text is dropped.
  void finish(FinishReason reason, std::vector<RequestEvent>* events);
};

}  // namespace pp::pipeline
