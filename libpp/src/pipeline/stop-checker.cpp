// Stop strings across token boundaries (see stop-checker.h). A match must start inside the held
// text or the new piece: held_ is the longest tail of the emitted-or-held text that could still
// begin a stop string, so every earlier start was already ruled out. The search is therefore over
// held_ + piece only, a few bytes, however long the text grows.
#include "pp/pipeline/stop-checker.h"

#include <algorithm>

#include "pp/assert.h"

namespace pp::pipeline {

namespace {

// Longest k < stop.size() (over all stops) such that `text` ends with the first k bytes of a stop.
size_t partial_stop_suffix(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops) {
    for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k) {
      if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

}  // namespace

StopChecker::StopChecker(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

int32_t StopChecker::push(std::string_view piece, std::string* out) {
  PP_ASSERT_MSG(matched_ < 0, "stop checker pushed after a match");
  if (stops_.empty()) {
    out->append(piece);
    return -1;
  }
  held_.append(piece);
  // The stop string that completes first wins (the smallest end; on a tie the longest), which
  // is what a token-by-token check sees, whatever the size of the pieces.
  size_t best_end = std::string::npos, best_at = 0;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const size_t at = held_.find(stops_[i]);
    if (at == std::string::npos) continue;
    const size_t end = at + stops_[i].size();
    if (best_end == std::string::npos || end < best_end || (end == best_end && at < best_at)) {
      best_end = end;
      best_at = at;
      matched_ = int32_t(i);
    }
  }
  if (matched_ >= 0) {
    out->append(held_, 0, best_at);
    held_.clear();
    return matched_;
  }
  const size_t hold = partial_stop_suffix(held_, stops_);
  out->append(held_, 0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return -1;
}

void StopChecker::flush(std::string* out) {
  out->append(held_);
  held_.clear();
}

}  // namespace pp::pipeline
