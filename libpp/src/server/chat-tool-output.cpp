// Tool-call output of chat choices (see chat-tool-output.h).
#include "chat-tool-output.h"

namespace pp::server {

namespace {

ToolCallSyntax syntax_of(const ApiRequest& r, model::ChatFormat f) {
  return r.tool_choice == ToolChoice::kRequired ? ToolCallSyntax::kJsonArray
                                                : tool_call_syntax_for(f);
}

}  // namespace

ChatToolReader::ChatToolReader(const ApiRequest& r, model::ChatFormat format)
    : choice_(r.tool_choice),
      name_(r.tool_choice_name),
      short_ids_(format == model::ChatFormat::kMistral),
      max_calls_(r.parallel_tool_calls ? SIZE_MAX : 1),
      stream_(syntax_of(r, format), max_calls_) {}

ChatMessageOut ChatToolReader::read_whole(std::string_view text) {
  ChatMessageOut out;
  if (choice_ == ToolChoice::kNamed) {
    out.tool_calls.push_back({make_tool_call_id(short_ids_), name_, std::string(text)});
    return out;
  }
  ToolCallDelta d = stream_.feed(text, true);
  for (ParsedToolCall& c : d.calls) {
    out.tool_calls.push_back(
        {make_tool_call_id(short_ids_), std::move(c.name), std::move(c.arguments)});
  }
  if (!out.tool_calls.empty() && d.content.empty()) return out;  // content null
  out.content = std::move(d.content);
  return out;
}

ChatToolReader::Piece ChatToolReader::feed(std::string_view text, bool final) {
  Piece p;
  if (choice_ == ToolChoice::kNamed) {
    // The output is the arguments: each piece goes out as it comes, the first with the name.
    if (text.empty() && !(final && n_calls_ == 0)) return p;
    const bool first = n_calls_ == 0;
    if (first) named_ = {make_tool_call_id(short_ids_), name_, ""};
    named_.arguments = std::string(text);
    p.tool_calls = nlohmann::json::array({tool_call_delta(0, named_, first)});
    n_calls_ = 1;
    return p;
  }
  ToolCallDelta d = stream_.feed(text, final);
  if (!d.content.empty()) p.content = std::move(d.content);
  if (!d.calls.empty()) {
    p.tool_calls = nlohmann::json::array();
    for (ParsedToolCall& c : d.calls) {
      ToolCallOut tc{make_tool_call_id(short_ids_), std::move(c.name), std::move(c.arguments)};
      p.tool_calls.push_back(tool_call_delta(n_calls_++, tc, true));
    }
  }
  return p;
}

}  // namespace pp::server
