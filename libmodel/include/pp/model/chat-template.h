// ChatTemplate: turns a conversation into the prompt text a chat model was trained on. Not a
// Jinja engine: the model's Jinja template is only read to recognise its format (ChatML,
// Llama 3, Llama 2, Mistral) and its default system prompt; each format is rendered in C++ to
// the same text transformers' apply_chat_template(tokenize=False) gives for those templates.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "pp/status.h"

namespace pp::model {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (ChatML and Llama 3 accept any role)
  std::string content;
};

enum class ChatFormat {
  kChatML,   // <|im_start|>role\ncontent<|im_end|>\n  (SmolLM2, Qwen)
  kLlama3,   // <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
  kLlama2,   // <s>[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s>
  kMistral,  // <s>[INST] user [/INST]assistant</s>  (no system role)
};

const char* chat_format_name(ChatFormat f);

class ChatTemplate {
 public:
  // Recognises the format of a model's Jinja template ("<|im_start|>" -> ChatML,
  // "<|start_header_id|>" -> Llama 3, "[INST]" with "<<SYS>>" -> Llama 2, without -> Mistral),
  // and takes a ChatML default system prompt from it. kInvalidArgument when empty,
  // kUnimplemented when not recognised (the caller picks a default with of_format).
  static Result<ChatTemplate> from_jinja(std::string_view jinja, std::string bos_token,
                                         std::string eos_token);
  // default_system: the system prompt used when the conversation does not start with one
  // (empty: none).
  static ChatTemplate of_format(ChatFormat f, std::string bos_token, std::string eos_token,
                                std::string default_system = "");

  ChatFormat format() const { return format_; }
  const std::string& default_system() const { return default_system_; }

  // The prompt, like apply_chat_template(tokenize=False, add_generation_prompt=...).
  // kInvalidArgument when the conversation breaks the format's rules (Llama 2 and Mistral:
  // roles must alternate user/assistant; Mistral: no system role).
  Result<std::string> apply(std::span<const ChatMessage> messages,
                            bool add_generation_prompt) const;

 private:
  ChatTemplate(ChatFormat f, std::string bos, std::string eos, std::string default_system)
      : format_(f),
        bos_(std::move(bos)),
        eos_(std::move(eos)),
        default_system_(std::move(default_system)) {}
  ChatFormat format_;
  std::string bos_, eos_, default_system_;
};

}  // namespace pp::model
