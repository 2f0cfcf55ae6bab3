// The HTTP API's request parsing and validation (openai-protocol), its response shapes
// (openai-responses, sglang-protocol) and the Prometheus registry, without a server.
#include <algorithm>
#include <cmath>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pp/server/metrics.h"
#include "pp/server/openai-protocol.h"
#include "pp/server/openai-responses.h"
#include "pp/server/sglang-protocol.h"
#include "test-util.h"

namespace pp::server {
namespace {

using nlohmann::json;

ProtocolLimits limits() {
  ProtocolLimits l;
  l.n_vocab = 1000;
  l.max_context = 128;
  l.max_n = 8;
  return l;
}

ApiRequest parse_ok(ApiKind kind, const json& body) {
  ParseResult r = parse_request(kind, body.dump(), limits());
  if (auto* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << body.dump() << " -> " << e->message;
    return {};
  }
  return std::get<ApiRequest>(r);
}

ApiError parse_err(ApiKind kind, std::string_view body) {
  ParseResult r = parse_request(kind, body, limits());
  if (auto* e = std::get_if<ApiError>(&r)) return *e;
  ADD_FAILURE() << "accepted: " << body;
  return {};
}

TEST(OpenAiProtocol, CompletionFieldsReachTheSamplingParams) {
  std::mt19937_64& g = test::rng();
  for (int trial = 0; trial < 50; ++trial) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    const double temperature = 2.0 * u(g), top_p = 0.01 + 0.99 * u(g), min_p = u(g),
                 pres = -2.0 + 4.0 * u(g), freq = -2.0 + 4.0 * u(g), rep = 0.1 + 1.9 * u(g);
    const int64_t top_k = std::uniform_int_distribution<int64_t>(-1, 999)(g);
    const int64_t max_tokens = std::uniform_int_distribution<int64_t>(1, 128)(g);
    const uint64_t seed = g();
    std::vector<int32_t> ids(std::uniform_int_distribution<size_t>(1, 20)(g));
    for (int32_t& id : ids) id = std::uniform_int_distribution<int32_t>(0, 999)(g);
    json body = {{"model", "m"},
                 {"prompt", ids},
                 {"temperature", temperature},
                 {"top_p", top_p},
                 {"top_k", top_k},
                 {"min_p", min_p},
                 {"presence_penalty", pres},
                 {"frequency_penalty", freq},
                 {"repetition_penalty", rep},
                 {"max_tokens", max_tokens},
                 {"seed", seed},
                 {"stop", {"a", "bc"}},
                 {"stop_token_ids", {ids[0]}},
                 {"ignore_eos", true},
                 {"n", 3},
                 {"logprobs", 2},
                 {"stream", true},
                 {"stream_options", {{"include_usage", true}}},
                 {"user", "ignored"}};
    ApiRequest r = parse_ok(ApiKind::kCompletion, body);
    const model::SamplingParams& p = r.params;
    EXPECT_FLOAT_EQ(p.temperature, float(temperature));
    EXPECT_FLOAT_EQ(p.top_p, float(top_p));
    EXPECT_EQ(p.top_k, top_k);
    EXPECT_FLOAT_EQ(p.min_p, float(min_p));
    EXPECT_FLOAT_EQ(p.presence_penalty, float(pres));
    EXPECT_FLOAT_EQ(p.frequency_penalty, float(freq));
    EXPECT_FLOAT_EQ(p.repetition_penalty, float(rep));
    EXPECT_EQ(p.max_tokens, max_tokens);
    EXPECT_EQ(p.seed, seed);
    EXPECT_EQ(p.stop, (std::vector<std::string>{"a", "bc"}));
    EXPECT_EQ(p.stop_token_ids, std::vector<int32_t>{ids[0]});
    EXPECT_TRUE(p.ignore_eos);
    EXPECT_TRUE(p.logprobs);
    EXPECT_EQ(p.top_logprobs, 2);
    EXPECT_EQ(r.n, 3);
    EXPECT_TRUE(r.stream);
    EXPECT_TRUE(r.include_usage);
    EXPECT_TRUE(r.max_tokens_given);
    ASSERT_EQ(r.prompts.size(), 1u);
    EXPECT_TRUE(r.prompts[0].is_ids);
    EXPECT_EQ(r.prompts[0].ids, ids);
  }
}

// Each way of asking for structured output reaches the grammar; a schema keeps its key order
// (the output's order) whether it came as an object or as text; logit_bias is sorted by id.
TEST(OpenAiProtocol, StructuredOutputAndLogitBiasReachTheSamplingParams) {
  using Kind = model::OutputGrammar::Kind;
  // Property names in an order json's sorted maps would change, drawn afresh.
  std::vector<std::string> keys = {"zeta", "alpha", "mid", "beta"};
  std::shuffle(keys.begin(), keys.end(), test::rng());
  std::string props;
  for (const std::string& k : keys) {
    props += (props.empty() ? "" : ", ") + ("\"" + k + "\": {\"type\": \"integer\"}");
  }
  const std::string schema = "{\"type\": \"object\", \"properties\": {" + props + "}}";
  auto order_of = [](const std::string& text) {
    std::vector<std::string> got;
    const auto parsed = nlohmann::ordered_json::parse(text);
    for (const auto& [k, v] : parsed["properties"].items()) got.push_back(k);
    return got;
  };
  struct Case {
    ApiKind kind;
    std::string body;
    Kind want;
  };
  const std::vector<Case> cases = {
      {ApiKind::kChat,
       R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type":
           "json_schema", "json_schema": {"name": "n", "schema": )" +
           schema + "}}}",
       Kind::kJsonSchema},
      {ApiKind::kCompletion, R"({"prompt": "x", "guided_json": )" + schema + "}",
       Kind::kJsonSchema},
      {ApiKind::kCompletion, R"({"prompt": "x", "guided_json": )" + json(schema).dump() + "}",
       Kind::kJsonSchema},
      {ApiKind::kGenerate,
       R"({"text": "x", "sampling_params": {"json_schema": )" + json(schema).dump() + "}}",
       Kind::kJsonSchema},
      {ApiKind::kChat,
       R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type":
           "json_object"}})",
       Kind::kJsonObject},
      {ApiKind::kCompletion, R"({"prompt": "x", "guided_regex": "[a-z]+"})", Kind::kRegex},
      {ApiKind::kChat, R"({"messages": [{"role": "user", "content": "x"}], "regex": "a|b"})",
       Kind::kRegex},
      {ApiKind::kGenerate, R"({"text": "x", "sampling_params": {"regex": "[0-9]"}})", Kind::kRegex},
      {ApiKind::kGenerate, R"({"text": "x", "sampling_params": {"ebnf": "root ::= \"a\""}})",
       Kind::kEbnf},
      {ApiKind::kCompletion, R"({"prompt": "x", "guided_grammar": "root ::= \"a\""})", Kind::kEbnf},
      {ApiKind::kCompletion, R"({"prompt": "x", "guided_choice": ["yes", "no \"way\""]})",
       Kind::kEbnf},
      {ApiKind::kCompletion, R"({"prompt": "x", "response_format": {"type": "text"}})",
       Kind::kNone},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    ParseResult r = parse_request(c.kind, c.body, limits());
    ASSERT_TRUE(std::holds_alternative<ApiRequest>(r)) << std::get<ApiError>(r).message;
    const model::OutputGrammar& g = std::get<ApiRequest>(r).params.grammar;
    EXPECT_EQ(g.kind, c.want);
    if (c.want == Kind::kJsonSchema) EXPECT_EQ(order_of(g.text), keys) << g.text;
  }
  ParseResult choice = parse_request(
      ApiKind::kCompletion, R"({"prompt": "x", "guided_choice": ["yes", "no \"way\""]})", limits());
  EXPECT_EQ(std::get<ApiRequest>(choice).params.grammar.text, R"(root ::= "yes" | "no \"way\"")");
  ParseResult strict =
      parse_request(ApiKind::kChat,
                    R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type":
          "json_schema", "json_schema": {"name": "n", "strict": false, "schema": {}}}})",
                    limits());
  EXPECT_FALSE(std::get<ApiRequest>(strict).params.grammar.strict);

  // vLLM's extras at their "off" values are accepted (clients send them so).
  parse_ok(ApiKind::kCompletion,
           json::parse(R"({"prompt": "x", "min_tokens": 0, "bad_words": [], "length_penalty": 1,
                           "include_stop_str_in_output": false, "guided_decoding_backend":
                           "xgrammar", "allowed_token_ids": null})"));

  const int32_t a = int32_t(test::random_int(0, 499)), b = int32_t(test::random_int(500, 999));
  ApiRequest lb = parse_ok(
      ApiKind::kCompletion,
      {{"prompt", "x"}, {"logit_bias", {{std::to_string(b), -100}, {std::to_string(a), 2.5}}}});
  const std::vector<std::pair<int32_t, float>> want = {{a, 2.5f}, {b, -100.0f}};
  EXPECT_EQ(lb.params.logit_bias, want);
}

