// ChatToolReader: one chat choice's output read as the request's tool_choice says, for the whole
// body and for the stream. "auto": the family's tool-call syntax (tool-calls.h); "required": the
// JSON array of calls the grammar forces; a named function: the output is that function's
// arguments, streamed as they come. Ids are made here, one per call.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "pp/model/chat-template.h"
#include "pp/server/openai-protocol.h"
#include "pp/server/openai-responses.h"
#include "pp/server/tool-calls.h"

namespace pp::server {

class ChatToolReader {
 public:
  // `r` must have tool output (r.has_tool_output()).
  ChatToolReader(const ApiRequest& r, model::ChatFormat format);

  // The message of a whole output.
  ChatMessageOut read_whole(std::string_view text);

  // One streamed piece: content to send (nullopt: none) and tool-call deltas (null: none).
  struct Piece {
    std::optional<std::string> content;
    nlohmann::json tool_calls;
  };
  Piece feed(std::string_view text, bool final);

  // Whether the stream sent a call.
  bool called() const { return n_calls_ > 0; }

 private:
  ToolChoice choice_;
  std::string name_;  // kNamed
  bool short_ids_;    // Mistral's 9-character ids
  size_t max_calls_;
  ToolCallStream stream_;
  ToolCallOut named_;  // kNamed: the call being streamed
  int32_t n_calls_ = 0;
};

}  // namespace pp::server
