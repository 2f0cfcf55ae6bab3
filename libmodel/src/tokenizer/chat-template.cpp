// Chat formats rendered in C++ (see chat-template.h). Each render mirrors one published Jinja
// template: SmolLM2's ChatML, Meta-Llama-3-Instruct's, Llama-2-chat's and
// Mistral-7B-Instruct-v0.1's; scripts/make-tokenizer-fixtures.py renders the same
// conversations with jinja2 and the tests compare. With tools: Qwen2.5-Instruct's and
// Llama-3.2-Instruct's (scripts/make-tool-template-fixtures.py renders them with transformers),
// Mistral-7B-Instruct-v0.3's tool blocks.
#include "pp/model/chat-template.h"

#include <ctime>
#include <optional>

#include <fmt/format.h>
#include <vector>

#include "pp/model/py-json.h"
#include "tokenizer/unicode.h"

namespace pp::model {

namespace {

// Python's str.strip(), which Jinja's trim filter and .strip() call: Unicode whitespace.
bool is_py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string py_strip(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    size_t n = tok::utf8_valid_len(s, b);
    if (n == 0 || !is_py_space(tok::utf8_decode(s, b))) break;
    b += n;
  }
  while (e > b) {
    size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    size_t n = tok::utf8_valid_len(s, k);
    if (n != e - k || !is_py_space(tok::utf8_decode(s, k))) break;
    e = k;
  }
  return std::string(s.substr(b, e - b));
}

// Undoes the escapes a Jinja string literal may use.
std::string unescape_jinja(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

// The system prompt a ChatML template writes when the conversation has none, as in SmolLM2's
// "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n...'", or
// Qwen2.5's "{% if messages[0]['role'] == 'system' %}...{% else %}{{ '<|im_start|>system\n...'":
// the first system turn whose text is a literal.
std::string chatml_default_system(std::string_view t) {
  if (t.find("!= 'system'") == std::string_view::npos &&
      t.find("!= \"system\"") == std::string_view::npos &&
      t.find("== 'system'") == std::string_view::npos &&
      t.find("== \"system\"") == std::string_view::npos)
    return {};
  for (std::string_view head : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    for (size_t p = t.find(head); p != std::string_view::npos; p = t.find(head, p + 1)) {
      const size_t b = p + head.size();
      const size_t e = t.find("<|im_end|>", b);
      if (e == std::string_view::npos) break;
      std::string_view body = t.substr(b, e - b);
      // A literal, not a variable: no Jinja markup and no closing quote inside.
      if (body.find("{{") != std::string_view::npos || body.find("{%") != std::string_view::npos ||
          body.find('\'') != std::string_view::npos || body.find('"') != std::string_view::npos)
        continue;
      return unescape_jinja(body);
    }
  }
  return {};
}

using OJson = nlohmann::ordered_json;

// A JSON text read back with its keys in order; text that is not JSON stays a string (the
// templates print `arguments | tojson`, which quotes a string).
OJson parse_or_string(const std::string& text) {
  OJson v = OJson::parse(text, nullptr, /*allow_exceptions=*/false);
  return v.is_discarded() ? OJson(text) : v;
}

// Qwen2.5-Instruct's system section with tools (Qwen3's when there is no system prompt at all).
std::string chatml_tools_system(const std::string& system, std::span<const ChatTool> tools) {
  std::string out = "<|im_start|>system\n";
  if (!system.empty()) out += system + "\n\n";
  out +=
      "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
      "provided with function signatures within <tools></tools> XML tags:\n<tools>";
  for (const ChatTool& t : tools) {
    out += '\n';
    out += py_json_dumps(parse_or_string(t.json));
  }
  out +=
      "\n</tools>\n\nFor each function call, return a json object with function name and "
      "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
      "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";
  return out;
}

// Qwen2.5-Instruct's turns: assistant calls as <tool_call> blocks, a run of tool results as
// <tool_response> blocks in one user turn.
std::string chatml_turns(std::span<const ChatMessage> msgs) {
  std::string out;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role == "assistant" && !m.tool_calls.empty()) {
      out += "<|im_start|>assistant";
      if (!m.content.empty()) out += "\n" + m.content;
      for (const ChatToolCall& c : m.tool_calls) {
        out += "\n<tool_call>\n{\"name\": \"" + c.name +
               "\", \"arguments\": " + py_json_dumps(parse_or_string(c.arguments)) +
               "}\n</tool_call>";
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      if (i == 0 || msgs[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (i + 1 == msgs.size() || msgs[i + 1].role != "tool") out += "<|im_end|>\n";
    } else {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    }
  }
  return out;
}

// Llama 3.1's user message that carries the tools.
std::string llama3_tools_preamble(std::span<const ChatTool> tools) {
  std::string out =
      "Given the following functions, please respond with a JSON for a function call with its "
      "proper arguments that best answers the given prompt.\n\nRespond in the format "
      "{\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do "
      "not use variables.\n\n";
  for (const ChatTool& t : tools) out += py_json_dumps(parse_or_string(t.json), 4) + "\n\n";
  return out;
}

// Mistral v0.3's [AVAILABLE_TOOLS] block: each function's string fields printed raw, the others
// with tojson.
std::string mistral_available_tools(std::span<const ChatTool> tools) {
  std::string out = "[AVAILABLE_TOOLS] [";
  for (size_t i = 0; i < tools.size(); ++i) {
    const OJson t = parse_or_string(tools[i].json);
    out += "{\"type\": \"function\", \"function\": {";
    bool first = true;
    if (t.is_object() && t.contains("function") && t["function"].is_object()) {
      for (auto it = t["function"].begin(); it != t["function"].end(); ++it) {
        if (it.key() == "return") continue;
        if (!first) out += ", ";
        first = false;
        out += "\"" + it.key() + "\": ";
        if (it.value().is_string()) {
          out += '"';
          out += it.value().get<std::string>();
          out += '"';
        } else {
          out += py_json_dumps(it.value());
        }
      }
    }
    out += "}}";
    out += i + 1 < tools.size() ? ", " : "]";
  }
  return out + "[/AVAILABLE_TOOLS]";
}

Status alternation_error() {
  return invalid_argument("conversation roles must alternate user/assistant/user/assistant/...");
}

}  // namespace

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::kChatML:
      return "chatml";
    case ChatFormat::kLlama3:
      return "llama3";
    case ChatFormat::kLlama31:
      return "llama3.1";
    case ChatFormat::kLlama2:
      return "llama2";
    case ChatFormat::kMistral:
      return "mistral";
  }
  return "unknown";
}

