// Chat formats rendered in C++ (see chat-template.h). Each render mirrors one published Jinja
// template: SmolLM2's ChatML, Meta-Llama-3-Instruct's, Llama-2-chat's and
// Mistral-7B-Instruct-v0.1's; scripts/make-tokenizer-fixtures.py renders the same
// conversations with jinja2 and the tests compare.
#include "pp/model/chat-template.h"

#include <optional>

#include <fmt/format.h>
#include <vector>

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
// "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n...'".
std::string chatml_default_system(std::string_view t) {
  if (t.find("!= 'system'") == std::string_view::npos &&
      t.find("!= \"system\"") == std::string_view::npos)
    return {};
  for (std::string_view head : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    const size_t p = t.find(head);
    if (p == std::string_view::npos) continue;
    const size_t b = p + head.size();
    const size_t e = t.find("<|im_end|>", b);
    if (e == std::string_view::npos) return {};
    std::string_view body = t.substr(b, e - b);
    // A literal, not a variable: no Jinja markup and no closing quote inside.
    if (body.find("{{") != std::string_view::npos || body.find("{%") != std::string_view::npos ||
        body.find('\'') != std::string_view::npos || body.find('"') != std::string_view::npos)
      return {};
    return unescape_jinja(body);
  }
  return {};
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
    if (has("Cutting Knowledge Date"))
      return unimplemented(
          "llama 3.1-style chat template (tools, knowledge date) is not supported; use the "
          "plain llama3 format");
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

Result<std::string> ChatTemplate::apply(std::span<const ChatMessage> messages,
                                        bool add_generation_prompt) const {
  std::vector<ChatMessage> msgs(messages.begin(), messages.end());
  const bool has_system = !msgs.empty() && msgs[0].role == "system";
  std::string out;
  switch (format_) {
    case ChatFormat::kChatML:
      // SmolLM2 writes its default system prompt only in front of a first message.
      if (!default_system_.empty() && !msgs.empty() && !has_system)
        out += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
      for (const ChatMessage& m : msgs)
        out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      if (add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    case ChatFormat::kLlama3:
      if (!default_system_.empty() && !has_system)
        msgs.insert(msgs.begin(), ChatMessage{"system", default_system_});
      for (size_t i = 0; i < msgs.size(); ++i) {
        if (i == 0) out += bos_;
        out += "<|start_header_id|>" + msgs[i].role + "<|end_header_id|>\n\n" +
               py_strip(msgs[i].content) + "<|eot_id|>";
      }
      if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    case ChatFormat::kLlama2: {
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
    case ChatFormat::kMistral:
      out += bos_;
      for (size_t i = 0; i < msgs.size(); ++i) {
        const ChatMessage& m = msgs[i];
        if ((m.role == "user") != (i % 2 == 0)) return alternation_error();
        if (m.role == "user")
          out += fmt::format("[INST] {} [/INST]", m.content);
        else if (m.role == "assistant")
          out += m.content + eos_;
        else
          return invalid_argument("only user and assistant roles are supported, not '{}'", m.role);
      }
      return out;
  }
  return internal_error("unknown chat format");
}

}  // namespace pp::model
