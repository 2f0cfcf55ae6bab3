// SGLang's native /generate response shape, so that SGLang's own clients (bench_serving with
// --backend sglang) can drive pp-serve. (The request side is parse_request(ApiKind::kGenerate).)
//
//   {"text": "...", "output_ids": [...],
//    "meta_info": {"id", "prompt_tokens", "completion_tokens", "cached_tokens",
//                  "finish_reason": {"type": "stop", "matched": "</s>" | 2} |
//                                   {"type": "length", "length": N} |
//                                   {"type": "abort", "message": "..."} | null,
//                  "e2e_latency": seconds,
//                  "output_token_logprobs": [[logprob, id, null], ...],        (return_logprob)
//                  "output_top_logprobs": [[[logprob, id, null], ...], ...]}}   (top_logprobs_num)
// A stream sends this object after each step with the text and ids so far (cumulative, as
// SGLang does), finish_reason null until the last one, then data: [DONE]. A batch (a list of
// prompts, or n > 1) answers a list of objects, or a stream whose objects carry "index".
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "pp/server/openai-responses.h"

namespace pp::server {

// SGLang's finish_reason object for a finished choice, null while it runs.
nlohmann::json sglang_finish_reason(const ChoiceResult& c, const std::string& abort_message = "");

// One /generate result object for choice `c` (what has been generated so far).
nlohmann::json generate_object(const ChoiceResult& c, const std::string& rid, bool with_logprobs,
                               int32_t top_logprobs, double e2e_latency_s, bool finished,
                               bool with_index);

}  // namespace pp::server