Result<ChatTemplate> ChatTemplate::from_jinja(std::string_view jinja, std::string bos_token,
                                              std::string eos_token) {
  if (jinja.empty()) return invalid_argument("empty chat template");
  auto has = [&](std::string_view s) { return jinja.find(s) != std::string_view::npos; };
  if (has("<|im_start|>"))
    return ChatTemplate(ChatFormat::kChatML, std::move(bos_token), std::move(eos_token),
                        chatml_default_system(jinja));
  if (has("<|start_header_id|>")) {
    if (has("Cutting Knowledge Date")) {
      ChatTemplate t(ChatFormat::kLlama31, std::move(bos_token), std::move(eos_token), "");
      t.date_is_now_ = has("strftime_now");
      return t;
    }
    return ChatTemplate(ChatFormat::kLlama3, std::move(bos_token), std::move(eos_token), "");
  }
  if (has("[INST]")) {
    return ChatTemplate(has("<<SYS>>") ? ChatFormat::kLlama2 : ChatFormat::kMistral,
                        std::move(bos_token), std::move(eos_token), "");
  }
  return unimplemented("unrecognised chat template (not ChatML, Llama 3, Llama 2 or Mistral)");
}

ChatTemplate ChatTemplate::of_format(ChatFormat f, std::string bos_token, std::string eos_token,
                                     std::string default_system) {
  return ChatTemplate(f, std::move(bos_token), std::move(eos_token), std::move(default_system));
}

std::string ChatTemplate::today() const {
  if (!date_.empty()) return date_;
  if (!date_is_now_) return "26 Jul 2024";
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
  return buf;
}

