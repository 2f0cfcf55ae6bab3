// ChatTemplate against jinja2 renders of the real templates (SmolLM2's from its GGUF, Llama 3,
// Llama 2 and Mistral as published): tests/fixtures/tokenizers/chat-templates.json, written by
// scripts/make-tokenizer-fixtures.py. Every case must give the same text, or fail where the
// template raises.
#include <gtest/gtest.h>

#include "pp/model/chat-template.h"
#include "test-tokenizer-util.h"
#include "test-util.h"

namespace pp::model {
namespace {

TEST(ChatTemplate, MatchesJinjaRenders) {
  nlohmann::json fixture = test::load_tokenizer_fixture("chat-templates.json");
  ASSERT_FALSE(fixture.is_null());
  const std::map<std::string, ChatFormat> want_format = {{"smollm2", ChatFormat::kChatML},
                                                         {"llama3", ChatFormat::kLlama3},
                                                         {"llama2", ChatFormat::kLlama2},
                                                         {"mistral", ChatFormat::kMistral}};
  for (const auto& t : fixture) {
    const std::string name = t["name"];
    SCOPED_TRACE(name);
    auto tmpl =
        ChatTemplate::from_jinja(t["template"].get<std::string>(), t["bos_token"], t["eos_token"]);
    ASSERT_TRUE(tmpl.ok()) << tmpl.status().message();
    EXPECT_EQ(tmpl->format(), want_format.at(name));
    for (const auto& c : t["cases"]) {
      std::vector<ChatMessage> msgs;
      for (const auto& m : c["messages"]) msgs.push_back({m["role"], m["content"]});
      SCOPED_TRACE(c["messages"].dump() + (c["add_generation_prompt"] ? " +gen" : ""));
      auto out = tmpl->apply(msgs, c["add_generation_prompt"]);
      if (c["error"].is_null()) {
        ASSERT_TRUE(out.ok()) << out.status().message();
        EXPECT_EQ(*out, c["output"].get<std::string>());
      } else {
        EXPECT_FALSE(out.ok()) << "jinja raised: " << c["error"];
      }
    }
  }
}

TEST(ChatTemplate, ExtractsSmolLM2DefaultSystem) {
  nlohmann::json fixture = test::load_tokenizer_fixture("chat-templates.json");
  ASSERT_FALSE(fixture.is_null());
  auto tmpl = ChatTemplate::from_jinja(fixture[0]["template"].get<std::string>(), "", "");
  ASSERT_TRUE(tmpl.ok());
  EXPECT_EQ(tmpl->default_system(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
}

TEST(ChatTemplate, OfFormatUsesDefaultSystem) {
  auto t = ChatTemplate::of_format(ChatFormat::kChatML, "", "", "Be brief.");
  std::vector<ChatMessage> msgs = {{"user", "hi"}};
  auto out = t.apply(msgs, true);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\n");
  auto l3 = ChatTemplate::of_format(ChatFormat::kLlama3, "<|begin_of_text|>", "<|eot_id|>");
  out = l3.apply(msgs, false);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
}

// Renders each case of a tool-templates.json section with `tmpl` and compares.
void expect_tool_cases(const ChatTemplate& tmpl, const nlohmann::json& cases) {
  ASSERT_GE(cases.size(), 4u);
  for (const auto& c : cases) {
    std::vector<ChatTool> tools;
    for (const auto& t : c["tools"]) {
      const std::string text = t.get<std::string>();
      tools.push_back({nlohmann::json::parse(text)["function"]["name"], text});
    }
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"]) {
      ChatMessage cm{m["role"], m["content"]};
      if (m.contains("tool_call_id")) cm.tool_call_id = m["tool_call_id"];
      for (const auto& tc : m.value("tool_calls", nlohmann::json::array()))
        cm.tool_calls.push_back({tc["id"], tc["name"], tc["arguments"]});
      msgs.push_back(std::move(cm));
    }
    SCOPED_TRACE(c["output"].get<std::string>());
    auto out = tmpl.apply(msgs, c["add_generation_prompt"], tools);
    ASSERT_TRUE(out.ok()) << out.status().message();
    EXPECT_EQ(*out, c["output"].get<std::string>());
  }
}

// Qwen2.5-Instruct's template rendered by transformers (scripts/make-tool-template-fixtures.py):
// tools in the system turn, assistant calls, runs of tool results, and tool turns without tools.
TEST(ChatTemplate, ToolsMatchQwen25Renders) {
  nlohmann::json fixture = test::load_tokenizer_fixture("tool-templates.json");
  ASSERT_FALSE(fixture.is_null());
  auto tmpl = ChatTemplate::from_jinja(fixture["template"].get<std::string>(), "", "");
  ASSERT_TRUE(tmpl.ok()) << tmpl.status().message();
  EXPECT_EQ(tmpl->format(), ChatFormat::kChatML);
  EXPECT_EQ(tmpl->default_system(),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  expect_tool_cases(*tmpl, fixture["cases"]);
}

// Llama 3.2-Instruct's template (Llama 3.1's convention) rendered by transformers: the system turn
// with the date, tools in the first user message, a call, an ipython result; and without tools.
TEST(ChatTemplate, Llama31MatchesLlama32Renders) {
  nlohmann::json fixture = test::load_tokenizer_fixture("tool-templates.json");
  ASSERT_FALSE(fixture.is_null());
  const nlohmann::json& l = fixture["llama"];
  auto tmpl =
      ChatTemplate::from_jinja(l["template"].get<std::string>(), l["bos_token"], l["eos_token"]);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status().message();
  EXPECT_EQ(tmpl->format(), ChatFormat::kLlama31);
  tmpl->set_date(l["date"]);
  expect_tool_cases(*tmpl, l["cases"]);
  // Without a date set, Llama 3.2 writes today's (transformers' strftime_now): "DD Mon YYYY".
  ChatTemplate now = *ChatTemplate::from_jinja(l["template"].get<std::string>(), "", "");
  std::vector<ChatMessage> msgs = {{"user", "hi"}};
  const std::string text = *now.apply(msgs, false);
  const size_t p = text.find("Today Date: ");
  ASSERT_NE(p, std::string::npos);
  EXPECT_EQ(text.find("\n", p), p + 12 + 11) << text;  // "07 Dec 2026"
  EXPECT_EQ(text.find("26 Jul 2024"), std::string::npos);
}

ChatTool weather_tool() {
  return {"get_weather",
          R"({"type": "function", "function": {"name": "get_weather", "parameters": )"
          R"({"type": "object", "properties": {"city": {"type": "string"}}}}})"};
}

// Llama 3.1's JSON tool convention on the Llama 3 format.
TEST(ChatTemplate, Llama3ToolsInTheFirstUserMessage) {
  auto t = ChatTemplate::of_format(ChatFormat::kLlama3, "<|begin_of_text|>", "<|eot_id|>");
  const std::vector<ChatTool> tools = {weather_tool()};
  std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", "Weather in Paris? "}};
  msgs.push_back({"assistant", "", {{"call_1", "get_weather", R"({"city":"Paris"})"}}});
  msgs.push_back({"tool", "21 C", {}, "call_1"});
  auto out = t.apply(msgs, true, tools);
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(*out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please "
            "respond with a JSON for a function call with its proper arguments that best answers "
            "the given prompt.\n\nRespond in the format {\"name\": function name, "
            "\"parameters\": dictionary of argument name and its value}.Do not use "
            "variables.\n\n{\n    \"type\": \"function\",\n    \"function\": {\n        "
            "\"name\": \"get_weather\",\n        \"parameters\": {\n            \"type\": "
            "\"object\",\n            \"properties\": {\n                \"city\": {\n      "
            "              \"type\": \"string\"\n                }\n            }\n        "
            "}\n    }\n}\n\nWeather in Paris?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", "
            "\"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"
            "<|start_header_id|>ipython<|end_header_id|>\n\n\"21 C\"<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // One call per assistant message, as Llama 3.1's template insists.
  msgs[2].tool_calls.push_back(msgs[2].tool_calls[0]);
  EXPECT_FALSE(t.apply(msgs, true, tools).ok());
}

// Mistral v0.3's tool blocks on the Mistral format.
TEST(ChatTemplate, MistralToolBlocks) {
  auto t = ChatTemplate::of_format(ChatFormat::kMistral, "<s>", "</s>");
  const std::vector<ChatTool> tools = {weather_tool()};
  std::vector<ChatMessage> msgs = {{"user", "Weather?"}};
  msgs.push_back({"assistant", "", {{"abcDEF123", "get_weather", R"({"city": "Paris"})"}}});
  msgs.push_back({"tool", "21", {}, "abcDEF123"});
  msgs.push_back({"assistant", "It is 21."});
  msgs.push_back({"user", "Thanks"});
  auto out = t.apply(msgs, true, tools);
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(*out,
            "<s>[INST] Weather? [/INST][TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": "
            "{\"city\": \"Paris\"}, \"id\": \"abcDEF123\"}]</s>[TOOL_RESULTS] {\"content\": 21, "
            "\"call_id\": \"abcDEF123\"}[/TOOL_RESULTS]It is 21.</s>[AVAILABLE_TOOLS] "
            "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
            "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": "
            "\"string\"}}}}}][/AVAILABLE_TOOLS][INST] Thanks [/INST]");
  // Without tools the same conversation has no [AVAILABLE_TOOLS].
  out = t.apply(msgs, true);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->find("[AVAILABLE_TOOLS]"), std::string::npos);
}

TEST(ChatTemplate, Llama2HasNoTools) {
  auto t = ChatTemplate::of_format(ChatFormat::kLlama2, "<s>", "</s>");
  std::vector<ChatMessage> msgs = {{"user", "hi"}};
  EXPECT_TRUE(t.apply(msgs, true).ok());
  EXPECT_FALSE(t.apply(msgs, true, std::vector<ChatTool>{weather_tool()}).ok());
}

TEST(ChatTemplate, RejectsEmptyAndUnknownTemplates) {
  EXPECT_EQ(ChatTemplate::from_jinja("", "", "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ChatTemplate::from_jinja("{{ messages[0]['content'] }}", "", "").status().code(),
            StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace pp::model