TEST(OpenAiProtocol, PromptShapes) {
  ApiRequest a = parse_ok(ApiKind::kCompletion, {{"prompt", "hello"}});
  ASSERT_EQ(a.prompts.size(), 1u);
  EXPECT_EQ(a.prompts[0].text, "hello");
  EXPECT_EQ(a.params.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_FALSE(a.max_tokens_given);
  ApiRequest b = parse_ok(ApiKind::kCompletion, {{"prompt", {"x", "y", "z"}}});
  EXPECT_EQ(b.prompts.size(), 3u);
  EXPECT_TRUE(b.batched);
  ApiRequest c = parse_ok(ApiKind::kCompletion, {{"prompt", {{1, 2}, {3}}}});
  ASSERT_EQ(c.prompts.size(), 2u);
  EXPECT_EQ(c.prompts[1].ids, std::vector<int32_t>{3});
  ApiRequest d = parse_ok(
      ApiKind::kChat,
      {{"messages",
        {{{"role", "developer"}, {"content", "sys"}},
         {{"role", "user"},
          {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}}});
  ASSERT_EQ(d.messages.size(), 2u);
  EXPECT_EQ(d.messages[0].role, "system");
  EXPECT_EQ(d.messages[1].content, "a\nb");
  EXPECT_EQ(d.params.max_tokens, 0);  // chat: until the context is full
  ApiRequest e = parse_ok(ApiKind::kChat, {{"messages", {{{"role", "user"}, {"content", "q"}}}},
                                           {"max_tokens", 5},
                                           {"max_completion_tokens", 7},
                                           {"logprobs", true},
                                           {"top_logprobs", 3}});
  EXPECT_EQ(e.params.max_tokens, 7);
  EXPECT_EQ(e.params.top_logprobs, 3);
  ApiRequest f = parse_ok(ApiKind::kGenerate,
                          {{"input_ids", {{1, 2}, {3, 4}}},
                           {"sampling_params", {{"max_new_tokens", 9}, {"temperature", 0}}},
                           {"return_logprob", true},
                           {"top_logprobs_num", 2}});
  EXPECT_EQ(f.prompts.size(), 2u);
  EXPECT_EQ(f.params.max_tokens, 9);
  EXPECT_EQ(f.params.temperature, 0.0f);
  EXPECT_TRUE(f.params.logprobs);
  ApiRequest g = parse_ok(ApiKind::kGenerate, {{"text", "hi"}});
  EXPECT_EQ(g.params.max_tokens, 128);  // SGLang's default
  EXPECT_FLOAT_EQ(g.params.temperature, 1.0f);
}

TEST(OpenAiProtocol, BadInputNamesTheParameter) {
  struct Case {
    ApiKind kind;
    std::string body;
    std::string param;
  };
  const ApiKind C = ApiKind::kCompletion, H = ApiKind::kChat, G = ApiKind::kGenerate;
  const std::vector<Case> cases = {
      {C, R"({"prompt": "a", "temperature": "1"})", "temperature"},
      {C, R"({"prompt": "a", "temperature": 2.5})", "temperature"},
      {C, R"({"prompt": "a", "top_p": 1.01})", "top_p"},
      {C, R"({"prompt": "a", "top_k": 1.5})", "top_k"},
      {C, R"({"prompt": "a", "max_tokens": 0})", "max_tokens"},
      {C, R"({"prompt": "a", "max_tokens": 129})", "max_tokens"},
      {C, R"({"prompt": "a", "n": 9})", "n"},
      {C, R"({"prompt": "a", "seed": "1"})", "seed"},
      {C, R"({"prompt": "a", "stop": ""})", "stop"},
      {C,
       R"({"prompt": "a", "stop": ["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]})",
       "stop"},
      {C, R"({"prompt": "a", "stop_token_ids": [1000]})", "stop_token_ids"},
      {C, R"({"prompt": "a", "ignore_eos": "yes"})", "ignore_eos"},
      {C, R"({"prompt": "a", "stream_options": 3})", "stream_options"},
      {C, R"({"prompt": "a", "logit_bias": {"5": 101}})", "logit_bias"},
      {C, R"({"prompt": "a", "logit_bias": {"x5": 1}})", "logit_bias"},
      {C, R"({"prompt": "a", "logit_bias": {"99999999": 1}})", "logit_bias"},
      {C, R"({"prompt": "a", "logit_bias": {"5": "big"}})", "logit_bias.5"},
      {C, R"({"prompt": "a", "logit_bias": [5]})", "logit_bias"},
      {C, R"({"prompt": "a", "response_format": {"type": "xml"}})", "response_format.type"},
      {C, R"({"prompt": "a", "response_format": {"type": "json_schema"}})",
       "response_format.json_schema"},
      {C, R"({"prompt": "a", "response_format": {"type": "json_schema", "json_schema":
           {"schema": 3}}})",
       "response_format.json_schema.schema"},
      {C, R"({"prompt": "a", "guided_json": "{not json"})", "guided_json"},
      {C, R"({"prompt": "a", "guided_choice": []})", "guided_choice"},
      {C, R"({"prompt": "a", "guided_choice": ["a", 3]})", "guided_choice[1]"},
      {C, R"({"prompt": "a", "guided_regex": ""})", "guided_regex"},
      {C, R"({"prompt": "a", "guided_regex": "a", "guided_json": {}})", "guided_regex"},
      {C, R"({"prompt": "a", "response_format": {"type": "json_object"}, "regex": "a"})", "regex"},
      {C, R"({"prompt": "a", "guided_whitespace_pattern": " "})", "guided_whitespace_pattern"},
      {C, R"({"prompt": "a", "min_tokens": 3})", "min_tokens"},
      {C, R"({"prompt": "a", "allowed_token_ids": [1, 2]})", "allowed_token_ids"},
      {C, R"({"prompt": "a", "bad_words": ["x"]})", "bad_words"},
      {C, R"({"prompt": "a", "prompt_logprobs": 1})", "prompt_logprobs"},
      {C, R"({"prompt": "a", "include_stop_str_in_output": true})", "include_stop_str_in_output"},
      {C, R"({"prompt": "a", "guided_decoding_backend": "outlines"})", "guided_decoding_backend"},
      {G, R"({"text": "a", "sampling_params": {"regex": "a", "ebnf": "root ::= \"a\""}})",
       "sampling_params.ebnf"},
      {G, R"({"text": "a", "sampling_params": {"json_schema": 7}})", "sampling_params.json_schema"},
      {G, R"({"text": "a", "sampling_params": {"no_such_thing": 1}})",
       "sampling_params.no_such_thing"},
      {G, R"({"text": "a", "sampling_params": {"min_new_tokens": 4}})",
       "sampling_params.min_new_tokens"},
      {G, R"({"text": "a", "sampling_params": {"structural_tag": "{}"}})",
       "sampling_params.structural_tag"},
      {G, R"({"text": "a", "sampling_params": {"seed": 1, "sampling_seed": 2}})",
       "sampling_params.sampling_seed"},
      {G, R"({"text": "a", "sampling_params": {"logit_bias": {"1": -101}}})",
       "sampling_params.logit_bias"},
      {C, R"({"prompt": "a", "best_of": 3})", "best_of"},
      {C, R"({"prompt": 5})", "prompt"},
      {C, R"({"prompt": [1, "a"]})", "prompt[1]"},
      {C, R"({"prompt": [[1], [1000]]})", "prompt[1]"},
      {C, R"({"prompt": ["a", ""]})", "prompt[1]"},
      {C, R"({"model": 3, "prompt": "a"})", "model"},
      {H, R"({"messages": "hi"})", "messages"},
      {H, R"({"messages": [{"role": "robot", "content": "x"}]})", "messages[0].role"},
      {H, R"({"messages": [{"role": "user"}]})", "messages[0].content"},
      {H, R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {H, R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 1})", "logprobs"},
      {H, R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs"},
      {H,
       R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 21, "logprobs": true})",
       "top_logprobs"},
      {H, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{}]})", "tools[0].type"},
      {G, R"({"text": "a", "input_ids": [1]})", "text"},
      {G, R"({"sampling_params": {}})", "text"},
      {G, R"({"text": "a", "sampling_params": {"max_new_tokens": -1}})",
       "sampling_params.max_new_tokens"},
      {G, R"({"text": "a", "sampling_params": 3})", "sampling_params"},
      {G, R"({"text": "a", "return_logprob": "y"})", "return_logprob"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    ApiError e = parse_err(c.kind, c.body);
    EXPECT_EQ(e.http_status, 400);
    EXPECT_EQ(e.param, c.param) << e.message;
    EXPECT_EQ(e.type, "invalid_request_error");
    EXPECT_FALSE(e.message.empty());
  }
  // No parameter to name: malformed JSON, invalid UTF-8, NaN, overflow, not an object.
  for (std::string_view body :
       {std::string_view("{\"prompt\": "), std::string_view("{\"prompt\": \"\xc3\x28\"}"),
        std::string_view("{\"prompt\": \"a\", \"temperature\": NaN}"),
        std::string_view("{\"prompt\": \"a\", \"temperature\": 1e400}"),
        std::string_view("\"just a string\""), std::string_view("")}) {
    ApiError e = parse_err(ApiKind::kCompletion, body);
    EXPECT_EQ(e.http_status, 400);
    EXPECT_TRUE(e.param.empty());
  }
}

