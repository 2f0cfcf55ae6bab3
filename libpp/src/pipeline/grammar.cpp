// GrammarCompiler and GrammarMatcher over xgrammar (see grammar.h).
//
// The vocabulary handed to xgrammar is the tokenizer's raw token strings ("Ġthe", "▁the",
// "<0x0A>"), with the encoding detected from the tokenizer's own tokenizer.json form as
// xgrammar's Hugging Face path detects it (byte-level, byte-fallback, or raw). Special tokens
// (<|im_start|> and the like) are given as empty strings, which xgrammar never allows inside a
// grammar; the stop tokens are the model's eos ids. Ids past the tokenizer's (padding rows of
// lm_head) are special too. xgrammar reports errors by exceptions: they end here, as statuses.
#include "pp/pipeline/grammar.h"

#include <algorithm>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#if PP_HAVE_XGRAMMAR
#include <dlpack/dlpack.h>
#include <xgrammar/xgrammar.h>
#endif

namespace pp::pipeline {

#if PP_HAVE_XGRAMMAR

namespace {

// The first line of an xgrammar error, without its "[hh:mm:ss] /path/file.cc:123: " prefix.
std::string first_line(const std::string& s) {
  std::string line = s.substr(0, s.find('\n'));
  if (!line.empty() && line[0] == '[') {
    const size_t cc = line.find(".cc:");
    const size_t colon = cc == std::string::npos ? cc : line.find(": ", cc + 4);
    if (colon != std::string::npos) line = line.substr(colon + 2);
  }
  return line.size() > 300 ? line.substr(0, 300) + "..." : line;
}

class XgrammarMatcher final : public GrammarMatcher {
 public:
  // `also`: null, or a mask every step's mask is narrowed to (see json_safe).
  XgrammarMatcher(const xgrammar::CompiledGrammar& g, std::vector<int32_t> stop_ids,
                  int64_t n_vocab, const std::vector<uint32_t>* also)
      : matcher_(g, std::vector<int>(stop_ids.begin(), stop_ids.end())),
        n_vocab_(n_vocab),
        also_(also) {}

  bool fill_next_mask(std::vector<uint32_t>& words) override {
    const int64_t n_words = (n_vocab_ + 31) / 32;
    words.assign(size_t(n_words), 0u);
    if (matcher_.IsTerminated()) return false;
    int64_t shape[1] = {n_words};
    DLTensor t{};
    t.data = words.data();
    t.device = DLDevice{kDLCPU, 0};
    t.ndim = 1;
    t.dtype = DLDataType{kDLInt, 32, 1};
    t.shape = shape;
    t.strides = nullptr;
    t.byte_offset = 0;
    matcher_.FillNextTokenBitmask(&t);
    if (also_) {
      for (size_t i = 0; i < words.size(); ++i) words[i] &= (*also_)[i];
    }
    // Ids past the last full word of the vocabulary stay clear.
    if (n_vocab_ % 32 != 0) words.back() &= (1u << (n_vocab_ % 32)) - 1u;
    return std::any_of(words.begin(), words.end(), [](uint32_t w) { return w != 0; });
  }

  bool accept(int32_t token) override {
    if (matcher_.IsTerminated()) return false;
    return matcher_.AcceptToken(token);
  }

  bool terminated() const override { return matcher_.IsTerminated(); }

 private:
  xgrammar::GrammarMatcher matcher_;
  int64_t n_vocab_;
  const std::vector<uint32_t>* also_;
};

class XgrammarCompiler final : public GrammarCompiler {
 public:
  XgrammarCompiler(xgrammar::TokenizerInfo info, std::vector<int32_t> stop_ids, int64_t n_vocab,
                   std::vector<uint32_t> json_safe)
      : compiler_(info, int(std::clamp(std::thread::hardware_concurrency(), 1u, 8u))),
        stop_ids_(std::move(stop_ids)),
        n_vocab_(n_vocab),
        json_safe_(std::move(json_safe)) {}

