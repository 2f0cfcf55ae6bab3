// The request side of pp-serve's HTTP API: a request body (OpenAI /v1/completions,
// /v1/chat/completions, or SGLang's native /generate) parsed and validated into a plain
// ApiRequest, then its prompts turned into token ids. Independent of the HTTP library, so it can
// be tested and fuzzed on its own: every function takes text and returns a value or an ApiError
// naming the offending parameter ("temperature", "messages[1].content", "prompt[0]").
//
// Checked here: well-formed JSON (valid UTF-8), the type of every known field (null counts as
// absent), required fields, non-empty prompts, token ids inside the vocabulary, finite sampling
// values inside their ranges, n, stop strings, logprobs counts; and, once tokenized, that the
// prompt leaves room in the context and that prompt + max_tokens fits it. Unknown fields are
// ignored (clients send many), except a few whose meaning we cannot honour (best_of > n, suffix,
// echo with logprobs), which are refused rather than silently dropped.
//
// Tool calling (chat): `tools` (functions with a JSON-schema `parameters`), `tool_choice`
// ("none", "auto", "required" or one named function) and `parallel_tool_calls`; messages with
// role "tool" (tool_call_id) and assistant messages with `tool_calls`. "required" and a named
// function set params.grammar (a JSON schema) so that the output is a valid call, as vLLM does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "pp/model/chat-template.h"
#include "pp/model/sampling-params.h"
#include "pp/model/tokenizer.h"
#include "pp/server/api-error.h"

namespace pp::server {

enum class ApiKind : uint8_t {
  kCompletion,  // POST /v1/completions
  kChat,        // POST /v1/chat/completions
  kGenerate,    // POST /generate (SGLang native)
};

// One prompt as the client gave it: text, or token ids.
struct PromptInput {
  bool is_ids = false;
  std::string text;
  std::vector<int32_t> ids;
};

// What the server needs to know about the model to validate a request.
struct ProtocolLimits {
  int64_t n_vocab = 0;       // token ids must be below this
  int64_t max_context = 0;   // prompt + generated tokens at most
  int32_t max_n = 64;        // choices per prompt at most
  int32_t max_prompts = 64;  // prompts in one batched request at most
  int32_t max_stop = 16;     // stop strings at most
};

// What the model is told about tools and how its output is read (OpenAI's tool_choice).
enum class ToolChoice : uint8_t {
  kNone,      // tools are not rendered; the output is text
  kAuto,      // tools are rendered; calls in the output are parsed in the family's syntax
  kRequired,  // the grammar forces a JSON array of one or more calls
  kNamed,     // the grammar forces the named function's arguments
};

struct ApiRequest {
  ApiKind kind = ApiKind::kCompletion;
  std::string model;                         // empty when the client sent none
  std::vector<PromptInput> prompts;          // completions and generate: one or more
  std::vector<model::ChatMessage> messages;  // chat
  bool add_generation_prompt = true;         // chat
  model::SamplingParams params;              // max_tokens already defaulted per endpoint
  bool max_tokens_given = false;             // whether the client set max_tokens
  int32_t n = 1;                             // choices per prompt
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  bool batched = false;        // generate: text / input_ids was a list of prompts
  bool echo = false;           // completions: each choice's text starts with its prompt
  // Chat: the functions the model may call, and how (kNone when there are no tools).
  std::vector<model::ChatTool> tools;
  ToolChoice tool_choice = ToolChoice::kNone;
  std::string tool_choice_name;     // kNamed: the function
  bool parallel_tool_calls = true;  // false: at most one call per choice

  // Whether the output is read for tool calls (rather than returned as text).
  bool has_tool_output() const { return tool_choice != ToolChoice::kNone; }
};

using ParseResult = std::variant<ApiRequest, ApiError>;

// Parses and validates a request body for `kind`.
ParseResult parse_request(ApiKind kind, std::string_view body, const ProtocolLimits& limits);

// The token ids of every prompt of `req`: text through the tokenizer (with its special tokens,
// as the model expects), chat messages through the chat template, ids as given. Checks each
// against the context: the prompt must leave room for one token, and prompt + max_tokens must
// fit when the client set max_tokens (a default max_tokens is capped by the server instead).
// `tokenizer` and `chat` may be null: then text
// prompts (or chat requests) are refused.
std::variant<std::vector<std::vector<int32_t>>, ApiError> tokenize_prompts(
    const ApiRequest& req, const model::Tokenizer* tokenizer, const model::ChatTemplate* chat,
    const ProtocolLimits& limits);

// Whether `s` is valid UTF-8 (no overlong forms, no surrogates).
bool is_valid_utf8(std::string_view s);

}  // namespace pp::server
