// Structured output's grammar engine (pipeline/grammar.h) on real tokenizers (GPT-2's byte-level
// vocabulary and Llama 2's byte-fallback one): random walks through the allowed tokens always
// produce text that parses and matches its schema, regular expression or grammar; the masks
// never allow a special token or a padding id, and allow the stop token exactly when the text
// is complete; bad grammars are refused with a readable message.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "pp/pipeline/grammar.h"
#include "test-util.h"

namespace pp::pipeline {
namespace {

using Kind = model::OutputGrammar::Kind;

struct Walk {
  std::vector<int32_t> tokens;  // without the stop token
  bool terminated = false;
};

class GrammarTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (!GrammarCompiler::available()) GTEST_SKIP() << "built without xgrammar";
    auto tok = model::Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers" / GetParam() /
                                              "tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status().message();
    tok_ = std::move(*tok);
    // Logit rows past the tokenizer's ids, as models pad lm_head; a stop id of the vocabulary.
    n_vocab_ = tok_->vocab_size() + test::random_int(0, 40);
    stop_ = tok_->eos_id().value_or(int32_t(tok_->vocab_size() - 1));
    auto c = GrammarCompiler::create(*tok_, n_vocab_, {stop_});
    ASSERT_TRUE(c.ok()) << c.status().message();
    compiler_ = std::move(*c);
  }

  std::unique_ptr<GrammarMatcher> compile(Kind kind, std::string text) {
    auto m = compiler_->compile({.kind = kind, .text = std::move(text)});
    EXPECT_TRUE(m.ok()) << m.status().message();
    return m.ok() ? std::move(*m) : nullptr;
  }

  static bool allowed(const std::vector<uint32_t>& words, int64_t t) {
    return (words[size_t(t / 32)] >> (t % 32)) & 1u;
  }

  // Draws allowed tokens at random (the stop token as soon as it is allowed, and with
  // probability `p_short` the shortest-looking one), checking each mask on the way.
  Walk walk(GrammarMatcher& m, int max_steps, double p_short = 0.5) {
    Walk w;
    std::vector<uint32_t> words;
    for (int step = 0; step < max_steps; ++step) {
      const auto t0 = std::chrono::steady_clock::now();
      EXPECT_TRUE(m.fill_next_mask(words));
      fill_us_ +=
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      ++n_fills_;
      EXPECT_EQ(int64_t(words.size()), (n_vocab_ + 31) / 32);
      std::vector<int32_t> ok;
      for (int64_t t = 0; t < n_vocab_; ++t) {
        if (!allowed(words, t)) continue;
        EXPECT_LT(t, tok_->vocab_size()) << "a padding id is allowed";
        EXPECT_TRUE(t == stop_ || !tok_->is_special(int32_t(t))) << "special token " << t;
        ok.push_back(int32_t(t));
      }
      if (ok.empty()) return w;
      int32_t pick;
      if (allowed(words, stop_)) {
        pick = stop_;
      } else if (std::uniform_real_distribution<double>(0, 1)(test::rng()) < p_short) {
        // The token whose text is shortest (ties: random), so walks end.
        std::shuffle(ok.begin(), ok.end(), test::rng());
        pick = *std::min_element(ok.begin(), ok.end(), [&](int32_t a, int32_t b) {
          return tok_->decode(std::vector<int32_t>{a}).size() <
                 tok_->decode(std::vector<int32_t>{b}).size();
        });
      } else {
        pick = ok[size_t(test::random_int(0, int64_t(ok.size()) - 1))];
      }
      EXPECT_TRUE(m.accept(pick)) << "an allowed token was refused: " << pick;
      if (pick == stop_) {
        EXPECT_TRUE(m.terminated());
        w.terminated = true;
        return w;
      }
      w.tokens.push_back(pick);
    }
    return w;
  }

  std::string text(const Walk& w) { return tok_->decode(w.tokens); }

  void TearDown() override {
    // What a mask costs the coordinator (information, not a test: speed is pp-bench's).
    if (n_fills_ > 0) {
      std::printf("%s: %d masks, %.1f us each\n", GetParam(), n_fills_, fill_us_ / n_fills_);
    }
  }

  std::unique_ptr<model::Tokenizer> tok_;
  double fill_us_ = 0;
  int n_fills_ = 0;
  std::unique_ptr<GrammarCompiler> compiler_;
  int64_t n_vocab_ = 0;
  int32_t stop_ = 0;
};

