// A model's tokenizer as Hugging Face files, for clients that tokenize themselves (SGLang's
// bench_serving, transformers' AutoTokenizer): tokenizer.json (Tokenizer::to_hf_json, whose
// post-processor adds BOS and EOS exactly as pp does, so a GGUF that says not to add BOS gives
// a tokenizer that does not) and tokenizer_config.json (the tokenizer class, the special tokens,
// add_bos_token / add_eos_token as pp encodes, model_max_length, the chat template).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "pp/model/tokenizer.h"
#include "pp/status.h"

namespace pp::model {

// tokenizer_config.json for `tok`. `chat_template` empty: none; `model_max_length` <= 0: none.
nlohmann::json hf_tokenizer_config(const Tokenizer& tok, const std::string& chat_template,
                                   int64_t model_max_length);

// Writes tokenizer.json and tokenizer_config.json into `dir` (created when missing; existing
// files of those names are replaced). Errors name the file that could not be written.
Status export_hf_tokenizer(const Tokenizer& tok, const std::string& chat_template,
                           int64_t model_max_length, const std::filesystem::path& dir);

}  // namespace pp::model
