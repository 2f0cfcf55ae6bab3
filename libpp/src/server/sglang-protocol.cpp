// SGLang's native /generate result objects (text, output ids, meta_info).
#include "pp/server/sglang-protocol.h"

namespace pp::server {

using nlohmann::json;

json sglang_finish_reason(const ChoiceResult& c, const std::string& abort_message) {
  switch (c.finish_reason) {
    case pipeline::FinishReason::kNone:
      return nullptr;
    case pipeline::FinishReason::kStop: {
      json matched = nullptr;
      if (!c.stop_string.empty()) {
        matched = c.stop_string;
      } else if (c.stop_token) {
        matched = *c.stop_token;
      }
      return {{"type", "stop"}, {"matched", std::move(matched)}};
    }
    case pipeline::FinishReason::kLength:
      return {{"type", "length"}, {"length", c.n_output_tokens}};
    case pipeline::FinishReason::kAbort:
      return {{"type", "abort"}, {"message", abort_message}};
  }
  return nullptr;
}

json generate_object(const ChoiceResult& c, const std::string& rid, bool with_logprobs,
                     int32_t top_logprobs, double e2e_latency_s, bool finished, bool with_index) {
  json meta = {{"id", rid},
               {"prompt_tokens", c.n_prompt_tokens},
               {"completion_tokens", int64_t(c.token_ids.size())},
               {"cached_tokens", c.n_cached_tokens},
               {"finish_reason", finished ? sglang_finish_reason(c) : json()},
               {"e2e_latency", e2e_latency_s}};
  if (with_logprobs) {
    json lps = json::array(), tops = json::array();
    for (size_t i = 0; i < c.token_ids.size(); ++i) {
      const bool have = i < c.logprobs.size();
      lps.push_back({have ? json(c.logprobs[i].logprob) : json(), c.token_ids[i], nullptr});
      if (top_logprobs > 0) {
        json alts = json::array();
        if (have) {
          const pipeline::TokenLogprob& lp = c.logprobs[i];
          for (size_t k = 0; k < lp.top_ids.size() && k < lp.top_logprobs.size(); ++k) {
            alts.push_back({lp.top_logprobs[k], lp.top_ids[k], nullptr});
          }
        }
        tops.push_back(std::move(alts));
      }
    }
    meta["input_token_logprobs"] = json::array();
    meta["output_token_logprobs"] = std::move(lps);
    if (top_logprobs > 0) meta["output_top_logprobs"] = std::move(tops);
  }
  json o = {{"text", c.text}, {"output_ids", c.token_ids}, {"meta_info", std::move(meta)}};
  if (with_index) o["index"] = c.index;
  return o;
}

}  // namespace pp::server