TEST_P(GrammarTest, JsonSchemaWalksParseAndMatch) {
  const std::string schema = R"({"type": "object", "properties": {
      "name": {"type": "string", "maxLength": 6},
      "n": {"type": "integer", "minimum": 0, "maximum": 999},
      "ok": {"type": "boolean"},
      "tags": {"type": "array", "items": {"enum": ["a", "b\"c"]}, "maxItems": 3}},
      "required": ["name", "n", "ok", "tags"]})";
  for (int trial = 0; trial < 4; ++trial) {
    auto m = compile(Kind::kJsonSchema, schema);
    ASSERT_TRUE(m);
    const Walk w = walk(*m, 400);
    ASSERT_TRUE(w.terminated) << text(w);
    const nlohmann::ordered_json j = nlohmann::ordered_json::parse(text(w), nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << text(w);
    ASSERT_TRUE(j.is_object()) << text(w);
    // Strict: exactly the listed keys, in the schema's order.
    std::vector<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.push_back(k);
    EXPECT_EQ(keys, (std::vector<std::string>{"name", "n", "ok", "tags"})) << text(w);
    EXPECT_TRUE(j["name"].is_string() && j["name"].get<std::string>().size() <= 24) << text(w);
    for (const char c : text(w)) EXPECT_GE(static_cast<unsigned char>(c), 0x20) << text(w);
    EXPECT_TRUE(j["n"].is_number_integer() && j["n"] >= 0 && j["n"] <= 999) << text(w);
    EXPECT_TRUE(j["ok"].is_boolean()) << text(w);
    ASSERT_TRUE(j["tags"].is_array() && j["tags"].size() <= 3) << text(w);
    for (const auto& t : j["tags"]) EXPECT_TRUE(t == "a" || t == "b\"c") << text(w);
  }
}

TEST_P(GrammarTest, AnyJsonObjectWalksParse) {
  for (int trial = 0; trial < 3; ++trial) {
    auto m = compile(Kind::kJsonObject, "");
    ASSERT_TRUE(m);
    const Walk w = walk(*m, 300, 0.9);
    if (!w.terminated) continue;  // a random object may be long; those that end must parse
    // JSON numbers have no range, and a walk drew 3e+69756 once, which nlohmann refuses
    // ("number overflow"): exponents and long digit runs are shortened before parsing (inside
    // strings too, where any digits are valid).
    std::string t = std::regex_replace(text(w), std::regex("([eE][+-]?)[0-9]+"), "$011");
    t = std::regex_replace(t, std::regex("[0-9]{16,}"), "1");
    const auto j = nlohmann::json::parse(t, nullptr, false);
    EXPECT_TRUE(!j.is_discarded() && j.is_object()) << text(w);
  }
}

TEST_P(GrammarTest, RegexAndChoiceWalksMatch) {
  const std::regex re("[a-c]{2,5}-[0-9]{3}( ok)?");
  for (int trial = 0; trial < 5; ++trial) {
    auto m = compile(Kind::kRegex, "[a-c]{2,5}-[0-9]{3}( ok)?");
    ASSERT_TRUE(m);
    const Walk w = walk(*m, 100);
    ASSERT_TRUE(w.terminated) << text(w);
    EXPECT_TRUE(std::regex_match(text(w), re)) << text(w);
  }
  const std::set<std::string> choices = {"yes", "no", "maybe \"so\""};
  for (int trial = 0; trial < 5; ++trial) {
    auto m = compile(Kind::kEbnf, R"(root ::= "yes" | "no" | "maybe \"so\"")");
    ASSERT_TRUE(m);
    const Walk w = walk(*m, 50);
    ASSERT_TRUE(w.terminated);
    EXPECT_TRUE(choices.count(text(w))) << text(w);
  }
}

TEST_P(GrammarTest, RefusedTokensAndTermination) {
  auto m = compile(Kind::kRegex, "ab");
  ASSERT_TRUE(m);
  const auto ids = tok_->encode("zz");
  ASSERT_FALSE(ids.empty());
  EXPECT_FALSE(m->accept(ids[0]));  // refused, and the state is kept
  EXPECT_FALSE(m->accept(stop_));   // not complete yet
  for (const char* piece : {"a", "b"}) {
    const std::optional<int32_t> t = tok_->token_to_id(piece);
    ASSERT_TRUE(t) << piece;
    ASSERT_TRUE(m->accept(*t)) << piece;
  }
  std::vector<uint32_t> words;
  ASSERT_TRUE(m->fill_next_mask(words));
  for (int64_t t = 0; t < n_vocab_; ++t) EXPECT_EQ(allowed(words, t), t == stop_) << t;
  EXPECT_TRUE(m->accept(stop_));
  EXPECT_TRUE(m->terminated());
  EXPECT_FALSE(m->fill_next_mask(words));
  EXPECT_FALSE(m->accept(stop_));
}

TEST_P(GrammarTest, BadGrammarsAreRefusedReadably) {
  const std::pair<Kind, const char*> bad[] = {{Kind::kRegex, "([a-"},
                                              {Kind::kJsonSchema, R"({"type": "no-such-type"})"},
                                              {Kind::kJsonSchema, "not json"},
                                              {Kind::kEbnf, "root ::= undefined_rule"},
                                              {Kind::kEbnf, "no rules here"}};
  for (const auto& [kind, text] : bad) {
    auto m = compiler_->compile({.kind = kind, .text = text});
    ASSERT_FALSE(m.ok()) << text;
    EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument) << text;
    const std::string msg = m.status().message();
    EXPECT_NE(msg.find(model::grammar_kind_name(kind)), std::string::npos) << msg;
    EXPECT_EQ(msg.find(".cc:"), std::string::npos) << msg;  // no source location noise
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, GrammarTest, ::testing::Values("gpt2", "llama2"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace pp::pipeline
