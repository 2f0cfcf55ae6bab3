// Structured output through the pipeline on the default model: requests constrained by a JSON
// schema, a regular expression and a choice, greedy and sampled, mixed with free ones, for one
// and two stages. Every constrained output matches its grammar and ends with a stop, greedy
// outputs are the same at every stage count, and free requests beside them are unchanged.
#include <gtest/gtest.h>

#include <array>
#include <regex>

#include <nlohmann/json.hpp>

#include "pp/model/gguf.h"
#include "pp/pipeline/grammar.h"
#include "test-engine-util.h"

namespace pp::pipeline {
namespace {

namespace fs = std::filesystem;
using Kind = model::OutputGrammar::Kind;
using test::EngineRequest;

TEST(EngineGrammar, DefaultModelConstrainedOutputsMatchTheirGrammarAtEveryStageCount) {
  if (!GrammarCompiler::available()) GTEST_SKIP() << "built without xgrammar";
  const fs::path model = test::default_model_path();
  if (!fs::exists(model)) GTEST_SKIP() << "default model missing: " << model;
  auto src = model::open_model(model);
  ASSERT_TRUE(src.ok()) << src.status().message();
  ASSERT_TRUE(src->gguf);
  auto tok = model::Tokenizer::from_gguf(*src->gguf);
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const char* schema = R"({"type": "object", "properties": {
      "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0,
      "maximum": 120}}, "required": ["name", "age"]})";
  const std::regex date("[0-9]{4}-[0-9]{2}-[0-9]{2}");
  auto prompt = [&](const std::string& text) { return (*tok)->encode(text, true); };

  std::vector<EngineRequest> reqs;
  std::vector<Kind> kinds;
  for (int i = 0; i < 16; ++i) {
    EngineRequest r;
    const Kind kind = std::array{Kind::kJsonSchema, Kind::kRegex, Kind::kEbnf, Kind::kNone}[i % 4];
    r.prompt = prompt(i % 4 == 0   ? "A person as JSON:"
                      : i % 4 == 1 ? "Today's date is"
                      : i % 4 == 2 ? "Is water wet? Answer:"
                                   : "Once upon a time");
    r.params.max_tokens = kind == Kind::kNone ? 12 : 60;
    r.params.temperature = i < 8 ? 0.0f : 0.8f;
    r.params.seed = test::rng()();
    r.params.grammar.kind = kind;
    r.params.grammar.text = kind == Kind::kJsonSchema ? schema
                            : kind == Kind::kRegex    ? "[0-9]{4}-[0-9]{2}-[0-9]{2}"
                            : kind == Kind::kEbnf     ? R"(root ::= "yes" | "no")"
                                                      : "";
    r.delay_ms = int(test::random_int(0, 3));
    reqs.push_back(r);
    kinds.push_back(kind);
  }
  // The free requests' answers without any grammar around: the single-process generator's.
  std::vector<EngineRequest> free;
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (kinds[i] == Kind::kNone) free.push_back(reqs[i]);
  }
  const auto free_ref = test::reference_outputs(model, free);
  ASSERT_EQ(free_ref.size(), free.size());
  std::vector<std::vector<int32_t>> greedy_at_p1;
  for (int32_t P = 1; P <= 2; ++P) {
    SCOPED_TRACE(fmt::format("{} stages", P));
    auto o = test::engine_options(model, P, int32_t(test::random_int(0, 2)));
    o.threads_per_stage = 0;
    o.kv_blocks = 256;
    auto engine = Engine::start(o);
    ASSERT_TRUE(engine.ok()) << engine.status().message();
    const auto out = test::run_requests(**engine, reqs);
    size_t n_free = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      ASSERT_EQ(out[i].n_finals, 1) << i;
      ASSERT_TRUE(out[i].error.empty()) << out[i].error;
      if (kinds[i] == Kind::kNone) {
        EXPECT_EQ(out[i].tokens, free_ref[n_free++]) << "free request " << i;
        continue;
      }
      EXPECT_EQ(out[i].reason, FinishReason::kStop) << i;
      std::vector<int32_t> ids = out[i].tokens;
      ASSERT_FALSE(ids.empty());
      ids.pop_back();  // the stop token
      const std::string text = (*tok)->decode(ids);
      if (kinds[i] == Kind::kJsonSchema) {
        const auto j = nlohmann::json::parse(text, nullptr, false);
        ASSERT_FALSE(j.is_discarded()) << text;
        EXPECT_TRUE(j.is_object() && j.size() == 2 && j["name"].is_string() &&
                    j["age"].is_number_integer())
            << text;
      } else if (kinds[i] == Kind::kRegex) {
        EXPECT_TRUE(std::regex_match(text, date)) << text;
      } else {
        EXPECT_TRUE(text == "yes" || text == "no") << text;
      }
    }
    std::vector<std::vector<int32_t>> greedy;
    for (size_t i = 0; i < 8; ++i) greedy.push_back(out[i].tokens);
    if (P == 1) {
      greedy_at_p1 = greedy;
    } else {
      EXPECT_EQ(greedy, greedy_at_p1);
    }
  }
}

TEST(EngineGrammar, BadGrammarsAreRefusedAtSubmit) {
  if (!GrammarCompiler::available()) GTEST_SKIP() << "built without xgrammar";
  const fs::path model = test::default_model_path();
  if (!fs::exists(model)) GTEST_SKIP() << "default model missing: " << model;
  auto o = test::engine_options(model, 1, 0);
  auto engine = Engine::start(o);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  model::SamplingParams p;
  p.grammar = {.kind = Kind::kJsonSchema, .text = R"({"type": 12})"};
  EventQueue q;
  auto id = (*engine)->submit({1, 2, 3}, p, q.sink());
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), StatusCode::kInvalidArgument) << id.status().message();
  EXPECT_NE(id.status().message().find("json_schema"), std::string::npos);
  EXPECT_EQ((*engine)->stats().n_submitted, 0);

  // Switched off (pp-serve --grammar-backend none): refused, never ignored.
  o.structured_output = false;
  auto off = Engine::start(o);
  ASSERT_TRUE(off.ok()) << off.status().message();
  p.grammar = {.kind = Kind::kRegex, .text = "[a-z]+"};
  id = (*off)->submit({1, 2, 3}, p, q.sink());
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), StatusCode::kUnimplemented) << id.status().message();
  EXPECT_NE(id.status().message().find("--grammar-backend"), std::string::npos);
}

}  // namespace
}  // namespace pp::pipeline
