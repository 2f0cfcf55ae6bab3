// pp-serve's model beyond the engine: its tokenizer and chat template (the model's, or those
// --tokenizer-path and --chat-template name), the context it serves (--context-length caps the
// model's), and what /model_info reports. Opened once, before the engine starts, so that a bad
// path, a template pp cannot render or a context longer than the model's is one error at start.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "pp/model/tokenizer.h"
#include "pp/status.h"

namespace pp::serve {

struct ServedModelOptions {
  std::string model;                       // --model
  std::optional<uint64_t> random_weights;  // --random-weights
  int64_t context_length = 0;              // --context-length; 0: the model's
  std::string tokenizer_path;              // --tokenizer-path; empty: the model's
  std::string chat_template;               // --chat-template FILE; empty: the model's
};

// What pp-serve needs of the model beyond the engine: its chat template and its tokenizer (null
// when it has none), from the model source resolver or the --tokenizer-path and
// --chat-template that replace them; the context it serves.
struct ServedModel {
  std::string chat_template;
  std::shared_ptr<const model::Tokenizer> tokenizer;
  std::string tokenizer_path;  // where the tokenizer came from: the model, or --tokenizer-path
  int64_t context_length = 0;  // the context served: the model's, or --context-length below it
  std::string model_type;      // config.json's model_type ("llama")
  std::string architecture;    // "LlamaForCausalLM"
};

// Resolves the model (metadata only) and opens its tokenizer, or the one --tokenizer-path names:
// a tokenizer.json (or a folder with one, whose tokenizer_config.json names BOS, EOS and the
// chat template), or anything --model takes. Errors: kInvalidArgument for a context longer than
// the model's, a tokenizer larger than its vocabulary or a template pp does not render;
// kNotFound for a missing file.
Result<ServedModel> open_served_model(const ServedModelOptions& o);

}  // namespace pp::serve
