// ChatTemplate: turns a conversation into the prompt text a chat model was trained on. Not a
// Jinja engine: the model's Jinja template is only read to recognise its format (ChatML,
// Llama 3, Llama 3.1, Llama 2, Mistral) and its default system prompt; each format is rendered in
// C++ to the same text transformers' apply_chat_template(tokenize=False) gives for those templates.
//
// Tools (OpenAI function calling) are rendered in each family's published convention, since the
// plain templates pp recognises have none: ChatML as Qwen2.5's template (a "# Tools" system
// section, <tool_call> blocks, <tool_response> in a user turn), Llama 3 as Llama 3.1's JSON
// convention (tools in the first user message, {"name", "parameters"}, results in an ipython
// turn), Mistral as Mistral-7B-Instruct-v0.3's ([AVAILABLE_TOOLS], [TOOL_CALLS],
// [TOOL_RESULTS]). Llama 2 has no tool convention: tools are refused there.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pp/status.h"

namespace pp::model {

// One call an assistant message made (OpenAI's tool_calls[i]).
struct ChatToolCall {
  std::string id;         // the client's id ("call_..."); Mistral's template wants 9 characters
  std::string name;       // the function's name
  std::string arguments;  // the arguments as JSON text (an object, as the model wrote them)
};

// One function the model may call (OpenAI's tools[i] of type "function").
struct ChatTool {
  std::string name;
  // The whole tool as JSON text, {"type": "function", "function": {"name", "description",
  // "parameters"}}, its keys in the client's order (templates print it with tojson).
  std::string json;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool" (ChatML and Llama 3 accept any)
  std::string content;
  std::vector<ChatToolCall> tool_calls = {};  // assistant: the calls it made
  std::string tool_call_id = {};              // tool: the call this result answers
};

enum class ChatFormat {
  kChatML,   // <|im_start|>role\ncontent<|im_end|>\n  (SmolLM2, Qwen)
  kLlama3,   // <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
  kLlama31,  // Llama 3.1 / 3.2 / 3.3: Llama 3 with a system turn that always carries the
             // knowledge date ("Cutting Knowledge Date: December 2023\nToday Date: ...")
  kLlama2,   // <s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s>
  kMistral,  // <s>[INST] user [/INST]assistant</s>  (no system role)
};

const char* chat_format_name(ChatFormat f);

class ChatTemplate {
 public:
  // Recognises the format of a model's Jinja template ("<|im_start|>" -> ChatML,
  // "<|start_header_id|>" -> Llama 3 (with "Cutting Knowledge Date": Llama 3.1), "[INST]" with
  // "<<SYS>>" -> Llama 2, without -> Mistral), and takes a ChatML default system prompt from it.
  // kInvalidArgument when empty, kUnimplemented when not recognised (the caller picks a default
  // with of_format).
  static Result<ChatTemplate> from_jinja(std::string_view jinja, std::string bos_token,
                                         std::string eos_token);
  // default_system: the system prompt used when the conversation does not start with one
  // (empty: none).
  static ChatTemplate of_format(ChatFormat f, std::string bos_token, std::string eos_token,
                                std::string default_system = "");

  ChatFormat format() const { return format_; }
  // Llama 3.1: the "Today Date" the system turn writes. Default: Llama 3.1's "26 Jul 2024", or
  // today's UTC date when the template asks for it (Llama 3.2's strftime_now), as transformers
  // renders them. Tests set a fixed one.
  void set_date(std::string date) { date_ = std::move(date); }
  const std::string& default_system() const { return default_system_; }

  // The prompt, like apply_chat_template(tokenize=False, add_generation_prompt=...).
  // kInvalidArgument when the conversation breaks the format's rules (Llama 2 and Mistral:
  // roles must alternate user/assistant; Mistral: no system role).
  // `tools`: the functions the model may call, rendered in the family's convention (empty: the
  // prompt is the same as without tools). kInvalidArgument for tools on Llama 2.
  Result<std::string> apply(std::span<const ChatMessage> messages, bool add_generation_prompt,
                            std::span<const ChatTool> tools = {}) const;

 private:
  ChatTemplate(ChatFormat f, std::string bos, std::string eos, std::string default_system)
      : format_(f),
        bos_(std::move(bos)),
        eos_(std::move(eos)),
        default_system_(std::move(default_system)) {}
  std::string today() const;
  ChatFormat format_;
  std::string bos_, eos_, default_system_;
  std::string date_;          // Llama 3.1's date; empty: see set_date
  bool date_is_now_ = false;  // Llama 3.2: the current date
};

}  // namespace pp::model
