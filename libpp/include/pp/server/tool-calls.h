// Tool calls in a model's output text: the parsers that find the function calls a chat model
// wrote in its family's syntax, whole (non-streaming) and incrementally (streaming).
//
// The output is split into text and calls. The content is the text outside well-formed calls,
// without the whitespace next to a call; a call that does not parse stays in the content as
// the text it was. Streaming keeps back text that might still become (part of) a call, so that
// for any split of the output into pieces the streamed content concatenates to the whole
// parse's content and the streamed calls are the whole parse's calls, in order.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pp/model/chat-template.h"

namespace pp::server {

enum class ToolCallSyntax : uint8_t {
  // <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>, anywhere in the text, as
  // many as wanted (Qwen2.5, Hermes; pp's ChatML family).
  kHermes,
  // The whole output is [<|python_tag|>]{"name": ..., "parameters": {...}}, several separated
  // by ';' (Llama 3.1's JSON tool calling).
  kLlama3Json,
  // Text, then [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...] (Mistral v0.3); or, with
  // the special [TOOL_CALLS] skipped, an output that is only the JSON array.
  kMistral,
  // The whole output is [{"name": ..., "parameters": {...}}, ...]: what tool_choice "required"
  // makes the grammar produce.
  kJsonArray,
};

const char* tool_call_syntax_name(ToolCallSyntax s);

// The syntax a chat format's models call tools in.
ToolCallSyntax tool_call_syntax_for(model::ChatFormat f);

struct ParsedToolCall {
  std::string name;
  std::string arguments;  // a JSON object as text, written as Python's json.dumps writes it
  friend bool operator==(const ParsedToolCall&, const ParsedToolCall&) = default;
};

struct ParsedToolOutput {
  std::string content;  // the text outside the calls (may be empty)
  std::vector<ParsedToolCall> calls;
};

// The calls in a whole output.
ParsedToolOutput parse_tool_calls(ToolCallSyntax syntax, std::string_view text);

// What one piece of a stream adds.
struct ToolCallDelta {
  std::string content;                // more content
  std::vector<ParsedToolCall> calls;  // calls completed with this piece, in order
};

// The incremental parser of one choice. Calls come out whole, once their end is seen (their
// arguments in one piece).
class ToolCallStream {
 public:
  // max_calls: calls past this many are dropped (1 for parallel_tool_calls false).
  explicit ToolCallStream(ToolCallSyntax syntax, size_t max_calls = SIZE_MAX)
      : syntax_(syntax), max_calls_(max_calls) {}

  // Takes the next piece of output; `final`: it is the last one (text still kept back comes
  // out as what it turned out to be).
  ToolCallDelta feed(std::string_view piece, bool final);

  size_t n_calls() const { return n_sent_calls_; }

 private:
  ToolCallSyntax syntax_;
  size_t max_calls_;
  std::string text_;
  size_t n_sent_content_ = 0;
  size_t n_sent_calls_ = 0;
};

}  // namespace pp::server
