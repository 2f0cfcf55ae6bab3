// Tokenizer: text to token ids and back, reproducing Hugging Face `tokenizers` exactly for the
// model families pp serves: byte-level BPE (GPT-2, Llama 3, Qwen 2/3, SmolLM2) and Llama 2
// style BPE with byte fallback, loaded from a tokenizer.json or from a GGUF file's
// tokenizer.ggml.* metadata (where a "llama" vocabulary uses llama.cpp's score-based SPM merge).
//
// Encoding: added tokens written in the text ("<|im_start|>") are cut out first (longest match,
// honouring lstrip/rstrip/single_word/normalized), then each segment between them is normalized,
// pre-tokenized into words, and each word is encoded by the model (BPE results are cached per
// word). Input bytes that are not valid UTF-8 do not fail: byte-level models encode them as the
// bytes they are, byte-fallback models as <0xXX> tokens.
//
// A Tokenizer is immutable after loading and safe to use from several threads at once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/status.h"

namespace pp::model {

class GgufFile;

class Tokenizer {
 public:
  // From the contents of a Hugging Face tokenizer.json.
  static Result<std::unique_ptr<Tokenizer>> from_hf_json(const nlohmann::json& j);
  static Result<std::unique_ptr<Tokenizer>> from_hf_file(
      const std::filesystem::path& tokenizer_json);
  // From a GGUF file's tokenizer.ggml.* metadata (model "gpt2" or "llama").
  static Result<std::unique_ptr<Tokenizer>> from_gguf(const GgufFile& f);
  ~Tokenizer();

  // The tokenizer as a Hugging Face tokenizer.json: loading it with `tokenizers` (or with
  // from_hf_json) gives the same ids.
  nlohmann::json to_hf_json() const;

  // add_special: add BOS/EOS as the tokenizer's post-processor (or GGUF add_bos_token /
  // add_eos_token) says.
  std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;
  // skip_special: leave out special tokens. Ids outside the vocabulary are left out.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // Number of ids (model vocabulary and added tokens): one more than the largest id.
  int64_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The raw vocabulary string ("Ġthe", "▁the", "<0x0A>"); empty for an id out of range.
  std::string id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // A tokenizer.json does not name BOS and EOS (tokenizer_config.json does): they are guessed
  // from the post-processor and common names; a caller that knows better sets them here.
  void set_bos_id(std::optional<int32_t> id);
  void set_eos_id(std::optional<int32_t> id);

  // For the incremental detokenizer: whether the text of a token can still change with the
  // tokens after it (a <0xXX> byte-fallback token, whose run is decoded as a whole).
  bool is_byte_fallback_token(int32_t id) const;

  // The loaders build one through this (Impl is private to libmodel).
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace pp::model