TEST(OpenAiProtocol, ErrorsEchoLittleOfTheInput) {
  const std::string huge(100000, 'z');
  ApiError e =
      parse_err(ApiKind::kCompletion, json({{"prompt", "a"}, {"stop", {{huge, 1}}}}).dump());
  EXPECT_LT(e.message.size(), 200u);
  ApiError e2 = parse_err(ApiKind::kCompletion, "{\"prompt\": \"" + huge + "\", ");
  EXPECT_LT(e2.message.size(), 200u);
  EXPECT_EQ(excerpt("h\xc3\xa9llo", 2), "h...");  // never cuts a UTF-8 character
  const json env = e.to_json();
  ASSERT_TRUE(env.contains("error"));
  for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(env["error"].contains(k));
}

TEST(OpenAiProtocol, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // beyond U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe2\x82"));          // truncated
  EXPECT_FALSE(is_valid_utf8("\xff"));
}

TEST(OpenAiProtocol, TokenizeChecksTheContext) {
  ProtocolLimits l = limits();
  ApiRequest r = parse_ok(ApiKind::kCompletion, {{"prompt", std::vector<int32_t>(100, 7)}});
  auto ok = tokenize_prompts(r, nullptr, nullptr, l);
  ASSERT_TRUE(std::holds_alternative<std::vector<std::vector<int32_t>>>(ok));
  r = parse_ok(ApiKind::kCompletion, {{"prompt", std::vector<int32_t>(128, 7)}});
  auto full = tokenize_prompts(r, nullptr, nullptr, l);
  ASSERT_TRUE(std::holds_alternative<ApiError>(full));
  EXPECT_EQ(std::get<ApiError>(full).param, "prompt");
  EXPECT_EQ(std::get<ApiError>(full).code, "context_length_exceeded");
  r = parse_ok(ApiKind::kCompletion,
               {{"prompt", std::vector<int32_t>(100, 7)}, {"max_tokens", 29}});
  auto over = tokenize_prompts(r, nullptr, nullptr, l);
  ASSERT_TRUE(std::holds_alternative<ApiError>(over));
  EXPECT_EQ(std::get<ApiError>(over).param, "max_tokens");
  r = parse_ok(ApiKind::kCompletion, {{"prompt", "text"}});
  auto no_tok = tokenize_prompts(r, nullptr, nullptr, l);
  ASSERT_TRUE(std::holds_alternative<ApiError>(no_tok));
  r = parse_ok(ApiKind::kChat, {{"messages", {{{"role", "user"}, {"content", "q"}}}}});
  auto no_chat = tokenize_prompts(r, nullptr, nullptr, l);
  ASSERT_TRUE(std::holds_alternative<ApiError>(no_chat));
  EXPECT_EQ(std::get<ApiError>(no_chat).param, "messages");
}

