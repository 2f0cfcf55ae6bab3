// Validation of sampling parameters (the limits the OpenAI API documents, and ids in range), and
// logit_bias split into the id and value arrays the samplers take.
#include "pp/model/sampling-params.h"

#include <cmath>

namespace pp::model {

Status SamplingParams::validate(int64_t n_vocab) const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return invalid_argument("temperature must be >= 0, got {}", temperature);
  }
  if (!(top_p > 0.0f && top_p <= 1.0f))
    return invalid_argument("top_p must be in (0, 1], got {}", top_p);
  if (top_k < -1) return invalid_argument("top_k must be -1, 0 (off) or positive, got {}", top_k);
  if (!(min_p >= 0.0f && min_p <= 1.0f))
    return invalid_argument("min_p must be in [0, 1], got {}", min_p);
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return invalid_argument("presence_penalty must be in [-2, 2], got {}", presence_penalty);
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return invalid_argument("frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  }
  if (!(repetition_penalty > 0.0f && std::isfinite(repetition_penalty))) {
    return invalid_argument("repetition_penalty must be positive, got {}", repetition_penalty);
  }
  if (max_tokens < 0) return invalid_argument("max_tokens must be >= 0, got {}", max_tokens);
  if (top_logprobs < 0 || top_logprobs > kMaxTopLogprobs) {
    return invalid_argument("top_logprobs must be in [0, {}], got {}", kMaxTopLogprobs,
                            top_logprobs);
  }
  for (const std::string& s : stop) {
    if (s.empty()) return invalid_argument("stop strings must not be empty");
  }
  for (int32_t id : stop_token_ids) {
    if (id < 0 || id >= n_vocab) {
      return invalid_argument("stop token id {} is outside the vocabulary [0, {})", id, n_vocab);
    }
  }
  for (size_t i = 0; i < logit_bias.size(); ++i) {
    const auto [id, bias] = logit_bias[i];
    if (id < 0 || id >= n_vocab) {
      return invalid_argument("logit_bias token id {} is outside the vocabulary [0, {})", id,
                              n_vocab);
    }
    if (!(bias >= -100.0f && bias <= 100.0f)) {
      return invalid_argument("logit_bias for token {} must be in [-100, 100], got {}", id, bias);
    }
    if (i > 0 && logit_bias[i - 1].first >= id) {
      return invalid_argument("logit_bias token ids must be sorted and unique");
    }
  }
  if (grammar.active() && grammar.kind != OutputGrammar::Kind::kJsonObject &&
      grammar.text.empty()) {
    return invalid_argument("the {} grammar is empty", grammar_kind_name(grammar.kind));
  }
  return ok_status();
}

void SamplingParams::split_logit_bias(std::vector<int32_t>* ids, std::vector<float>* values) const {
  ids->clear();
  values->clear();
  for (const auto& [id, bias] : logit_bias) {
    ids->push_back(id);
    values->push_back(bias);
  }
}

const char* grammar_kind_name(OutputGrammar::Kind kind) {
  switch (kind) {
    case OutputGrammar::Kind::kNone:
      return "none";
    case OutputGrammar::Kind::kJsonObject:
      return "json_object";
    case OutputGrammar::Kind::kJsonSchema:
      return "json_schema";
    case OutputGrammar::Kind::kRegex:
      return "regex";
    case OutputGrammar::Kind::kEbnf:
      return "ebnf";
  }
  return "?";
}

}  // namespace pp::model
