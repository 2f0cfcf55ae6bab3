// OpenAI response bodies and stream chunks (completions and chat), usage and both logprobs
// shapes, built from the engine's results per choice.
#include "pp/server/openai-responses.h"

#include <random>

#include <fmt/format.h>

#include "pp/server/api-error.h"

namespace pp::server {

using nlohmann::json;

namespace {

std::string token_text(int32_t id, const model::Tokenizer* tok) {
  if (!tok) return fmt::format("token_id:{}", id);
  const int32_t one[1] = {id};
  return tok->decode(std::span<const int32_t>(one, 1), /*skip_special=*/false);
}

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

json choice_logprobs_or_null(const ChoiceResult& c, bool chat, bool with_logprobs,
                             const model::Tokenizer* tok) {
  if (!with_logprobs) return nullptr;
  return chat ? chat_logprobs(c, 0, c.token_ids.size(), tok)
              : completion_logprobs(c, 0, c.token_ids.size(), 0, tok);
}

}  // namespace

json Usage::to_json() const {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

std::string make_response_id(const std::string& prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:08x}", prefix, rng(), uint32_t(rng()));
}

std::string make_tool_call_id(bool short_form) {
  static constexpr char kAlnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id = short_form ? "" : "call_";
  for (int i = 0; i < (short_form ? 9 : 24); ++i) id += kAlnum[rng() % (sizeof(kAlnum) - 1)];
  return id;
}

json tool_call_delta(int32_t index, const ToolCallOut& c, bool first) {
  if (!first) return {{"index", index}, {"function", {{"arguments", c.arguments}}}};
  return {{"index", index},
          {"id", c.id},
          {"type", "function"},
          {"function", {{"name", c.name}, {"arguments", c.arguments}}}};
}

json finish_reason_json(pipeline::FinishReason r) {
  if (r == pipeline::FinishReason::kNone) return nullptr;
  return pipeline::finish_reason_name(r);
}

json stop_reason_json(const ChoiceResult& c) {
  if (c.finish_reason != pipeline::FinishReason::kStop) return nullptr;
  if (!c.stop_string.empty()) return c.stop_string;
  if (c.stop_token) return *c.stop_token;
  return nullptr;
}

json completion_logprobs(const ChoiceResult& c, size_t begin, size_t end, int64_t text_offset_base,
                         const model::Tokenizer* tok) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  int64_t offset = text_offset_base;
  for (size_t i = begin; i < end && i < c.token_ids.size(); ++i) {
    const std::string t = token_text(c.token_ids[i], tok);
    tokens.push_back(t);
    offsets.push_back(offset);
    offset += int64_t(t.size());
    if (i < c.logprobs.size()) {
      const pipeline::TokenLogprob& lp = c.logprobs[i];
      token_logprobs.push_back(lp.logprob);
      json alts = json::object();
      for (size_t k = 0; k < lp.top_ids.size() && k < lp.top_logprobs.size(); ++k) {
        alts[token_text(lp.top_ids[k], tok)] = lp.top_logprobs[k];
      }
      top.push_back(std::move(alts));
    } else {
      token_logprobs.push_back(nullptr);
      top.push_back(nullptr);
    }
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
}

json chat_logprobs(const ChoiceResult& c, size_t begin, size_t end, const model::Tokenizer* tok) {
  json content = json::array();
  for (size_t i = begin; i < end && i < c.token_ids.size(); ++i) {
    const std::string t = token_text(c.token_ids[i], tok);
    json entry = {{"token", t}, {"bytes", bytes_of(t)}};
    json alts = json::array();
    if (i < c.logprobs.size()) {
      const pipeline::TokenLogprob& lp = c.logprobs[i];
      entry["logprob"] = lp.logprob;
      for (size_t k = 0; k < lp.top_ids.size() && k < lp.top_logprobs.size(); ++k) {
        const std::string a = token_text(lp.top_ids[k], tok);
        alts.push_back({{"token", a}, {"logprob", lp.top_logprobs[k]}, {"bytes", bytes_of(a)}});
      }
    } else {
      entry["logprob"] = nullptr;
    }
    entry["top_logprobs"] = std::move(alts);
    content.push_back(std::move(entry));
  }
  return {{"content", std::move(content)}};
}

json completion_body(const ResponseMeta& m, std::span<const ChoiceResult> choices, const Usage& u,
                     bool with_logprobs, const model::Tokenizer* tok) {
  json cs = json::array();
  for (const ChoiceResult& c : choices) {
    cs.push_back({{"index", c.index},
                  {"text", c.text},
                  {"logprobs", choice_logprobs_or_null(c, false, with_logprobs, tok)},
                  {"finish_reason", finish_reason_json(c.finish_reason)},
                  {"stop_reason", stop_reason_json(c)}});
  }
  return {{"id", m.id},
          {"object", "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", std::move(cs)},
          {"usage", u.to_json()},
          {"system_fingerprint", nullptr}};
}

json chat_body(const ResponseMeta& m, std::span<const ChoiceResult> choices, const Usage& u,
               bool with_logprobs, const model::Tokenizer* tok,
               std::span<const ChatMessageOut> messages) {
  json cs = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceResult& c = choices[i];
    json message = {{"role", "assistant"}, {"content", c.text}};
    json finish = finish_reason_json(c.finish_reason);
    if (i < messages.size()) {
      const ChatMessageOut& mo = messages[i];
      message["content"] = mo.content ? json(*mo.content) : json();
      if (!mo.tool_calls.empty()) {
        json calls = json::array();
        for (const ToolCallOut& tc : mo.tool_calls) {
          calls.push_back({{"id", tc.id},
                           {"type", "function"},
                           {"function", {{"name", tc.name}, {"arguments", tc.arguments}}}});
        }
        message["tool_calls"] = std::move(calls);
        if (c.finish_reason == pipeline::FinishReason::kStop) finish = "tool_calls";
      }
    }
    cs.push_back({{"index", c.index},
                  {"message", std::move(message)},
                  {"logprobs", choice_logprobs_or_null(c, true, with_logprobs, tok)},
                  {"finish_reason", std::move(finish)},
                  {"stop_reason", stop_reason_json(c)}});
  }
  return {{"id", m.id},
          {"object", "chat.completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", std::move(cs)},
          {"usage", u.to_json()},
          {"system_fingerprint", nullptr}};
}