pipeline::TokenLogprob logprob(float lp, std::vector<int32_t> ids, std::vector<float> lps) {
  pipeline::TokenLogprob t;
  t.logprob = lp;
  t.top_ids = std::move(ids);
  t.top_logprobs = std::move(lps);
  return t;
}

TEST(OpenAiResponses, ShapesOfBodiesChunksAndLogprobs) {
  ResponseMeta m{"cmpl-x", "model-a", 1700000000};
  ChoiceResult c;
  c.index = 1;
  c.text = "hi there";
  c.token_ids = {5, 6};
  c.logprobs = {logprob(-0.5f, {5, 9}, {-0.5f, -1.5f}), logprob(-0.25f, {6}, {-0.25f})};
  c.finish_reason = pipeline::FinishReason::kStop;
  c.stop_string = "END";
  c.n_prompt_tokens = 4;
  c.n_output_tokens = 2;
  Usage u{4, 2};
  json body = completion_body(m, std::span(&c, 1), u, true, nullptr);
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["usage"]["total_tokens"], 6);
  const json& ch = body["choices"][0];
  EXPECT_EQ(ch["index"], 1);
  EXPECT_EQ(ch["finish_reason"], "stop");
  EXPECT_EQ(ch["stop_reason"], "END");
  EXPECT_EQ(ch["logprobs"]["tokens"], json({"token_id:5", "token_id:6"}));
  EXPECT_EQ(ch["logprobs"]["token_logprobs"][1], -0.25);
  EXPECT_EQ(ch["logprobs"]["text_offset"], json({0, 10}));  // "token_id:5" is 10 bytes
  EXPECT_EQ(ch["logprobs"]["top_logprobs"][0]["token_id:9"], -1.5);

  json chat = chat_body(m, std::span(&c, 1), u, true, nullptr);
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["message"]["content"], "hi there");
  const json& e0 = chat["choices"][0]["logprobs"]["content"][0];
  EXPECT_EQ(e0["token"], "token_id:5");
  EXPECT_EQ(e0["logprob"], -0.5);
  EXPECT_EQ(e0["bytes"].size(), 10u);
  EXPECT_EQ(e0["top_logprobs"].size(), 2u);
  EXPECT_EQ(e0["top_logprobs"][1]["logprob"], -1.5);
  // Without logprobs asked: null.
  EXPECT_TRUE(
      chat_body(m, std::span(&c, 1), u, false, nullptr)["choices"][0]["logprobs"].is_null());

  json first = chat_chunk(m, 0, "assistant", std::string(), nullptr, nullptr);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  json last = chat_chunk(m, 0, "", std::nullopt, nullptr, &c);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  json uc = usage_chunk(m, true, u);
  EXPECT_TRUE(uc["choices"].empty());
  EXPECT_EQ(uc["usage"]["completion_tokens"], 2);
  json cc = completion_chunk(m, 2, "abc", nullptr, nullptr);
  EXPECT_EQ(cc["choices"][0]["text"], "abc");
  EXPECT_EQ(sse_data(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  // Text a model produced may be broken UTF-8: the JSON is still valid.
  ChoiceResult bad = c;
  bad.text = "\xff\xfe";
  EXPECT_NO_THROW((void)sse_data(completion_body(m, std::span(&bad, 1), u, false, nullptr)));
}

TEST(SglangProtocol, GenerateObject) {
  ChoiceResult c;
  c.text = "ok";
  c.token_ids = {3, 4, 5};
  c.logprobs = {logprob(-1, {3}, {-1}), logprob(-2, {4}, {-2}), logprob(-3, {5}, {-3})};
  c.finish_reason = pipeline::FinishReason::kLength;
  c.n_prompt_tokens = 7;
  c.n_output_tokens = 3;
  json o = generate_object(c, "rid", true, 1, 0.5, true, false);
  EXPECT_EQ(o["text"], "ok");
  EXPECT_EQ(o["output_ids"], json({3, 4, 5}));
  EXPECT_EQ(o["meta_info"]["prompt_tokens"], 7);
  EXPECT_EQ(o["meta_info"]["completion_tokens"], 3);
  EXPECT_EQ(o["meta_info"]["finish_reason"]["type"], "length");
  EXPECT_EQ(o["meta_info"]["finish_reason"]["length"], 3);
  EXPECT_EQ(o["meta_info"]["output_token_logprobs"][2][0], -3);
  EXPECT_EQ(o["meta_info"]["output_token_logprobs"][2][1], 5);
  EXPECT_EQ(o["meta_info"]["output_top_logprobs"][1][0][1], 4);
  EXPECT_FALSE(o.contains("index"));
  json running = generate_object(c, "rid", false, 0, 0.1, false, true);
  EXPECT_TRUE(running["meta_info"]["finish_reason"].is_null());
  EXPECT_EQ(running["index"], 0);
  c.finish_reason = pipeline::FinishReason::kStop;
  c.stop_token = 2;
  EXPECT_EQ(sglang_finish_reason(c)["matched"], 2);
}

TEST(Metrics, PrometheusText) {
  MetricsRegistry r;
  r.declare("x_total", MetricType::kCounter, "Things.");
  r.declare("y", MetricType::kGauge, "Level.");
  r.declare("lat_seconds", MetricType::kHistogram, "Latency.", {0.1, 1.0});
  r.add("x_total", {{"reason", "stop"}}, 2);
  r.add("x_total", {{"reason", "stop"}});
  r.set("y", {}, 0.5);
  std::vector<double> obs;
  for (float f : test::random_floats(200, 0.0f, 2.0f)) obs.push_back(double(f));
  int le01 = 0, le1 = 0;
  double sum = 0;
  for (double v : obs) {
    r.observe("lat_seconds", {}, v);
    le01 += v <= 0.1;
    le1 += v <= 1.0;
    sum += v;
  }
  const std::string t = r.render();
  EXPECT_NE(t.find("# TYPE x_total counter\n"), std::string::npos);
  EXPECT_NE(t.find("x_total{reason=\"stop\"} 3\n"), std::string::npos) << t;
  EXPECT_NE(t.find("y 0.5\n"), std::string::npos);
  EXPECT_NE(t.find("# TYPE lat_seconds histogram\n"), std::string::npos);
  EXPECT_NE(t.find("lat_seconds_bucket{le=\"0.1\"} " + std::to_string(le01) + "\n"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("lat_seconds_bucket{le=\"1\"} " + std::to_string(le1) + "\n"), std::string::npos)
      << t;
  EXPECT_NE(t.find("lat_seconds_bucket{le=\"+Inf\"} 200\n"), std::string::npos);
  EXPECT_NE(t.find("lat_seconds_count 200\n"), std::string::npos);
  EXPECT_NEAR(r.value("lat_seconds"), 200, 0);
  EXPECT_EQ(r.value("x_total", {{"reason", "stop"}}), 3);
  const size_t at = t.find("lat_seconds_sum ");
  ASSERT_NE(at, std::string::npos);
  EXPECT_NEAR(std::stod(t.substr(at + 16)), sum, 1e-9 + 1e-9 * sum);
}

}  // namespace
}  // namespace pp::server
