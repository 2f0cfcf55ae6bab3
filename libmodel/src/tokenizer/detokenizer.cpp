// Incremental detokenization by a sliding window (see detokenizer.h). The window ids_ starts
// with the ids streamed by the last non-empty push (the context) and ends with ids not yet
// streamed. What a push returns is decode(window) minus decode(context): both decodes see the
// same first token, so decoders that treat the first token specially (Strip, Metaspace) agree
// with decoding the whole sequence. A window boundary never falls inside a byte-fallback run or
// an unfinished UTF-8 character, so decoding is additive across boundaries.
#include "pp/model/detokenizer.h"

#include "tokenizer/unicode.h"

namespace pp::model {

namespace {

bool ends_with_replacement(const std::string& s) {
  const auto& r = tok::kReplacementChar;
  return s.size() >= r.size() && s.compare(s.size() - r.size(), r.size(), r) == 0;
}

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special)
    : tok_(&tok), skip_special_(skip_special) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  ids_.push_back(id);
  // Nothing is final while the last visible token is a byte of a run that may still grow (a
  // skipped special token does not end the run: it is removed before decoding).
  if (skip_special_ && tok_->is_special(id)) return {};
  if (tok_->is_byte_fallback_token(id)) return {};
  const std::string text = tok_->decode(ids_, skip_special_);
  const std::string prefix =
      tok_->decode(std::span<const int32_t>(ids_.data(), read_), skip_special_);
  if (text.size() <= prefix.size() || text.compare(0, prefix.size(), prefix) != 0) return {};
  if (ends_with_replacement(text)) return {};  // perhaps a character still missing bytes
  ids_.erase(ids_.begin(), ids_.begin() + read_);
  read_ = ids_.size();
  return text.substr(prefix.size());
}

std::string IncrementalDetokenizer::flush() {
  const std::string text = tok_->decode(ids_, skip_special_);
  const std::string prefix =
      tok_->decode(std::span<const int32_t>(ids_.data(), read_), skip_special_);
  ids_.clear();
  read_ = 0;
  if (text.size() <= prefix.size()) return {};
  return text.substr(prefix.size());
}

}  // namespace pp::model
