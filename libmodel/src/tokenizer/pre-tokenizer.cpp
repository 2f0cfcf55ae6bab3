// The tokenizer.json pre-tokenizers (see pre-tokenizer.h).
#include "tokenizer/pre-tokenizer.h"

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace pp::model::tok {

namespace {

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Result<Behavior> parse_behavior(const std::string& s) {
  if (s == "Removed") return Behavior::kRemoved;
  if (s == "Isolated") return Behavior::kIsolated;
  if (s == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::kMergedWithNext;
  if (s == "Contiguous") return Behavior::kContiguous;
  return invalid_argument("unknown split behavior '{}'", s);
}

struct Span {
  size_t b, e;
  bool is_match;
};

// Splits one piece at the matches of `re` the way tokenizers' NormalizedString::split does.
void split_piece(const Piece& p, const Regex& re, Behavior behavior, bool invert,
                 std::vector<Piece>& out) {
  const std::string& s = p.text;
  std::vector<Span> spans;
  size_t last = 0;
  for (auto [b, e] : re.find_all(s)) {
    if (b > last) spans.push_back({last, b, invert});
    spans.push_back({b, e, !invert});
    last = e;
  }
  if (last < s.size()) spans.push_back({last, s.size(), invert});

  std::vector<Span> merged;
  bool prev_match = false;
  switch (behavior) {
    case Behavior::kRemoved:
      for (const Span& sp : spans)
        if (!sp.is_match) merged.push_back(sp);
      break;
    case Behavior::kIsolated:
      merged = spans;
      break;
    case Behavior::kMergedWithPrevious:
      for (const Span& sp : spans) {
        if (sp.is_match && !prev_match && !merged.empty())
          merged.back().e = sp.e;
        else
          merged.push_back(sp);
        prev_match = sp.is_match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !prev_match && !merged.empty())
          merged.back().b = it->b;
        else
          merged.push_back(*it);
        prev_match = it->is_match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    case Behavior::kContiguous:
      for (const Span& sp : spans) {
        if (sp.is_match == prev_match && !merged.empty())
          merged.back().e = sp.e;
        else
          merged.push_back(sp);
        prev_match = sp.is_match;
      }
      break;
  }
  for (const Span& sp : merged) {
    if (sp.e > sp.b) out.push_back({s.substr(sp.b, sp.e - sp.b), p.at_start && sp.b == 0});
  }
}

class Split final : public PreTokenizer {
 public:
  Split(std::shared_ptr<const Regex> re, Behavior behavior, bool invert)
      : re_(std::move(re)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (const Piece& p : pieces) split_piece(p, *re_, behavior_, invert_, out);
    pieces = std::move(out);
  }

 private:
  std::shared_ptr<const Regex> re_;
  Behavior behavior_;
  bool invert_;
};

class ByteLevel final : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, std::shared_ptr<const Regex> re)
      : add_prefix_space_(add_prefix_space), re_(std::move(re)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> split;
    for (Piece& p : pieces) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) {
        std::string spaced(1, ' ');
        spaced += p.text;
        p.text = std::move(spaced);
      }
      if (re_)
        split_piece(p, *re_, Behavior::kIsolated, false, split);
      else
        split.push_back(std::move(p));
    }
    const auto& table = byte_to_unicode();
    for (Piece& p : split) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char c : p.text) mapped += table[c];
      p.text = std::move(mapped);
    }
    pieces = std::move(split);
  }
  bool byte_level() const override { return true; }

 private:
  bool add_prefix_space_;
  std::shared_ptr<const Regex> re_;  // null when use_regex is false
};

class Metaspace final : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  Metaspace(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)), prepend_(prepend), split_(split) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (Piece& p : pieces) {
      std::string t;
      for (char c : p.text) {
        if (c == ' ')
          t += replacement_;
        else
          t += c;
      }
      bool starts = t.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (prepend_ == Prepend::kAlways || (prepend_ == Prepend::kFirst && p.at_start)))
        t.insert(0, replacement_);
      if (!split_) {
        out.push_back({std::move(t), p.at_start});
        continue;
      }
      // MergedWithNext on each replacement character.
      size_t start = 0;
      for (size_t i = 0; i < t.size();) {
        if (i > start && t.compare(i, replacement_.size(), replacement_) == 0) {
          out.push_back({t.substr(start, i - start), p.at_start && start == 0});
          start = i;
        }
        i += t.compare(i, replacement_.size(), replacement_) == 0 ? replacement_.size() : 1;
      }
      if (t.size() > start) out.push_back({t.substr(start), p.at_start && start == 0});
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& s : steps_) s->pre_tokenize(pieces);
  }
  bool byte_level() const override {
    for (const auto& s : steps_)
      if (s->byte_level()) return true;
    return false;
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

Result<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(const nlohmann::json& j) {
  if (j.is_null()) return std::unique_ptr<PreTokenizer>();
  const std::string type = j.value("type", "");
  if (type == "Split") {
    PP_ASSIGN_OR_RETURN(auto re, make_pattern(j.at("pattern")));
    PP_ASSIGN_OR_RETURN(Behavior b, parse_behavior(j.value("behavior", "Isolated")));
    return std::unique_ptr<PreTokenizer>(new Split(std::move(re), b, j.value("invert", false)));
  }
  if (type == "ByteLevel") {
    std::shared_ptr<const Regex> re;
    if (j.value("use_regex", true)) {
      PP_ASSIGN_OR_RETURN(re, Regex::compile(kGpt2Pattern));
    }
    return std::unique_ptr<PreTokenizer>(new ByteLevel(j.value("add_prefix_space", false), re));
  }
  if (type == "Digits") {
    PP_ASSIGN_OR_RETURN(auto re, Regex::compile(R"(\p{N})"));
    Behavior b = j.value("individual_digits", false) ? Behavior::kIsolated : Behavior::kContiguous;
    return std::unique_ptr<PreTokenizer>(new Split(std::move(re), b, false));
  }
  if (type == "Metaspace") {
    Metaspace::Prepend prepend = Metaspace::Prepend::kAlways;
    if (j.contains("prepend_scheme")) {
      const std::string s = j["prepend_scheme"];
      if (s == "first")
        prepend = Metaspace::Prepend::kFirst;
      else if (s == "never")
        prepend = Metaspace::Prepend::kNever;
    } else if (!j.value("add_prefix_space", true)) {
      prepend = Metaspace::Prepend::kNever;
    }
    return std::unique_ptr<PreTokenizer>(
        new Metaspace(j.value("replacement", "\xE2\x96\x81"), prepend, j.value("split", true)));
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const auto& p : j.at("pretokenizers")) {
      PP_ASSIGN_OR_RETURN(auto step, make_pre_tokenizer(p));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
  }
  return unimplemented("pre-tokenizer type '{}' is not supported", type);
}

}  // namespace pp::model::tok
