// A request's token bookkeeping and streaming (see request.h): appending sampled tokens, the stop
// conditions in their order of precedence, and the delta and final events.
#include "pp/pipeline/request.h"

#include <algorithm>
#include <cmath>

#include "pp/assert.h"

namespace pp::pipeline {

const char* request_state_name(RequestState s) {
  switch (s) {
    case RequestState::kWaiting:
      return "waiting";
    case RequestState::kRunning:
      return "running";
    case RequestState::kFinished:
      return "finished";
  }
  return "?";
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone:
      return "";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
  }
  return "?";
}

void Request::copy_tokens(int64_t begin, int64_t n, std::vector<int32_t>* out) const {
  PP_ASSERT(begin >= 0 && n >= 0 && begin + n <= n_tokens());
  const int64_t end = begin + n;
  const int64_t p = n_prompt();
  if (begin < p) {
    out->insert(out->end(), prompt_ids.begin() + begin, prompt_ids.begin() + std::min(end, p));
  }
  if (end > p) {
    const int64_t from = std::max(begin, p) - p;
    out->insert(out->end(), output_ids.begin() + from, output_ids.begin() + (end - p));
  }
}

bool Request::append_token(const transport::SampledToken& t, std::span<const int32_t> eos_ids,
                           std::vector<RequestEvent>* events) {
  PP_ASSERT(state == RequestState::kRunning && finish_reason == FinishReason::kNone);
  output_ids.push_back(t.token);
  RequestEvent& ev = events->emplace_back();
  ev.request_id = id;
  ev.kind = EventKind::kDelta;
  ev.token_ids.push_back(t.token);
  if (params.logprobs) {
    TokenLogprob lp{t.logprob, {}, {}};
    for (size_t k = 0; k < t.top_ids.size() && k < t.top_logprobs.size(); ++k) {
      // A masked-out alternative (structured output) has -inf: it was never a candidate.
      if (std::isinf(t.top_logprobs[k])) break;
      lp.top_ids.push_back(t.top_ids[k]);
      lp.top_logprobs.push_back(t.top_logprobs[k]);
    }
    logprobs.push_back(lp);
    ev.logprobs.push_back(std::move(lp));
  }

  auto contains = [](std::span<const int32_t> ids, int32_t id) {
    return std::find(ids.begin(), ids.end(), id) != ids.end();
  };
  FinishReason reason = FinishReason::kNone;
  if ((!params.ignore_eos && contains(eos_ids, t.token)) ||
      contains(params.stop_token_ids, t.token)) {
    // The stop token's own text is left out.
    reason = FinishReason::kStop;
    stop_token = t.token;
  } else if (grammar && (!grammar->accept(t.token) || grammar->terminated())) {
    // The sampler only draws allowed tokens, so a refused one means the output cannot go on
    // within the grammar either way: it ends here, as when the grammar is complete.
    reason = FinishReason::kStop;
    stop_token = t.token;
  } else if (detok) {
    const int32_t m = stop_checker.push(detok->push(t.token), &ev.text);
    if (m >= 0) {
      reason = FinishReason::kStop;
      stop_string = stop_checker.stops()[size_t(m)];
    }
  }
  if (reason == FinishReason::kNone && n_generated() >= max_tokens) reason = FinishReason::kLength;

  if (reason != FinishReason::kNone && detok && !stop_checker.matched()) {
    // The text has ended: what the detokenizer and the stop checker held back is final now (it
    // may still complete a stop string).
    const int32_t m = stop_checker.push(detok->flush(), &ev.text);
    if (m >= 0) {
      reason = FinishReason::kStop;
      stop_string = stop_checker.stops()[size_t(m)];
    } else {
      stop_checker.flush(&ev.text);
    }
  }
  text += ev.text;
  finish_reason = reason;
  return reason != FinishReason::kNone;
}

void Request::finish(FinishReason reason, std::vector<RequestEvent>* events) {
  PP_ASSERT(reason != FinishReason::kNone && state != RequestState::kFinished);
  finish_reason = reason;
  state = RequestState::kFinished;
  RequestEvent& ev = events->emplace_back();
  ev.request_id = id;
  ev.kind = EventKind::kFinal;
  ev.finish_reason = reason;
  ev.stop_string = stop_string;
  ev.stop_token = stop_token;
  ev.n_prompt_tokens = n_prompt();
  ev.n_output_tokens = n_generated();
  ev.n_preemptions = n_preemptions;
  ev.queue_s = scheduled_s >= 0.0 ? scheduled_s - arrival_s : -1.0;
  ev.n_cached_tokens = n_prompt_cached;
}

}  // namespace pp::pipeline
