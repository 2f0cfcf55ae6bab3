// IncrementalDetokenizer: streams the text of a growing token sequence. Each push() returns the
// text that has become final; together with flush() the pieces concatenate to exactly
// Tokenizer::decode(all ids, skip_special). A piece never ends inside a multi-byte UTF-8
// character: text ending in an incomplete sequence (U+FFFD from a partial byte) or in a run of
// <0xXX> byte-fallback tokens is held back until it completes.
//
// It decodes a short window of recent ids: the ids already streamed in the last piece give the
// decoder its context (SentencePiece's leading space, a Strip decoder), so a push costs the
// decode of a few tokens, not of the whole sequence.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pp/model/tokenizer.h"

namespace pp::model {

class IncrementalDetokenizer {
 public:
  // `tok` must outlive the detokenizer.
  IncrementalDetokenizer(const Tokenizer& tok, bool skip_special);

  // Appends one id; returns the text that became final (often empty).
  std::string push(int32_t id);
  // Returns the text still held back (the sequence has ended).
  std::string flush();

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // the window: ids_[0, read_) are already streamed
  size_t read_ = 0;
};

}  // namespace pp::model