json completion_chunk(const ResponseMeta& m, int32_t index, const std::string& text, json logprobs,
                      const ChoiceResult* finished) {
  json c = {{"index", index},
            {"text", text},
            {"logprobs", std::move(logprobs)},
            {"finish_reason", finished ? finish_reason_json(finished->finish_reason) : json()}};
  if (finished) c["stop_reason"] = stop_reason_json(*finished);
  return {{"id", m.id},
          {"object", "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", json::array({std::move(c)})}};
}

json chat_chunk(const ResponseMeta& m, int32_t index, const std::string& role,
                const std::optional<std::string>& content, json logprobs,
                const ChoiceResult* finished, json tool_calls, bool called_tools) {
  json delta = json::object();
  if (!role.empty()) delta["role"] = role;
  if (content) delta["content"] = *content;
  if (!tool_calls.is_null()) delta["tool_calls"] = std::move(tool_calls);
  json finish = finished ? finish_reason_json(finished->finish_reason) : json();
  if (finished && called_tools && finished->finish_reason == pipeline::FinishReason::kStop) {
    finish = "tool_calls";
  }
  json c = {{"index", index},
            {"delta", std::move(delta)},
            {"logprobs", std::move(logprobs)},
            {"finish_reason", std::move(finish)}};
  if (finished) c["stop_reason"] = stop_reason_json(*finished);
  return {{"id", m.id},
          {"object", "chat.completion.chunk"},
          {"created", m.created},
          {"model", m.model},
          {"choices", json::array({std::move(c)})}};
}

json usage_chunk(const ResponseMeta& m, bool chat, const Usage& u) {
  return {{"id", m.id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", json::array()},
          {"usage", u.to_json()}};
}

std::string sse_data(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

}  // namespace pp::server
