// The protocols pp-bench speaks (see http-client.h): request bodies for the OpenAI completions,
// OpenAI chat and SGLang /generate APIs, the chunks they stream back, and Server-Sent Events.
#include <algorithm>

#include "pp/bench/http-client.h"

namespace pp::bench {

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kOpenAI:
      return "openai";
    case Backend::kOpenAIChat:
      return "openai-chat";
    case Backend::kSglang:
      return "sglang";
  }
  return "?";
}

std::optional<Backend> parse_backend(std::string_view name) {
  for (Backend b : {Backend::kOpenAI, Backend::kOpenAIChat, Backend::kSglang}) {
    if (name == backend_name(b)) return b;
  }
  // SGLang's bench_serving names for the same protocols.
  if (name == "sglang-native") return Backend::kSglang;
  if (name == "sglang-oai" || name == "vllm") return Backend::kOpenAI;
  if (name == "sglang-oai-chat" || name == "vllm-chat") return Backend::kOpenAIChat;
  return std::nullopt;
}

const char* backend_path(Backend b) {
  switch (b) {
    case Backend::kOpenAI:
      return "/v1/completions";
    case Backend::kOpenAIChat:
      return "/v1/chat/completions";
    case Backend::kSglang:
      return "/generate";
  }
  return "/";
}

Result<BaseUrl> parse_base_url(std::string_view url) {
  if (url.starts_with("https://")) {
    return unimplemented("cannot benchmark '{}': https is not supported, use http", url);
  }
  if (!url.starts_with("http://")) {
    return invalid_argument("bad base url '{}': expected http://HOST:PORT[/PATH]", url);
  }
  const size_t host_begin = 7;
  const size_t slash = url.find('/', host_begin);
  BaseUrl out;
  out.scheme_host_port = std::string(url.substr(0, slash));
  if (out.scheme_host_port.size() == host_begin) {
    return invalid_argument("bad base url '{}': no host", url);
  }
  if (slash != std::string_view::npos) {
    std::string_view prefix = url.substr(slash);
    while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
    out.path_prefix = std::string(prefix);
  }
  return out;
}

nlohmann::json request_body(const BenchRequest& r, const RequestOptions& o) {
  nlohmann::json body;
  switch (o.backend) {
    case Backend::kOpenAI:
      if (!o.model.empty()) body["model"] = o.model;
      if (!r.prompt_ids.empty() && (!o.send_text || r.prompt_text.empty())) {
        body["prompt"] = r.prompt_ids;
      } else {
        body["prompt"] = r.prompt_text;
      }
      body["temperature"] = 0.0;
      body["max_tokens"] = r.output_len;
      body["stream"] = o.stream;
      body["ignore_eos"] = o.ignore_eos;
      if (o.stream) {
        body["stream_options"] = {{"include_usage", true}, {"continuous_usage_stats", true}};
      }
      break;
    case Backend::kOpenAIChat:
      if (!o.model.empty()) body["model"] = o.model;
      body["messages"] = nlohmann::json::array({{{"role", "user"}, {"content", r.prompt_text}}});
      body["temperature"] = 0.0;
      body["max_tokens"] = r.output_len;
      body["stream"] = o.stream;
      body["ignore_eos"] = o.ignore_eos;
      if (o.stream) {
        body["stream_options"] = {{"include_usage", true}, {"continuous_usage_stats", true}};
      }
      break;
    case Backend::kSglang:
      if (!r.prompt_ids.empty() && (!o.send_text || r.prompt_text.empty())) {
        body["input_ids"] = r.prompt_ids;
      } else {
        body["text"] = r.prompt_text;
      }
      body["sampling_params"] = {
          {"temperature", 0.0}, {"max_new_tokens", r.output_len}, {"ignore_eos", o.ignore_eos}};
      body["stream"] = o.stream;
      break;
  }
  for (const auto& [k, v] : o.extra_body.items()) body[k] = v;
  return body;
}

namespace {

std::optional<int64_t> int_field(const nlohmann::json& obj, const char* key) {
  if (!obj.is_object()) return std::nullopt;
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_number()) return std::nullopt;
  return it->get<int64_t>();
}

std::string error_text(const nlohmann::json& j) {
  if (!j.is_object()) return {};
  auto it = j.find("error");
  if (it != j.end() && !it->is_null()) {
    if (it->is_string()) return it->get<std::string>();
    if (it->is_object() && it->contains("message") && (*it)["message"].is_string()) {
      return (*it)["message"].get<std::string>();
    }
    return it->dump();
  }
  if (j.value("object", "") == "error") return j.value("message", std::string("error"));
  return {};
}

}  // namespace

Result<ChunkInfo> parse_chunk(Backend b, std::string_view payload) {
  ChunkInfo c;
  if (payload == "[DONE]") {
    c.done = true;
    return c;
  }
  nlohmann::json j = nlohmann::json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return data_loss("bad chunk from the server: '{}'", payload.substr(0, 200));
  }
  c.error = error_text(j);
  if (!c.error.empty()) return c;
  if (b == Backend::kSglang) {
    if (auto it = j.find("text"); it != j.end() && it->is_string()) c.text = it->get<std::string>();
    if (auto it = j.find("meta_info"); it != j.end()) {
      c.completion_tokens = int_field(*it, "completion_tokens");
    }
  } else {
    if (auto it = j.find("choices"); it != j.end() && it->is_array() && !it->empty()) {
      const nlohmann::json& ch = (*it)[0];
      const nlohmann::json* t = nullptr;
      if (b == Backend::kOpenAI) {
        if (ch.contains("text")) t = &ch["text"];
      } else if (ch.contains("delta") && ch["delta"].is_object() &&
                 ch["delta"].contains("content")) {
        t = &ch["delta"]["content"];
      } else if (ch.contains("message") && ch["message"].is_object() &&
                 ch["message"].contains("content")) {
        t = &ch["message"]["content"];
      }
      if (t && t->is_string()) c.text = t->get<std::string>();
    }
    if (auto it = j.find("usage"); it != j.end()) {
      c.completion_tokens = int_field(*it, "completion_tokens");
    }
  }
  c.has_content = !c.text.empty();
  return c;
}

void SseParser::take_line(std::string_view line, std::vector<std::string>& out) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (!line.starts_with("data:")) return;  // blank lines, comments, event:, id:, retry:
  line.remove_prefix(5);
  if (line.starts_with(' ')) line.remove_prefix(1);
  out.emplace_back(line);
}

std::vector<std::string> SseParser::feed(std::string_view bytes) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t nl = bytes.find('\n', pos);
    if (nl == std::string_view::npos) {
      pending_.append(bytes.substr(pos));
      break;
    }
    if (pending_.empty()) {
      take_line(bytes.substr(pos, nl - pos), out);
    } else {
      pending_.append(bytes.substr(pos, nl - pos));
      take_line(pending_, out);
      pending_.clear();
    }
    pos = nl + 1;
  }
  return out;
}

std::vector<std::string> SseParser::finish() {
  std::vector<std::string> out;
  if (!pending_.empty()) take_line(pending_, out);
  pending_.clear();
  return out;
}

}  // namespace pp::bench
