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

TEST(ChatTemplate, RejectsEmptyAndUnknownTemplates) {
  EXPECT_EQ(ChatTemplate::from_jinja("", "", "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ChatTemplate::from_jinja("{{ messages[0]['content'] }}", "", "").status().code(),
            StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace pp::model