  Result<std::unique_ptr<GrammarMatcher>> compile(const model::OutputGrammar& g) override {
    using Kind = model::OutputGrammar::Kind;
    try {
      xgrammar::CompiledGrammar compiled = [&] {
        switch (g.kind) {
          case Kind::kJsonObject:
            // Any object: not strict, so that it may hold any properties.
            return compiler_.CompileJSONSchema(R"({"type": "object"})", g.any_whitespace,
                                               std::nullopt, std::nullopt, false);
          case Kind::kJsonSchema:
            return compiler_.CompileJSONSchema(g.text, g.any_whitespace, std::nullopt, std::nullopt,
                                               g.strict);
          case Kind::kRegex:
            return compiler_.CompileRegex(g.text);
          case Kind::kEbnf:
            return compiler_.CompileGrammar(g.text, "root");
          case Kind::kNone:
            break;
        }
        throw std::invalid_argument("no grammar given");
      }();
      const bool json = g.kind == Kind::kJsonObject || g.kind == Kind::kJsonSchema;
      return std::unique_ptr<GrammarMatcher>(
          new XgrammarMatcher(compiled, stop_ids_, n_vocab_, json ? &json_safe_ : nullptr));
    } catch (const std::exception& e) {
      return invalid_argument("invalid {} grammar: {}", model::grammar_kind_name(g.kind),
                              first_line(e.what()));
    }
  }

 private:
  xgrammar::GrammarCompiler compiler_;
  std::vector<int32_t> stop_ids_;
  int64_t n_vocab_;
  // The tokens without a control character (bytes below 0x20), and the stop tokens. xgrammar's
  // JSON strings allow raw control characters, which JSON itself forbids (json.loads refuses
  // them): the JSON kinds' masks are narrowed to these. (Compact JSON needs no whitespace but
  // spaces.)
  std::vector<uint32_t> json_safe_;
};

}  // namespace

bool GrammarCompiler::available() { return true; }

Result<std::unique_ptr<GrammarCompiler>> GrammarCompiler::create(const model::Tokenizer& tokenizer,
                                                                 int64_t n_vocab,
                                                                 std::vector<int32_t> stop_ids) {
  const int64_t n_tok = tokenizer.vocab_size();
  if (n_vocab < n_tok) {
    return invalid_argument("the model has {} logit rows for a tokenizer of {} ids", n_vocab,
                            n_tok);
  }
  try {
    const nlohmann::json meta = nlohmann::json::parse(
        xgrammar::TokenizerInfo::DetectMetadataFromHF(tokenizer.to_hf_json().dump()));
    const auto vocab_type = xgrammar::VocabType(meta.value("vocab_type", 0));
    const bool add_prefix_space = meta.value("add_prefix_space", false);
    std::vector<std::string> vocab(static_cast<size_t>(n_tok), std::string());
    for (int32_t id = 0; id < int32_t(n_tok); ++id) {
      if (!tokenizer.is_special(id)) vocab[size_t(id)] = tokenizer.id_to_token(id);
    }
    std::vector<int32_t> stops;
    for (int32_t id : stop_ids) {
      if (id >= 0 && id < n_vocab) stops.push_back(id);
    }
    xgrammar::TokenizerInfo info(vocab, vocab_type, int(n_vocab), stops, add_prefix_space);
    std::vector<uint32_t> json_safe(size_t((n_vocab + 31) / 32), 0u);
    for (int32_t id = 0; id < int32_t(n_tok); ++id) {
      const std::string text = tokenizer.decode(std::span<const int32_t>(&id, 1));
      if (std::none_of(text.begin(), text.end(),
                       [](char c) { return static_cast<unsigned char>(c) < 0x20; })) {
        json_safe[size_t(id / 32)] |= 1u << (id % 32);
      }
    }
    for (int32_t id : stops) json_safe[size_t(id / 32)] |= 1u << (id % 32);
    return std::unique_ptr<GrammarCompiler>(
        new XgrammarCompiler(std::move(info), std::move(stops), n_vocab, std::move(json_safe)));
  } catch (const std::exception& e) {
    return internal_error("cannot prepare the vocabulary for structured output: {}",
                          first_line(e.what()));
  }
}

#else  // no xgrammar

bool GrammarCompiler::available() { return false; }

Result<std::unique_ptr<GrammarCompiler>> GrammarCompiler::create(const model::Tokenizer&, int64_t,
                                                                 std::vector<int32_t>) {
  return make_error(StatusCode::kUnimplemented,
                    "structured output needs pp built with xgrammar (scripts/fetch-xgrammar.sh, "
                    "then build again)");
}

#endif

}  // namespace pp::pipeline
