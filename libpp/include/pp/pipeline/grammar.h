// Structured output: grammars (JSON schema, any JSON object, regular expression, EBNF) compiled
// against one model's vocabulary, and the per-sequence matcher that says which tokens may come
// next. Built on xgrammar's C++ core (its sources are fetched by scripts/fetch-xgrammar.sh);
// without it GrammarCompiler::create() says so and no grammar is ever ignored.
//
// Where each part runs: compiling is slow for big schemas (tens of milliseconds), so it runs on
// the submitting thread (an HTTP thread), and a bad grammar is a kInvalidArgument there, before
// the request is queued. Matchers belong to the coordinator thread: it fills the next-token mask
// into a plan for the last stage's sampler and advances the matcher with each sampled token.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pp/model/sampling-params.h"
#include "pp/model/tokenizer.h"
#include "pp/status.h"

namespace pp::pipeline {

// One sequence's place in its grammar. Not thread-safe.
class GrammarMatcher {
 public:
  virtual ~GrammarMatcher() = default;
  // The tokens that may be sampled next into `words`: bit t % 32 of words[t / 32] set when token
  // t may come (ceil(n_vocab / 32) words, resized here). Once the grammar is complete only the
  // stop tokens are allowed. False (and every bit clear) when no token can follow.
  virtual bool fill_next_mask(std::vector<uint32_t>& words) = 0;
  // Advances by a sampled token. False when the grammar does not allow it (the state is kept).
  virtual bool accept(int32_t token) = 0;
  // A stop token was accepted after a complete match: the output is done.
  virtual bool terminated() const = 0;
};

// Compiles grammars for one vocabulary. Thread-safe; compiled grammars are cached by their text.
class GrammarCompiler {
 public:
  virtual ~GrammarCompiler() = default;
  // `n_vocab`: the model's logit rows (at least the tokenizer's ids; the rest are never allowed);
  // `stop_ids`: the tokens that end a complete output (the model's eos ids). kUnimplemented
  // when pp was built without xgrammar.
  static Result<std::unique_ptr<GrammarCompiler>> create(const model::Tokenizer& tokenizer,
                                                         int64_t n_vocab,
                                                         std::vector<int32_t> stop_ids);
  // Whether this build has a grammar engine at all.
  static bool available();
  // A matcher at the start of `grammar` (active()). kInvalidArgument naming what is wrong with
  // a schema, regular expression or grammar.
  virtual Result<std::unique_ptr<GrammarMatcher>> compile(const model::OutputGrammar& grammar) = 0;
};

}  // namespace pp::pipeline
