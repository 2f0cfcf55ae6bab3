// The response side of pp-serve's HTTP API: OpenAI completion and chat bodies, their streaming
// chunks, usage, and logprobs in both OpenAI shapes, built from what the engine streamed for
// each choice; and SGLang's native /generate bodies. Pure functions of their inputs (no HTTP),
// so the unit tests check every shape.
//
// Logprobs shapes:
//   completions: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: lp}, ...],
//                 "text_offset": [...]}   (offsets count bytes of the generated text)
//   chat:        {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
//                 "logprob", "bytes"}]}]}
// A token's text is its own decoded text (a byte that is part of a longer UTF-8 character
// decodes to U+FFFD; "bytes" then still carries the raw bytes).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/model/tokenizer.h"
#include "pp/pipeline/request.h"

namespace pp::server {

// What one choice (one engine request) produced so far, or in all.
struct ChoiceResult {
  int32_t index = 0;                             // the choice's index in the response
  std::string text;                              // generated text
  std::vector<int32_t> token_ids;                // generated ids
  std::vector<pipeline::TokenLogprob> logprobs;  // parallel to token_ids when asked
  pipeline::FinishReason finish_reason = pipeline::FinishReason::kNone;
  std::string stop_string;            // the stop string that matched
  std::optional<int32_t> stop_token;  // the eos / stop id that matched
  int64_t n_prompt_tokens = 0;
  int64_t n_output_tokens = 0;
  int64_t n_cached_tokens = 0;  // prompt tokens whose KV came from the prefix cache
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;  // of prompt_tokens: prompt_tokens_details.cached_tokens
  nlohmann::json to_json() const;
};

// One tool call of a chat response (OpenAI's message.tool_calls[i]).
struct ToolCallOut {
  std::string id;         // "call_..." (Mistral: 9 letters and digits, as its template wants)
  std::string name;       // the function
  std::string arguments;  // JSON text
};

// A chat choice's message when its output was read for tool calls: the text outside the calls
// (nullopt: null) and the calls. finish_reason "stop" becomes "tool_calls" when there are calls.
struct ChatMessageOut {
  std::optional<std::string> content;
  std::vector<ToolCallOut> tool_calls;
};

// A fresh tool call id: "call_" + 24 letters and digits, or 9 of them (`short_form`, Mistral).
std::string make_tool_call_id(bool short_form);

// One tool call as a stream delta: {"index", "id", "type", "function": {"name", "arguments"}};
// `first` false: only index and function.arguments (a further piece of the arguments).
nlohmann::json tool_call_delta(int32_t index, const ToolCallOut& c, bool first);

// Identity of one response: every chunk of a stream repeats it.
struct ResponseMeta {
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  std::string model;
  int64_t created = 0;  // unix seconds
};

// A fresh response id with the prefix: prefix + 24 random hex digits.
std::string make_response_id(const std::string& prefix);

// "stop", "length", "abort", or null while running.
nlohmann::json finish_reason_json(pipeline::FinishReason r);
// vLLM's stop_reason: the matched stop string or stop token id, else null.
nlohmann::json stop_reason_json(const ChoiceResult& c);

// Logprobs of generated tokens [begin, end) of a choice. text_offset_base: bytes of the
// generated text before token `begin` (for completions' text_offset).
nlohmann::json completion_logprobs(const ChoiceResult& c, size_t begin, size_t end,
                                   int64_t text_offset_base, const model::Tokenizer* tok);
nlohmann::json chat_logprobs(const ChoiceResult& c, size_t begin, size_t end,
                             const model::Tokenizer* tok);

// Whole (non-streaming) bodies. `with_logprobs`: the request asked for logprobs.
nlohmann::json completion_body(const ResponseMeta& m, std::span<const ChoiceResult> choices,
                               const Usage& u, bool with_logprobs, const model::Tokenizer* tok);
// `messages`: empty, or per choice the message read for tool calls (replacing the text).
nlohmann::json chat_body(const ResponseMeta& m, std::span<const ChoiceResult> choices,
                         const Usage& u, bool with_logprobs, const model::Tokenizer* tok,
                         std::span<const ChatMessageOut> messages = {});

// Streaming chunks. `logprobs` is null or the chunk's logprobs (from *_logprobs above);
// `finish` kNone gives finish_reason null.
nlohmann::json completion_chunk(const ResponseMeta& m, int32_t index, const std::string& text,
                                nlohmann::json logprobs, const ChoiceResult* finished);
// role: "assistant" on the first chunk of a choice, else empty (no role key). tool_calls: null,
// or an array of tool_call_delta()s. called_tools: the choice made calls (a "stop" finish is
// "tool_calls").
nlohmann::json chat_chunk(const ResponseMeta& m, int32_t index, const std::string& role,
                          const std::optional<std::string>& content, nlohmann::json logprobs,
                          const ChoiceResult* finished, nlohmann::json tool_calls = nullptr,
                          bool called_tools = false);
// The last chunk of a stream with stream_options.include_usage: no choices, the usage.
nlohmann::json usage_chunk(const ResponseMeta& m, bool chat, const Usage& u);

// Server-sent events.
std::string sse_data(const nlohmann::json& j);  // "data: {...}\n\n"
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

}  // namespace pp::server
