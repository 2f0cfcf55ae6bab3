// The tool-call parsers (tool-calls.h) on random outputs of every syntax: the whole parse finds
// the calls and the text around them; the stream, split at every byte (and at random places),
// sends the same content and the same calls; malformed calls stay text.
#include <random>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pp/model/py-json.h"
#include "pp/server/tool-calls.h"
#include "test-util.h"

namespace pp::server {
namespace {

using OJson = nlohmann::ordered_json;

std::string random_word(std::mt19937_64& g) {
  static const std::vector<std::string> words = {
      "Paris", "le",   "temps", "\"quoted\"", "back\\slash", "日本", "😀",
      "a{b}",  "[x]",  "tab\t", "semi;colon", "new\nline",   "<b>",  "ok",
      "42",    "-3.5", "{",     "}",          "call"};
  return words[std::uniform_int_distribution<size_t>(0, words.size() - 1)(g)];
}

// Free text without call markers, not starting or ending with whitespace.
std::string random_text(std::mt19937_64& g, size_t max_words) {
  std::string s;
  const size_t n = std::uniform_int_distribution<size_t>(0, max_words)(g);
  for (size_t i = 0; i < n; ++i) {
    if (i) s += " ";
    std::string w = random_word(g);
    while (w.find('\n') != std::string::npos || w.find('\t') != std::string::npos)
      w = random_word(g);
    s += w;
  }
  return s;
}

OJson random_value(std::mt19937_64& g, int depth) {
  switch (std::uniform_int_distribution<int>(0, depth > 1 ? 3 : 5)(g)) {
    case 0:
      return random_word(g);
    case 1:
      return std::uniform_int_distribution<int>(-1000, 1000)(g);
    case 2:
      return std::uniform_int_distribution<int>(0, 1)(g) == 1;
    case 3:
      return nullptr;
    case 4: {
      OJson a = OJson::array();
      for (int i = std::uniform_int_distribution<int>(0, 3)(g); i > 0; --i)
        a.push_back(random_value(g, depth + 1));
      return a;
    }
    default: {
      OJson o = OJson::object();
      for (int i = std::uniform_int_distribution<int>(0, 3)(g); i > 0; --i)
        o[fmt::format("k{}{}", i, random_word(g))] = random_value(g, depth + 1);
      return o;
    }
  }
}

ParsedToolCall random_call(std::mt19937_64& g, OJson* args) {
  static const std::vector<std::string> names = {"get_weather", "search", "add-two", "f", "x_1"};
  *args = OJson::object();
  for (int i = std::uniform_int_distribution<int>(0, 4)(g); i > 0; --i)
    (*args)[fmt::format("arg{}", i)] = random_value(g, 0);
  return {names[std::uniform_int_distribution<size_t>(0, names.size() - 1)(g)],
          model::py_json_dumps(*args)};
}

// The stream's deltas for `text` cut at `cuts` (sorted byte offsets), gathered.
ParsedToolOutput stream(ToolCallSyntax syntax, const std::string& text, std::vector<size_t> cuts,
                        size_t max_calls = SIZE_MAX) {
  ToolCallStream s(syntax, max_calls);
  ParsedToolOutput out;
  size_t prev = 0;
  cuts.push_back(text.size());
  for (size_t i = 0; i < cuts.size(); ++i) {
    ToolCallDelta d =
        s.feed(std::string_view(text).substr(prev, cuts[i] - prev), i + 1 == cuts.size());
    out.content += d.content;
    for (auto& c : d.calls) out.calls.push_back(std::move(c));
    prev = cuts[i];
  }
  return out;
}

// Every split in two, and random splits into many pieces, give the whole parse.
void expect_streams_match(ToolCallSyntax syntax, const std::string& text,
                          const ParsedToolOutput& whole) {
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    ParsedToolOutput s = stream(syntax, text, {cut});
    ASSERT_EQ(s.content, whole.content) << "cut at " << cut << " of " << text;
    ASSERT_EQ(s.calls, whole.calls) << "cut at " << cut << " of " << text;
  }
  std::mt19937_64& g = test::rng();
  for (int trial = 0; trial < 10; ++trial) {
    std::vector<size_t> cuts;
    for (size_t i = 1; i < text.size(); ++i)
      if (std::uniform_int_distribution<int>(0, 3)(g) == 0) cuts.push_back(i);
    ParsedToolOutput s = stream(syntax, text, cuts);
    ASSERT_EQ(s.content, whole.content) << text;
    ASSERT_EQ(s.calls, whole.calls) << text;
  }
}

TEST(ToolCalls, HermesCallsBetweenTextInOneAndManyPieces) {
  std::mt19937_64& g = test::rng();
  for (int trial = 0; trial < 60; ++trial) {
    const size_t n_calls = std::uniform_int_distribution<size_t>(0, 3)(g);
    std::string text = random_text(g, 4), want_content = text;
    std::vector<ParsedToolCall> want;
    for (size_t i = 0; i < n_calls; ++i) {
      OJson args;
      want.push_back(random_call(g, &args));
      // As Qwen writes them, with the key order and spacing varying.
      OJson call = {{"name", want.back().name}, {"arguments", args}};
      text += i == 0 && text.empty() ? "" : "\n";
      text += "<tool_call>\n" + (trial % 2 ? call.dump() : model::py_json_dumps(call)) +
              "\n</tool_call>";
      const std::string after = random_text(g, 2);
      if (!after.empty()) text += "\n" + after;
      want_content += after;
    }
    SCOPED_TRACE(text);
    ParsedToolOutput whole = parse_tool_calls(ToolCallSyntax::kHermes, text);
    EXPECT_EQ(whole.calls, want);
    EXPECT_EQ(whole.content, want_content);
    expect_streams_match(ToolCallSyntax::kHermes, text, whole);
  }
}

TEST(ToolCalls, HermesMalformedCallsStayText) {
  const std::vector<std::string> texts = {
      "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}\n</tool_call>",  // bad JSON
      "<tool_call>{\"arguments\": {}}</tool_call>",                              // no name
      "<tool_call>{\"name\": 3}</tool_call>",
      "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",  // arguments not an object
      "Use <tool_call> tags like <tool_call>this",                     // unclosed, not JSON
      "half a marker <tool_ca",
      "<tool_call",
      "  spaced text with a trailing space ",
  };
  for (const std::string& t : texts) {
    SCOPED_TRACE(t);
    ParsedToolOutput whole = parse_tool_calls(ToolCallSyntax::kHermes, t);
    EXPECT_TRUE(whole.calls.empty());
    EXPECT_EQ(whole.content, t);
    expect_streams_match(ToolCallSyntax::kHermes, t, whole);
  }
  // A malformed call among good ones: only it stays text, with its own whitespace.
  const std::string mixed =
      "a\n<tool_call>{\"name\": \"f\"}</tool_call>\n<tool_call>{bad}</tool_call> b\n"
      "<tool_call>{\"name\": \"g\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>";
  ParsedToolOutput whole = parse_tool_calls(ToolCallSyntax::kHermes, mixed);
  ASSERT_EQ(whole.calls.size(), 2u);
  EXPECT_EQ(whole.calls[0], (ParsedToolCall{"f", "{}"}));
  EXPECT_EQ(whole.calls[1], (ParsedToolCall{"g", "{\"x\": 1}"}));  // arguments given as a string
  EXPECT_EQ(whole.content, "a<tool_call>{bad}</tool_call> b");
  expect_streams_match(ToolCallSyntax::kHermes, mixed, whole);
  // Stopped before the closing tag (a stop string, or the end of max_tokens): still a call.
  whole = parse_tool_calls(ToolCallSyntax::kHermes, "<tool_call>\n{\"name\": \"f\"}\n");
  EXPECT_EQ(whole.calls, (std::vector<ParsedToolCall>{{"f", "{}"}}));
  EXPECT_EQ(whole.content, "");
}

TEST(ToolCalls, StreamHoldsBackOnlyWhatMayBeACall) {
  ToolCallStream s(ToolCallSyntax::kHermes);
  EXPECT_EQ(s.feed("Let me check. ", false).content, "Let me check.");
  EXPECT_EQ(s.feed("<tool", false).content, "");
  EXPECT_EQ(s.feed("box> done", false).content, " <toolbox> done");
  ToolCallDelta d = s.feed("\n<tool_call>{\"name\": \"f\", \"arguments\": {}}", false);
  EXPECT_TRUE(d.content.empty() && d.calls.empty());
  d = s.feed("</tool_call>", false);
  EXPECT_EQ(d.calls, (std::vector<ParsedToolCall>{{"f", "{}"}}));
  EXPECT_EQ(s.feed("\n", true).content, "");
}

TEST(ToolCalls, Llama3JsonWholeOutputOnly) {
  std::mt19937_64& g = test::rng();
  for (int trial = 0; trial < 40; ++trial) {
    const size_t n = std::uniform_int_distribution<size_t>(1, 3)(g);
    std::string text = trial % 2 ? "<|python_tag|>" : "";
    std::vector<ParsedToolCall> want;
    for (size_t i = 0; i < n; ++i) {
      OJson args;
      want.push_back(random_call(g, &args));
      OJson call = {{"name", want.back().name}, {trial % 3 ? "parameters" : "arguments", args}};
      text += (i ? "; " : "") + model::py_json_dumps(call);
    }
    SCOPED_TRACE(text);
    ParsedToolOutput whole = parse_tool_calls(ToolCallSyntax::kLlama3Json, text);
    EXPECT_EQ(whole.calls, want);
    EXPECT_EQ(whole.content, "");
    expect_streams_match(ToolCallSyntax::kLlama3Json, text, whole);
  }
  for (const std::string t : {"The answer is {\"name\": \"f\"}", "{\"name\": \"f\"} and more",
                              "{not json", " plain text", "<|python_tag|>print(1)"}) {
    SCOPED_TRACE(t);
    ParsedToolOutput whole = parse_tool_calls(ToolCallSyntax::kLlama3Json, t);
    EXPECT_TRUE(whole.calls.empty());
    EXPECT_EQ(whole.content, t);
    expect_streams_match(ToolCallSyntax::kLlama3Json, t, whole);
  }
}

TEST(ToolCalls, MistralToolCallsAfterText) {
  std::mt19937_64& g = test::rng();
  for (int trial = 0; trial < 40; ++trial) {
    const size_t n = std::uniform_int_distribution<size_t>(1, 3)(g);
    const std::string before = random_text(g, 3);
    OJson arr = OJson::array();
    std::vector<ParsedToolCall> want;
    for (size_t i = 0; i < n; ++i) {
      OJson args;
      want.push_back(random_call(g, &args));
      arr.push_back({{"name", want.back().name}, {"arguments", args}});
    }
    const std::string text = before + (before.empty() ? "" : " ") + "[TOOL_CALLS] " + arr.dump();
    SCOPED_TRACE(text);
    ParsedToolOutput whole = parse_tool_calls(ToolCallSyntax::kMistral, text);
    EXPECT_EQ(whole.calls, want);
    EXPECT_EQ(whole.content, before);
    expect_streams_match(ToolCallSyntax::kMistral, text, whole);
  }
  // [TOOL_CALLS] left out of the text (a special token skipped): the bare array.
  const std::string bare = R"( [{"name": "f", "arguments": {"a": [1]}}])";
  ParsedToolOutput whole = parse_tool_calls(ToolCallSyntax::kMistral, bare);
  EXPECT_EQ(whole.calls, (std::vector<ParsedToolCall>{{"f", "{\"a\": [1]}"}}));
  EXPECT_EQ(whole.content, "");
  expect_streams_match(ToolCallSyntax::kMistral, bare, whole);
  for (const std::string t : {"[TOOL_CALLS] [{\"name\": }]", "no calls [TOOL_CALLS]", "[TOOL_",
                              "[TOOL_CALLS] []", "[1, 2] is a list", "[TOOLBOX] [TOOL_CALLS] x"}) {
    SCOPED_TRACE(t);
    ParsedToolOutput whole = parse_tool_calls(ToolCallSyntax::kMistral, t);
    EXPECT_TRUE(whole.calls.empty());
    EXPECT_EQ(whole.content, t);
    expect_streams_match(ToolCallSyntax::kMistral, t, whole);
  }
}

TEST(ToolCalls, JsonArrayOfRequiredCalls) {
  std::mt19937_64& g = test::rng();
  OJson arr = OJson::array();
  std::vector<ParsedToolCall> want;
  for (int i = 0; i < 3; ++i) {
    OJson args;
    want.push_back(random_call(g, &args));
    arr.push_back({{"name", want.back().name}, {"parameters", args}});
  }
  const std::string text = arr.dump();
  ParsedToolOutput whole = parse_tool_calls(ToolCallSyntax::kJsonArray, text);
  EXPECT_EQ(whole.calls, want);
  EXPECT_EQ(whole.content, "");
  expect_streams_match(ToolCallSyntax::kJsonArray, text, whole);
  // Cut short (max_tokens): text.
  const std::string cut = text.substr(0, text.size() - 3);
  EXPECT_EQ(parse_tool_calls(ToolCallSyntax::kJsonArray, cut).content, cut);
  // parallel_tool_calls false: the first call only.
  ParsedToolOutput one = stream(ToolCallSyntax::kJsonArray, text, {5}, 1);
  EXPECT_EQ(one.calls, std::vector<ParsedToolCall>(want.begin(), want.begin() + 1));
}

TEST(ToolCalls, SyntaxPerChatFormat) {
  EXPECT_EQ(tool_call_syntax_for(model::ChatFormat::kChatML), ToolCallSyntax::kHermes);
  EXPECT_EQ(tool_call_syntax_for(model::ChatFormat::kLlama3), ToolCallSyntax::kLlama3Json);
  EXPECT_EQ(tool_call_syntax_for(model::ChatFormat::kMistral), ToolCallSyntax::kMistral);
}

}  // namespace
}  // namespace pp::server
