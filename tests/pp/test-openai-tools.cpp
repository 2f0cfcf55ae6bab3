// OpenAI tool calling and echo on the request and response sides, without a server: tools,
// tool_choice and parallel_tool_calls read into ApiRequest (the grammar "required" and named
// choices set), every bad field answered with a 400 naming it, tool messages read, and the
// response shapes of tool calls (whole message and stream deltas).
#include <random>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pp/server/openai-protocol.h"
#include "pp/server/openai-responses.h"
#include "test-util.h"

namespace pp::server {
namespace {

using nlohmann::json;
using OJson = nlohmann::ordered_json;

ProtocolLimits limits() {
  ProtocolLimits l;
  l.n_vocab = 1000;
  l.max_context = 128;
  return l;
}

ParseResult parse(ApiKind kind, const std::string& body) {
  return parse_request(kind, body, limits());
}

const json kUser = {{"role", "user"}, {"content", "Weather in Paris?"}};

OJson tool(const std::string& name, OJson params) {
  return {{"type", "function"},
          {"function", {{"name", name}, {"description", "d " + name}, {"parameters", params}}}};
}

TEST(OpenAiTools, ToolsAndChoicesAreRead) {
  std::mt19937_64& g = test::rng();
  for (int trial = 0; trial < 20; ++trial) {
    // Random tools whose properties come in a random (unsorted) order: the prompt keeps it.
    const int n = std::uniform_int_distribution<int>(1, 4)(g);
    OJson tools = OJson::array();
    std::vector<std::string> names;
    for (int i = 0; i < n; ++i) {
      OJson props = OJson::object();
      for (int k = std::uniform_int_distribution<int>(0, 4)(g); k > 0; --k) {
        props[fmt::format("p{}", g() % 1000)] = {{"type", "integer"}};
      }
      names.push_back(fmt::format("fn_{}-{}", i, g() % 100));
      tools.push_back(tool(names.back(), {{"type", "object"}, {"properties", props}}));
    }
    const size_t pick = g() % names.size();
    const int mode = trial % 4;
    OJson body = {{"messages", {kUser}}, {"tools", tools}};
    if (mode == 1) body["tool_choice"] = "none";
    if (mode == 2) body["tool_choice"] = "required";
    if (mode == 3)
      body["tool_choice"] = {{"type", "function"}, {"function", {{"name", names[pick]}}}};
    const bool parallel = g() % 2;
    body["parallel_tool_calls"] = parallel;
    ParseResult pr = parse(ApiKind::kChat, body.dump());
    ASSERT_TRUE(std::holds_alternative<ApiRequest>(pr)) << std::get<ApiError>(pr).message;
    const ApiRequest& r = std::get<ApiRequest>(pr);
    ASSERT_EQ(r.tools.size(), names.size());
    for (size_t i = 0; i < names.size(); ++i) {
      EXPECT_EQ(r.tools[i].name, names[i]);
      EXPECT_EQ(r.tools[i].json, tools[i].dump());  // the client's key order
    }
    EXPECT_EQ(r.parallel_tool_calls, parallel);
    const model::OutputGrammar& gr = r.params.grammar;
    switch (mode) {
      case 0:
        EXPECT_EQ(r.tool_choice, ToolChoice::kAuto);
        EXPECT_FALSE(gr.active());
        break;
      case 1:
        EXPECT_EQ(r.tool_choice, ToolChoice::kNone);
        EXPECT_FALSE(r.has_tool_output());
        EXPECT_FALSE(gr.active());
        break;
      case 2: {
        EXPECT_EQ(r.tool_choice, ToolChoice::kRequired);
        ASSERT_EQ(gr.kind, model::OutputGrammar::Kind::kJsonSchema);
        json s = json::parse(gr.text);
        EXPECT_EQ(s["type"], "array");
        EXPECT_EQ(s["minItems"], 1);
        EXPECT_EQ(s.contains("maxItems"), !parallel);
        ASSERT_EQ(s["items"]["anyOf"].size(), names.size());
        for (size_t i = 0; i < names.size(); ++i) {
          const json& alt = s["items"]["anyOf"][i];
          EXPECT_EQ(alt["properties"]["name"]["enum"], json::array({names[i]}));
          EXPECT_EQ(alt["properties"]["parameters"],
                    json::parse(tools[i]["function"]["parameters"].dump()));
          EXPECT_EQ(alt["required"], json::array({"name", "parameters"}));
        }
        break;
      }
      case 3:
        EXPECT_EQ(r.tool_choice, ToolChoice::kNamed);
        EXPECT_EQ(r.tool_choice_name, names[pick]);
        ASSERT_EQ(gr.kind, model::OutputGrammar::Kind::kJsonSchema);
        EXPECT_EQ(json::parse(gr.text), json::parse(tools[pick]["function"]["parameters"].dump()));
        break;
    }
  }
}

TEST(OpenAiTools, ToolMessagesAreRead) {
  json body = {
      {"messages",
       {kUser,
        {{"role", "assistant"},
         {"content", nullptr},
         {"tool_calls",
          {{{"id", "call_7"},
            {"type", "function"},
            {"function", {{"name", "get_weather"}, {"arguments", "{\"city\": \"Paris\"}"}}}}}}},
        {{"role", "tool"}, {"tool_call_id", "call_7"}, {"content", "21 C"}}}}};
  ParseResult pr = parse(ApiKind::kChat, body.dump());
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(pr)) << std::get<ApiError>(pr).message;
  const ApiRequest& r = std::get<ApiRequest>(pr);
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[1].content, "");
  ASSERT_EQ(r.messages[1].tool_calls.size(), 1u);
  EXPECT_EQ(r.messages[1].tool_calls[0].id, "call_7");
  EXPECT_EQ(r.messages[1].tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.messages[1].tool_calls[0].arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(r.messages[2].role, "tool");
  EXPECT_EQ(r.messages[2].tool_call_id, "call_7");
  EXPECT_EQ(r.messages[2].content, "21 C");
  EXPECT_EQ(r.tool_choice, ToolChoice::kNone);  // no tools: text
}

TEST(OpenAiTools, BadFieldsAre400sNamingThem) {
  const std::string user = R"("messages": [{"role": "user", "content": "x"}])";
  const std::string weather =
      R"({"type": "function", "function": {"name": "get_weather", "parameters": {}}})";
  struct Case {
    ApiKind kind;
    std::string body;
    std::string param;
  };
  const ApiKind H = ApiKind::kChat, C = ApiKind::kCompletion;
  const std::vector<Case> cases = {
      {H, "{" + user + R"(, "tools": {}})", "tools"},
      {H, "{" + user + R"(, "tools": [3]})", "tools[0]"},
      {H, "{" + user + R"(, "tools": [{"function": {"name": "f"}}]})", "tools[0].type"},
      {H, "{" + user + R"(, "tools": [{"type": "retrieval", "function": {"name": "f"}}]})",
       "tools[0].type"},
      {H, "{" + user + R"(, "tools": [{"type": "function"}]})", "tools[0].function"},
      {H, "{" + user + R"(, "tools": [{"type": "function", "function": []}]})",
       "tools[0].function"},
      {H, "{" + user + R"(, "tools": [{"type": "function", "function": {}}]})",
       "tools[0].function.name"},
      {H, "{" + user + R"(, "tools": [{"type": "function", "function": {"name": "a b"}}]})",
       "tools[0].function.name"},
      {H, "{" + user + R"(, "tools": [{"type": "function", "function": {"name": 5}}]})",
       "tools[0].function.name"},
      {H, "{" + user + ", \"tools\": [" + weather + ", " + weather + "]}",
       "tools[1].function.name"},
      {H,
       "{" + user +
           R"(, "tools": [{"type": "function", "function": {"name": "f", "description": 1}}]})",
       "tools[0].function.description"},
      {H,
       "{" + user +
           R"(, "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]})",
       "tools[0].function.parameters"},
      {H, "{" + user + ", \"tools\": [" + weather + R"(], "tool_choice": "sometimes"})",
       "tool_choice"},
      {H, "{" + user + ", \"tools\": [" + weather + R"(], "tool_choice": 1})", "tool_choice"},
      {H,
       "{" + user + ", \"tools\": [" + weather +
           R"(], "tool_choice": {"type": "function", "function": {"name": "nope"}}})",
       "tool_choice.function.name"},
      {H,
       "{" + user + ", \"tools\": [" + weather +
           R"(], "tool_choice": {"type": "function", "function": {}}})",
       "tool_choice.function.name"},
      {H, "{" + user + ", \"tools\": [" + weather + R"(], "tool_choice": {"type": "x"}})",
       "tool_choice.type"},
      {H, "{" + user + R"(, "tool_choice": "required"})", "tool_choice"},
      {H, "{" + user + R"(, "parallel_tool_calls": "yes"})", "parallel_tool_calls"},
      {H, R"({"messages": [{"role": "tool", "content": "r"}]})", "messages[0].tool_call_id"},
      {H, R"({"messages": [{"role": "tool", "tool_call_id": 3, "content": "r"}]})",
       "messages[0].tool_call_id"},
      {H, R"({"messages": [{"role": "tool", "tool_call_id": "c"}]})", "messages[0].content"},
      {H, R"({"messages": [{"role": "function", "content": "r"}]})", "messages[0].role"},
      {H, R"({"messages": [{"role": "assistant", "tool_calls": {}}]})", "messages[0].tool_calls"},
      {H, R"({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "x"}]}]})",
       "messages[0].tool_calls[0].type"},
      {H, R"({"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]})",
       "messages[0].tool_calls[0].function"},
      {H, R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]})",
       "messages[0].tool_calls[0].function.name"},
      {H,
       R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]})",
       "messages[0].tool_calls[0].function.arguments"},
      {C, R"({"prompt": "x", "tools": [)" + weather + "]}", "tools"},
      {C, R"({"prompt": "x", "tool_choice": "auto"})", "tool_choice"},
      {C, R"({"prompt": "x", "echo": true, "logprobs": 0})", "echo"},
      {C, R"({"prompt": "x", "echo": "yes"})", "echo"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    ParseResult pr = parse(c.kind, c.body);
    ASSERT_TRUE(std::holds_alternative<ApiError>(pr));
    const ApiError& e = std::get<ApiError>(pr);
    EXPECT_EQ(e.http_status, 400);
    EXPECT_EQ(e.param, c.param) << e.message;
    EXPECT_NE(e.message.find(c.param), std::string::npos) << e.message;
  }
  // And what is fine: no tools with tool_choice "none" or "auto", echo without logprobs.
  for (const std::string& ok : {"{" + user + R"(, "tool_choice": "none"})",
                                "{" + user + R"(, "tool_choice": "auto", "tools": []})"}) {
    EXPECT_TRUE(std::holds_alternative<ApiRequest>(parse(H, ok))) << ok;
  }
  ParseResult echo = parse(C, R"({"prompt": "x", "echo": true})");
  ASSERT_TRUE(std::holds_alternative<ApiRequest>(echo));
  EXPECT_TRUE(std::get<ApiRequest>(echo).echo);
}

