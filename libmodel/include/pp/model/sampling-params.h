// SamplingParams: how one request chooses its tokens and when it stops. Shared by the one-shot
// generator and the server (which fills it from an OpenAI request); the sampling itself is the
// kernels' sample() and apply_penalties(), so every backend draws the same tokens for a seed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pp/status.h"

namespace pp::model {

// A grammar the generated text must follow (structured output). The coordinator compiles it
// against the model's vocabulary and sends a mask of the allowed next tokens with each plan; the
// last stage's sampler drops every other token. kNone: unconstrained.
struct OutputGrammar {
  enum class Kind {
    kNone,
    kJsonObject,  // any JSON object (OpenAI response_format json_object)
    kJsonSchema,  // text: a JSON schema (response_format json_schema, SGLang json_schema,
                  // vLLM guided_json, tool calls)
    kRegex,       // text: a regular expression the whole output matches
    kEbnf,        // text: a GBNF/EBNF grammar with a `root` rule (SGLang ebnf, vLLM
                  // guided_grammar; vLLM guided_choice is made into one)
  };
  Kind kind = Kind::kNone;
  std::string text;
  // JSON kinds: allow any whitespace between tokens (false: the compact form, as OpenAI's
  // strict mode and SGLang's default give).
  bool any_whitespace = false;
  // kJsonSchema: properties and items the schema does not list are refused (OpenAI's strict,
  // SGLang's default); false: JSON Schema's own defaults (additional properties allowed).
  bool strict = true;

  bool active() const { return kind != Kind::kNone; }
  friend bool operator==(const OutputGrammar&, const OutputGrammar&) = default;
};

// The name a user wrote for a grammar kind, for messages.
const char* grammar_kind_name(OutputGrammar::Kind kind);

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy (argmax, lowest id on ties)
  float top_p = 1.0f;               // nucleus: keep the smallest set with this much mass; 1 = off
  int32_t top_k = 0;                // keep the k most likely; 0 or -1 = off
  float min_p = 0.0f;               // drop tokens below min_p * p(most likely); 0 = off
  float presence_penalty = 0.0f;    // subtracted once from every token already generated
  float frequency_penalty = 0.0f;   // subtracted per occurrence among generated tokens
  float repetition_penalty = 1.0f;  // HF-style, over prompt and output; 1 = off
  std::optional<uint64_t> seed;     // absent: a fresh random seed per request
  int64_t max_tokens = 16;          // generated tokens at most; 0 = until the context is full
  std::vector<std::string> stop;    // stop strings (matched across token boundaries, excluded)
  std::vector<int32_t> stop_token_ids;  // extra ids that end generation, like eos
  bool ignore_eos = false;              // keep going past the model's eos ids
  bool skip_special_tokens = true;      // leave special tokens out of the text
  bool logprobs = false;                // report the chosen token's logprob
  int32_t top_logprobs = 0;             // and this many alternatives (0..20)
  // Added to the logits of these token ids before sampling (OpenAI logit_bias, each in
  // [-100, 100]; -100 in effect bans a token). Sorted by id, one entry per id.
  std::vector<std::pair<int32_t, float>> logit_bias;
  OutputGrammar grammar;  // structured output; kNone = free text

  bool is_greedy() const { return temperature <= 0.0f || top_k == 1; }
  bool has_penalties() const {
    return presence_penalty != 0.0f || frequency_penalty != 0.0f || repetition_penalty != 1.0f;
  }
  // kInvalidArgument naming the first bad field (`n_vocab` bounds stop_token_ids).
  Status validate(int64_t n_vocab) const;
  // logit_bias as the samplers take it: replaces `ids` and `values` with its ids and their
  // biases, in the same order (one value per id).
  void split_logit_bias(std::vector<int32_t>* ids, std::vector<float>* values) const;
};

inline constexpr int32_t kMaxTopLogprobs = 20;

}  // namespace pp::model
