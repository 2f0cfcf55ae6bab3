// The tokenizer.json normalizers (see normalizer.h).
#include "tokenizer/normalizer.h"

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace pp::model::tok {

namespace {

class Nfc final : public Normalizer {
 public:
  std::string normalize(std::string s) const override { return nfc(s); }
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(std::string p) : prepend_(std::move(p)) {}
  std::string normalize(std::string s) const override {
    return s.empty() ? s : prepend_ + s;  // like HF, an empty segment stays empty
  }

 private:
  std::string prepend_;
};

class Replace final : public Normalizer {
 public:
  Replace(std::shared_ptr<const Regex> re, std::string content)
      : re_(std::move(re)), content_(std::move(content)) {}
  std::string normalize(std::string s) const override {
    auto matches = re_->find_all(s);
    if (matches.empty()) return s;
    std::string out;
    size_t last = 0;
    for (auto [b, e] : matches) {
      out.append(s, last, b - last);
      out += content_;
      last = e;
    }
    out.append(s, last);
    return out;
  }

 private:
  std::shared_ptr<const Regex> re_;
  std::string content_;
};

class Strip final : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  std::string normalize(std::string s) const override {
    auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    size_t b = 0, e = s.size();
    if (left_)
      while (b < e && is_space(s[b])) ++b;
    if (right_)
      while (e > b && is_space(s[e - 1])) --e;
    return s.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  std::string normalize(std::string s) const override {
    for (const auto& n : steps_) s = n->normalize(std::move(s));
    return s;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

Result<std::unique_ptr<Normalizer>> make_normalizer(const nlohmann::json& j) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  const std::string type = j.value("type", "");
  if (type == "NFC") return std::unique_ptr<Normalizer>(new Nfc());
  if (type == "Prepend") return std::unique_ptr<Normalizer>(new Prepend(j.at("prepend")));
  if (type == "Replace") {
    PP_ASSIGN_OR_RETURN(auto re, make_pattern(j.at("pattern")));
    return std::unique_ptr<Normalizer>(new Replace(std::move(re), j.at("content")));
  }
  if (type == "Strip")
    return std::unique_ptr<Normalizer>(
        new Strip(j.value("strip_left", true), j.value("strip_right", true)));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const auto& n : j.at("normalizers")) {
      PP_ASSIGN_OR_RETURN(auto step, make_normalizer(n));
      if (step) steps.push_back(std::move(step));
    }
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  return unimplemented("normalizer type '{}' is not supported", type);
}

}  // namespace pp::model::tok