TEST(OpenAiTools, ResponseShapes) {
  ResponseMeta m{"chatcmpl-1", "smol", 7};
  std::vector<ChoiceResult> choices(2);
  choices[0].index = 0;
  choices[0].finish_reason = pipeline::FinishReason::kStop;
  choices[1].index = 1;
  choices[1].text = "plain";
  choices[1].finish_reason = pipeline::FinishReason::kStop;
  std::vector<ChatMessageOut> messages(2);
  messages[0].tool_calls.push_back({"call_a", "get_weather", "{\"city\": \"Paris\"}"});
  messages[1].content = "plain";
  json body = chat_body(m, choices, Usage{}, false, nullptr, messages);
  const json& c0 = body["choices"][0];
  EXPECT_TRUE(c0["message"]["content"].is_null());
  EXPECT_EQ(c0["finish_reason"], "tool_calls");
  EXPECT_EQ(c0["message"]["tool_calls"],
            json::parse(R"([{"id": "call_a", "type": "function", "function":
                {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}])"));
  EXPECT_EQ(body["choices"][1]["message"]["content"], "plain");
  EXPECT_EQ(body["choices"][1]["finish_reason"], "stop");
  EXPECT_FALSE(body["choices"][1]["message"].contains("tool_calls"));

  json delta = tool_call_delta(2, messages[0].tool_calls[0], true);
  json chunk = chat_chunk(m, 0, "", std::nullopt, nullptr, nullptr, json::array({delta}));
  EXPECT_EQ(chunk["choices"][0]["delta"]["tool_calls"][0]["index"], 2);
  EXPECT_EQ(chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_FALSE(chunk["choices"][0]["delta"].contains("content"));
  json more = tool_call_delta(2, {"", "", "x"}, false);
  EXPECT_EQ(more, json::parse(R"({"index": 2, "function": {"arguments": "x"}})"));
  json last = chat_chunk(m, 0, "", std::nullopt, nullptr, &choices[0], nullptr, true);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "tool_calls");
  choices[0].finish_reason = pipeline::FinishReason::kLength;  // cut short: stays "length"
  last = chat_chunk(m, 0, "", std::nullopt, nullptr, &choices[0], nullptr, true);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");

  const std::string id = make_tool_call_id(false), short_id = make_tool_call_id(true);
  EXPECT_EQ(id.rfind("call_", 0), 0u);
  EXPECT_EQ(id.size(), 29u);
  EXPECT_EQ(short_id.size(), 9u);
  EXPECT_NE(make_tool_call_id(false), id);
}

}  // namespace
}  // namespace pp::server
