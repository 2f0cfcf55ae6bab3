// The request side of OpenAI tool calling: `tools`, `tool_choice` and `parallel_tool_calls` read
// and validated into ApiRequest, and the grammar that tool_choice "required" or a named function
// puts on the output (vLLM's schemas: the named function's parameters; or an array of
// {"name", "parameters"} objects, one alternative per tool).
#pragma once

#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "pp/server/api-error.h"
#include "pp/server/openai-protocol.h"

namespace pp::server {

// Reads the tool fields of a chat request body (`body`: the parsed body; `text`: its text, read
// again with the key order kept, which the prompt shows). Sets r->tools, r->tool_choice,
// r->tool_choice_name, r->parallel_tool_calls and, for "required" or a named function,
// r->params.grammar.
std::optional<ApiError> read_tools(const nlohmann::json& body, std::string_view text,
                                   ApiRequest* r);

// Completions and generate: `tools` and `tool_choice` are refused when they ask for anything.
std::optional<ApiError> refuse_tools(const nlohmann::json& body);

}  // namespace pp::server