Result<std::string> ChatTemplate::apply(std::span<const ChatMessage> messages,
                                        bool add_generation_prompt,
                                        std::span<const ChatTool> tools) const {
  std::vector<ChatMessage> msgs(messages.begin(), messages.end());
  const bool has_system = !msgs.empty() && msgs[0].role == "system";
  std::string out;
  switch (format_) {
    case ChatFormat::kChatML: {
      std::span<const ChatMessage> turns(msgs);
      if (!tools.empty()) {
        out += chatml_tools_system(has_system ? msgs[0].content : default_system_, tools);
        if (has_system) turns = turns.subspan(1);
      } else if (!default_system_.empty() && !msgs.empty() && !has_system) {
        // SmolLM2 writes its default system prompt only in front of a first message.
        out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
      }
      out += chatml_turns(turns);
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    }
    case ChatFormat::kLlama3:
    case ChatFormat::kLlama31: {
      const bool v31 = format_ == ChatFormat::kLlama31;
      if (!v31 && !default_system_.empty() && !has_system)
        msgs.insert(msgs.begin(), ChatMessage{"system", default_system_});
      size_t first = 0;
      if (v31) {
        // Llama 3.1: always a system turn, with the date (and the ipython environment for tools).
        out += bos_ + "<|start_header_id|>system<|end_header_id|>\n\n";
        if (!tools.empty()) out += "Environment: ipython\n";
        out += "Cutting Knowledge Date: December 2023\nToday Date: " + today() + "\n\n";
        if (has_system) {
          out += py_strip(msgs[0].content);
          first = 1;
        }
        out += "<|eot_id|>";
      }
      // Llama 3.1 puts the tools in the first message after the system prompt, as a user turn.
      const size_t tools_at = tools.empty()                               ? msgs.size()
                              : !msgs.empty() && msgs[0].role == "system" ? 1
                                                                          : 0;
      if (!tools.empty() && tools_at >= msgs.size()) {
        return invalid_argument("tools need a user message to go in");
      }
      for (size_t i = first; i < msgs.size(); ++i) {
        const ChatMessage& m = msgs[i];
        if (i == 0 && !v31) out += bos_;
        if (i == tools_at) {
          out += "<|start_header_id|>user<|end_header_id|>\n\n" + llama3_tools_preamble(tools) +
                 py_strip(m.content) + "<|eot_id|>";
        } else if (m.role == "assistant" && !m.tool_calls.empty()) {
          if (m.tool_calls.size() != 1) {
            return invalid_argument("this model takes one tool call per assistant message, not {}",
                                    m.tool_calls.size());
          }
          out += "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"" +
                 m.tool_calls[0].name + "\", \"parameters\": " +
                 py_json_dumps(parse_or_string(m.tool_calls[0].arguments)) + "}<|eot_id|>";
        } else if (m.role == "tool" || m.role == "ipython") {
          // Llama 3.1 prints a result with tojson (a string is iterable in Jinja: it is quoted).
          out += "<|start_header_id|>ipython<|end_header_id|>\n\n" + py_json_dumps(m.content) +
                 "<|eot_id|>";
        } else {
          out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + py_strip(m.content) +
                 "<|eot_id|>";
        }
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    }
    case ChatFormat::kLlama2: {
      if (!tools.empty()) return invalid_argument("the llama2 chat format has no tool calling");
      std::optional<std::string> system;
      size_t first = 0;
      if (has_system) {
        system = msgs[0].content;
        first = 1;
      } else if (!default_system_.empty()) {
        system = default_system_;
      }
      for (size_t i = first; i < msgs.size(); ++i) {
        const size_t k = i - first;
        const ChatMessage& m = msgs[i];
        if ((m.role == "user") != (k % 2 == 0)) return alternation_error();
        std::string content = m.content;
        if (k == 0 && system)
          content = fmt::format("<<SYS>>\n{}\n<</SYS>>\n\n{}", *system, m.content);
        if (m.role == "user")
          out += fmt::format("{}[INST] {} [/INST]", bos_, py_strip(content));
        else if (m.role == "assistant")
          out += fmt::format(" {} {}", py_strip(content), eos_);
      }
      return out;  // the template has no generation prompt: the prompt ends with [/INST]
    }
    case ChatFormat::kMistral: {
      out += bos_;
      size_t last_user = msgs.size();
      for (size_t i = 0; i < msgs.size(); ++i)
        if (msgs[i].role == "user") last_user = i;
      // Tool calls and their results sit outside the user/assistant alternation (v0.3).
      size_t k = 0;
      for (size_t i = 0; i < msgs.size(); ++i) {
        const ChatMessage& m = msgs[i];
        if (m.role == "tool") {
          out += "[TOOL_RESULTS] {\"content\": " + m.content + ", \"call_id\": \"" +
                 m.tool_call_id + "\"}[/TOOL_RESULTS]";
          continue;
        }
        if (m.role == "assistant" && !m.tool_calls.empty()) {
          out += "[TOOL_CALLS] [";
          for (size_t c = 0; c < m.tool_calls.size(); ++c) {
            const ChatToolCall& tc = m.tool_calls[c];
            OJson f = {{"name", tc.name}, {"arguments", parse_or_string(tc.arguments)}};
            std::string s = py_json_dumps(f);
            s.pop_back();
            out += s + ", \"id\": \"" + tc.id + "\"}";
            out += c + 1 < m.tool_calls.size() ? ", " : "]" + eos_;
          }
          continue;
        }
        if ((m.role == "user") != (k++ % 2 == 0)) return alternation_error();
        if (m.role == "user") {
          if (!tools.empty() && i == last_user) out += mistral_available_tools(tools);
          out += fmt::format("[INST] {} [/INST]", m.content);
        } else if (m.role == "assistant") {
          out += m.content + eos_;
        } else {
          return invalid_argument("only user and assistant roles are supported, not '{}'", m.role);
        }
      }
      return out;
    }
  }
  return internal_error("unknown chat format");
}

}  // namespace pp::model
