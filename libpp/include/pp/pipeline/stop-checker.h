// StopChecker: finds a request's stop strings in its streamed text, across token boundaries.
//
// Text arrives in pieces (what the incremental detokenizer makes final). The checker passes on
// only text that can no longer become part of a stop string: the longest tail of the text that
// is the beginning of some stop string is held back until the next piece shows whether the stop
// string completes. When one does, the text is cut just before it: the stop string and anything
// after it are never emitted. So the concatenation of everything emitted (plus flush()) is the
// whole text truncated at the first stop string, and no piece is ever taken back.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pp::pipeline {

class StopChecker {
 public:
  StopChecker() = default;
  // Empty strings are ignored (SamplingParams::validate refuses them).
  explicit StopChecker(std::vector<std::string> stops);

  bool empty() const { return stops_.empty(); }
  const std::vector<std::string>& stops() const { return stops_; }

  // Takes the next piece of text; appends what is final to *out. Returns the index (in stops())
  // of the stop string that matched, or -1. When several occur, the one that completes first in
  // the text wins (on a tie the one starting first, then the first listed): the result does not
  // depend on how the text was cut into pieces.
  // After a match the checker is done: further pushes are a bug.
  int32_t push(std::string_view piece, std::string* out);
  // The text has ended without a match: appends what was held back to *out.
  void flush(std::string* out);

  bool matched() const { return matched_ >= 0; }
  int32_t matched_index() const { return matched_; }
  // Bytes held back now (a prefix of some stop string).
  size_t n_held() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // text not yet emitted: a proper prefix of some stop string
  int32_t matched_ = -1;
};

}  // namespace pp::pipeline
